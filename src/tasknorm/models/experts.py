"""Mixtures of experts on images: MMoE, CGC, PLE and DSelect-k.

An expert is one copy of the backbone (for PLE, one copy cut into levels, an expert of a level
being that copy's stages of the level). A gate sees the input image average-pooled to a
``gate_grid × gate_grid`` grid and flattened: a linear layer on those
``in_channels · gate_grid²`` numbers gives its weights over the experts, per sample. (The
papers gate on the input vector of a recommender; the pooled image is its small, fixed-size
counterpart, read from the image so that gating costs almost nothing.) Each builder maps an
image to ``{task: features}``; :class:`~tasknorm.models.MultiTaskModel` puts the heads on top.

All four are :class:`ExpertNetwork`: CGC is PLE with one level, MMoE is CGC with shared experts
only, and DSelect-k is MMoE with the DSelect-k gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.models.stages import StagedBackbone, initial_state, mix, require_int

GATE_GRID = 4
"""Default side of the grid a gate pools the image to."""
GateFactory = Callable[[int, int], nn.Module]
"""``(in_channels, experts) -> gate``; a gate maps an image to weights ``(B, experts)``."""


class ImageGate(nn.Module):
    """Base of the gates: reads the image average-pooled to ``grid × grid``, flattened."""

    def __init__(self, in_channels: int, grid: int = GATE_GRID) -> None:
        super().__init__()
        require_int("gate_grid", grid)
        self.grid = grid
        self.in_features = in_channels * grid**2

    def pooled(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


class SoftmaxGate(ImageGate):
    """The MMoE / PLE gate (Ma et al., KDD 2018; Tang et al., RecSys 2020): ``softmax(W x)``.

    Example:
        >>> import torch
        >>> gate = SoftmaxGate(in_channels=3, experts=4)
        >>> weights = gate(torch.randn(2, 3, 32, 32))
        >>> weights.shape, bool(torch.allclose(weights.sum(dim=1), torch.ones(2)))
        (torch.Size([2, 4]), True)
    """

    def __init__(self, in_channels: int, experts: int, grid: int = GATE_GRID) -> None:
        super().__init__(in_channels, grid)
        self.linear = nn.Linear(self.in_features, experts)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pooled(x)).softmax(dim=-1)


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """DSelect-k's smooth step (Hazimeh et al., NeurIPS 2021, arXiv:2106.03760): 0 below
    ``-γ/2``, 1 above ``γ/2``, and ``-2/γ³ t³ + 3/(2γ) t + 1/2`` between (continuously
    differentiable).

    Example:
        >>> import torch
        >>> smooth_step(torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0]), gamma=1.0)
        tensor([0.0000, 0.1562, 0.5000, 0.8438, 1.0000])
    """
    cubic = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, 0.0, torch.where(t >= gamma / 2, 1.0, cubic))


class DSelectGate(ImageGate):
    """The DSelect-k gate (Hazimeh et al., NeurIPS 2021, arXiv:2106.03760), per sample.

    ``k`` single-expert selectors, each a code of ``m = ⌈log2 E⌉`` smooth binary digits
    ``S(z_i)`` (``z_i = W_i x``, :func:`smooth_step`): the selector's weight on expert ``e`` is
    ``Π_j S(z_ij)`` over the 1 bits of ``e`` times ``Π_j (1 - S(z_ij))`` over its 0 bits, a
    distribution over the ``2^m`` codes. The gate is ``Σ_i softmax(α)_i r(z_i)`` with
    ``α = A x``: weights that sum to 1 and, once the digits reach 0 or 1, select at most ``k``
    experts. When ``E`` is not a power of 2 (the paper assumes it is), code ``c ≥ E`` counts for
    expert ``c - E``. The paper's entropy regulariser, which pushes the selectors to binary
    digits, is not included; the smooth step reaches them itself.

    Args:
        in_channels: image channels.
        experts: ``E ≥ 2``.
        k: selectors.
        gamma: width ``γ`` of the smooth step's transition.
        grid: the image pooling grid.

    Example:
        >>> import torch
        >>> gate = DSelectGate(in_channels=1, experts=4, k=2)
        >>> weights = gate(torch.randn(3, 1, 8, 8))
        >>> weights.shape, bool(torch.allclose(weights.sum(dim=1), torch.ones(3)))
        (torch.Size([3, 4]), True)
    """

    def __init__(self, in_channels: int, experts: int, k: int = 2, gamma: float = 1.0,
                 grid: int = GATE_GRID) -> None:
        super().__init__(in_channels, grid)
        check_dselect(experts, k, gamma)
        bits = math.ceil(math.log2(experts))
        self.k, self.bits, self.gamma = k, bits, gamma
        self.selectors = nn.Linear(self.in_features, k * bits)
        self.combiner = nn.Linear(self.in_features, k)
        nn.init.uniform_(self.selectors.bias, -gamma / 2, gamma / 2)
        codes = torch.arange(2**bits)
        self.register_buffer("code_bits", (codes[:, None] >> torch.arange(bits)) & 1 == 1,
                             persistent=False)
        self.register_buffer("code_expert", F.one_hot(codes % experts, experts).float(),
                             persistent=False)

    def selections(self, x: Tensor) -> Tensor:
        """Each selector's weights over the experts, ``(B, k, E)``."""
        digits = smooth_step(self.selectors(self.pooled(x)), self.gamma)
        digits = digits.unflatten(-1, (self.k, self.bits)).unsqueeze(-2)  # (B, k, 1, m)
        codes = torch.where(self.code_bits, digits, 1 - digits).prod(dim=-1)  # (B, k, 2^m)
        return codes @ self.code_expert

    def forward(self, x: Tensor) -> Tensor:
        weights = self.combiner(self.pooled(x)).softmax(dim=-1)
        return torch.einsum("bk,bke->be", weights, self.selections(x))

    def extra_repr(self) -> str:
        return f"k={self.k}, bits={self.bits}, gamma={self.gamma}, grid={self.grid}"


def check_dselect(experts: int, k: int, gamma: float) -> None:
    """Raise ``ValueError`` unless DSelect-k can select ``k`` of ``experts`` with ``gamma``."""
    require_int("experts", experts, 2)
    require_int("k", k)
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")


def input_channels(backbone: nn.Module) -> int:
    """The image channels ``backbone`` reads: those of its first convolution."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"backbone {type(backbone).__name__} has no convolution to read the "
                     "image channels from")


class ExpertNetwork(nn.Module):
    """Progressive Layered Extraction (Tang et al., RecSys 2020).

    Each of ``levels`` extraction networks has ``shared_experts`` experts and, per task,
    ``task_experts`` experts of its own. Task ``t``'s gate mixes the shared experts and ``t``'s
    own; in every level but the last, a shared gate mixes all experts into the input of the next
    level's shared experts, while ``t``'s experts there read ``t``'s mixture. Levels cut the
    backbone's stages into consecutive groups (:class:`~tasknorm.models.stages.StagedBackbone`),
    so ``shared_experts + T · task_experts`` backbone copies hold all experts of all levels.
    One level is CGC, which with no task experts is MMoE.

    Args:
        backbone: builds one backbone copy.
        tasks: the task names.
        shared_experts: experts shared by all tasks per level (≥ 0).
        task_experts: experts of each task per level (≥ 0).
        levels: extraction networks (1 needs no stage split).
        gate: builds a gate, ``gate(in_channels, experts)``.
    """

    def __init__(self, backbone: Callable[[], nn.Module], tasks: Sequence[str],
                 shared_experts: int, task_experts: int, levels: int,
                 gate: GateFactory) -> None:
        super().__init__()
        require_int("shared_experts", shared_experts, 0)
        require_int("task_experts", task_experts, 0)
        require_int("levels", levels)
        if shared_experts + task_experts < 1:
            raise ValueError("each task needs at least one expert; got shared_experts=0 and "
                             "task_experts=0")
        self.task_names = tuple(tasks)
        self.shared_experts, self.task_experts = shared_experts, task_experts
        count = shared_experts + len(self.task_names) * task_experts
        self.experts = nn.ModuleList(StagedBackbone(backbone(), levels) for _ in range(count))
        channels = input_channels(self.experts[0].backbone)
        self.task_gates = nn.ModuleList(
            nn.ModuleDict({t: gate(channels, shared_experts + task_experts)
                           for t in self.task_names}) for _ in range(levels))
        self.shared_gates = nn.ModuleList(
            gate(channels, count) for _ in range(levels - 1 if shared_experts else 0))
        self.out_features: int = self.experts[0].out_features

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = range(self.shared_experts)
        owned = {t: range(self.shared_experts + i * self.task_experts,
                          self.shared_experts + (i + 1) * self.task_experts)
                 for i, t in enumerate(self.task_names)}
        shared_input = initial_state(x)
        task_inputs = dict.fromkeys(self.task_names, shared_input)
        for level, task_gates in enumerate(self.task_gates):
            shared_out = [self.experts[e].stages[level](shared_input) for e in shared]
            task_out = {t: [self.experts[e].stages[level](task_inputs[t]) for e in owned[t]]
                        for t in self.task_names}
            if level < len(self.shared_gates):
                everything = shared_out + [out for t in self.task_names for out in task_out[t]]
                shared_input = mix(everything, self.shared_gates[level](x))
            task_inputs = {t: mix(shared_out + task_out[t], task_gates[t](x))
                           for t in self.task_names}
        return {t: state.features for t, state in task_inputs.items()}

    def extra_repr(self) -> str:
        return (f"shared_experts={self.shared_experts}, task_experts={self.task_experts}, "
                f"levels={len(self.task_gates)}")


def _softmax_gates(grid: int) -> GateFactory:
    require_int("gate_grid", grid)
    return lambda channels, experts: SoftmaxGate(channels, experts, grid)


def mmoe(backbone: Callable[[], nn.Module], tasks: Sequence[str], experts: int = 4,
         gate_grid: int = GATE_GRID) -> ExpertNetwork:
    """MMoE (Ma et al., KDD 2018): ``experts`` backbone copies and a softmax gate per task;
    task ``t``'s features are ``Σ_e g_t,e(x) · expert_e(x)``."""
    require_int("experts", experts)
    return ExpertNetwork(backbone, tasks, experts, 0, 1, _softmax_gates(gate_grid))


def cgc(backbone: Callable[[], nn.Module], tasks: Sequence[str], shared_experts: int = 1,
        task_experts: int = 1, gate_grid: int = GATE_GRID) -> ExpertNetwork:
    """Customized Gate Control (Tang et al., RecSys 2020): shared and task-specific
    backbone copies, each task's gate over the shared experts and its own."""
    return ExpertNetwork(backbone, tasks, shared_experts, task_experts, 1,
                         _softmax_gates(gate_grid))


def ple(backbone: Callable[[], nn.Module], tasks: Sequence[str], shared_experts: int = 1,
        task_experts: int = 1, levels: int = 2, gate_grid: int = GATE_GRID) -> ExpertNetwork:
    """Progressive Layered Extraction (Tang et al., RecSys 2020): CGC levels stacked
    along the backbone's stages (see :class:`ExpertNetwork`)."""
    return ExpertNetwork(backbone, tasks, shared_experts, task_experts, levels,
                         _softmax_gates(gate_grid))


def dselect_k(backbone: Callable[[], nn.Module], tasks: Sequence[str], experts: int = 4,
              k: int = 2, gamma: float = 1.0, gate_grid: int = GATE_GRID) -> ExpertNetwork:
    """MMoE with a DSelect-k gate per task (Hazimeh et al., NeurIPS 2021, arXiv:2106.03760; see
    :class:`DSelectGate`)."""
    check_dselect(experts, k, gamma)
    require_int("gate_grid", gate_grid)
    return ExpertNetwork(backbone, tasks, experts, 0, 1,
                         lambda channels, count: DSelectGate(channels, count, k, gamma, gate_grid))
