"""The LightningModule that trains a :class:`~tasknorm.models.MultiTaskModel`.

Data path: batch ``{"image": x, "<task>": target}`` → model → ``{"<task>": output}`` → each
task's loss and metrics → loss weighting → optimizer. Metrics are torchmetrics objects, so they
are synchronised across processes under DDP. Checkpoints select on ``val/selection``: the mean
over tasks of each primary validation metric, negated where lower is better (``selection="mean"``),
or the mean over tasks of each primary metric's relative gain over the first validation epoch
(``selection="relative"``, for tasks whose metrics live on different scales, such as mIoU,
depth error in metres and normal angle in degrees).

Options are checked when the module is built (names, and numbers by their option groups,
:mod:`tasknorm.train.options`). A run whose model diverges stops with ``FloatingPointError``: a
non-finite training loss at that step, a non-finite validation loss or score at the end of that
validation epoch, before any checkpoint of it is written.

Balancing (:mod:`tasknorm.train.balancing`): loss weightings train under Lightning's automatic
optimization. A gradient method (:mod:`tasknorm.train.aggregation`) or CosReg
(:mod:`tasknorm.train.cosreg`) switches the module to manual optimization, because both need
per-task gradients (CosReg with their graph).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from tasknorm.models import MultiTaskModel, build_backbone
from tasknorm.models.multitask import Architecture
from tasknorm.nn import param_groups, set_sync_stats
from tasknorm.nn.routing import Layout
from tasknorm.tasks import Task
from tasknorm.train.aggregation import Aggregation, mean_over_processes, write_gradient
from tasknorm.train.balancing import build_balance
from tasknorm.train.cosreg import CosReg
from tasknorm.train.gradients import objective_weights, shared_parameters, task_jacobian
from tasknorm.train.loss_means import TaskLossMeans
from tasknorm.train.options import (
    Balancing,
    Gates,
    Optimization,
    Regularization,
    build_groups,
)

SELECTION_METRIC = "val/selection"
SELECTIONS = ("mean", "relative")
_OPTIMIZATION, _GATES, _BALANCING, _REGULARIZATION = (
    Optimization(), Gates(), Balancing(), Regularization())


class MultiTaskModule(L.LightningModule):
    """Multi-task training with any sharing architecture and loss weighting.

    Args:
        tasks: the tasks (normally linked from the datamodule's ``tasks``).
        backbone: name of a backbone in :data:`tasknorm.models.BACKBONES`.
        backbone_args: keyword arguments of the backbone builder.
        head: name of a head in :data:`tasknorm.models.heads.HEADS` built for every task, or
            ``None`` for each task's own default head.
        architecture: ``single_task``, ``hard``, ``sigma``, ``task`` (TSBN), ``task_sigma``, or
            one of :data:`tasknorm.models.LEARNED_SHARING` (``cross_stitch``, ``mtan``, ``mmoe``,
            ``cgc``, ``ple``, ``dselect_k``, ``ltb``), or ``tree`` (a task tree, see
            :mod:`tasknorm.trees`).
        architecture_args: options of a learned-sharing architecture or a tree (see
            :class:`~tasknorm.models.MultiTaskModel`).
        layout: batch layout of the all-tasks pass.
        sync_stats: synchronise the batch statistics of σBN / TSBN / TSσBN layers across
            processes (``tasknorm.nn.set_sync_stats``).
        selection: how ``val/selection`` combines the tasks' primary validation metrics:
            ``mean`` (signed mean) or ``relative`` (mean relative gain over the first
            validation epoch, in percent).
        optimization: the optimizer, parameter groups and schedule
            (:class:`~tasknorm.train.Optimization`).
        gates: how the σ gates of a converted backbone start (:class:`~tasknorm.train.Gates`).
        balancing: the loss weighting or gradient aggregator
            (:class:`~tasknorm.train.Balancing`).
        regularization: the CosReg penalty (:class:`~tasknorm.train.Regularization`).
        legacy: options by their old flat names (``lr=0.1``, ``gate_init_mean=0.0``, ...:
            :data:`~tasknorm.train.options.FLAT_NAMES`), set over the groups; how checkpoints
            written before the groups existed load.

    Each group may also be given as a mapping of its fields, as checkpoints save it.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        backbone: str = "digits_cnn",
        backbone_args: dict[str, Any] | None = None,
        head: str | None = None,
        architecture: Architecture = "task_sigma",
        layout: Layout = "task_major",
        sync_stats: bool = False,
        selection: Literal["mean", "relative"] = "mean",
        optimization: Optimization = _OPTIMIZATION,
        gates: Gates = _GATES,
        balancing: Balancing = _BALANCING,
        regularization: Regularization = _REGULARIZATION,
        architecture_args: dict[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; expected one of {SELECTIONS}")
        groups = build_groups({"optimization": optimization, "gates": gates,
                               "balancing": balancing, "regularization": regularization}, legacy)
        self.optimization: Optimization = groups["optimization"]
        self.gates: Gates = groups["gates"]
        self.balancing: Balancing = groups["balancing"]
        self.regularization: Regularization = groups["regularization"]
        self.save_hyperparameters({
            "backbone": backbone, "backbone_args": backbone_args, "head": head,
            "architecture": architecture, "architecture_args": architecture_args,
            "layout": layout, "sync_stats": sync_stats,
            "selection": selection, **{name: asdict(group) for name, group in groups.items()}})
        balance, cosreg_alpha = self.balancing, self.regularization.cosreg_alpha
        self.tasks = {task.name: task for task in tasks}
        builder = partial(build_backbone, backbone, **(backbone_args or {}))
        self.model = MultiTaskModel(builder, list(tasks), architecture, self.gates.init, layout,
                                    head, self.gates.mean, self.gates.std, architecture_args)
        if sync_stats:
            set_sync_stats(self.model)
        self.directions = {name: task.higher_is_better for name, task in self.tasks.items()}
        built = build_balance(list(self.tasks), **asdict(balance))
        self.weighting = built.weighting
        self.aggregator: Aggregation | None = built.aggregation
        method = balance.weighting if balance.aggregator is None else balance.aggregator
        backbone = getattr(self.model, "backbone", None)
        needs_backbone = [what for what, used in (
            (f"weighting {balance.weighting!r}", hasattr(self.weighting, "attach")),
            (f"gradient method {method!r}", self.aggregator is not None),
            ("CosReg", cosreg_alpha > 0)) if used]
        if needs_backbone and backbone is None:
            raise ValueError(f"{' and '.join(needs_backbone)} need(s) parameters shared by all "
                             f"tasks; architecture {architecture!r} has none")
        if hasattr(self.weighting, "attach"):
            self.weighting.attach(backbone)
        if self.aggregator is not None and cosreg_alpha > 0:
            raise ValueError(f"CosReg and the gradient method {method!r} cannot be combined")
        self.cosreg: CosReg | None = None
        if cosreg_alpha > 0:
            self.cosreg = CosReg(cosreg_alpha, **(self.regularization.cosreg_args or {}))
            self.cosreg.attach(backbone)
        self.automatic_optimization = self.aggregator is None and self.cosreg is None
        self.stepped = True  # whether the last training batch ended in an optimizer step
        self.selection_reference: dict[str, float] | None = None
        self.task_losses: dict[str, Tensor] = {}
        self.loss_means = nn.ModuleDict({f"{stage}_loss": TaskLossMeans(len(self.tasks))
                                         for stage in ("train", "val", "test")})
        self.metrics = nn.ModuleDict({
            stage: nn.ModuleDict({name: task.build_metrics() for name, task in self.tasks.items()})
            for stage in ("val", "test")
        })

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any,
                             **kwargs: Any) -> MultiTaskModule:
        """Lightning's, building the module from the saved options with its constructor: those of
        a checkpoint written before the option groups existed have the old flat names, which it
        reads but the instantiator of Lightning's CLI, saved with them, would refuse."""
        return super().load_from_checkpoint(checkpoint_path, *args, _instantiator=None, **kwargs)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if not self.automatic_optimization:
            return self._manual_step(batch)
        losses = self._training_losses(batch)
        total = self.weighting(losses)
        self._log_training(losses, total, batch["image"].size(0))
        return total

    def _training_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each task's loss on ``batch`` (kept in ``task_losses`` for callbacks that need them
        with their graph); a NaN or infinite loss stops training, naming the task."""
        losses = self._losses(self._training_outputs(batch["image"]), batch)
        self.task_losses = losses
        if not torch.isfinite(torch.stack(list(losses.values()))).all():
            name, loss = next((n, v) for n, v in losses.items() if not torch.isfinite(v))
            raise FloatingPointError(f"loss of task {name!r} is {loss.item()} at step "
                                     f"{self.global_step} (epoch {self.current_epoch})")
        return losses

    def _training_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """The model's outputs for a training step. A step that takes one backward pass per task
        (a gradient method, CosReg) through a task-specific model runs each task's forward pass
        on its own: through the all-tasks pass, whose batch stacks the T tasks' copies, each of
        those backward passes would traverse all T copies, T times the work for the same
        gradient. Both give the same outputs."""
        if self.automatic_optimization or not self.model.task_specific:
            return self.model(x)
        return {task: self.model(x, task)[task] for task in self.tasks}

    def _log_training(self, losses: dict[str, Tensor], total: Tensor, size: int) -> None:
        self.loss_means["train_loss"].update(torch.stack(list(losses.values())), size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=size)

    def _manual_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One optimisation step with an aggregator or CosReg (manual optimization)."""
        optimizer = self.optimizers()
        losses = self._training_losses(batch)
        size = batch["image"].size(0)
        optimizer.zero_grad()
        if self.aggregator is not None:
            objectives = self.weighting.objectives(losses)
            total = objectives.sum()
            self.stepped = self._aggregated_gradients(objectives, losses, size)
            if not self.stepped:
                self._log_training(losses, total, size)
                return total.detach()
        else:
            total = self.weighting(losses)
            penalty = self.cosreg(losses, reduce=self.trainer.world_size > 1)
            cosines = self.cosreg.last_cosines
            pairs = cosines[torch.triu(torch.ones_like(cosines, dtype=torch.bool), 1)]
            self.log_dict({"train/cosreg_penalty": penalty.detach(),
                           "train/cosreg_seconds": self.cosreg.last_seconds,
                           "train/cosreg_cosine": pairs.mean()}, batch_size=size)
            total = total + penalty
            self.manual_backward(total)
        optimizer.step()
        self._log_training(losses, total, size)
        return total.detach()

    def _aggregated_gradients(self, objectives: Tensor, losses: dict[str, Tensor],
                              size: int) -> bool:
        """:meth:`_write_aggregated_gradients`, logging its time."""
        start = time.perf_counter()
        stepped = self._write_aggregated_gradients(objectives, losses)
        self.log("train/aggregator_seconds", time.perf_counter() - start, batch_size=size)
        return stepped

    def _write_aggregated_gradients(self, objectives: Tensor, losses: dict[str, Tensor]) -> bool:
        """Store the aggregation's update of the shared parameters and the summed objectives'
        gradient of the others in ``.grad``; ``False`` when the aggregation takes no step on
        this batch. The model's gradients come from one backward pass per task loss, through
        that loss's graph alone, and reach the objectives (computed from the losses) by the
        chain rule (:func:`~tasknorm.train.gradients.objective_weights`); the parameters of the
        method itself (uncertainty's log-variances, ...) get theirs from the objectives."""
        shared = list(shared_parameters(self.model.backbone).values())
        ids = {id(p) for p in shared}
        others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        in_model = {id(p) for p in self.model.parameters()}
        own = [p for p in self.parameters() if p.requires_grad and id(p) not in in_model]
        own_grads = (torch.autograd.grad(objectives.sum(), own, retain_graph=True,
                                         allow_unused=True) if own else ())
        values = list(losses.values())
        chain = objective_weights(objectives, values)
        rows, rest = task_jacobian(values, shared, others, weights=chain.sum(0))
        update = self.aggregator(mean_over_processes(chain @ rows),
                                 mean_over_processes(objectives.detach()))
        if update is None:
            return False
        write_gradient(shared, update)
        reached = [(p, g) for p, g in zip([*others, *own], [*rest, *own_grads], strict=True)
                   if g is not None]
        if reached:
            parameters, grads = zip(*reached, strict=True)
            write_gradient(parameters, mean_over_processes(torch.cat([g.reshape(-1)
                                                                      for g in grads])))
        return True

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.weighting.needs_losses_after_step and self.stepped:
            with torch.no_grad():
                losses = self._losses(self.model(batch["image"]), batch)
            values = mean_over_processes(torch.stack(list(losses.values())))
            self.weighting.after_step(dict(zip(losses, values, strict=True)))
        self.stepped = True

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
        means = self._log_loss_means("train")
        if means:
            self.weighting.epoch_end(means)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        losses = self._log_loss_means("val")
        results = self._compute_metrics("val")
        primaries = {name: results[name][task.primary] for name, task in self.tasks.items()}
        signs = {name: 1.0 if self.directions[name][task.primary] else -1.0
                 for name, task in self.tasks.items()}
        if self.hparams.selection == "mean":
            scores = [signs[name] * value for name, value in primaries.items()]
        else:
            if self.selection_reference is None and not self.trainer.sanity_checking:
                self.selection_reference = primaries
            reference = self.selection_reference or primaries
            scores = [100 * signs[name] * (value - reference[name]) / abs(reference[name])
                      if reference[name] else 0.0 for name, value in primaries.items()]
        score = sum(scores) / len(scores)
        if not self.trainer.sanity_checking:
            self._check_validation(losses, score)
        self.log(SELECTION_METRIC, score, prog_bar=True, sync_dist=True)

    def _check_validation(self, losses: dict[str, float], score: float) -> None:
        """Stop a run whose model diverged: a non-finite validation loss (on any process: the
        means are synchronised) or score. Raised before the checkpoint callbacks run, so no
        checkpoint holds the model."""
        diverged = [name for name, loss in losses.items() if not math.isfinite(loss)]
        if diverged or not math.isfinite(score):
            raise FloatingPointError(f"validation at epoch {self.current_epoch}: the model "
                                     f"diverged (non-finite loss of tasks {diverged}, "
                                     f"{SELECTION_METRIC} = {score})")

    def on_test_epoch_end(self) -> None:
        self._log_loss_means("test")
        self._compute_metrics("test")

    def monitorable_metrics(self) -> list[str]:
        """The logged metrics a callback can monitor (``ModelCheckpoint``, ``EarlyStopping``):
        ``val/selection``, ``train/loss`` and each task's losses and validation metrics."""
        names = [SELECTION_METRIC, "train/loss"]
        for name in self.tasks:
            names += [f"train/{name}_loss", f"val/{name}_loss",
                      *(f"val/{name}/{metric}" for metric in self.metrics["val"][name].keys())]
        return names

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.optimization
        groups = param_groups(self, hp.lr, weight_decay=hp.weight_decay,
                              norm_lr_mult=hp.norm_lr_mult,
                              norm_weight_decay=hp.norm_weight_decay, heads=self.model.heads,
                              heads_lr_mult=hp.heads_lr_mult,
                              architecture=self.model.architecture_parameters(),
                              architecture_lr_mult=hp.architecture_lr_mult)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            optimizer = torch.optim.Adam(groups, lr=hp.lr)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": self._scheduler(optimizer)}

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        hp = self.optimization
        if hp.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, hp.step_size, hp.step_gamma)
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(f"scheduler={hp.scheduler!r} needs trainer.max_epochs")
        if hp.scheduler == "poly":
            return torch.optim.lr_scheduler.PolynomialLR(optimizer, epochs, power=0.9)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tasknorm"] = self._identity()
        checkpoint["selection_reference"] = self.selection_reference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("tasknorm")
        if saved != self._identity():
            raise ValueError(f"incompatible checkpoint: it holds {saved}, this model is "
                             f"{self._identity()}")
        self.selection_reference = checkpoint.get("selection_reference")

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded into this module."""
        identity = {"tasks": list(self.tasks), "backbone": self.hparams.backbone,
                    "architecture": self.hparams.architecture}
        if self.hparams.head is not None:
            identity["head"] = self.hparams.head
        return identity

    def _losses(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: task.loss(outputs[name], batch[name]) for name, task in self.tasks.items()}

    def _evaluate_step(self, batch: dict[str, Tensor], stage: str) -> None:
        outputs = self.model(batch["image"])
        losses = self._losses(outputs, batch)
        self.loss_means[f"{stage}_loss"].update(torch.stack(list(losses.values())),
                                                batch["image"].size(0))
        for name, task in self.tasks.items():
            self.metrics[stage][name].update(task.prediction(outputs[name]), batch[name])

    def _log_loss_means(self, stage: str) -> dict[str, float]:
        """Compute (synchronised), log as ``{stage}/{task}_loss`` and reset the epoch's loss
        means of ``stage``; empty when the epoch had no batch."""
        means = self.loss_means[f"{stage}_loss"]
        if not means.update_called:
            return {}
        values = dict(zip(self.tasks, means.compute().tolist(), strict=True))
        means.reset()
        self.log_dict({f"{stage}/{name}_loss": value for name, value in values.items()})
        return values

    def _compute_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        """Compute (synchronised), log and reset the metrics of ``stage``."""
        results: dict[str, dict[str, float]] = {}
        for name in self.tasks:
            collection = self.metrics[stage][name]
            values = {metric: float(value) for metric, value in collection.compute().items()}
            collection.reset()
            results[name] = values
            for metric, value in values.items():
                if not math.isnan(value):
                    self.log(f"{stage}/{name}/{metric}", value, sync_dist=True)
        return results
