"""Learning to Branch: a tree of backbone stages whose branching is learned with Gumbel-softmax.

Maps an image to ``{task: features}``; :class:`~tasknorm.models.MultiTaskModel` puts the heads
on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.models.stages import StagedBackbone, StageState, initial_state, mix, require_int


class LearningToBranch(nn.Module):
    """Learning to Branch (Guo, Lee & Ulbricht, ICML 2020, arXiv:2006.01895).

    Every stage of the backbone (:mod:`tasknorm.models.stages`) has ``nodes`` nodes, node ``n``
    being stage ``j`` of backbone copy ``n``. The nodes of the first stage read the image; every
    node of a later stage picks its parent among the previous stage's nodes, and every task (a
    leaf) picks its parent among the last stage's nodes, each with learned logits
    (``branch_logits[j - 1][child, parent]``, ``task_logits[task, parent]``, all zero at start:
    uniform).

    Training (``self.training``): every node runs, and each child reads the Gumbel-softmax
    sample of its parents (Jang et al., arXiv:1611.01144) at ``temperature``: by default a
    one-hot sample with the soft sample's gradient (straight-through), so every step trains one
    sampled tree; ``hard=False``: the weighted sum of the parents' outputs. The logits train
    jointly with the weights, by the same optimizer, in a group of their own
    (:meth:`architecture_parameters`, ``optimization.architecture_lr_mult``); the temperature
    stays fixed.
    Evaluation: the hard tree, every child's parent being its largest logit (:meth:`tree`); only
    the nodes on the tasks' paths run.

    Soft samples train on mixtures of parents that evaluation never computes: on
    ``multidigits_contested`` (4 epochs) the validation loss of ``left`` reached 79 against a
    training loss of 2.2; with one-hot samples both stayed at 2.2-2.3.

    Args:
        backbone: builds one backbone copy.
        tasks: the task names.
        nodes: nodes per stage (``None``: one per task).
        temperature: Gumbel-softmax temperature ``τ > 0``.
        hard: straight-through one-hot samples in training (the default), else soft ones.
    """

    def __init__(self, backbone: Callable[[], nn.Module], tasks: Sequence[str],
                 nodes: int | None = None, temperature: float = 1.0,
                 hard: bool = True) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        nodes = len(self.task_names) if nodes is None else nodes
        require_int("nodes", nodes)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not isinstance(hard, bool):
            raise ValueError(f"hard must be true or false, got {hard!r}")
        self.temperature, self.hard = temperature, hard
        self.copies = nn.ModuleList(StagedBackbone(backbone()) for _ in range(nodes))
        stages = len(self.copies[0].stages)
        self.branch_logits = nn.ParameterList(
            nn.Parameter(torch.zeros(nodes, nodes)) for _ in range(stages - 1))
        self.task_logits = nn.Parameter(torch.zeros(len(self.task_names), nodes))
        self.out_features: int = self.copies[0].out_features

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The branching logits: every stage's, then the tasks'."""
        return [*self.branch_logits, self.task_logits]

    def tree(self) -> list[list[int]]:
        """The hard tree: for each later stage, each node's parent, then each task's parent
        (the largest logit of each row)."""
        return [logits.argmax(dim=1).tolist() for logits in (*self.branch_logits,
                                                              self.task_logits)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self._sampled(x) if self.training else self._hard(x)

    def _sample(self, logits: Tensor) -> Tensor:
        return F.gumbel_softmax(logits, tau=self.temperature, hard=self.hard)

    def _sampled(self, x: Tensor) -> dict[str, Tensor]:
        start = initial_state(x)
        states = [copy.stages[0](start) for copy in self.copies]
        for stage, logits in enumerate(self.branch_logits, start=1):
            weights = self._sample(logits)
            states = [copy.stages[stage](mix(states, weights[node]))
                      for node, copy in enumerate(self.copies)]
        weights = self._sample(self.task_logits)
        return {t: mix(states, weights[i]).features for i, t in enumerate(self.task_names)}

    def _hard(self, x: Tensor) -> dict[str, Tensor]:
        *parents, task_parents = self.tree()
        needed = [set(task_parents)]
        for layer in reversed(parents):
            needed.insert(0, {layer[node] for node in needed[0]})
        start = initial_state(x)
        states: dict[int, StageState] = {n: self.copies[n].stages[0](start) for n in needed[0]}
        for stage, layer in enumerate(parents, start=1):
            states = {n: self.copies[n].stages[stage](states[layer[n]])
                      for n in sorted(needed[stage])}
        return {t: states[task_parents[i]].features for i, t in enumerate(self.task_names)}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard={self.hard}"
