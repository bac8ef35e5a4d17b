"""``ImageClassifier``: any dcls-zoo / timm model trained with the ConvNeXt-dcls recipe.

The science of a run lives here: the network, the loss (label smoothing, mixup/cutmix targets,
the repulsive position loss), the optimiser's parameter groups and schedule, the metrics.
Engineering (position clamping, EMA, plots, Hub pushes, checkpoints) lives in callbacks.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

import dcls_zoo
from dcls_zoo.errors import DclsZooError
from dcls_zoo.export_format import refuse_weight_sources, without_weight_sources
from dcls_zoo.names import SOURCE_PREFIXES
from dcls_zoo.positions import position_owners, position_parameters, position_snapshot
from dcls_zoo.regularizers import repulsive_loss
from dcls_zoo.state_dicts import clean_state_dict

from .checkpoints import (
    EXPORT_KEY,
    WeightsSource,
    load_checkpoint,
    load_pretrained_weights,
    select_weights,
    weights_source,
)
from .optim import WarmupCosine, parameter_groups, upgrade_scheduler_state, warmup_cosine_scheduler
from .run_record import limitations, training_record
from .runs import written_checkpoints

__all__ = ["INITIAL_POSITIONS_KEY", "ImageClassifier", "NonFiniteLossError", "restoring_from_checkpoint"]

#: The architecture built when neither ``arch`` nor ``pretrained`` names one.
DEFAULT_ARCH = "convnext_dcls_atto"
#: Checkpoint key of ``{group name: initial P}`` (float32 CPU tensors: a weights-only load reads them): where
#: the run's positions started, so a resumed run still measures how far they moved from the true start.
INITIAL_POSITIONS_KEY = "dcls_zoo_initial_positions"

log = logging.getLogger(__name__)

_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("dcls_zoo_restoring", default=False)


@contextlib.contextmanager
def restoring_from_checkpoint() -> Iterator[None]:
    """Build :class:`ImageClassifier` objects inside the block to receive a checkpoint's weights:
    nothing is downloaded (``pretrained`` and weight-fetching ``model_kwargs`` are skipped, with a
    log line). ``ImageClassifier.load_from_checkpoint`` and the CLI's ``--ckpt_path`` use it."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


class NonFiniteLossError(DclsZooError, RuntimeError):
    """The training loss became NaN or infinite: the run stops before the bad step is applied."""


class _Injected:
    """Holds CLI-injected callables. ``deepcopy`` (EMA's ``AveragedModel``) shares the holder
    instead of walking into the parser and trainer objects the callables close over."""

    def __init__(self, **callables: Any) -> None:
        self.__dict__.update(callables)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Injected:
        return self


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The paper's AdamW (lr 4e-3, weight decay 0.05) when no optimizer is configured."""
    return torch.optim.AdamW(params, lr=4e-3, weight_decay=0.05)


class ImageClassifier(pl.LightningModule):
    """Image classification with a registered model and the ConvNeXt-dcls training recipe.

    Batches are ``(images (B, in_chans, H, W) float, labels (B,) int64)``.

    Args:
        arch: a registered model name (``dcls_zoo.list_models()`` or any timm model). ``None``: the
            architecture ``pretrained`` records (its weights bring their model), else
            ``convnext_dcls_atto``. An architecture that contradicts ``pretrained``'s is refused.
        num_classes: classifier outputs (linked from the DataModule by the CLI).
        in_chans: input channels (linked from the DataModule by the CLI).
        model_kwargs: extra model arguments (``drop_path_rate``, ``dcls_kernel_size``, ``patch_size``...),
            over the ones ``pretrained`` records.
        pretrained: weights to fine-tune from, which bring the model they were made for: a
            Lightning ``.ckpt`` (its EMA weights when present), an export directory, a ``local-dir:``
            or ``hf-hub:org/name`` source, or a pretrained tag (``"convnext_dcls_tiny.in1k"``, or
            ``"in1k"`` of ``arch``); a classifier of another class count starts fresh and another
            input channel count is adapted. (``ckpt_path`` is for resuming.)
        optimizer: builds the optimiser from the parameter groups (default: AdamW lr 4e-3, wd 0.05).
        position_lr_scale: learning-rate multiplier of DCLS positions and widths (no weight decay).
        freeze_positions: keep every DCLS position and width (``P``, ``SIG``) at its initial value:
            they leave the optimizer, ``ClampPositions`` leaves them alone and the repulsive loss
            is off; everything else trains. The control arm of "do learned spacings help?".
        warmup_epochs: linear warmup length (fractions allowed), stepped per optimiser step.
        min_lr_ratio: the cosine ends at this fraction of each group's peak rate.
        label_smoothing: smoothing of the hard targets (mixup/cutmix smooth their mixed targets).
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: timm's ``Mixup`` (off when both
            alphas are 0); batches must have an even size.
        loss: ``"cross_entropy"`` (softmax; the ConvNeXt recipe) or ``"binary_cross_entropy"``
            (per-class sigmoid; the ResNet strikes back A1-A3 recipes).
        bce_target_threshold: binary cross-entropy only: targets (after mixup) above this become 1.
        repulsive_loss_weight: weight of the squared repulsive position loss (0: off).
        repulsive_loss_after_epoch: the term is added once ``current_epoch`` exceeds this (the
            authors' ``epoch > 20``); it is logged as ``train/loss_rep`` from the start.
        compile: ``torch.compile`` the network in place (state-dict keys unchanged).
    """

    def __init__(
        self,
        arch: str | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        position_lr_scale: float = 5.0,
        freeze_positions: bool = False,
        warmup_epochs: float = 20.0,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        loss: Literal["cross_entropy", "binary_cross_entropy"] = "cross_entropy",
        bce_target_threshold: float | None = None,
        repulsive_loss_weight: float = 1.0,
        repulsive_loss_after_epoch: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_arguments(num_classes, in_chans, warmup_epochs, label_smoothing, repulsive_loss_weight)
        # The optimizer callable is configuration, not state: a checkpoint must not pickle it.
        self.save_hyperparameters(ignore=["optimizer"])
        self._injected = _Injected(optimizer=optimizer)
        model_kwargs = dict(model_kwargs or {})
        if _RESTORING.get():
            # The weights come from the checkpoint: rebuild the network without fetching any.
            if arch and arch.startswith(SOURCE_PREFIXES):
                raise ValueError(
                    f"the checkpoint's arch is {arch!r}, a download source; a model rebuilt from saved weights "
                    "downloads nothing. Give the registered architecture (--model.arch)"
                )
            model_kwargs = without_weight_sources(model_kwargs, "the checkpoint's model_kwargs")
            if pretrained:
                log.warning("ignoring pretrained=%r from the checkpoint: its own weights are loaded instead", pretrained)
                pretrained = None
        else:
            refuse_weight_sources(model_kwargs, "model_kwargs", "give the weights to fine-tune from as pretrained=... "
                                  "(a tag, an export directory, a .ckpt or hf-hub:org/name)")
            if pretrained:
                arch, model_kwargs = _model_of(weights_source(pretrained), arch, model_kwargs)
        arch = arch or DEFAULT_ARCH
        # what was built, recorded: checkpoints and exports rebuild it without the source
        self.hparams.arch, self.hparams.model_kwargs = arch, dict(model_kwargs)
        self.model = dcls_zoo.create_model(arch, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
        if pretrained:
            rank_zero_info(f"pretrained weights: {load_pretrained_weights(self.model, pretrained, arch)}")
        self.mixup = self._build_mixup()
        self.criterion = self._build_criterion()
        self.has_positions = bool(position_owners(self.model))
        if freeze_positions:
            if not self.has_positions:
                raise ValueError(f"model.freeze_positions: {arch} has no DCLS positions to freeze")
            for tensor in position_parameters(self.model):
                tensor.requires_grad_(False)  # parameter_groups skips them: no optimizer state, no update
        # where the positions start (after any pretrained weights): summary.json's mean |delta P| is
        # measured from here; checkpoints carry it, so a resumed run measures from the true start
        self.initial_positions = position_snapshot(self.model)
        accuracies = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            accuracies["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        metrics = MetricCollection(accuracies)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def _build_mixup(self) -> Any:
        hp = self.hparams
        if hp.mixup_alpha <= 0 and hp.cutmix_alpha <= 0:
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=hp.mixup_alpha,
            cutmix_alpha=hp.cutmix_alpha,
            prob=hp.mixup_prob,
            switch_prob=hp.mixup_switch_prob,
            label_smoothing=hp.label_smoothing,
            num_classes=hp.num_classes,
        )

    def _build_criterion(self) -> torch.nn.Module:
        """The training loss for this run's targets (hard labels, or mixup's soft targets)."""
        from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

        hp = self.hparams
        smoothing = 0.0 if self.mixup is not None else hp.label_smoothing  # Mixup smooths its own targets
        if hp.loss == "binary_cross_entropy":
            return BinaryCrossEntropy(smoothing=smoothing, target_threshold=hp.bce_target_threshold)
        if hp.loss != "cross_entropy":
            raise ValueError(f"model.loss must be 'cross_entropy' or 'binary_cross_entropy', got {hp.loss!r}")
        return SoftTargetCrossEntropy() if self.mixup is not None else torch.nn.CrossEntropyLoss(label_smoothing=smoothing)

    # ---------------------------------------------------------------- forward and losses

    @override
    def forward(self, images: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        return self.model(images)

    @override
    def setup(self, stage: str) -> None:
        # One image at the data's size: Lightning's model summary counts the FLOPs with it (the
        # column shows 0 without), and an image size from the data, not the model's 224 default.
        size = getattr(self.trainer.datamodule, "image_size", None) if self._trainer is not None else None
        if isinstance(size, int) and self.example_input_array is None:
            self.example_input_array = torch.zeros(1, self.hparams.in_chans, size, size)
        if stage == "fit" and self.hparams.compile:
            self.model.compile()  # in place: state-dict keys keep their names

    @override
    def on_train_start(self) -> None:
        self.val_metrics.reset()  # drop the sanity check's batches
        self.val_loss.reset()

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        targets = labels
        if self.mixup is not None:
            if images.shape[0] % 2:
                raise ValueError(f"mixup/cutmix needs an even batch size, got {images.shape[0]}")
            images, targets = self.mixup(images, labels)
        logits = self(images)
        loss_fit = self.criterion(logits, targets)
        if self.mixup is None:  # accuracy against mixed images would mean nothing
            self.train_metrics.update(logits.detach(), labels)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        loss = loss_fit
        if self.has_positions and not self.hparams.freeze_positions:  # frozen: nothing to repel
            loss_rep = repulsive_loss(self.model)
            self.log("train/loss_rep", loss_rep.detach(), on_step=True, on_epoch=True)
            if self.repulsive_loss_active:
                loss = loss + self.hparams.repulsive_loss_weight * loss_rep**2
        self._check_finite(loss, batch_idx, images, targets)
        self.log("train/loss_fit", loss_fit.detach(), on_step=True, on_epoch=True)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss

    @property
    def repulsive_loss_start(self) -> int | None:
        """Completed epochs after which the repulsive term joins the loss (``None``: never).

        The term is on once ``current_epoch`` (0-based) exceeds ``repulsive_loss_after_epoch``,
        i.e. from the epoch that begins after ``repulsive_loss_after_epoch + 1`` completed ones.
        """
        hp = self.hparams
        if hp.repulsive_loss_weight <= 0 or hp.freeze_positions:
            return None
        return hp.repulsive_loss_after_epoch + 1

    @property
    def repulsive_loss_active(self) -> bool:
        """Whether this epoch's loss includes the repulsive term."""
        start = self.repulsive_loss_start
        return start is not None and self.current_epoch >= start

    def _check_finite(self, loss: Tensor, batch_idx: int, images: Tensor, targets: Tensor) -> None:
        if torch.isfinite(loss).item():
            return
        good = self._last_good_checkpoint(images, targets)
        if good is not None:
            kept = (
                f"the last good checkpoint is {good} (its weights are finite and give a finite loss on this batch). "
                f"To go on from its weights with a lower rate (a fresh optimizer and schedule): dcls-zoo fit -c "
                f"<config> --model.pretrained {good} --model.optimizer.init_args.lr <lower>; --ckpt_path would "
                "restore the old rate with the optimizer state"
            )
        else:
            kept = "no checkpoint of this run gives a finite loss: start again with a lower learning rate"
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step} "
            f"(batch {batch_idx}); the run stops before applying this step and {kept}. Also consider "
            "trainer.gradient_clip_val, or check the data"
        )

    def _last_good_checkpoint(self, images: Tensor, targets: Tensor) -> Path | None:
        """The newest checkpoint of this run whose weights (raw and averaged) are finite and give a
        finite loss on ``images`` (a blown-up but finite checkpoint would fail again at once)."""
        for path in written_checkpoints(self.trainer):
            try:
                checkpoint = load_checkpoint(path)
                raw, _ = select_weights(checkpoint, ema=False)
                averaged, _ = select_weights(checkpoint)
            except ValueError:
                continue
            tensors = [v for state in (raw, averaged) for v in state.values() if isinstance(v, Tensor) and v.is_floating_point()]
            if not all(torch.isfinite(v).all() for v in tensors):
                continue
            probe = copy.deepcopy(self.model)
            try:
                probe.load_state_dict(clean_state_dict(raw).state_dict)
            except RuntimeError:
                continue
            with torch.no_grad():
                if torch.isfinite(self.criterion(probe(images), targets)).item():
                    return path
        return None

    def _evaluate(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection, loss_metric: MeanMetric) -> None:
        images, labels = batch
        logits = self(images)
        loss_metric.update(F.cross_entropy(logits, labels))
        metrics.update(logits, labels)

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)
        self.log("val/loss", self.val_loss, on_epoch=True)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss)
        self.log_dict(self.test_metrics, on_epoch=True)
        self.log("test/loss", self.test_loss, on_epoch=True)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Returns ``{"probabilities": (B, num_classes), "predictions": (B,)}`` (and ``labels`` when given)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probabilities = self(images).softmax(dim=-1)
        out = {"probabilities": probabilities, "predictions": probabilities.argmax(dim=-1)}
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            out["labels"] = batch[1]
        return out

    # ---------------------------------------------------------------- optimisation

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(self.model, self.hparams.position_lr_scale)
        optimizer = self._injected.optimizer(groups)
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup_steps = min(round(self.hparams.warmup_epochs * self._steps_per_epoch(total_steps)), total_steps)
        schedule = WarmupCosine(warmup_steps, total_steps, self.hparams.min_lr_ratio)
        scheduler = warmup_cosine_scheduler(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ImageClassifier:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, rebuilding the network without downloading
        anything (see :func:`restoring_from_checkpoint`): the weights are the checkpoint's."""
        with restoring_from_checkpoint():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what an export of this checkpoint needs (``dcls-zoo export CKPT`` reads it): the
        class names, the evaluation preprocessing and the dataset from the DataModule, the
        validation metrics of the epoch the checkpoint was saved at, and the card's Training table
        and Limitations as the fit-time export writes them (:mod:`lightning_modules.run_record`)."""
        trainer = self._trainer
        data = getattr(trainer, "datamodule", None) if trainer is not None else None
        metadata: dict[str, Any] = {}
        if data is not None:
            if getattr(data, "class_names", None):
                metadata["label_names"] = list(data.class_names)
            if hasattr(data, "data_config"):
                metadata["data_config"] = data.data_config()
            if getattr(data, "hub_dataset", None):
                metadata["dataset"] = data.hub_dataset
        if trainer is not None:
            metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if metrics:
                metadata["metrics"] = {**metrics, "epoch": trainer.current_epoch}
            if data is not None and trainer.optimizers:
                metadata["training"] = training_record(
                    trainer, self, data, epochs=trainer.current_epoch, steps=trainer.global_step,
                    weights=f"the checkpoint written at epoch {trainer.current_epoch}, step {trainer.global_step}")
                metadata["limitations"] = limitations(data)
        checkpoint[EXPORT_KEY] = metadata
        checkpoint[INITIAL_POSITIONS_KEY] = self.initial_positions

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for state in checkpoint.get("lr_schedulers", []):
            upgrade_scheduler_state(state)
        if INITIAL_POSITIONS_KEY in checkpoint:  # a resumed run measures from where the first part started
            self.initial_positions = {name: tensor.float().cpu().clone()
                                      for name, tensor in checkpoint[INITIAL_POSITIONS_KEY].items()}

    def _steps_per_epoch(self, total_steps: int) -> float:
        batches = self.trainer.num_training_batches  # set by estimated_stepping_batches
        if math.isfinite(batches) and batches > 0:
            return math.ceil(batches / self.trainer.accumulate_grad_batches)
        return total_steps / max(self.trainer.max_epochs or 1, 1)


def _model_of(source: WeightsSource, arch: str | None, model_kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The architecture and arguments to build for fine-tuning from ``source``: the ones it records,
    the given ``model_kwargs`` over them; a given ``arch`` must be the source's."""
    if source.arch is None:
        return arch, model_kwargs
    if arch is not None and arch != source.arch:
        raise ValueError(
            f"arch={arch!r} contradicts pretrained={source.name!r}, whose weights are a {source.arch!r} ({source.where}); "
            "leave arch unset (the weights bring their model) or give weights of that architecture"
        )
    return source.arch, {**source.model_args, **model_kwargs}


def _check_arguments(
    num_classes: int, in_chans: int, warmup_epochs: float, label_smoothing: float, repulsive_loss_weight: float
) -> None:
    if num_classes < 2:
        raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"model.in_chans must be >= 1, got {in_chans}")
    if warmup_epochs < 0:
        raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
    if repulsive_loss_weight < 0:
        raise ValueError(f"model.repulsive_loss_weight must be >= 0, got {repulsive_loss_weight}")
