"""tasknorm's GLS, GradVac and IMTL against LibMTL's own code (skipped without LibMTL): on the same
shared layer and losses, a few SGD steps of each side write the same update into the shared
weight (and, for IMTL, the same gradient into the loss scales).

Both sides run in float64 (LibMTL builds its gradient matrices in the default dtype), so they
agree to rounding.
"""

import copy
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from tasknorm.train import build_balance
from tasknorm.train.aggregation import write_gradient
from tasknorm.train.gradients import task_jacobian


def _libmtl_without_init() -> None:
    """Register LibMTL as a bare package, so that its submodules import without its
    ``__init__``, which imports ``torchvision.models.utils`` (gone since torchvision 0.13)."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is not None and "LibMTL" not in sys.modules:
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package


_libmtl_without_init()
weighting = pytest.importorskip("LibMTL.weighting")
architecture = pytest.importorskip("LibMTL.architecture")

TASKS = ("a", "b", "c")
TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(autouse=True)
def float64():
    """LibMTL's gradient matrices take the default dtype: float64 on both sides."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def losses(layer: nn.Module, step: int) -> dict[str, torch.Tensor]:
    """Three losses of the layer's output, different each step: task ``t`` fits the output's
    projection on a unit direction ``d_t`` to 2, the directions' pairwise cosine falling from
    −0.1 at step 0 by 0.1 a step. The outputs start below 2, so each task gradient points
    about along its direction: every pair of tasks conflicts, more at each step."""
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=generator) + 1
    scale = torch.rand(3, generator=generator) + 0.5
    cosine = -0.1 * (step + 1)
    directions = torch.linalg.cholesky((1 - cosine) * torch.eye(3) + cosine)
    out = layer(x) @ directions.T
    return {t: scale[i] * (out[:, i] - 2).pow(2).mean() + 0.1 for i, t in enumerate(TASKS)}


def libmtl_model(weighting_class: type, layer: nn.Module) -> nn.Module:
    """LibMTL's hard parameter sharing of ``layer`` with ``weighting_class`` mixed in, as its
    Trainer combines them (no decoders: the losses read the layer directly). The shared grads
    are zeroed in place, as ``zero_grad`` did before torch 2.0: LibMTL writes its update into
    ``param.grad.data``, which a grad set to ``None`` does not have."""

    class Model(architecture.HPS, weighting_class):
        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    model = Model(list(TASKS), lambda: layer, {}, rep_grad=False, multi_input=False,
                  device=torch.device("cpu"))
    model.init_param()
    return model


def tasknorm_gradients(balance, layer: nn.Linear, task_losses: dict[str, torch.Tensor]) -> None:
    """Store in ``.grad`` what the training module stores: the summed objectives' gradient, or
    with an aggregation its update of the shared weight and the summed objectives' gradient of
    the weighting's own parameters, from one backward pass per task."""
    objectives = balance.weighting.objectives(task_losses)
    if balance.aggregation is None:
        objectives.sum().backward()
        return
    own = list(balance.weighting.parameters())
    jacobian, rest = task_jacobian(objectives, [layer.weight], own)
    write_gradient([layer.weight], balance.aggregation(jacobian, objectives.detach()))
    for parameter, grad in zip(own, rest, strict=True):
        parameter.grad = grad


def both_sides(name: str, weighting_class: type, options: dict | None = None, steps: int = 4,
               **kwargs: float) -> Iterator[tuple[object, nn.Linear, nn.Module]]:
    """tasknorm's method ``name`` (built with ``options``) and LibMTL's ``weighting_class``
    (``backward`` given ``kwargs``) from the same initial layer, yielding ``(balance, layer,
    libmtl_model)`` with both sides' gradients in place, then taking one SGD step on each (loss
    scales included). The global torch seed is reset before each side, so that random draws
    (GradVac's order of the other tasks) agree."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3, bias=False)
    theirs = libmtl_model(weighting_class, copy.deepcopy(layer))
    balance = build_balance(TASKS, name, options)
    ours_sgd = torch.optim.SGD([*layer.parameters(), *balance.weighting.parameters()], lr=0.01)
    theirs_sgd = torch.optim.SGD(theirs.parameters(), lr=0.01)
    for step in range(steps):
        ours_sgd.zero_grad()
        torch.manual_seed(step)
        tasknorm_gradients(balance, layer, losses(layer, step))
        theirs_sgd.zero_grad()
        torch.manual_seed(step)
        theirs.backward(torch.stack(list(losses(theirs.encoder, step).values())), **kwargs)
        yield balance, layer, theirs
        ours_sgd.step()
        theirs_sgd.step()


def test_gls_update_is_libmtls():
    """The gradient of the geometric mean of the losses, step by step."""
    for _, layer, theirs in both_sides("gls", weighting.GLS):
        torch.testing.assert_close(layer.weight.grad, theirs.encoder.weight.grad, **TOLERANCE)


def test_gradvac_update_and_targets_are_libmtls(monkeypatch):
    """GradVac's update and its EMA targets φ̂, carried across steps. LibMTL visits the other
    tasks in an order from Python's ``random.shuffle``, TorchJD from ``torch.randperm``; here
    LibMTL draws its order from ``torch.randperm`` too.

    TorchJD updates a target after every pair, as the paper's algorithm does; LibMTL only for
    pairs that it corrects (cosine below the target). They agree while every pair conflicts more
    than its target, as here at every step: equal targets after each step show it. TorchJD's
    ε (1e-8, added to its denominators, relative effect ~3e-8 here) is set to 0: LibMTL has none.
    β is left at tasknorm's default, LibMTL's 0.5."""
    def shuffle(items: list[int]) -> None:
        items[:] = [items[k] for k in torch.randperm(len(items)).tolist()]

    monkeypatch.setattr(importlib.import_module("LibMTL.weighting.GradVac"), "random",
                        types.SimpleNamespace(shuffle=shuffle))
    for balance, layer, theirs in both_sides("gradvac", weighting.GradVac, {"eps": 0.0},
                                               beta=0.5):
        torch.testing.assert_close(layer.weight.grad, theirs.encoder.weight.grad, **TOLERANCE)
        targets = balance.aggregation.get_extra_state()["weighting.weighting:_phi_t"]
        torch.testing.assert_close(targets, theirs.rho_T, **TOLERANCE)
    assert (theirs.rho_T[~torch.eye(3, dtype=torch.bool)] < 0).all()  # no vacuous agreement


def test_imtl_update_and_loss_scale_gradient_are_libmtls():
    """IMTL: the IMTL-G combination of the scaled losses' gradients on the shared weight and the
    gradient ``e^s L − 1`` of the log loss scales, which SGD moves away from 0 step by step."""
    for balance, layer, theirs in both_sides("imtl", weighting.IMTL):
        torch.testing.assert_close(layer.weight.grad, theirs.encoder.weight.grad, **TOLERANCE)
        torch.testing.assert_close(balance.weighting.log_scales.grad, theirs.loss_scale.grad,
                                   **TOLERANCE)
    assert (balance.weighting.log_scales != 0).all()
