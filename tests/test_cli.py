"""The ``dcls-zoo`` command and the README's Quick start contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import NO_PROGRESS_BAR, QUICKSTART, ROOT

from lightning_modules.commands.main import main


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    main_job, test_command = commands
    assert "dcls-zoo" in main_job and "pytest" in test_command
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines()
    # the README's command leaves the slow tests out; CI runs them as well
    assert '-m "not slow"' in test_command and "python -m pytest -m slow" in ci_script.splitlines()


def test_version_names_the_package_and_its_stack(capsys):
    import dcls_zoo

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"dcls-zoo {dcls_zoo.__version__} (torch ")


def test_unknown_command_is_rejected(capsys):
    assert main(["teleport"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'teleport'" in error and "fit" in error and "export" in error


# ------------------------------------------------------------------ one tool, shipped configs

CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.yaml"))
PRESETS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs" / "presets").glob("*.yaml"))
IMAGE_FOLDER_CONFIGS = [c for c in CONFIGS if "ImageFolderDataModule" in (ROOT / c).read_text()]


def test_help_lists_training_and_project_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "export", "push", "convert", "benchmark"):
        assert re.search(rf"^  {name}\s", out, flags=re.M), name


def test_shipped_configs_are_the_expected_set():
    assert "configs/quickstart.yaml" in CONFIGS and "configs/finetune.yaml" in CONFIGS
    assert {f"configs/convnext_dcls_{s}_in1k.yaml" for s in ("tiny", "small", "base")} <= set(CONFIGS)
    assert {f"configs/presets/{p}.yaml" for p in ("cpu", "gpu_bf16", "ddp", "multinode")} == set(PRESETS)


def _print_config(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(["fit", *args, "--print_config"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS)
def test_print_config_round_trips(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    printed = _print_config(["-c", config], capsys)
    (tmp_path / "printed.yaml").write_text(printed)
    assert _print_config(["-c", str(tmp_path / "printed.yaml")], capsys) == printed
    assert "num_classes" not in printed.split("\nmodel:", 1)[1].split("\ndata:", 1)[0]  # linked from the data


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_a_training_config_serves_the_evaluation_subcommands(subcommand, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as info:
        main([subcommand, "-c", "configs/quickstart.yaml", "--print_config"])
    assert info.value.code == 0 and "FashionMNISTDataModule" in capsys.readouterr().out


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_stack_on_a_recipe(preset, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    import yaml

    printed = yaml.safe_load(_print_config(["-c", "configs/convnext_dcls_tiny_in1k.yaml", "-c", preset], capsys))
    for key, value in yaml.safe_load((ROOT / preset).read_text())["trainer"].items():
        assert printed["trainer"][key] == value, key
    assert printed["model"]["arch"] == "convnext_dcls_tiny"  # the recipe survives the stacking


def _fast_dev_run_args(config: str, tmp_path: Path) -> list[str]:
    args = ["fit", "-c", str(ROOT / config), "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--trainer.precision=32-true", NO_PROGRESS_BAR]
    if config in IMAGE_FOLDER_CONFIGS:  # ImageNet is not here: the recipe runs on synthetic images
        args += ["--data=SyntheticDataModule", "--data.image_size=64", "--data.batch_size=2"]
    if "finetune" in config:  # a local export stands in for the Hub weights
        import dcls_zoo

        export = tmp_path / "pretrained"
        dcls_zoo.save_pretrained(dcls_zoo.create_model("convnext_dcls_tiny", num_classes=7), export)
        args += [f"--model.pretrained={export}"]
    return args


@pytest.mark.parametrize(
    "config", [pytest.param(c, marks=pytest.mark.slow) if c in IMAGE_FOLDER_CONFIGS else c for c in CONFIGS]
)
def test_fast_dev_run_on_every_config(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(_fast_dev_run_args(config, tmp_path)) == 0
    out = capsys.readouterr()
    assert "dcls-zoo fit summary" in out.out + out.err or "test_after_fit" not in (ROOT / config).read_text()


def test_missing_data_directory_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", QUICKSTART, "--data.data_dir=/no/such/fashion"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "data_dir" in err and "/no/such/fashion" in err


def test_bad_model_value_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", QUICKSTART, "--model.warmup_epochs=-2"])
    assert info.value.code == 2
    assert "model.warmup_epochs must be >= 0, got -2" in capsys.readouterr().err


def test_non_finite_loss_stops_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "-c", QUICKSTART, "--trainer.fast_dev_run=2",
                 NO_PROGRESS_BAR, "--data=SyntheticDataModule", "--data.noise=.inf"])
    assert code == 1
    assert "stopped: the training loss is nan" in capsys.readouterr().err


def test_benchmark_command_lists_the_scripts(capsys):
    assert main(["benchmark", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err
    assert "construction" in err and "model_throughput" in err and "common" not in err.split("available:")[1]


def test_help_piped_into_a_reader_that_stops_early_is_no_error():
    """``dcls-zoo --help | head -1``: the closed pipe is not a traceback."""
    result = subprocess.run(f"{sys.executable} -m lightning_modules --help | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("usage: dcls-zoo COMMAND") and "Traceback" not in result.stderr
