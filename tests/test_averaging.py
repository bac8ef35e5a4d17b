"""The warm-up EMA: its decay against timm's ModelEmaV3, and the average against the recurrence, in a real fit."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from run_helpers import CrossEntropyClassifier
from timm.utils import ModelEmaV3

from lightning_modules.averaging import WarmupEMAWeightAveraging, horizon_cap, warmup_ema_decay


@pytest.mark.parametrize("decay, gamma, power", [(0.9999, 1.0, 2 / 3), (0.99, 1.0, 2 / 3), (0.999, 10.0, 0.75)])
def test_warmup_decay_is_timms(decay, gamma, power):
    reference = ModelEmaV3(torch.nn.Linear(1, 1), decay=decay, use_warmup=True, warmup_gamma=gamma, warmup_power=power)
    # timm counts the global step (its first update, step 1, copies); AveragedModel counts the updates
    # already made (its first update, 0 made, copies): update n of ours is timm's step n + 1.
    for updates in (1, 2, 5, 30, 100, 1_000, 31_600, 10**6):
        assert warmup_ema_decay(updates, decay, gamma, power) == pytest.approx(reference.get_decay(updates + 1), abs=1e-12)
    assert warmup_ema_decay(0, decay, gamma, power) == 0.0  # the first update takes the weights as they are


def test_warmup_decay_refuses_bad_arguments():
    for kwargs in ({"decay": 1.0}, {"decay": 0.0}, {"decay": 0.9, "warmup_gamma": 0}, {"decay": 0.9, "warmup_power": -1}):
        with pytest.raises(ValueError):
            WarmupEMAWeightAveraging(**kwargs)


class _Linear(CrossEntropyClassifier):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class _RecordRaw(Callback):
    """The raw weights after every optimizer step (before any averaging callback listed after it runs)."""

    def __init__(self):
        self.raw = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw.append([t.detach().clone() for t in pl_module.model.parameters()])


def test_average_follows_the_warmup_recurrence_in_a_fit(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randint(0, 3, (48,)))
    module, record = _Linear(), _RecordRaw()
    averaging = WarmupEMAWeightAveraging(decay=0.95)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[record, averaging])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    # The independent recurrence: the first update copies, update n mixes in (1 - decay(n)), the
    # decay never above 1 - 1 / (0.15 * 12 steps): the average spans at most 15% of the run
    assert len(record.raw) == 12
    cap = 1 - 1 / (0.15 * 12)
    expected = record.raw[0]
    for updates, raw in enumerate(record.raw[1:], start=1):
        decay = min(0.95, 1 - (1 + updates) ** (-2 / 3), cap)
        expected = [decay * e + (1 - decay) * r for e, r in zip(expected, raw)]
    # At the end of fit the callback copies its average into the module.
    for got, want in zip(module.model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    # and the average is nearer the last raw weights than a fixed 0.95 decay would leave it
    fixed = record.raw[0]
    for raw in record.raw[1:]:
        fixed = [0.95 * f + 0.05 * r for f, r in zip(fixed, raw)]
    distance = lambda a, b: sum(float((x - y).norm()) for x, y in zip(a, b))  # noqa: E731
    assert distance(expected, record.raw[-1]) < distance(fixed, record.raw[-1])


def test_the_horizon_cap_binds_only_on_short_runs():
    assert horizon_cap(37, 0.15) == pytest.approx(1 - 1 / 5.55)
    assert horizon_cap(float("inf"), 0.15) == 1.0 and horizon_cap(3, 0.15) == 0.0  # under one step: the raw weights
    for total in (300, 430, 860, 1_250_000):  # the quickstart, the comparisons, ImageNet: timm's warm-up alone
        cap = horizon_cap(total, 0.15)
        assert all(warmup_ema_decay(n, 0.9999, cap=cap) == warmup_ema_decay(n, 0.9999) for n in range(0, total + 1, 7))
    with pytest.raises(ValueError, match="max_horizon"):
        WarmupEMAWeightAveraging(max_horizon=0)


class _Probe(CrossEntropyClassifier):
    """A new linear head on fixed features: the part of a fine-tune that starts from nothing."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(16, 4)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)


@pytest.mark.parametrize("averaging, hides", [(lambda: EMAWeightAveraging(decay=0.999), True),
                                              (lambda: WarmupEMAWeightAveraging(decay=0.999), False)])
def test_a_short_fine_tune_is_not_hidden_by_its_average(tmp_path, averaging, hides):
    """36 steps from a random head, as the fine-tune of the issue: Lightning's fixed 0.999 EMA is still
    near the random start, the warm-up EMA within a point of the raw weights it averages."""
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 2
    labels = torch.arange(4).repeat_interleave(240)[torch.randperm(960)]
    features = centres[labels] + torch.randn(len(labels), 16)
    train = torch.utils.data.TensorDataset(features[:576], labels[:576])
    module, record, callback = _Probe(), _RecordRaw(), averaging()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[record, callback])
    trainer.fit(module, torch.utils.data.DataLoader(train, batch_size=32, shuffle=True))
    assert trainer.global_step == 36

    def accuracy(weight, bias):
        with torch.no_grad():
            return ((features[576:] @ weight.T + bias).argmax(-1) == labels[576:]).float().mean().item()

    raw = accuracy(*record.raw[-1])  # the last step's raw weights
    averaged = accuracy(module.model.weight, module.model.bias)  # at the end of fit the average is the model's
    assert raw > 0.9
    assert (averaged < raw - 0.2) if hides else (averaged >= raw - 0.01), (averaged, raw)
