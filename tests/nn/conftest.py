from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from tasknorm.nn import unstack_tasks, use_all_tasks, use_task


def check_low_precision(layer: nn.Module, refs: Sequence[nn.Module], inputs: Sequence[Tensor],
                        tasks: Sequence[str], layout: str | None, dtype: torch.dtype,
                        autocast: bool) -> None:
    """``layer`` on low-precision ``inputs`` (one batch per task; ``layout=None``: the second
    task alone) returns ``dtype`` and agrees with the float64 reference layers ``refs`` to two
    ulps of ``dtype``."""
    if layout is None:
        x, route, expected = inputs[1], use_task(tasks[1]), [refs[1](inputs[1].double())]
    else:
        x = torch.cat(inputs) if layout == "task_major" else torch.stack(inputs, 1).flatten(0, 1)
        route = use_all_tasks(layout)
        expected = [ref(i.double()) for ref, i in zip(refs, inputs, strict=True)]
    with route, torch.autocast("cpu", dtype=dtype, enabled=autocast):
        y = layer(x)
    assert y.dtype == dtype
    outputs = [y] if layout is None else unstack_tasks(y, len(tasks), layout)
    eps = torch.finfo(dtype).eps
    for out, ref in zip(outputs, expected, strict=True):
        torch.testing.assert_close(out.double(), ref, rtol=2 * eps, atol=2 * eps)


@pytest.fixture
def low_precision_check() -> Callable[..., None]:
    """:func:`check_low_precision`, shared by the BatchNorm and LayerNorm tests."""
    return check_low_precision
