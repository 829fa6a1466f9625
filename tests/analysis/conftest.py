import pytest
import torch
from torch import nn

from tasknorm.nn import TaskSigmaBatchNorm2d


@pytest.fixture
def gated_model():
    """Builds a stack of TSσBN layers whose gates are exactly the given (tasks, channels)
    matrices: ``gated_model(gates_1, gates_2, ..., tasks=(...))``."""

    def build(*layers: torch.Tensor, tasks=("left", "right")) -> nn.Module:
        model = nn.Sequential(*(TaskSigmaBatchNorm2d(g.size(1), list(tasks)) for g in layers))
        with torch.no_grad():
            for layer, gates in zip(model, layers, strict=True):
                layer.gate_logit.copy_(torch.logit(gates.double()).float())
        return model

    return build
