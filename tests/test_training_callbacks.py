"""ClampPositions, SigmaSchedule and PositionMonitor on a small ConvNeXt-dcls, trained for a few CPU steps.

Each test fits a narrow ``convnext_dcls_atto`` (17x17 windows, positions shared per stage) on a
synthetic 32x32 data set through a real Trainer, and checks the callbacks' effect against values the test
computes on its own.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from run_helpers import CrossEntropyClassifier
from torch.utils.data import DataLoader, TensorDataset

import dcls_zoo
from dcls_zoo.construct import position_bounds
from dcls_zoo.positions import position_owners
from dcls_zoo.shared import SharedPositions
from lightning_modules.method import ClampPositions, SigmaSchedule
from lightning_modules.position_monitor import PositionMonitor

WINDOW = 17  # convnext_dcls_atto's DCLS window
GAUSS_OFFSET = 0.27  # effective gauss width = |SIG| + 0.27


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # the networks' initial positions too: reproducible values and run times


class _Classifier(CrossEntropyClassifier):
    """The smallest module the callbacks need: the network as ``self.model``, SGD, positions at their own lr."""

    def __init__(self, position_lr: float = 0.01, **model_kwargs) -> None:
        super().__init__()
        self.position_lr = position_lr
        # ConvNeXt's layer scale starts at 1e-6, which leaves position gradients near 1e-9; at 1 the
        # positions move within a few steps
        model_kwargs.setdefault("ls_init_value", 1.0)
        model_kwargs.setdefault("dims", (8, 16, 24, 32))  # atto's depths and windows, a quarter of its widths
        self.model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, patch_size=2,
                                           **model_kwargs)

    def configure_optimizers(self):
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        positions = [p for name, p in named if name.endswith((".P", ".SIG"))]
        others = [p for name, p in named if not name.endswith((".P", ".SIG"))]
        return torch.optim.SGD([{"params": others}, {"params": positions, "lr": self.position_lr}], lr=0.01)


def _fit(tmp_path: Path, module: pl.LightningModule, callbacks: list[Callback], epochs: int = 1, batches: int = 2,
         ckpt_path: Path | None = None, **trainer_kwargs) -> pl.Trainer:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,)))
    trainer_kwargs.setdefault("logger", CSVLogger(tmp_path))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=batches,
                         callbacks=callbacks, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(module, DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return trainer


def _unique_positions(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every distinct ``P`` by state-dict name (``named_parameters`` lists a shared tensor once)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith(".P")}


def _outside_window(model: torch.nn.Module) -> float:
    """How far the farthest position lies outside the window (0: all inside)."""
    low, high = position_bounds(WINDOW)
    return max(max(float((low - p).max()), float((p - high).max()), 0.0) for p in _unique_positions(model).values())


# --- ClampPositions ---------------------------------------------------------------------------------

HUGE_POSITION_LR = 1e5  # one SGD step throws positions far out of their 17x17 window


def test_without_clamp_a_huge_position_step_leaves_the_window(tmp_path):
    module = _Classifier(position_lr=HUGE_POSITION_LR)
    _fit(tmp_path, module, [], batches=1)
    assert _outside_window(module.model) > 1.0  # the clamp test below can fail


def test_clamp_keeps_every_position_in_its_window(tmp_path):
    module = _Classifier(position_lr=HUGE_POSITION_LR)
    before = _unique_positions(module.model)
    _fit(tmp_path, module, [ClampPositions()], batches=2)
    after = _unique_positions(module.model)
    assert _outside_window(module.model) == 0.0
    assert all(not torch.equal(before[name], after[name]) for name in before)  # they did move
    low, high = position_bounds(WINDOW)
    assert any(bool(((p == low) | (p == high)).any()) for p in after.values())  # clamped onto the edges


def test_ema_listed_before_clamp_is_refused(tmp_path):
    module = _Classifier()
    with pytest.raises(MisconfigurationException, match="list ClampPositions before"):
        _fit(tmp_path, module, [EMAWeightAveraging(decay=0.5), ClampPositions()], batches=1)


@pytest.mark.parametrize("clamp", [True, False], ids=["clamp-then-ema", "ema-alone"])
def test_ema_average_of_clamped_positions_stays_in_the_window(tmp_path, clamp):
    module = _Classifier(position_lr=HUGE_POSITION_LR)
    callbacks = ([ClampPositions()] if clamp else []) + [EMAWeightAveraging(decay=0.5)]
    _fit(tmp_path, module, callbacks, batches=2)
    # EMAWeightAveraging copies its average into the model at on_train_end
    outside = _outside_window(module.model)
    assert outside == 0.0 if clamp else outside > 1.0


def test_clamp_and_monitor_warn_without_dcls_layers(tmp_path):
    module = _Classifier()
    module.model = dcls_zoo.create_model("convnext_k7_atto", num_classes=10, in_chans=1, patch_size=2)
    with pytest.warns(UserWarning) as warnings:
        trainer = _fit(tmp_path, module, [ClampPositions(), PositionMonitor()], batches=1)
    messages = [str(warning.message) for warning in warnings]
    assert sum("has no DCLS layer; there is nothing to clamp" in m for m in messages) == 1
    assert sum("has no DCLS layer; there are no positions to monitor" in m for m in messages) == 1
    assert not (Path(trainer.log_dir) / "positions").exists()


def test_clamp_names_a_missing_model_attribute(tmp_path):
    with pytest.raises(MisconfigurationException, match="_Classifier has no attribute 'net'; pass model_attribute"):
        _fit(tmp_path, _Classifier(), [ClampPositions(model_attribute="net")], batches=1)


# --- SigmaSchedule ---------------------------------------------------------------------------------


class _WidthRecorder(Callback):
    """Records the effective widths the forward pass sees: at every batch start, after SigmaSchedule."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[torch.Tensor], bool]] = []  # (epoch, global step, widths, learned)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sigmas = [p for name, p in pl_module.model.named_parameters() if name.endswith(".SIG")]
        widths = [s.detach().abs() + GAUSS_OFFSET for s in sigmas]
        self.seen.append((trainer.current_epoch, trainer.global_step, widths, any(s.requires_grad for s in sigmas)))


def _linear(start: float, end: float, t: float) -> float:
    return start + (end - start) * min(t, 1.0)


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def test_sigma_schedule_per_epoch_linear(tmp_path):
    module = _Classifier(dcls_version="gauss")
    schedule, recorder = SigmaSchedule(start=2.0, end=0.5, end_epoch=2), _WidthRecorder()
    _fit(tmp_path, module, [schedule, recorder], epochs=4, batches=1)
    assert [epoch for epoch, *_ in recorder.seen] == [0, 1, 2, 3]
    for epoch, _, widths, learned in recorder.seen:
        expected = {0: 2.0, 1: 1.25, 2: 0.5, 3: 0.5}[epoch]  # end_epoch=2, then held at end
        assert expected == pytest.approx(_linear(2.0, 0.5, epoch / 2))
        for width in widths:
            torch.testing.assert_close(width, torch.full_like(width, expected))
        assert not learned
    # frozen only while the callback runs
    assert all(p.requires_grad for name, p in module.model.named_parameters() if name.endswith(".SIG"))


def test_sigma_schedule_per_step_cosine_with_accumulation(tmp_path):
    module = _Classifier(dcls_version="gauss")
    schedule, recorder = SigmaSchedule(start=1.5, end=0.3, end_epoch=1, interval="step", shape="cosine"), _WidthRecorder()
    # 3 batches per epoch, accumulating 2: the optimizer steps after batches 2 and 3 -> 2 steps per epoch
    _fit(tmp_path, module, [schedule, recorder], epochs=2, batches=3, accumulate_grad_batches=2)
    steps = [step for _, step, _, _ in recorder.seen]
    assert steps == [0, 0, 1, 2, 2, 3]
    for _, step, widths, learned in recorder.seen:
        expected = _cosine(1.5, 0.3, step / 2)  # end_epoch (1) * steps per epoch (2)
        for width in widths:
            torch.testing.assert_close(width, torch.full_like(width, expected))
        assert not learned
    assert schedule.width_at(0.5) == pytest.approx(0.9)  # half way down the cosine


def test_sigma_schedule_resumes_from_the_checkpoint_step(tmp_path):
    def schedule():
        return SigmaSchedule(start=1.5, end=0.5, end_epoch=2, interval="step")

    first = _fit(tmp_path, _Classifier(dcls_version="gauss"), [schedule()], epochs=1, batches=2)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    recorder = _WidthRecorder()
    # a fresh module starts at the schedule's start; the resumed run must continue from global step 2
    _fit(tmp_path, _Classifier(dcls_version="gauss"), [schedule(), recorder], epochs=2, batches=2,
         ckpt_path=tmp_path / "epoch1.ckpt")
    assert [step for _, step, _, _ in recorder.seen] == [2, 3]
    for _, step, widths, _ in recorder.seen:
        for width in widths:
            torch.testing.assert_close(width, torch.full_like(width, _linear(1.5, 0.5, step / 4)))


def test_sigma_schedule_writes_each_shared_sigma_once(tmp_path):
    module = _Classifier(dcls_version="gauss")
    schedule = SigmaSchedule(start=1.0, end=0.5, end_epoch=1)
    trainer = _fit(tmp_path, module, [schedule], batches=1)
    assert [group.name for group in schedule.groups] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert all(isinstance(group.owner, SharedPositions) for group in schedule.groups)
    versions = [group.SIG._version for group in schedule.groups]
    schedule.apply(trainer)
    assert [group.SIG._version for group in schedule.groups] == [v + 1 for v in versions]  # one write each


def test_sigma_schedule_per_layer_sigmas(tmp_path):
    module = _Classifier(dcls_version="gauss", dcls_share="layer")
    schedule, recorder = SigmaSchedule(start=1.0, end=0.5, end_epoch=1), _WidthRecorder()
    _fit(tmp_path, module, [schedule, recorder], epochs=2, batches=1)
    assert len(schedule.groups) == 12  # every block's layer owns its SIG
    for epoch, _, widths, _ in recorder.seen:
        assert len(widths) == 12
        for width in widths:
            torch.testing.assert_close(width, torch.full_like(width, [1.0, 0.5][epoch]))


def test_sigma_schedule_needs_layers_with_sigma(tmp_path):
    with pytest.raises(MisconfigurationException, match="has no DCLS layer with a width SIG"):
        _fit(tmp_path, _Classifier(), [SigmaSchedule(start=1.0, end=0.5, end_epoch=1)], batches=1)


def test_sigma_schedule_refuses_widths_below_the_offset(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"'gauss' elements.*cannot go below 0.27"):
        _fit(tmp_path, _Classifier(dcls_version="gauss"), [SigmaSchedule(start=1.0, end=0.2, end_epoch=1)], batches=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"start": 1.0, "end": 0.5, "end_epoch": 0}, "end_epoch must be an int >= 1"),
        ({"start": 0.0, "end": 0.5, "end_epoch": 1}, "start and end must be positive"),
        ({"start": 1.0, "end": 0.5, "end_epoch": 1, "interval": "batch"}, "interval must be 'epoch' or 'step'"),
        ({"start": 1.0, "end": 0.5, "end_epoch": 1, "shape": "exp"}, "shape must be 'linear' or 'cosine'"),
    ],
)
def test_sigma_schedule_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SigmaSchedule(**kwargs)


# --- position groups --------------------------------------------------------------------------------


def test_position_owners_name_stages_and_count_shared_positions_once():
    shared = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, patch_size=2)
    groups = position_owners(shared)
    assert [g.name for g in groups] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert [len(g.layers) for g in groups] == [2, 2, 6, 2]
    assert all(layer.P is g.P for g in groups for layer in g.layers)
    per_layer = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, patch_size=2,
                                      dcls_share="layer")
    names = [g.name for g in position_owners(per_layer)]
    assert len(names) == 12 and names[:2] == ["stages.0.blocks.0.conv_dw", "stages.0.blocks.1.conv_dw"]


# --- PositionMonitor --------------------------------------------------------------------------------


class _PositionSnapshots(Callback):
    """The test's own copies of every distinct ``P``, by state-dict name, when the monitor takes its snapshots."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        self.snapshots.append(_unique_positions(pl_module.model))

    def on_train_epoch_end(self, trainer, pl_module):
        self.snapshots.append(_unique_positions(pl_module.model))


def _stage(parameter_name: str) -> str:
    return parameter_name.split(".dcls_shared.")[0]  # "stages.0.dcls_shared.conv_dw.P" -> "stages.0"


def _expected_speeds(snapshots: list[dict[str, torch.Tensor]], every: int) -> dict[str, list[float]]:
    """Mean |P_now - P_before| per epoch between the snapshots ``every`` epochs apart."""
    taken = snapshots[::every]
    return {
        _stage(name): [float((later[name] - earlier[name]).abs().mean()) / every for earlier, later in zip(taken, taken[1:])]
        for name in snapshots[0]
    }


def _logged_speeds(log_dir: Path) -> dict[str, list[float]]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    prefix = "positions/speed/"
    columns = [column for column in rows[0] if column.startswith(prefix)]
    return {column[len(prefix):]: [float(row[column]) for row in rows if row[column]] for column in columns}


PICTURES = {"positions_hist.png", "positions_speed.png", "positions_spread.png", "kernels.png"}


def _assert_pngs(directory: Path, names: set[str]) -> None:
    assert {path.name for path in directory.iterdir()} == names
    for name in names:
        with Image.open(directory / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_position_monitor_pictures_speeds_and_shared_positions_once(tmp_path):
    module = _Classifier(position_lr=10.0)
    snapshots, monitor = _PositionSnapshots(), PositionMonitor()
    trainer = _fit(tmp_path, module, [ClampPositions(), snapshots, monitor], epochs=3, batches=2)
    log_dir = Path(trainer.log_dir)
    _assert_pngs(log_dir / "positions", PICTURES)
    expected = _expected_speeds(snapshots.snapshots, every=1)
    assert sorted(expected) == ["stages.0", "stages.1", "stages.2", "stages.3"]  # one per shared tensor
    logged = _logged_speeds(log_dir)
    assert sorted(logged) == sorted(expected)
    for stage, speeds in expected.items():
        assert min(speeds) > 0  # the positions did move
        assert logged[stage] == pytest.approx(speeds, rel=1e-5)
        assert [speed for _, speed in monitor.speeds[stage]] == pytest.approx(speeds, rel=1e-5)
    # histograms count every element of each shared tensor once (not once per block using it)
    positions = snapshots.snapshots[-1]
    for name, tensor in positions.items():
        history = monitor.histograms[_stage(name)]
        assert [epochs for epochs, _, _ in history] == [0, 1, 2, 3]
        counts = history[-1][1]
        assert [int(c.sum()) for c in counts] == [tensor[axis].numel() for axis in range(2)]


def test_position_monitor_every_n_epochs_sees_the_raw_weights_under_ema(tmp_path):
    module = _Classifier(position_lr=10.0)
    snapshots, monitor = _PositionSnapshots(), PositionMonitor(every_n_epochs=2)
    callbacks = [ClampPositions(), EMAWeightAveraging(decay=0.9), snapshots, monitor]
    trainer = _fit(tmp_path, module, callbacks, epochs=4, batches=2)
    _assert_pngs(Path(trainer.log_dir) / "positions", PICTURES)
    assert [epochs for epochs, _ in monitor.kernel_history["stages.0"]] == [0, 2, 4]
    expected = _expected_speeds(snapshots.snapshots, every=2)
    logged = _logged_speeds(Path(trainer.log_dir))
    for stage, speeds in expected.items():
        assert len(speeds) == 2 and logged[stage] == pytest.approx(speeds, rel=1e-5)
    # the model now holds the EMA average (copied in at on_train_end), unlike the last snapshot
    final = _unique_positions(module.model)
    assert all(not torch.allclose(final[name], p) for name, p in snapshots.snapshots[-1].items())


class _DrawLog(PositionMonitor):
    """A PositionMonitor that notes, at every drawing, the epochs of the record it draws."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drawn: list[list[int]] = []

    def _draw(self, trainer):
        self.drawn.append([epochs for epochs, _, _ in self.spreads["stages.0"]])
        super()._draw(trainer)


class _FailsInEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("the machine went away")


def test_position_monitor_draws_every_n_epochs_at_the_end_and_when_the_fit_fails(tmp_path):
    monitor = _DrawLog(draw_every_n_epochs=2)
    trainer = _fit(tmp_path / "whole", _Classifier(position_lr=10.0), [ClampPositions(), monitor], epochs=3, batches=1)
    # recorded after every epoch, drawn after epoch 2 and at the end (3), each time the whole record
    assert monitor.drawn == [[0, 1, 2], [0, 1, 2, 3]]
    _assert_pngs(Path(trainer.log_dir) / "positions", PICTURES)

    monitor = _DrawLog(draw_every_n_epochs=10, dirpath=tmp_path / "failed", kernels=False)
    with pytest.raises(RuntimeError, match="went away"):
        _fit(tmp_path / "failed_run", _Classifier(position_lr=10.0), [monitor, _FailsInEpoch(2)], epochs=5, batches=1)
    assert monitor.drawn == [[0, 1, 2]]  # the epochs it completed are drawn once, as it stops
    _assert_pngs(tmp_path / "failed", PICTURES - {"kernels.png"})

    # where the pictures cannot be written either (here: a file where their folder should be), the
    # fit's own error is the one raised, and the drawing's failure is a warning
    (tmp_path / "blocked").write_text("")
    monitor = PositionMonitor(dirpath=tmp_path / "blocked", draw_every_n_epochs=10, kernels=False)
    with pytest.warns(UserWarning, match="pictures of the stopped fit were not drawn"):
        with pytest.raises(RuntimeError, match="went away"):
            _fit(tmp_path / "blocked_run", _Classifier(position_lr=10.0), [monitor, _FailsInEpoch(1)], epochs=3,
                 batches=1)


def test_position_monitor_writes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    _fit(tmp_path, _Classifier(position_lr=10.0), [PositionMonitor(dirpath=tmp_path / "pictures")], batches=1,
         logger=logger)
    assert (tmp_path / "pictures" / "kernels.png").exists()
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"positions/stages.0/P0", "positions/stages.3/P1"} <= set(tags["histograms"])
    assert {"positions/histograms", "positions/kernels", "positions/spread"} <= set(tags["images"])
    assert "positions/speed/stages.2" in tags["scalars"]


def test_position_monitor_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs must be an int >= 1"):
        PositionMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="draw_every_n_epochs must be an int >= 1, got None"):
        PositionMonitor(draw_every_n_epochs=None)


class _RepulsiveClassifier(_Classifier):
    """As ``_Classifier``, with the schedule attribute ImageClassifier exposes for the marker."""

    repulsive_loss_start = 2


def test_position_monitor_records_and_logs_the_spread_of_each_stage(tmp_path):
    module = _RepulsiveClassifier(position_lr=10.0)
    snapshots, monitor = _PositionSnapshots(), PositionMonitor()
    trainer = _fit(tmp_path, module, [ClampPositions(), snapshots, monitor], epochs=3, batches=2)
    assert monitor.repulsive_start == 2
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for name in snapshots.snapshots[0]:
        stage = _stage(name)
        recorded = monitor.spreads[stage]
        assert [epochs for epochs, _, _ in recorded] == [0, 1, 2, 3]
        for (epochs, std_px, ratio), positions in zip(recorded, snapshots.snapshots):
            # independent reference: numpy's population std per axis, a uniform cover's (w - 1) / sqrt(12)
            values = positions[name].double().numpy().reshape(2, -1)
            deviations = values.std(axis=1)
            assert std_px == pytest.approx(deviations.mean(), rel=1e-9)
            assert ratio == pytest.approx((deviations / ((WINDOW - 1) / math.sqrt(12))).mean(), rel=1e-9)
        logged = [float(row[f"positions/spread/{stage}"]) for row in rows if row.get(f"positions/spread/{stage}")]
        assert logged == pytest.approx([ratio for _, _, ratio in recorded[1:]], rel=1e-6)  # after each epoch


def test_position_spread_is_zero_for_one_point_and_one_for_a_uniform_cover():
    from dcls_zoo.figures import position_spread

    assert position_spread(torch.zeros(2, 4, 1, 7), (17, 9)) == (0.0, 0.0)
    generator = torch.Generator().manual_seed(0)
    uniform = torch.stack([(torch.rand(200_000, generator=generator) - 0.5) * (w - 1) for w in (17, 9)])
    std_px, ratio = position_spread(uniform, (17, 9))
    assert ratio == pytest.approx(1.0, abs=0.01)
    assert std_px == pytest.approx((16 + 8) / 2 / math.sqrt(12), rel=0.01)


def _labels(ax) -> tuple[str, str]:
    return ax.get_xlabel(), ax.get_ylabel()


def test_kernel_heatmaps_share_one_colour_scale_per_group_across_epochs():
    from dcls_zoo.figures import plot_kernels

    generator = torch.Generator().manual_seed(0)
    history = {
        "stages.0": [(epoch, torch.rand(17, 17, generator=generator).numpy() * (epoch + 1)) for epoch in range(4)],
        "stages.1": [(epoch, torch.rand(9, 9, generator=generator).numpy() * 0.1) for epoch in range(4)],
    }
    figure = plot_kernels(history)
    images = {ax.get_title(): ax.images[0] for ax in figure.axes if ax.images}
    assert len(images) == 8  # every snapshot, in a column per group
    for name, records in history.items():
        peak = max(float(kernel.max()) for _, kernel in records)
        for epochs, kernel in records:
            image = images[f"{name}, epoch {epochs}"]
            assert (image.norm.vmin, image.norm.vmax) == (0.0, pytest.approx(peak))
            # window coordinates: pixels from the centre, row 0 at the top
            half = kernel.shape[0] // 2
            assert image.get_extent() == [-half - 0.5, half + 0.5, half + 0.5, -half - 0.5]
    bars = [ax for ax in figure.axes if ax.get_ylabel() == "mean |weight|"]
    assert len(bars) == 2  # one colour bar per group
    assert all(_labels(ax) == ("x (px)", "y (px)") for ax in figure.axes if ax.images)


def test_spread_and_speed_curves_mark_the_repulsive_loss_and_label_their_axes():
    from dcls_zoo.figures import plot_speeds, plot_spreads

    spreads = {"stages.0": [(0, 1.0, 0.2), (1, 1.5, 0.3), (2, 2.5, 0.5)], "stages.1": [(0, 0.5, 0.2), (1, 0.7, 0.3)]}
    figure = plot_spreads(spreads, repulsive_start=1)
    panels = [ax for ax in figure.axes]
    assert [_labels(ax) for ax in panels] == [("completed epochs", "std of positions (px)"),
                                               ("completed epochs", "std / std of a uniform cover")]
    for ax, column in zip(panels, (1, 2)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["stages.0"].get_ydata()) == [p[column] for p in spreads["stages.0"]]
        assert list(lines["repulsive loss starts"].get_xdata()) == [1, 1]
    speeds = plot_speeds({"stages.0": [(1, 0.3), (2, 0.2)]}, repulsive_start=2)
    lines = {line.get_label(): line for line in speeds.axes[0].get_lines()}
    assert list(lines["repulsive loss starts"].get_xdata()) == [2, 2]
    assert "repulsive loss starts" not in {artist.get_label() for artist in plot_spreads(spreads).axes[0].get_lines()}


def test_position_histograms_have_an_epoch_colour_bar():
    from dcls_zoo.figures import histogram_edges, plot_position_histograms

    edges = histogram_edges(17, 2)
    snapshots = [(epochs, [torch.ones(len(edges) - 1).numpy()] * 2, [edges, edges]) for epochs in (0, 3, 6)]
    figure = plot_position_histograms({"stages.0": snapshots}, {"stages.0": ["P[0] (y)", "P[1] (x)"]})
    bar = [ax for ax in figure.axes if ax.get_ylabel() == "completed epochs"]
    assert len(bar) == 1 and bar[0].get_ylim() == (0.0, 6.0)
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["stages.0: P[0] (y)", "stages.0: P[1] (x)"]
    assert all(ax.get_xlabel() == "position (px from the window centre)" for ax in panels)
    assert all(float(tick).is_integer() for tick in bar[0].get_yticks())  # epochs are whole
