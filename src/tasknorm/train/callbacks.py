"""Lightning callbacks of tasknorm.

:class:`GradientCosineMonitor` records how task gradients interact on the shared parameters
during training: the CosReg paper's diagnostic (arXiv:1912.06844), whose well-performing models
have zero-centred, low-variance cosine distributions.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from tasknorm.train.gradients import (
    cosine_statistics,
    gradient_cosines,
    pair_values,
    shared_parameters,
    task_gradients,
    task_pairs,
)

LOG_PREFIX = "grad_cos"


class GradientCosineMonitor(Callback):
    """Every ``every_n_steps`` training steps, the pairwise cosines of the task gradients on the
    shared parameters: logged, and kept in a history saved with the checkpoint.

    Reads the per-task losses from ``pl_module.task_losses`` (``{task: loss}``, set by
    :class:`~tasknorm.train.MultiTaskModule` in ``training_step``) in ``on_before_backward``
    and differentiates each with ``torch.autograd.grad`` on the shared parameters of
    ``pl_module.model.backbone`` (:func:`~tasknorm.train.gradients.shared_parameters`). Nothing
    is written into ``.grad`` and no random numbers are drawn, so training is unchanged; the
    cost is one extra backward pass per task on measured steps. Under several processes, rank 0
    measures its own batch.

    Logged through the trainer's loggers at the measured step (``a-b`` is a task pair):
    ``grad_cos/a-b/cosine`` (this step), ``grad_cos/a-b/mean``, ``grad_cos/a-b/std`` (over all
    measurements so far), ``grad_cos/a-b/rolling_std`` (over the last ``window`` measurements),
    and the same four over all pairs pooled as ``grad_cos/cosine``, ``grad_cos/mean``, ...

    Args:
        every_n_steps: measure when ``global_step`` is a multiple of this (1 = every step, as
            in the paper).
        window: measurements in the rolling standard deviation (the paper: 50 steps).
        parameters: names of shared parameters or modules to use (e.g. the last shared layer,
            as in the paper); ``None``: all shared parameters of the backbone.
        log_pairs: also log each pair's statistics (with many tasks, the pairs grow as T²; the
            history keeps them either way).

    Example:
        >>> import lightning as L
        >>> from tasknorm.train.callbacks import GradientCosineMonitor
        >>> monitor = GradientCosineMonitor(every_n_steps=10, window=50)
        >>> trainer = L.Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
    """

    def __init__(self, every_n_steps: int = 50, window: int = 20,
                 parameters: Sequence[str] | None = None, log_pairs: bool = True) -> None:
        if every_n_steps < 1 or window < 1:
            raise ValueError(f"every_n_steps and window must be at least 1, got "
                             f"{every_n_steps} and {window}")
        self.every_n_steps = every_n_steps
        self.window = window
        self.parameters = None if parameters is None else list(parameters)
        self.log_pairs = log_pairs
        self.history: dict[str, Any] = self._empty_history()
        self._params: dict[str, nn.Parameter] = {}
        self._measured: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps,
                                        parameters=self.parameters)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "task_losses"):
            raise TypeError(f"GradientCosineMonitor needs pl_module.task_losses ({{task: loss}} "
                            f"set in training_step, as MultiTaskModule does); "
                            f"{type(pl_module).__name__} has none")
        backbone = getattr(getattr(pl_module, "model", None), "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"GradientCosineMonitor needs one backbone shared by all tasks at "
                            f"pl_module.model.backbone; {type(pl_module).__name__} has none "
                            "(a single-task architecture shares no parameters)")
        self._params = shared_parameters(backbone, self.parameters)
        self.history["parameters"] = list(self._params)
        self.history["num_parameters"] = sum(p.numel() for p in self._params.values())

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: Tensor) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        if self.history["step"] and self.history["step"][-1] == step:
            return  # gradient accumulation: measure the first micro-batch of a step only
        losses: dict[str, Tensor] = pl_module.task_losses
        if not losses or losses is self._measured:
            raise RuntimeError("GradientCosineMonitor: pl_module.task_losses was not set by "
                               "this training step; set it to {task: loss} in training_step")
        self._measured = losses
        tasks = list(losses)
        if not self.history["tasks"]:
            self.history["tasks"] = tasks
            self.history["pairs"] = [list(p) for p in task_pairs(tasks)]
        elif self.history["tasks"] != tasks:
            raise RuntimeError(f"GradientCosineMonitor: tasks changed from "
                               f"{self.history['tasks']} to {tasks}")
        if len(tasks) < 2:
            return
        gradients = task_gradients(losses, list(self._params.values()))
        cosines = pair_values(gradient_cosines(gradients.detach().float())).cpu()
        self.history["step"].append(step)
        self.history["epoch"].append(trainer.current_epoch)
        self.history["cosine"].append(cosines.tolist())
        metrics = self._metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _metrics(self) -> dict[str, float]:
        cosines = torch.tensor(self.history["cosine"], dtype=torch.float64)
        stats = cosine_statistics(cosines, self.window)
        metrics = {
            f"{LOG_PREFIX}/cosine": float(cosines[-1].mean()),
            f"{LOG_PREFIX}/mean": float(stats["overall_mean"]),
            f"{LOG_PREFIX}/std": float(stats["overall_std"]),
            f"{LOG_PREFIX}/rolling_std": float(stats["overall_rolling_std"][-1]),
        }
        if self.log_pairs:
            for k, (a, b) in enumerate(self.history["pairs"]):
                key = f"{LOG_PREFIX}/{a}-{b}"
                metrics[f"{key}/cosine"] = float(cosines[-1, k])
                metrics[f"{key}/mean"] = float(stats["mean"][k])
                metrics[f"{key}/std"] = float(stats["std"][k])
                metrics[f"{key}/rolling_std"] = float(stats["rolling_std"][-1, k])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = copy.deepcopy(state_dict["history"])

    def _empty_history(self) -> dict[str, Any]:
        """The history: measured ``step`` and ``epoch``, and per measurement one cosine per pair
        of ``pairs`` (in ``cosine``), with the settings needed to read it."""
        return {"tasks": [], "pairs": [], "step": [], "epoch": [], "cosine": [],
                "every_n_steps": self.every_n_steps, "window": self.window,
                "parameters": [], "num_parameters": 0}
