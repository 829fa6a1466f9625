"""What passes from one stage of a backbone to the next, and how task groups share it.

A group's rows of a stacked state are a block of the batch (task-major, as in the all-tasks
pass): the state of ``G`` groups on ``N`` samples has ``G * N`` rows in its features and in
every max-pool index tensor, so that SegNet's pooling indices travel with their group's
features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

Skip = tuple[Tensor, torch.Size]


class StageState(NamedTuple):
    """What passes from one stage to the next: the features, the input image's ``(H, W)`` and
    the max-pool indices (with pre-pool sizes) that later stages unpool with."""

    features: Tensor
    size: tuple[int, int]
    skips: tuple[Skip, ...] = ()


def initial_state(x: Tensor) -> StageState:
    """The state the first stage takes: the image ``x`` itself."""
    return StageState(x, tuple(x.shape[-2:]))


def select_groups(state: StageState, sources: Sequence[int], groups: int) -> StageState:
    """A state of ``len(sources)`` groups whose group ``g`` is group ``sources[g]`` of
    ``state``, a state of ``groups`` groups stacked task-major.

    Example:
        >>> import torch
        >>> state = initial_state(torch.arange(6.0).view(2, 3, 1, 1))  # 1 group, 2 samples
        >>> select_groups(state, [0, 0, 0], 1).features.flatten(1).tolist()[2:4]
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    if tuple(sources) == tuple(range(groups)):
        return state
    index = torch.tensor(sources, device=state.features.device)

    def rows(tensor: Tensor) -> Tensor:
        return tensor.unflatten(0, (groups, -1))[index].flatten(0, 1)

    return StageState(rows(state.features), state.size,
                      tuple((rows(indices), size) for indices, size in state.skips))
