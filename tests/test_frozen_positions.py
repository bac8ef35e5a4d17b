"""Frozen DCLS positions (``ImageClassifier(freeze_positions=True)``) and how far positions moved
(``dcls_zoo.positions.mean_position_shift``): the control arm of "do learned spacings help?"."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import QUICKSTART
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from safetensors.torch import load_file

import dcls_zoo
from dcls_zoo.positions import mean_position_shift, position_owners, position_snapshot
from lightning_modules import ImageClassifier
from lightning_modules.commands.main import main
from lightning_modules.method import ClampPositions, SigmaSchedule
from lightning_modules.module import INITIAL_POSITIONS_KEY
from lightning_modules.optim import parameter_groups

NARROW = {"stem": "small", "stem_stride": 2, "dims": [8, 16, 24, 32], "dcls_kernel_size": [17, 15, 7, 3],
          "dcls_position_init": "uniform"}
# the quickstart recipe (EMA, clamp, repulsive loss from epoch 1, position plots), made small
SHORT_RUN = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
             "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--model.warmup_epochs=0.5",
             "--model.repulsive_loss_after_epoch=0", "--data.batch_size=32"]


def _classifier(**kwargs) -> ImageClassifier:
    return ImageClassifier("convnext_dcls_atto", num_classes=10, in_chans=1, model_kwargs=NARROW, **kwargs)


def _positions(state: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The ``P``/``SIG`` tensors of a state dict, by key without ``prefix``."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k.endswith((".P", ".SIG"))}


def test_frozen_positions_leave_the_optimizer_and_the_repulsive_loss():
    torch.manual_seed(0)
    module = _classifier(freeze_positions=True, repulsive_loss_after_epoch=0)
    positions = {id(t) for t in module.model.parameters() if not t.requires_grad}
    assert positions == {id(g.P) for g in _groups(module)}  # bilinear: P only, every stage's
    groups = parameter_groups(module.model, 50.0)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in module.model.parameters() if p.requires_grad)
    assert module.repulsive_loss_start is None and not module.repulsive_loss_active
    learned = _classifier(repulsive_loss_after_epoch=0)
    assert [g["name"] for g in parameter_groups(learned.model)] == ["decay", "no_decay", "positions"]
    assert learned.repulsive_loss_start == 1


def _groups(module: ImageClassifier):
    from dcls_zoo.positions import position_owners

    return position_owners(module.model)


def test_freezing_a_network_without_positions_is_refused():
    with pytest.raises(ValueError, match="model.freeze_positions: convnext_k7_atto has no DCLS positions"):
        ImageClassifier("convnext_k7_atto", num_classes=10, in_chans=1, model_kwargs={"stem": "small"},
                        freeze_positions=True)


@pytest.mark.parametrize("frozen", [True, False])
def test_clamp_positions_leaves_frozen_positions_alone(frozen):
    module = _classifier(freeze_positions=frozen)
    positions = _groups(module)[0].P
    with torch.no_grad():
        positions.fill_(30.0)  # outside the 17 px window of stage 0
    ClampPositions().on_train_batch_end(None, module, None, None, 0)
    assert torch.all(positions == (30.0 if frozen else 8.0))


def test_a_sigma_schedule_is_refused_with_frozen_positions():
    module = ImageClassifier("convnext_dcls_atto", num_classes=10, in_chans=1, freeze_positions=True,
                             model_kwargs={**NARROW, "dcls_version": "gauss"})
    with pytest.raises(MisconfigurationException, match="SigmaSchedule writes the DCLS widths SIG"):
        SigmaSchedule(1.0, 0.5, 2).setup(None, module, "fit")


def test_mean_position_shift_is_the_mean_absolute_change_per_group():
    torch.manual_seed(0)
    module = _classifier()
    start = position_snapshot(module.model)
    assert list(start) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    steps = {"stages.0": 1.5, "stages.1": -0.25, "stages.2": 0.0, "stages.3": 0.0}
    with torch.no_grad():
        for group in _groups(module):
            group.P.add_(steps[group.name])
            group.P[0, 0, 0, 0] += 4.0  # one coordinate moves further: the mean counts it once
    shifts = mean_position_shift(start, module.model)
    for group in _groups(module):
        count = group.P.numel()
        assert shifts[group.name] == pytest.approx(abs(steps[group.name]) + (abs(steps[group.name] + 4.0)
                                                                            - abs(steps[group.name])) / count)
    with pytest.raises(ValueError, match="group 'stages.3' has no entry"):
        mean_position_shift({k: v for k, v in start.items() if k != "stages.3"}, module.model)


def test_checkpoints_carry_the_initial_positions():
    pl.seed_everything(0)
    first = _classifier()
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    pl.seed_everything(1)  # a resumed run may be built with other positions: the checkpoint's start wins
    resumed = _classifier()
    assert not torch.equal(resumed.initial_positions["stages.0"], first.initial_positions["stages.0"])
    resumed.on_load_checkpoint(checkpoint)
    for name, tensor in first.initial_positions.items():
        assert torch.equal(resumed.initial_positions[name], tensor)


def _fresh(seed: int, **kwargs) -> ImageClassifier:
    """The quickstart's classifier as the CLI builds it after ``seed_everything(seed)``."""
    import yaml

    config = yaml.safe_load(Path(QUICKSTART).read_text())["model"]
    pl.seed_everything(seed)
    return ImageClassifier(config["arch"], num_classes=10, in_chans=1, model_kwargs=config["model_kwargs"], **kwargs)


def _run(cwd: Path) -> Path:
    (run,) = (cwd / "logs" / "quickstart").iterdir()
    return run


@pytest.mark.slow
def test_a_frozen_run_keeps_its_positions_bit_for_bit_and_trains_the_rest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", QUICKSTART, *SHORT_RUN, "--model.freeze_positions=true"]) == 0
    run = _run(tmp_path)
    start = _fresh(0)  # the network the run started from: the same seed builds the same one
    initial = _positions({f"model.{k}": v for k, v in start.model.state_dict().items()})
    assert len(initial) == 4
    summary = json.loads((run / "summary.json").read_text())
    best = torch.load(summary["best_checkpoint"], weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for name, state in (("EMA of best", best["state_dict"]), ("raw of best", best["current_model_state"]),
                        ("EMA of last", last["state_dict"])):
        got = _positions(state)
        assert got.keys() == initial.keys(), name
        assert all(torch.equal(got[k], initial[k]) for k in initial), name
    exported = _positions(load_file(Path(summary["export_dir"]) / "model.safetensors"), prefix="")
    assert all(torch.equal(exported[k], initial[k]) for k in initial)
    for key, value in start.model.state_dict().items():  # everything else trained, in the average too
        if key.endswith(".conv_dw.weight") or key == "head.fc.weight":
            assert not torch.equal(best["state_dict"][f"model.{key}"], value), key
    assert [g["name"] for g in best["optimizer_states"][0]["param_groups"]] == ["decay", "no_decay"]
    assert all(torch.equal(best[INITIAL_POSITIONS_KEY][g], start.initial_positions[g]) for g in start.initial_positions)
    assert summary["positions_frozen"] is True
    assert summary["position_shift_px"] == {f"stages.{i}": 0.0 for i in range(4)}
    card = (Path(summary["export_dir"]) / "README.md").read_text()
    assert "DCLS positions and widths frozen at their initial values (not trained, not clamped)" in card
    assert "repulsive position loss" not in card and "positions clamped" not in card
    assert "| positions | frozen at their initial values; mean absolute shift from the initial positions" in card


@pytest.mark.slow
def test_a_resumed_run_measures_from_the_positions_it_first_started_from(tmp_path, monkeypatch):
    """The resumed part's network is built with other positions (here mirrored), then overwritten by
    the checkpoint's: the summary still measures from the first part's start, which the checkpoint
    carries, never from the rebuilt network."""
    monkeypatch.chdir(tmp_path)
    common = ["fit", "-c", QUICKSTART, *SHORT_RUN, "--model.position_lr_scale=50", "--export_after_fit=false"]
    assert main([*common, "--trainer.callbacks+=run_helpers.StopAfterEpoch"]) == 0
    start, build = _fresh(0), dcls_zoo.create_model

    def mirrored_positions(*args, **kwargs):
        model = build(*args, **kwargs)
        with torch.no_grad():
            for holder in position_owners(model):
                holder.owner.P.neg_()
        return model

    monkeypatch.setattr(dcls_zoo, "create_model", mirrored_positions)
    assert main([*common, "--ckpt_path=last"]) == 0
    summary = json.loads((_run(tmp_path) / "summary.json").read_text())
    assert "resumed_from" in summary and summary["positions_frozen"] is False
    rebuilt = _fresh(0)  # what the resumed part built before the checkpoint's weights replaced it
    assert not torch.equal(start.initial_positions["stages.0"], rebuilt.initial_positions["stages.0"])
    tested = torch.load(summary["best_checkpoint"], weights_only=True)["state_dict"]
    for index in range(4):
        moved = tested[f"model.stages.{index}.dcls_shared.conv_dw.P"] - start.initial_positions[f"stages.{index}"]
        assert summary["position_shift_px"][f"stages.{index}"] == pytest.approx(moved.abs().mean().item(), abs=1e-4)
    assert summary["position_shift_px"]["stages.0"] > 0.05  # 50x: the positions moved in 6 steps
