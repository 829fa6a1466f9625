import math

import lightning as L
import pytest
import torch
from torchjd.aggregation import IMTLG
from torchjd.scalarization import FAMO, STCH, GeometricMean

import tasknorm.train.scalarization as scalarization
from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import (
    FastAdaptiveWeighting,
    GeometricLossStrategy,
    ImpartialLossScaling,
    LogLosses,
    MultiTaskModule,
    SmoothTchebycheff,
    TorchJDAggregation,
    build_balance,
)
from tasknorm.train.scalarization import EPSILON

TASKS = ("a", "b", "c")
W = torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64)


def toy_losses(w, shift=0.0):
    """Three positive losses of a shared parameter ``w``, with different gradients."""
    return {"a": (2 * w[0] + w[1] + shift) ** 2 + 0.5, "b": torch.exp(w[1] - w[2] + shift),
            "c": (w[2] - 1) ** 2 + 0.1 + shift}


def objectives_and_gradient(weighting, w0=W):
    w = w0.clone().requires_grad_()
    objectives = weighting.objectives(toy_losses(w))
    (gradient,) = torch.autograd.grad(objectives.sum(), w)
    return objectives.detach(), gradient


def formula_and_gradient(formula, w0=W):
    """A scalar loss written from the paper on the stacked losses, and its autograd gradient."""
    w = w0.clone().requires_grad_()
    value = formula(torch.stack(list(toy_losses(w).values())))
    (gradient,) = torch.autograd.grad(value, w)
    return value.detach(), gradient


def loss_vector(w0=W):
    return torch.stack(list(toy_losses(w0).values()))


def test_gls_is_the_geometric_mean_in_value_and_gradient():
    gls = GeometricLossStrategy(TASKS)
    objectives, gradient = objectives_and_gradient(gls)
    value, expected = formula_and_gradient(lambda losses: losses.prod() ** (1 / 3))
    torch.testing.assert_close(objectives, value.expand(3) / 3)
    torch.testing.assert_close(gradient, expected)
    torchjd_value, torchjd_gradient = formula_and_gradient(GeometricMean())
    torch.testing.assert_close(objectives.sum(), torchjd_value)
    torch.testing.assert_close(gradient, torchjd_gradient)
    # ∂F/∂L_t = F / (T L_t)
    assert list(gls.weights().values()) == pytest.approx((value / (3 * loss_vector())).tolist())


def test_first_order_objectives_give_the_joined_batch_update(monkeypatch):
    """Under DDP each process back-propagates its objectives at the mean losses; the mean of the
    processes' gradients is the gradient of F at the mean losses (the joined batch)."""
    w = W.clone().requires_grad_()
    shares = [toy_losses(w), toy_losses(w, shift=0.3)]
    mean = (torch.stack(list(shares[0].values())) + torch.stack(list(shares[1].values()))) / 2
    monkeypatch.setattr(scalarization, "mean_over_processes", lambda _: mean.detach())
    gls = GeometricLossStrategy(TASKS)
    outputs = [gls.objectives(share) for share in shares]
    gradients = [torch.autograd.grad(o.sum(), w, retain_graph=True)[0] for o in outputs]
    (expected,) = torch.autograd.grad(mean.prod() ** (1 / 3), w)
    torch.testing.assert_close((gradients[0] + gradients[1]) / 2, expected)
    torch.testing.assert_close((outputs[0].sum() + outputs[1].sum()).detach() / 2,
                               mean.detach().prod() ** (1 / 3))


def test_log_losses_value_and_gradient():
    objectives, gradient = objectives_and_gradient(LogLosses(TASKS))
    _, expected = formula_and_gradient(lambda losses: torch.log(losses + EPSILON).sum())
    torch.testing.assert_close(objectives, torch.log(loss_vector() + EPSILON))
    torch.testing.assert_close(gradient, expected)


PREFERENCE = {"a": 0.2, "b": 0.5, "c": 0.3}
TYPICAL = {"a": 1.5, "b": 0.8, "c": 0.2}


def stch_formula(losses, mu, preference, typical):
    """T · μ log Σ_t exp(λ_t (log L_t − log n_t) / μ), the paper's g_μ on log losses."""
    lam = torch.tensor([preference[t] for t in TASKS], dtype=losses.dtype)
    ideal = torch.log(torch.tensor([typical[t] for t in TASKS], dtype=losses.dtype))
    return 3 * mu * torch.log(torch.exp(lam * (torch.log(losses) - ideal) / mu).sum())


def test_stch_warms_up_on_log_losses_then_follows_the_paper():
    stch = SmoothTchebycheff(TASKS, mu=0.5, preference=PREFERENCE, warmup_epochs=2)
    _, gradient = objectives_and_gradient(stch)
    _, expected = formula_and_gradient(lambda losses: torch.log(losses).sum())
    torch.testing.assert_close(gradient, expected)
    stch.epoch_end(dict.fromkeys(TASKS, 9.0))  # not the last warm-up epoch: not kept
    stch.epoch_end(TYPICAL)
    objectives, gradient = objectives_and_gradient(stch)
    value, expected = formula_and_gradient(
        lambda losses: stch_formula(losses, 0.5, PREFERENCE, TYPICAL))
    torch.testing.assert_close(objectives.sum(), value)
    torch.testing.assert_close(gradient, expected)
    lam = torch.tensor(list(PREFERENCE.values()), dtype=torch.float64)
    reference = torch.log(torch.tensor(list(TYPICAL.values()), dtype=torch.float64))
    torchjd = STCH(0.5, weights=lam, reference=reference)
    _, expected = formula_and_gradient(lambda losses: 3 * torchjd(torch.log(losses)))
    torch.testing.assert_close(gradient, expected)
    stch.epoch_end(dict.fromkeys(TASKS, 9.0))  # after the warm-up: ignored
    torch.testing.assert_close(objectives_and_gradient(stch)[1], expected)

    restored = SmoothTchebycheff(TASKS, mu=0.5, preference=PREFERENCE, warmup_epochs=2)
    restored.load_state_dict(stch.state_dict())
    torch.testing.assert_close(objectives_and_gradient(restored)[1], expected)


def test_stch_without_warm_up_has_ideal_point_zero():
    stch = SmoothTchebycheff(TASKS, warmup_epochs=0)
    _, gradient = objectives_and_gradient(stch)
    ones = dict.fromkeys(TASKS, 1.0)
    _, expected = formula_and_gradient(lambda losses: stch_formula(losses, 1.0, ones, ones))
    torch.testing.assert_close(gradient, expected)


BEFORE = [torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.2, 0.6, 0.7]),
          torch.tensor([1.0, 0.4, 0.6])]
AFTER = [torch.tensor([1.0, 0.45, 0.9]), torch.tensor([1.1, 0.5, 0.5]),
         torch.tensor([0.9, 0.41, 0.5])]


def famo_step(famo, before, after):
    famo.objectives(dict(zip(TASKS, before, strict=True)))
    famo.after_step(dict(zip(TASKS, after, strict=True)))


def test_famo_gradient_is_a_convex_combination_weighted_by_z_over_the_loss():
    famo = FastAdaptiveWeighting(TASKS)
    _, gradient = objectives_and_gradient(famo)
    losses = loss_vector() + EPSILON
    c = 1 / (1 / (3 * losses)).sum()
    weights = c / (3 * losses)  # z = 1/3 before the first update
    assert weights.sum().item() == pytest.approx(1.0)
    assert list(famo.weights().values()) == pytest.approx(weights.tolist())
    _, expected = formula_and_gradient(lambda losses: (weights * losses).sum())
    torch.testing.assert_close(gradient, expected)


def test_famo_logits_after_one_step_by_hand():
    famo = FastAdaptiveWeighting(TASKS, beta=0.025, gamma=1e-3)
    famo_step(famo, BEFORE[0], AFTER[0])
    delta = torch.log(BEFORE[0] + EPSILON) - torch.log(AFTER[0] + EPSILON)
    z = torch.full((3,), 1 / 3)
    grad = (torch.diag(z) - torch.outer(z, z)) @ delta  # + γ ξ = 0 at ξ = 0
    # Adam's first step: m̂ = g, v̂ = g², ξ = −β g / (|g| + ε)
    expected = -0.025 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(famo.logits, expected)
    assert famo.logits[0] < 0 < famo.logits[1]  # task a's loss fell most: it loses weight


def test_famo_matches_torchjd_famo_over_steps():
    ours, theirs = FastAdaptiveWeighting(TASKS), FAMO(3, lr=0.025, weight_decay=1e-3)
    for before, after in zip(BEFORE, AFTER, strict=True):
        famo_step(ours, before, after)
        theirs(before)
        theirs.update(after)
    values = BEFORE[0].clone().requires_grad_()
    (expected,) = torch.autograd.grad(theirs(values), values)
    ours.objectives(dict(zip(TASKS, BEFORE[0], strict=True)))
    assert list(ours.weights().values()) == pytest.approx(expected.tolist(), rel=1e-5)


def test_famo_resumes_exactly():
    straight, first = FastAdaptiveWeighting(TASKS), FastAdaptiveWeighting(TASKS)
    for before, after in zip(BEFORE, AFTER, strict=True):
        famo_step(straight, before, after)
    for before, after in zip(BEFORE[:2], AFTER[:2], strict=True):
        famo_step(first, before, after)
    resumed = FastAdaptiveWeighting(TASKS)
    resumed.load_state_dict(first.state_dict())
    famo_step(resumed, BEFORE[2], AFTER[2])
    for name, buffer in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], buffer)
    assert int(resumed.steps) == 3


def test_imtl_l_objective_and_gradients():
    imtl = ImpartialLossScaling(TASKS)
    with torch.no_grad():
        imtl.log_scales.copy_(torch.tensor([0.5, -1.0, 0.0]))
    w = W.clone().requires_grad_()
    losses = toy_losses(w)
    objectives = imtl.objectives(losses)
    scales = torch.exp(torch.tensor([0.5, -1.0, 0.0]))
    stacked = torch.stack(list(losses.values())).detach()
    torch.testing.assert_close(objectives.detach(),
                               (scales * stacked - torch.tensor([0.5, -1.0, 0.0])).to(stacked))
    objectives.sum().backward()
    # d/ds (e^s L − s) = e^s L − 1
    torch.testing.assert_close(imtl.log_scales.grad, (scales * stacked - 1).float())
    _, expected = formula_and_gradient(lambda losses: (scales.to(losses) * losses).sum())
    torch.testing.assert_close(w.grad, expected)
    restored = ImpartialLossScaling(TASKS)
    restored.load_state_dict(imtl.state_dict())
    assert restored.weights() == pytest.approx(dict(zip(TASKS, scales.tolist(), strict=True)))


def test_registered_methods_build_their_parts():
    imtl = build_balance(TASKS, "imtl")
    assert isinstance(imtl.weighting, ImpartialLossScaling)
    assert isinstance(imtl.aggregation, TorchJDAggregation)
    assert isinstance(imtl.aggregation.method, IMTLG)
    imtl_l = build_balance(TASKS, "imtl_l")
    assert isinstance(imtl_l.weighting, ImpartialLossScaling) and imtl_l.aggregation is None
    gls = build_balance(TASKS, "gls", aggregator="upgrad")
    assert isinstance(gls.weighting, GeometricLossStrategy) and gls.aggregation is not None
    famo = build_balance(TASKS, "famo", {"beta": 0.01})
    assert famo.weighting.beta == 0.01 and famo.weighting.needs_losses_after_step
    stch = build_balance(TASKS, "stch", {"mu": 0.1, "warmup_epochs": 0})
    assert stch.weighting.mu == 0.1


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("stch", {"mu": 0.0}, "STCH smoothing mu must be positive and finite, got 0.0"),
    ("stch", {"warmup_epochs": -1}, "STCH warmup_epochs must be a non-negative integer, got -1"),
    ("stch", {"warmup_epochs": 1.5}, "STCH warmup_epochs must be a non-negative integer, got 1.5"),
    ("stch", {"preference": {"a": 1.0}}, r"STCH preference is given for \['a'\] but the tasks"),
    ("stch", {"preference": {"a": 1.0, "b": -1.0, "c": 1.0}},
     r"STCH preference must be positive and finite, got \{'b': -1.0\}"),
    ("famo", {"beta": -0.1}, "FAMO beta must be non-negative and finite, got -0.1"),
    ("famo", {"gamma": math.inf}, "FAMO gamma must be non-negative and finite, got inf"),
    ("gls", {"mu": 1.0}, "bad arguments .* for balancing method 'gls'"),
])
def test_bad_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_balance(TASKS, name, kwargs)


@pytest.mark.parametrize("name", ["famo", "imtl"])
def test_training_steps(tmp_path, name):
    """FAMO learns its logits after each optimizer step; IMTL's scales get the gradient of the
    summed objectives next to IMTL-G's update of the shared parameters."""
    data = MultiDigitsDataModule(sizes=(64, 16, 16), batch_size=32, cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture="hard",
                            balancing={"weighting": name},
                            optimization={"lr": 0.1, "scheduler": "none"})
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)
    trainer.fit(model, data)
    if name == "famo":
        assert int(model.weighting.steps) == 2 and model.weighting.logits.abs().sum() > 0
    else:
        assert not model.automatic_optimization
        assert model.weighting.log_scales.detach().abs().sum() > 0
