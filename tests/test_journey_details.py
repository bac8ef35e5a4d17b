"""The small things on the train -> export -> Hub path: quiet retries, a corrupt image, a dead
checkpoint link, checkpoint names, figures that read, export cards as complete as fit-time ones."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import QUICKSTART, class_folders, point_hub_client_at

import dcls_zoo
from dcls_zoo.errors import HubUnreachableError
from dcls_zoo.figures import plot_position_scatter, plot_speeds, plot_spreads, render
from lightning_modules.commands.main import main
from lightning_modules.comparison import Arm, RunResult, plot_comparison
from lightning_modules.data.datamodules import ImageFolderDataModule, UnreadableImageError, load_image

TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--data.batch_size=16",
        "--model.warmup_epochs=0"]


def test_an_unreachable_hub_is_one_message_without_retry_chatter(tmp_path, monkeypatch, caplog):
    point_hub_client_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "hf")  # nothing listens on port 9
    monkeypatch.setenv("DCLS_ZOO_HUB_TIMEOUT", "1")
    with caplog.at_level(logging.DEBUG), pytest.raises(HubUnreachableError, match="could not reach the Hugging Face Hub"):
        dcls_zoo.create_model("convnext_dcls_tiny", pretrained=True)
    chatter = [r.getMessage() for r in caplog.records if "Retrying in" in r.getMessage() or "thrown while" in r.getMessage()]
    assert chatter == []


def _class_folders(root: Path, corrupt: bool) -> Path:
    class_folders(root)
    if corrupt:
        bad = next((root / "train").glob("*/3.jpg"))
        good = bad.read_bytes()
        bad.write_bytes(good[: len(good) // 3])  # a cut download
    return root


def test_a_corrupt_image_is_named(tmp_path):
    folders = _class_folders(tmp_path / "data", corrupt=True)
    bad = next((folders / "train").glob("*/3.jpg"))
    with pytest.raises(UnreadableImageError, match=rf"{bad} is not a readable image .*remove or replace it"):
        load_image(str(bad))
    assert load_image(str(bad.with_name("2.jpg"))).mode == "RGB"


@pytest.mark.slow
def test_a_corrupt_image_stops_a_fit_in_one_line(tmp_path):
    folders = _class_folders(tmp_path / "data", corrupt=True)
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "fit", "-c", QUICKSTART, *TINY,
         "--data=lightning_modules.data.ImageFolderDataModule", f"--data.root={folders}", "--data.image_size=32",
         "--data.num_workers=1", "--trainer.limit_train_batches=4", "--export_after_fit=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    bad = next((folders / "train").glob("*/3.jpg"))
    assert len(errors) == 1 and errors[0].startswith(f"dcls-zoo fit: error: {bad} is not a readable image ("), errors
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


def test_loaders_start_no_more_workers_than_cores(tmp_path):
    data = ImageFolderDataModule(str(_class_folders(tmp_path / "data", corrupt=False)), batch_size=4,
                                 num_workers=64, image_size=32)
    assert data.train_dataloader().num_workers == len(os.sched_getaffinity(0))


def test_a_dead_checkpoint_link_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["version"] = 0
    (tmp_path / "version0.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "logs" / "quickstart" / "version_0"
    run.mkdir(parents=True)
    (run / "checkpoints").symlink_to(tmp_path / "unmounted" / "disk")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(tmp_path / "version0.yaml"), *TINY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints'} is a symbolic link to {tmp_path / 'unmounted' / 'disk'}, which does not exist" in err
    assert "FileExistsError" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ figures


def _extent(artist, figure):
    return artist.get_window_extent(figure.canvas.get_renderer())


def test_the_spread_plot_keeps_its_labels_apart_and_marks_only_reached_epochs():
    spreads = {"stages.0": [(0, 4.9, 1.0), (1, 5.0, 1.02)], "stages.1": [(0, 4.3, 1.0), (1, 4.4, 1.01)]}
    figure = plot_spreads(spreads, repulsive_start=2)  # a 1-epoch run never reaches the start at epoch 2
    render(figure)
    left, right = figure.axes[:2]
    assert _extent(right.yaxis.label, figure).x0 > _extent(left, figure).x1  # the right label clears the left panel
    assert not [line for line in left.lines if line.get_linestyle() == "--"]
    assert [tick for tick in left.get_xticks()] == [0, 1]
    figure = plot_spreads(spreads, repulsive_start=1)
    assert len([line for line in figure.axes[0].lines if line.get_linestyle() == "--"]) == 1
    speeds = plot_speeds({"stages.0": [(1, 0.1)]})
    assert list(speeds.axes[0].get_xticks()) == [1]  # one epoch: one tick, not 0.945 ... 1.050


def test_the_positions_picture_shows_every_element_of_every_group():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, stem="small", stem_stride=2,
                                  dcls_kernel_size=[17, 15, 7, 3], dcls_position_init="uniform")
    figure = plot_position_scatter(model)
    images = [ax.images[0] for ax in figure.axes if ax.images]
    owners = dcls_zoo.position_owners(model)
    assert len(images) == len(owners) == 4
    for image, owner in zip(images, owners):
        assert np.asarray(image.get_array()).sum() == owner.P[0].numel()  # every element counted once
        assert image.get_clim()[1] == np.asarray(image.get_array()).max()  # each group on its own scale


def test_the_comparison_plot_of_one_epoch_has_one_epoch_tick():
    arms = [Arm("dcls", "DCLS", "convnext_dcls_atto"), Arm("k7", "7x7", "convnext_k7_atto")]
    results = [RunResult(arm.name, seed, 0.8 + 0.01 * seed, 0.8, 60.0, 1000, 10_000, ((0, 0.8),))
               for arm in arms for seed in (0, 1)]
    figure = plot_comparison(arms, results, "one epoch")
    render(figure)
    curve = next(ax for ax in figure.axes if ax.get_xlabel() == "completed epochs")
    assert list(curve.get_xticks()) == [1]


# ------------------------------------------------------------------------------------------ cards


def test_dclsify_without_depthwise_convolutions_suggests_all_targets():
    from timm.models.resnet import BasicBlock, ResNet

    with pytest.raises(ValueError, match="targets='all' converts every k x k convolution"):
        dcls_zoo.dclsify(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10))


@pytest.mark.slow
def test_an_exported_checkpoint_has_the_fit_time_cards_sections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", QUICKSTART, *TINY, "--export_after_fit=true"]) == 0
    (run,) = (tmp_path / "logs" / "quickstart").glob("version_*")
    (best,) = (run / "checkpoints").glob("best-epoch000-val_top1=0.*.ckpt")  # "val_top1", never read as "top-10"
    fit_card = (run / "export" / "README.md").read_text()
    assert main(["export", str(best), "--out", str(tmp_path / "standalone")]) == 0
    card = (tmp_path / "standalone" / "README.md").read_text()
    for card_text in (fit_card, card):
        for section in ("## Dataset", "## Training", "## Limitations", "## Metrics"):
            assert section in card_text, section
        assert "| window (dilated kernel size) | 17x17, 15x15, 7x7, 3x3 |" in card_text  # stage order
        assert "| optimizer | AdamW, peak learning rate 0.002" in card_text
    assert best.name in card and "EMA weights" in card
