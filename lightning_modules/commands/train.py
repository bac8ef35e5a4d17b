"""Lightning's ``fit``/``validate``/``test``/``predict``: :class:`DclsCLI` and :func:`run`.

What the template adds to LightningCLI:

- ``num_classes`` and ``in_chans`` come from the DataModule;
- values the model, the data or the Trainer reject are one line naming the argument (exit 2),
  checked at start-up (the optimizer's arguments, mixup's even batches), never mid-training;
- run folders: ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues in ``<run>`` (its
  metrics.csv and TensorBoard events continue, its best checkpoint is still known), and
  ``test``/``validate``/``predict`` of a run's checkpoint write into ``<run>/<command>/<checkpoint>/``
  instead of opening a new ``version_N``;
- ``fit --test_after_fit --export_after_fit``: the job of :mod:`.after_fit`;
- ``predict`` refuses random weights and writes ``predictions.csv``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import NoReturn

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from dcls_zoo.errors import PretrainedWeightsError

from ..averaging import WarmupEMAWeightAveraging
from ..callbacks import CSVMetricsResume, EpochSeed, HubPushCallback
from ..checkpoints import load_checkpoint
from ..data import FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule
from ..method import ClampPositions, SigmaSchedule
from ..module import ImageClassifier, NonFiniteLossError, restoring_from_checkpoint
from ..position_monitor import PositionMonitor
from ..predictions import PredictionsCSV
from ..runs import (
    CKPT_PATH_NAMES,
    evaluation_folder,
    experiment_dir,
    file_loggers,
    named_checkpoint,
    run_folder_of,
    runs_newest_first,
    version_of,
)
from . import after_fit

__all__ = ["DclsCLI", "cli_main", "run"]

#: Classes configs may name by their short names (``class_path: ClampPositions``): jsonargparse
#: resolves a short name among the subclasses that are imported, so they are imported here.
CONFIG_CLASSES = (
    ClampPositions, SigmaSchedule, PositionMonitor, EpochSeed, HubPushCallback, CSVMetricsResume, WarmupEMAWeightAveraging,
    FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule,
)

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

    def _fail(self, message: str) -> NoReturn:
        """A wrong value: one line that leads with it (exit 2), not the argument parser's usage dump."""
        subcommand = self.config.get("subcommand") if getattr(self, "config", None) else None
        command = f"dcls-zoo {subcommand}" if subcommand else "dcls-zoo"
        print(f"{command}: error: {message}\n({command} --help lists the options)", file=sys.stderr)
        raise SystemExit(2)

    def _resolve_named_ckpt_path(self, subcommand: str) -> None:
        """``--ckpt_path last|best``: the newest run of this config that has one (Lightning looks
        only in the new run's own, empty, folder and starts from scratch)."""
        config = self.config[subcommand]
        name = config.get("ckpt_path")
        if name not in ("last", "best"):
            return
        loggers = file_loggers(config.trainer)
        if not loggers:
            self._fail(f"--ckpt_path {name}: the config has no CSV/TensorBoard logger to find its runs by; "
                       "pass the checkpoint's path")
        experiment = experiment_dir(loggers)
        for run in runs_newest_first(experiment):
            path = named_checkpoint(run, name)
            if path is not None:
                print(f"dcls-zoo {subcommand}: --ckpt_path {name} is {path}", file=sys.stderr)
                config.ckpt_path = str(path)
                return
        self._fail(f"--ckpt_path {name}: no run under {experiment}/version_* has a {name} checkpoint; "
                   "pass the checkpoint's path")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters here with a bare torch.load, which
        # answers a truncated file with an IndexError: check it with the safe loader first, its
        # tensors mapped rather than read (the Trainer reads the file again to restore it).
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._resolve_named_ckpt_path(subcommand)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in CKPT_PATH_NAMES and not str(ckpt_path).startswith("registry"):
            try:
                load_checkpoint(ckpt_path, mmap=True)
            except ValueError as error:
                self._fail(f"--ckpt_path: {error}")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Point the file loggers at the checkpoint's run folder (see the module's docstring)."""
        config = self.config[self.subcommand]
        run = run_folder_of(config.get("ckpt_path"))
        loggers = file_loggers(config.trainer)
        if run is None or not loggers:
            return
        if self.subcommand == "fit":
            # Continue the run only if it is one of this config's runs (<save_dir>/<name>/version_N).
            version = version_of(run)
            if version is not None and experiment_dir(loggers).resolve() == run.parent:
                for entry in loggers:
                    if entry.init_args.get("version") is None:
                        entry.init_args.version = version
            return
        save_dir, name, version = evaluation_folder(run, self.subcommand, config.ckpt_path)
        for entry in loggers:  # test / validate / predict: <run>/<command>/<checkpoint stem>/
            entry.init_args.save_dir, entry.init_args.name, entry.init_args.version = str(save_dir), name, version

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

    def _require_weights(self) -> None:
        """Evaluating or predicting needs trained weights: refuse a randomly initialised model."""
        config = self.config[self.subcommand]
        if not config.get("ckpt_path") and not getattr(self.model.hparams, "pretrained", None):
            self._fail(
                f"{self.subcommand} needs weights: pass --ckpt_path <a .ckpt | last | best> (or --model.pretrained "
                "<tag | export dir | .ckpt>); without them the model would be evaluated with random weights"
            )

    def before_validate(self) -> None:
        self._require_weights()

    def before_test(self) -> None:
        self._require_weights()

    def before_predict(self) -> None:
        """Predictions need weights, and go to a file: refuse random weights, add the CSV writer."""
        self._require_weights()
        if not any(isinstance(callback, PredictionsCSV) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionsCSV())

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()
        resume = next((c for c in self.trainer.callbacks if isinstance(c, CSVMetricsResume)), None)
        if resume is None:
            resume = CSVMetricsResume()
            self.trainer.callbacks.append(resume)
        if self.config[self.subcommand].get("ckpt_path"):
            resume.read_existing_rows(self.trainer)  # before fit reopens (and empties) them

    def after_fit(self) -> None:
        config = self.config_init[self.subcommand]
        after_fit.finish_fit(
            self.trainer,
            self.model,
            self.datamodule,
            test=bool(config.get("test_after_fit")),
            export=bool(config.get("export_after_fit")),
            fit_seconds=time.perf_counter() - self._fit_started,
            resumed_from=config.get("ckpt_path"),
        )


def _first_cause(error: BaseException) -> str:
    """The message of the error a class raised, without jsonargparse's wrapping: a value rejected
    inside a ``class_path`` comes back as "Does not validate against any of the Union subtypes"
    with the real message among its ``  - `` lines."""
    text = str(error)
    if "Union subtypes" not in text:
        return text
    causes = [line[4:] for line in text.splitlines() if line.startswith("  - ") and not line.startswith("  - Expected a ")]
    return "\n".join(causes) or text




def _close_process_group() -> None:
    """Tear down a DDP process group Lightning left open: exiting with live gloo threads can abort
    the process ("terminate called without an active exception") after a successful run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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


def run(arguments: list[str] | None) -> int:
    """``dcls-zoo fit|validate|test|predict ...``: the exit status (``None``: read ``sys.argv``,
    which Lightning needs to relaunch DDP ranks with the same command line)."""
    name = (arguments or sys.argv[1:])[0]
    try:
        cli_main(arguments)
    except NonFiniteLossError as error:
        print(f"dcls-zoo {name}: stopped: {error}", file=sys.stderr)
        return 1
    except MisconfigurationException as error:  # raised once the Trainer runs, e.g. a callback that needs a logger
        print(f"dcls-zoo {name}: error: {error}\n(dcls-zoo {name} --help lists the options)", file=sys.stderr)
        return 2
    finally:
        _close_process_group()
    return 0
