"""HubPushCallback: pushes after fit (and every N epochs) through the real client, never kills a run."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from run_helpers import CrossEntropyClassifier
from torch.utils.data import DataLoader, TensorDataset

import dcls_zoo
from lightning_modules.callbacks import HubPushCallback


class _TinyClassifier(CrossEntropyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, stem="small", dims=(8, 16, 24, 32),
                                           depths=(1, 1, 1, 1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, callback, epochs=2):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,)))
    module = _TinyClassifier()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))
    return module, trainer


def test_pushes_every_n_epochs_and_at_the_end(fake_hub, tmp_path):
    callback = HubPushCallback("dcls-test/callback", every_n_epochs=1, export_dir=tmp_path / "exports")
    module, trainer = _fit(tmp_path, callback)
    assert [path.name for path in callback.pushed] == ["epoch=0", "epoch=1", "final"]
    files = fake_hub.files("dcls-test/callback")
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "train_loss" in card  # the card reports the run: its metrics...
    assert "| epochs | 2 (4 optimizer steps) |" in card  # ...and how long it trained
    loaded = dcls_zoo.create_model("hf-hub:dcls-test/callback", pretrained=True).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), module.model.eval()(images))


def test_failed_push_is_logged_and_training_finishes(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    callback = HubPushCallback("dcls-test/no-token", export_dir=tmp_path / "exports")
    with caplog.at_level(logging.WARNING, logger="lightning_modules.callbacks"):
        _, trainer = _fit(tmp_path, callback, epochs=1)
    assert trainer.state.finished and callback.pushed == []
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "dcls-test/no-token failed" in message and "dcls-zoo push" in message


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        HubPushCallback("org/name", every_n_epochs=0)
