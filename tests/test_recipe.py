"""The paper's training recipe in ImageClassifier: parameter groups, schedule, losses, faults, fine-tuning."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import dcls_zoo
from lightning_modules import FashionMNISTDataModule, ImageClassifier, NonFiniteLossError
from lightning_modules.optim import WarmupCosine, parameter_groups

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), patch_size=2)


def _classifier(**kwargs) -> ImageClassifier:
    args = dict(arch="convnext_dcls_atto", num_classes=10, in_chans=1, model_kwargs=TINY, warmup_epochs=1)
    return ImageClassifier(**{**args, **kwargs})


def _loader(n: int = 64, batch_size: int = 16, seed: int = 0, nan: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    patterns = torch.randn(10, 1, 32, 32, generator=generator)
    images = patterns[labels] + 0.3 * torch.randn(n, 1, 32, 32, generator=generator)
    if nan:
        images[:] = float("nan")
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, drop_last=True)


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    return pl.Trainer(**{**args, **kwargs})


def _metrics(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ parameter groups


@pytest.mark.parametrize("arch", ["convnext_dcls_atto", "convnext_dcls_gauss_tiny"])
def test_parameter_groups_split_positions_norms_and_weights(arch):
    model = dcls_zoo.create_model(arch, num_classes=10, **({"dims": (8, 16, 32, 64)} if "gauss" in arch else {}))
    groups = {group["name"]: group for group in parameter_groups(model, position_lr_scale=5.0)}
    named = dict(model.named_parameters())
    ids = {name: {id(p) for p in group["params"]} for name, group in groups.items()}
    expected_positions = {id(p) for n, p in named.items() if n.endswith((".P", ".SIG"))}
    assert ids["positions"] == expected_positions and len(expected_positions) == (8 if "gauss" in arch else 4)
    assert ids["no_decay"] == {id(p) for n, p in named.items() if id(p) not in expected_positions and (p.ndim <= 1 or n.endswith(".bias"))}
    assert ids["decay"] == {id(p) for n, p in named.items() if id(p) not in expected_positions and p.ndim > 1 and not n.endswith(".bias")}
    assert sum(len(v) for v in ids.values()) == len(named)  # disjoint and complete
    assert groups["positions"]["weight_decay"] == 0.0 and groups["positions"]["lr_scale"] == 5.0
    assert groups["no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["decay"]


def test_warmup_cosine_shape():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    factors = [schedule(step) for step in range(111)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert factors[110] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(20, 10)


def test_positions_train_at_five_times_the_rate_through_the_whole_schedule(tmp_path):
    module = _classifier(warmup_epochs=1, min_lr_ratio=0.0)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[LearningRateMonitor(logging_interval="step")])
    trainer.fit(module, _loader(), _loader())
    rows = [r for r in _metrics(trainer) if r.get("lr-AdamW/positions")]
    decay = [float(r["lr-AdamW/decay"]) for r in rows]
    positions = [float(r["lr-AdamW/positions"]) for r in rows]
    assert len(rows) == 12  # 4 steps x 3 epochs
    for d, p in zip(decay, positions):
        assert p == pytest.approx(5 * d, rel=1e-6)
    schedule = WarmupCosine(4, 12, 0.0)
    assert decay == pytest.approx([4e-3 * schedule(step) for step in range(12)], rel=1e-6)
    weight_decays = {g["name"]: g["weight_decay"] for g in trainer.optimizers[0].param_groups}
    assert weight_decays == {"decay": 0.05, "no_decay": 0.0, "positions": 0.0}


# ------------------------------------------------------------------ losses


def test_repulsive_term_joins_after_the_configured_epoch(tmp_path):
    module = _classifier(repulsive_loss_weight=3.0, repulsive_loss_after_epoch=0)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(module, _loader())
    rows = [r for r in _metrics(trainer) if r.get("train/loss_step")]
    assert {int(r["epoch"]) for r in rows} == {0, 1}
    for row in rows:
        total, fit, rep = float(row["train/loss_step"]), float(row["train/loss_fit_step"]), float(row["train/loss_rep_step"])
        expected = fit + (3.0 * rep**2 if int(row["epoch"]) > 0 else 0.0)
        assert total == pytest.approx(expected, rel=1e-5)
        assert rep > 0


def test_one_batch_overfits(tmp_path):
    module = _classifier(label_smoothing=0.0, warmup_epochs=0, repulsive_loss_weight=0.0)
    trainer = _trainer(tmp_path, max_epochs=40, overfit_batches=1, logger=False)
    trainer.fit(module, _loader(n=16, batch_size=16))
    assert trainer.callback_metrics["train/loss"] < 0.1  # from ln(10) = 2.3
    assert trainer.callback_metrics["train/top1"] == 1.0


def test_mixup_and_binary_cross_entropy_train(tmp_path):
    module = _classifier(mixup_alpha=0.8, cutmix_alpha=1.0, loss="binary_cross_entropy", bce_target_threshold=0.2)
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    trainer.fit(module, _loader())
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/top1" not in trainer.callback_metrics  # accuracy on mixed images is not reported
    with pytest.raises(ValueError, match="even batch size, got 7"):
        _trainer(tmp_path, max_epochs=1, logger=False).fit(module, _loader(n=14, batch_size=7))


def test_validation_accuracy_is_the_micro_top_k_of_the_predictions(tmp_path):
    module = _classifier()
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    loader = _loader(n=48, batch_size=16, seed=3)
    trainer.fit(module, _loader())
    (result,) = trainer.validate(module, loader, verbose=False)
    logits = torch.cat([module(x) for x, _ in loader]).detach()
    labels = torch.cat([y for _, y in loader])
    top5 = logits.topk(5, dim=1).indices
    assert result["val/top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert result["val/top5"] == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())


# ------------------------------------------------------------------ faults


class _PoisonWeightsAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint, _PoisonWeightsAt(1)])
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 1.*last good checkpoint is .*last\.ckpt"):
        trainer.fit(_classifier(), _loader())
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


class _BlowUpAfterEpoch(Callback):
    """Scales the weights by 1e18 at the end of an epoch (before its checkpoint): finite but blown up,
    as a huge learning rate leaves them, so the next step's loss is not finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for parameter in pl_module.model.parameters():
                    if parameter.dim() > 1:
                        parameter.mul_(1e18)


def test_a_blown_up_but_finite_checkpoint_is_never_called_good(tmp_path):
    keep_all = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, monitor="train/loss_fit_epoch", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[keep_all, _BlowUpAfterEpoch(1)])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(_classifier(), _loader())
    message = str(info.value)
    blown = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert blown["epoch"] == 1 and all(torch.isfinite(v).all() for v in blown["state_dict"].values())
    named = re.search(r"the last good checkpoint is (\S+) ", message)
    assert named, message
    good = torch.load(named.group(1), weights_only=True)
    assert good["epoch"] == 0  # the epoch-1 checkpoints (last.ckpt among them) are blown up
    # the advice works: its weights with a lower rate, a fresh optimizer, train finitely
    resumed = _classifier(pretrained=named.group(1))
    _trainer(tmp_path / "again", max_epochs=1).fit(resumed, _loader())
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())
    assert "--model.pretrained" in message and "--model.optimizer.init_args.lr <lower>" in message


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="model.warmup_epochs"):
        _classifier(warmup_epochs=-1)
    with pytest.raises(ValueError, match="model.num_classes"):
        _classifier(num_classes=1)
    with pytest.raises(ValueError, match="model.loss"):
        _classifier(loss="hinge")


# ------------------------------------------------------------------ fine-tuning


def test_pretrained_checkpoint_gives_a_new_head_and_keeps_the_rest(tmp_path):
    source = _classifier(num_classes=10)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    trainer.fit(source, _loader())
    (ckpt,) = tmp_path.glob("*.ckpt")
    target = _classifier(num_classes=4, pretrained=str(ckpt))
    own, trained = target.model.state_dict(), source.model.state_dict()
    assert own["head.fc.weight"].shape == (4, 64)
    for key, value in trained.items():
        if not key.startswith("head.fc."):
            assert torch.equal(own[key], value), key


def test_pretrained_export_directory_adapts_the_input_channels(tmp_path):
    source = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=3, **TINY)
    dcls_zoo.save_pretrained(source, tmp_path / "export")
    target = _classifier(in_chans=1, pretrained=str(tmp_path / "export"))
    expected = source.state_dict()["stem.0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(target.model.state_dict()["stem.0.weight"], expected)
    assert torch.equal(target.model.state_dict()["head.fc.weight"], source.state_dict()["head.fc.weight"])


def test_a_gray_export_fine_tunes_on_rgb_with_the_same_response_to_gray_images(tmp_path):
    source = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, **TINY).eval()
    dcls_zoo.save_pretrained(source, tmp_path / "export")
    target = _classifier(in_chans=3, num_classes=4, pretrained=str(tmp_path / "export")).model.eval()
    assert target.state_dict()["stem.0.weight"].shape[1] == 3
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # the features before the new head: a gray image in RGB sees the gray model
        torch.testing.assert_close(target.forward_head(target.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True),
                                   source.forward_head(source.forward_features(gray), pre_logits=True), rtol=1e-5, atol=1e-5)


def test_missing_pretrained_path_is_reported():
    with pytest.raises(ValueError, match="no such file or directory"):
        _classifier(pretrained="runs/nothing/here.pt")


def test_model_summary_counts_flops_at_the_data_image_size(tmp_path):
    """The summary's FLOPs column measured one image of the data's size (it showed 0 before)."""
    module = _classifier()
    data = FashionMNISTDataModule(batch_size=16, image_size=32)
    _trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=data)
    assert tuple(module.example_input_array.shape) == (1, 1, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.model.eval()(torch.zeros(1, 1, 32, 32))
    summary = ModelSummary(module, max_depth=1)
    assert summary.total_flops == counter.get_total_flops() > 0
