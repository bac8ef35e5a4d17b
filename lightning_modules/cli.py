"""The ``dcls-zoo`` command: Lightning's ``fit``/``validate``/``test``/``predict`` plus the project's jobs.

    dcls-zoo fit -c configs/quickstart.yaml             # train (LightningCLI; --help for every option)
    dcls-zoo fit -c configs/convnext_dcls_tiny_in1k.yaml -c configs/presets/gpu_bf16.yaml
    dcls-zoo export CKPT --out DIR                      # Lightning checkpoint -> Hub-format export
    dcls-zoo push DIR_OR_CKPT --repo-id ORG/NAME        # upload to the Hugging Face Hub
    dcls-zoo convert FILE --arch ARCH --out DIR         # the authors' released checkpoints
    dcls-zoo benchmark NAME [ARGS]                      # the scripts in benchmarks/ (source checkout)

The project's own commands are registered in :data:`COMMANDS` (name -> (help, add_arguments, run));
everything else goes to :class:`DclsCLI`. ``python -m lightning_modules`` is the same tool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning
import timm
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from dcls_zoo.version import __version__
from dcls_zoo.weights.fetch import PretrainedWeightsError

from . import convert_command, export_command, push_command
from .checkpoints import load_checkpoint, select_weights
from .module import ImageClassifier, NonFiniteLossError, restoring_from_checkpoint
from .predictions import PredictionsCSV

__all__ = ["COMMANDS", "DclsCLI", "cli_main", "main"]

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a script of benchmarks/ without .py (construction, conv_layer, model_throughput)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (try --help)")


def _run_benchmark(args: argparse.Namespace) -> int:
    script = BENCHMARKS_DIR / f"{args.name}.py"
    if not BENCHMARKS_DIR.is_dir():
        print(f"dcls-zoo benchmark: error: {BENCHMARKS_DIR} is missing; benchmarks ship with the source checkout", file=sys.stderr)
        return 1
    if not script.is_file() or args.name == "common":
        names = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if p.stem != "common")
        print(f"dcls-zoo benchmark: error: no benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, str(script), *args.args])


COMMANDS: dict[str, Command] = {
    "export": (
        "write a Lightning checkpoint as a Hub-format export directory (safetensors + config + model card)",
        export_command.add_arguments,
        export_command.run,
    ),
    "push": (
        "upload an export directory or a Lightning checkpoint to the Hugging Face Hub (safetensors + model card)",
        push_command.add_arguments,
        push_command.run,
    ),
    "convert": (
        "convert an authors' ConvNeXt-dcls checkpoint (Zenodo .pth) into a dcls-zoo export",
        convert_command.add_arguments,
        convert_command.run,
    ),
    "benchmark": ("run a benchmark script of benchmarks/ (prints Markdown tables)", _add_benchmark_arguments, _run_benchmark),
}

LIGHTNING_COMMANDS = {
    "fit": "train (and validate) a model: dcls-zoo fit -c configs/quickstart.yaml",
    "validate": "evaluate on the validation set (--ckpt_path to pick the weights)",
    "test": "evaluate on the test set (--ckpt_path to pick the weights)",
    "predict": "predict with a model (--ckpt_path: the weights); writes <log_dir>/predictions.csv with named top-5",
}


class DclsCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` and any DataModule.

    - ``num_classes`` and ``in_chans`` come from the DataModule (``data.num_classes``, ``data.in_chans``).
    - ``fit`` takes ``--test_after_fit`` (test the best checkpoint) and ``--export_after_fit``
      (write it as a Hub export under the run's log directory), then prints a summary and writes
      ``summary.json`` beside the logs.
    - A value the model or the data reject (a missing data directory, a negative rate) is reported as
      a command-line error naming it, before any training.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        # Options of the job around trainer.fit. Every subcommand accepts them, so that one config
        # serves `fit` and `test`/`validate`/`predict` alike; only `fit` acts on them.
        parser.add_argument("--test_after_fit", type=bool, default=False, help="fit only: test the best checkpoint")
        parser.add_argument(
            "--export_after_fit", type=bool, default=False, help="fit only: export the best checkpoint to <log_dir>/export"
        )

    # Lightning's special --ckpt_path values (resolved by the Trainer, not files).
    _CKPT_PATH_NAMES = ("last", "best", "hpc")

    def _fail(self, message: str) -> NoReturn:
        """A wrong value: one line that leads with it (exit 2), not the argument parser's usage dump."""
        subcommand = self.config.get("subcommand") if getattr(self, "config", None) else None
        command = f"dcls-zoo {subcommand}" if subcommand else "dcls-zoo"
        print(f"{command}: error: {message}\n({command} --help lists the options)", file=sys.stderr)
        raise SystemExit(2)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters here with a bare torch.load, which
        # answers a truncated file with an IndexError: check it with the safe loader first, its
        # tensors mapped rather than read (the Trainer reads the file again to restore it).
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in self._CKPT_PATH_NAMES and not str(ckpt_path).startswith("registry"):
            try:
                load_checkpoint(ckpt_path, mmap=True)
            except ValueError as error:
                self._fail(f"--ckpt_path: {error}")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        # With --ckpt_path the weights come from the checkpoint (Lightning applies its saved
        # hyper-parameters to the config): build the model without fetching any.
        restoring = restoring_from_checkpoint() if config and config.get("ckpt_path") else contextlib.nullcontext()
        try:
            with restoring:
                super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError, PretrainedWeightsError) as error:
            # PretrainedWeightsError: weights that cannot be fetched (no Hub, no such tag, a bad file).
            self._fail(_first_cause(error))
        except MisconfigurationException as error:  # the Trainer's own argument checks
            self._fail(f"trainer: {error}")
        self._check_before_running()

    def _check_before_running(self) -> None:
        """Values that would only fail mid-run, checked now: the optimizer's arguments (built once
        on a dummy parameter) and mixup's even batches."""
        injected = getattr(self.model, "_injected", None)
        if injected is not None:
            try:
                injected.optimizer([torch.nn.Parameter(torch.zeros(1))])
            except (ValueError, TypeError) as error:
                self._fail(f"model.optimizer: {error} (--model.optimizer.init_args.*)")
        batch_size = getattr(self.datamodule, "batch_size", None)
        if getattr(self.model, "mixup", None) is not None and isinstance(batch_size, int) and batch_size % 2:
            self._fail(
                f"data batch_size={batch_size} with mixup/cutmix: timm's Mixup mixes each batch with its reverse and "
                "needs an even batch size; pass an even --data.init_args.batch_size (or --model.mixup_alpha 0 "
                "--model.cutmix_alpha 0)"
            )

    def before_predict(self) -> None:
        """Predictions need weights, and go to a file: refuse random weights, add the CSV writer."""
        config = self.config[self.subcommand]
        if not config.get("ckpt_path") and not getattr(self.model.hparams, "pretrained", None):
            self._fail(
                "predict needs weights: pass --ckpt_path <a .ckpt> (or --model.pretrained <tag | export dir | .ckpt>); "
                "without them the model would predict with random weights"
            )
        if not any(isinstance(callback, PredictionsCSV) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionsCSV())

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        config = self.config_init[self.subcommand]
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, here
        summary: dict[str, Any] = {
            "arch": self.model.hparams.arch,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "fit_seconds": round(time.perf_counter() - self._fit_started, 1),
            "log_dir": log_dir,
        }
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "") or ""
        if best:
            summary["best_checkpoint"] = best
            if getattr(callback, "best_model_score", None) is not None:
                summary[f"best_{callback.monitor}"] = round(float(callback.best_model_score), 4)
        if config.get("test_after_fit"):
            if best:
                # Load the weights ourselves: trainer.test(ckpt_path=...) right after fit lets an EMA
                # callback, still set up, put the checkpoint's raw weights back instead of the averaged
                # ones the checkpoint was selected by.
                state, summary["tested_weights"] = select_weights(load_checkpoint(best))
                self.model.load_state_dict(state)
            results = trainer.test(self.model, datamodule=self.datamodule)
            summary.update({k: round(float(v), 4) for k, v in (results[0] if results else {}).items()})
        if config.get("export_after_fit") and trainer.is_global_zero:
            if best:
                summary["export_dir"] = str(self._export(best, summary, Path(log_dir or trainer.default_root_dir)))
            else:  # fast_dev_run, or no ModelCheckpoint callback
                summary["export_dir"] = "skipped: the run wrote no checkpoint"
        if trainer.is_global_zero:
            _print_summary(summary)
            if log_dir:
                Path(log_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def _export(self, checkpoint: str, summary: dict[str, Any], run_dir: Path) -> Path:
        data = self.datamodule
        metrics = {k: v for k, v in summary.items() if k.startswith(("test/", "best_val"))}
        card = {"metrics": metrics, "dataset": getattr(data, "hub_dataset", None)}
        directory, _ = export_command.export_checkpoint(
            checkpoint,
            run_dir / "export",
            label_names=getattr(data, "class_names", None),
            data_config=data.data_config() if hasattr(data, "data_config") else None,
            model_card={k: v for k, v in card.items() if v},
        )
        return directory


def _first_cause(error: BaseException) -> str:
    """The message of the error a class raised, without jsonargparse's wrapping: a value rejected
    inside a ``class_path`` comes back as "Does not validate against any of the Union subtypes"
    with the real message among its ``  - `` lines."""
    text = str(error)
    if "Union subtypes" not in text:
        return text
    causes = [line[4:] for line in text.splitlines() if line.startswith("  - ") and not line.startswith("  - Expected a ")]
    return "\n".join(causes) or text


def _print_summary(summary: dict[str, Any]) -> None:
    """The run's outcome, on stdout (it is the job's result, not a log line)."""
    width = max(len(key) for key in summary)
    lines = ["", "dcls-zoo fit summary", "-" * 20] + [f"{key:<{width}}  {value}" for key, value in summary.items()]
    print("\n".join(lines), flush=True)


def cli_main(args: ArgsType = None) -> DclsCLI:
    """Run the Lightning subcommands (``args=None``: ``sys.argv``)."""
    return DclsCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
    )


def _print_help() -> None:
    lines = ["usage: dcls-zoo COMMAND [options]   (dcls-zoo COMMAND --help for a command's options)", ""]
    lines.append("training (LightningCLI; configs in configs/):")
    lines += [f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines.append("")
    lines.append("models and the Hub:")
    lines += [f"  {name:<10} {text}" for name, (text, _, _) in COMMANDS.items()]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dcls-zoo`` and ``python -m lightning_modules``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        _print_help()
        return 0 if arguments else 2
    if arguments[0] in ("-V", "--version"):
        print(f"dcls-zoo {__version__} (torch {torch.__version__}, timm {timm.__version__}, "
              f"lightning {lightning.__version__})")
        return 0
    name = arguments[0]
    if name in COMMANDS:
        help_text, add_arguments, run = COMMANDS[name]
        parser = argparse.ArgumentParser(prog=f"dcls-zoo {name}", description=help_text)
        add_arguments(parser)
        return run(parser.parse_args(arguments[1:]))
    try:
        # args=None lets Lightning read sys.argv itself (and relaunch DDP ranks with it).
        cli_main(None if argv is None else arguments)
    except NonFiniteLossError as error:
        print(f"dcls-zoo {name}: stopped: {error}", file=sys.stderr)
        return 1
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear down a DDP process group Lightning left open: exiting with live gloo threads can abort
    the process ("terminate called without an active exception") after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
