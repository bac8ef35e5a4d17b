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
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

from dcls_zoo.errors import DclsZooError, PretrainedWeightsError

from ..averaging import WarmupEMAWeightAveraging
from ..callbacks import CSVMetricsResume, EpochSeed, HubPushCallback
from ..checkpoints import load_checkpoint
from ..data import FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule
from ..method import ClampPositions, SigmaSchedule
from ..module import ImageClassifier, NonFiniteLossError, restoring_from_checkpoint
from ..position_monitor import PositionMonitor
from ..predictions import PredictionsCSV
from ..runs import (
    CHECKPOINTS_DIR,
    CKPT_PATH_NAMES,
    RESUMABLE_CHANGES,
    RecordRunIdentity,
    RunIdentity,
    describe_differences,
    epochs_done,
    evaluation_folder,
    experiment_dir,
    file_loggers,
    named_checkpoint,
    run_folder_of,
    runs_newest_first,
    same_config,
    setting_differences,
    version_of,
)
from . import after_fit
from .arguments import one_line_error

__all__ = ["DRY_RUN_PREFIX", "DclsCLI", "cli_main", "run"]

#: The stdout line of ``fit --dry_run=true``: this prefix, then the run's identity as JSON.
DRY_RUN_PREFIX = "dcls-zoo run: "

#: Classes configs may name by their short names (``class_path: ClampPositions``): jsonargparse
#: resolves a short name among the subclasses that are imported, so they are imported here.
CONFIG_CLASSES = (
    ClampPositions, SigmaSchedule, PositionMonitor, EpochSeed, HubPushCallback, CSVMetricsResume, WarmupEMAWeightAveraging,
    FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule,
)

def _subclass_names(*bases: type) -> list[str]:
    """The names of every imported subclass of ``bases`` (what a class-valued option may name)."""
    found, stack = set(), list(bases)
    while stack:
        for cls in stack.pop().__subclasses__():
            if cls.__name__ not in found:
                found.add(cls.__name__)
                stack.append(cls)
    return sorted(found)


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser with one-line errors and a did-you-mean (the usage goes to ``--help``),
    and no abbreviated options (``--trainer.max_epoch`` is a typo, not ``--trainer.max_epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        parser = getattr(ex, "subcommand_parser", None) or self
        words = parser.prog.split()
        prog = f"dcls-zoo {words[-1]}" if len(words) > 1 else "dcls-zoo"
        options = [option for action in parser._actions for option in action.option_strings]
        classes = _subclass_names(LightningDataModule, Callback, torch.optim.Optimizer)
        print(one_line_error(prog, message, options, classes), file=sys.stderr)
        raise SystemExit(2)


class DclsCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` and any DataModule.

    - ``num_classes`` and ``in_chans`` come from the DataModule (``data.num_classes``, ``data.in_chans``).
    - ``fit`` takes ``--test_after_fit`` (test the best checkpoint) and ``--export_after_fit``
      (write it as a Hub export under the run's log directory), then prints a summary and writes
      ``summary.json`` beside the logs.
    - A value the model or the data reject (a missing data directory, a negative rate) is reported as
      a command-line error naming it, before any training.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        # Options of the job around trainer.fit. Every subcommand accepts them, so that one config
        # serves `fit` and `test`/`validate`/`predict` alike; only `fit` acts on them.
        parser.add_argument("--test_after_fit", type=bool, default=False, help="fit only: test the best checkpoint")
        parser.add_argument(
            "--export_after_fit", type=bool, default=False, help="fit only: export the best checkpoint to <log_dir>/export"
        )
        parser.add_argument(
            "--dry_run", type=bool, default=False,
            help="fit only: build the model, the data and the trainer, check them, print the run's settings and "
            "fingerprint (a line starting with 'dcls-zoo run: ') and stop before training",
        )

    def _fail(self, message: str) -> NoReturn:
        """A wrong value: one line that leads with it (exit 2), not the argument parser's usage dump."""
        subcommand = self.config.get("subcommand") if getattr(self, "config", None) else None
        command = f"dcls-zoo {subcommand}" if subcommand else "dcls-zoo"
        print(f"{command}: error: {message} ({command} --help lists the options)", file=sys.stderr)
        raise SystemExit(2)

    def _this_configs_runs(self, experiment: Path) -> tuple[list[Path], list[str]]:
        """This config's runs under ``experiment``, newest first, and a note on the others there."""
        mine, others = [], []
        for run in runs_newest_first(experiment):
            recorded = RunIdentity.read(run)
            if recorded is not None and same_config(recorded, self._identity):
                mine.append(run)
            else:
                model = (recorded.settings.get("model") or {}).get("arch") if recorded else None
                others.append(f"{run.name} ({model or 'no run.json'})")
        return mine, others

    def _resolve_named_ckpt_path(self, subcommand: str) -> None:
        """``--ckpt_path last|best``: that checkpoint of this config's newest run (the newest run made
        with the same model and data), never another config's run nor, silently, an older one."""
        config = self.config[subcommand]
        name = config.get("ckpt_path")
        if name not in ("last", "best"):
            return
        loggers = file_loggers(config.trainer)
        if not loggers:
            self._fail(f"--ckpt_path {name}: the config has no CSV/TensorBoard logger to find its runs by; "
                       "pass the checkpoint's path")
        experiment = experiment_dir(loggers)
        mine, others = self._this_configs_runs(experiment)
        if not mine:
            elsewhere = f"; the runs there were made with other settings: {', '.join(others[:4])}" if others else ""
            self._fail(f"--ckpt_path {name}: no run of this config under {experiment}{elsewhere}; pass the "
                       "checkpoint's path")
        newest = mine[0]
        try:
            path = named_checkpoint(newest, name)
        except ValueError as error:  # an unreadable last.ckpt, which records the best one
            self._fail(f"--ckpt_path {name}: {error}")
        if path is None:
            older = f" (an older run of it: {mine[1]})" if len(mine) > 1 else ""
            self._fail(f"--ckpt_path {name}: this config's newest run {newest} has no {name} checkpoint (it stopped "
                       f"before one was written?){older}; pass the checkpoint's path to use another run")
        print(f"dcls-zoo {subcommand}: --ckpt_path {name} is {path}", file=sys.stderr)
        config.ckpt_path = str(path)

    def _check_run_folder(self) -> None:
        """Where the run will write, checked now: a ``checkpoints`` link to nowhere would stop the
        fit at its first checkpoint with a bare ``FileExistsError``."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        folder = Path(log_dir or self.trainer.default_root_dir).absolute() / CHECKPOINTS_DIR
        if folder.is_symlink() and not folder.exists():
            self._fail(f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist: create that "
                       "folder (e.g. on the disk the link points to) or remove the link")

    def _check_resume(self, ckpt_path: str, checkpoint: Any) -> None:
        """``fit --ckpt_path``: continue that run only with the settings it was made with, and only
        if it has something left to train (a finished run's files stay as they are)."""
        run = run_folder_of(ckpt_path)
        recorded = RunIdentity.of_checkpoint(checkpoint) or (RunIdentity.read(run) if run is not None else None)
        new_run = f"to start a new run from its weights, pass --model.pretrained {ckpt_path} instead of --ckpt_path"
        if recorded is None:
            print(f"dcls-zoo fit: warning: --ckpt_path {ckpt_path} records no run settings (written by another tool "
                  "or dcls-zoo < 0.2); resuming it without checking them", file=sys.stderr)
        else:
            differences = setting_differences(recorded.settings, self._identity.settings)
            longer = [d for d in differences if d[0] in RESUMABLE_CHANGES]
            differences = [d for d in differences if d[0] not in RESUMABLE_CHANGES]
            if longer:
                print(f"dcls-zoo fit: note: resuming with {describe_differences(longer, 'the run', 'this command')}; "
                      "the learning-rate schedule keeps the run's own length", file=sys.stderr)
            if differences:
                self._fail(f"--ckpt_path {ckpt_path}: resuming continues that run with its own settings, and this "
                           f"command's differ: {describe_differences(differences, 'the run', 'this command')}; "
                           f"{new_run}")
        max_epochs = self._identity.settings.get("trainer", {}).get("max_epochs")
        done = epochs_done(checkpoint)
        if isinstance(max_epochs, int) and max_epochs > 0 and done is not None and done >= max_epochs:
            self._fail(f"--ckpt_path {ckpt_path}: that run already finished its {max_epochs} epochs: resuming would "
                       f"train nothing and rewrite its test results and export; {new_run}")

    @override
    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            # what this command asks for, before Lightning puts a checkpoint's hyper-parameters over it
            self._identity = RunIdentity.of_config(self.config[subcommand].as_dict())
            self._resolve_named_ckpt_path(subcommand)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in CKPT_PATH_NAMES and not str(ckpt_path).startswith("registry"):
            # Lightning reads the checkpoint's hyper-parameters next with a bare torch.load, which
            # answers a truncated file with an IndexError: check it with the safe loader first, its
            # tensors mapped rather than read (the Trainer reads the file again to restore it).
            try:
                checkpoint = load_checkpoint(ckpt_path, mmap=True)
            except ValueError as error:
                self._fail(f"--ckpt_path: {error}")
            if subcommand == "fit":
                self._check_resume(str(ckpt_path), checkpoint)
                self._resumed_at_step = checkpoint.get("global_step")
        super()._parse_ckpt_path()

    @override
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

    @override
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
        if self.config[self.subcommand].get("dry_run"):
            # everything a fit checks before training has passed: say what the run would be, and stop
            print(f"{DRY_RUN_PREFIX}{json.dumps(self._identity.to_json(), sort_keys=True)}", flush=True)
            raise SystemExit(0)
        self._check_run_folder()
        self.trainer.callbacks.append(RecordRunIdentity(self._identity))
        self._fit_started = time.perf_counter()
        resume = next((c for c in self.trainer.callbacks if isinstance(c, CSVMetricsResume)), None)
        if resume is None:
            resume = CSVMetricsResume()
            self.trainer.callbacks.append(resume)
        if self.config[self.subcommand].get("ckpt_path"):
            resume.read_existing_rows(self.trainer)  # before fit reopens (and empties) them

    def after_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") and self.trainer.global_step == getattr(self, "_resumed_at_step", None):
            # e.g. resumed at its max_steps: a run this command did not train keeps its files as they are
            print(f"dcls-zoo fit: nothing trained from {config.get('ckpt_path')} (it had reached its end); its "
                  "summary, test results and export are unchanged", file=sys.stderr)
            return
        after_fit.finish_fit(
            self.trainer,
            self.model,
            self.datamodule,
            test=bool(config.get("test_after_fit")),
            export=bool(config.get("export_after_fit")),
            fit_seconds=time.perf_counter() - self._fit_started,
            resumed_from=config.get("ckpt_path"),
            fingerprint=self._identity.fingerprint,
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




def _own_message(error: BaseException) -> str:
    """An error's own message: a DataLoader worker's error comes back wrapped in the worker's
    traceback text, whose last line is ``"<Type>: <message>"``."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    prefix = f"{type(error).__name__}: "
    return last.split(prefix, 1)[1] if prefix in last else last


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
        parser_class=OneLineParser,
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
    except DclsZooError as error:  # e.g. an unreadable image, raised in a DataLoader worker
        print(f"dcls-zoo {name}: error: {_own_message(error)}", file=sys.stderr)
        return 1
    except MisconfigurationException as error:  # raised once the Trainer runs, e.g. a callback that needs a logger
        print(f"dcls-zoo {name}: error: {error} (dcls-zoo {name} --help lists the options)", file=sys.stderr)
        return 2
    finally:
        _close_process_group()
    return 0
