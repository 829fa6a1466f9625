"""The sigmoid gate shared by σBN, TSσBN and the σ LayerNorm: a raw ``gate_logit`` whose sigmoid
is the layer's scale, bounded in (0, 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class SigmoidGated:
    """Mixin for layers whose scale is ``sigmoid(gate_logit)``; gate logits start from
    N(``init_mean``, ``init_std``²) as in the σBN recipe, an optional ``bias`` from 0.

    State dicts that store the gate logits as ``weight`` (older tasknorm versions, and the σBN of
    the RNI code, github.com/xapharius/receding-neuron-importances ``rni/cifar/sigbn.py``) load
    as they are.
    """

    gate_logit: nn.Parameter
    bias: nn.Parameter | None
    init_mean: float
    init_std: float

    @property
    def gate(self) -> Tensor:
        """The bounded scale ``sigmoid(gate_logit)`` (task × channel for task-specific layers)."""
        return torch.sigmoid(self.gate_logit)

    def reset_gates(self) -> None:
        """Gate logits to N(init_mean, init_std²); bias, if any, to 0."""
        nn.init.normal_(self.gate_logit, self.init_mean, self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def task_affine(self) -> tuple[Tensor, Tensor | None]:
        """The gate and the bias (see :meth:`tasknorm.nn.TaskRouted.task_affine`)."""
        return self.gate, self.bias

    def affine_parameters(self) -> tuple[Tensor, Tensor | None]:
        """The parameters behind :meth:`task_affine`: gate logits and bias."""
        return self.gate_logit, self.bias

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        old, new = prefix + "weight", prefix + "gate_logit"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
