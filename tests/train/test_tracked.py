import math

import lightning as L
import pytest
import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import (
    EqualWeighting,
    GradientMagnitudeBalancing,
    LogLosses,
    MoCo,
    MultiTaskModule,
    build_balance,
    project_onto_simplex,
)
from tasknorm.train.gradients import shared_parameters

JACOBIANS = [torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.5, -1.0]], dtype=torch.float64),
             torch.tensor([[0.5, 1.0, 1.0], [2.0, 0.0, 0.0]], dtype=torch.float64),
             torch.tensor([[-1.0, 0.0, 0.5], [1.0, 1.0, 1.0]], dtype=torch.float64)]
NO_OBJECTIVES = torch.zeros(2, dtype=torch.float64)


def by_bisection(vector, iterations=200):
    """The projection onto the simplex as max(v + θ, 0) with Σ = 1, θ found by bisection."""
    low, high = -vector.max().item() - 1, -vector.min().item() + 1
    for _ in range(iterations):
        theta = (low + high) / 2
        low, high = (theta, high) if (vector + theta).clamp_min(0).sum() < 1 else (low, theta)
    return (vector + (low + high) / 2).clamp_min(0)


def test_simplex_projection_against_bisection():
    generator = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0):
        vector = scale * torch.randn(5, generator=generator, dtype=torch.float64)
        projected = project_onto_simplex(vector)
        assert projected.min() >= 0 and projected.sum().item() == pytest.approx(1.0)
        torch.testing.assert_close(projected, by_bisection(vector))
    with pytest.raises(ValueError, match=r"expected a non-empty vector, got shape \(2, 2\)"):
        project_onto_simplex(torch.zeros(2, 2))


def norm(row):
    return math.sqrt(sum(x * x for x in row.tolist()))


def balanced(rows):
    """Σ_t (max_u ‖ĝ_u‖ / ‖ĝ_t‖) ĝ_t."""
    norms = [norm(row) for row in rows]
    return sum(max(norms) / n * row for n, row in zip(norms, rows, strict=True))


def test_db_mtl_two_steps_by_hand():
    method = GradientMagnitudeBalancing(beta=0.9, beta_sigma=0.5)
    first = method(JACOBIANS[0], NO_OBJECTIVES)
    tracked = 0.1 * JACOBIANS[0]  # β_1 = 0.9, ĝ_0 = 0
    torch.testing.assert_close(first, balanced(tracked), atol=1e-7, rtol=1e-7)
    second = method(JACOBIANS[1], NO_OBJECTIVES)
    beta = 0.9 / math.sqrt(2)
    tracked = beta * tracked + (1 - beta) * JACOBIANS[1]
    torch.testing.assert_close(second, balanced(tracked), atol=1e-7, rtol=1e-7)
    norms = [norm(row) for row in tracked]
    assert norm(second) <= 2 * max(norms) + 1e-9  # two rows, each of the largest norm


def two_task_projection(vector):
    """Π_Δ for two tasks: (t, 1 − t), t = clamp((a − b + 1) / 2, 0, 1)."""
    t = min(max((vector[0] - vector[1] + 1) / 2, 0.0), 1.0)
    return torch.tensor([t, 1 - t], dtype=torch.float64)


def test_moco_two_steps_by_hand():
    beta, gamma, rho = 0.5, 0.1, 0.2
    method = MoCo(2, beta=beta, beta_sigma=0.5, gamma=gamma, gamma_sigma=0.5, rho=rho)
    tracked = torch.zeros(2, 3, dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for k, jacobian in enumerate(JACOBIANS[:2], start=1):
        update = method(jacobian, NO_OBJECTIVES)
        tracked = tracked - beta / math.sqrt(k) * (tracked - jacobian)
        matrix = tracked @ tracked.T + rho * torch.eye(2, dtype=torch.float64)
        weights = two_task_projection((weights - gamma / math.sqrt(k) * matrix @ weights)
                                      .tolist())
        torch.testing.assert_close(method.task_weights, weights)
        torch.testing.assert_close(update, weights @ tracked)


@pytest.mark.parametrize("build", [lambda: GradientMagnitudeBalancing(beta_sigma=0.5),
                                   lambda: MoCo(2, rho=0.1)])
def test_resume_is_exact(build):
    straight = build()
    expected = [straight(j, NO_OBJECTIVES) for j in JACOBIANS][-1]
    first = build()
    for jacobian in JACOBIANS[:2]:
        first(jacobian, NO_OBJECTIVES)
    resumed = build()
    resumed.load_state_dict(first.state_dict())
    torch.testing.assert_close(resumed(JACOBIANS[2], NO_OBJECTIVES), expected)
    for name, buffer in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], buffer)


def test_registered_methods():
    db_mtl = build_balance(["a", "b"], "db_mtl", {"beta": 0.5})
    assert isinstance(db_mtl.weighting, LogLosses)
    assert isinstance(db_mtl.aggregation, GradientMagnitudeBalancing)
    assert db_mtl.aggregation.beta == 0.5
    moco = build_balance(["a", "b", "c"], "moco", {"rho": 0.1})
    assert isinstance(moco.weighting, EqualWeighting) and isinstance(moco.aggregation, MoCo)
    assert moco.aggregation.task_weights.tolist() == pytest.approx([1 / 3] * 3)
    combined = build_balance(["a", "b"], "gls", aggregator="moco")
    assert isinstance(combined.aggregation, MoCo)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("db_mtl", {"beta": 1.0}, r"DB-MTL beta must be in \[0, 1\), got 1.0"),
    ("db_mtl", {"beta_sigma": -1}, "DB-MTL beta_sigma must be non-negative and finite, got -1"),
    ("moco", {"beta": 0.0}, r"MoCo beta must be in \(0, 1\], got 0.0"),
    ("moco", {"gamma": -0.1}, "MoCo gamma must be non-negative and finite, got -0.1"),
    ("moco", {"gamma_sigma": math.inf}, "MoCo gamma_sigma must be non-negative and finite"),
    ("moco", {"rho": math.nan}, "MoCo rho must be non-negative and finite, got nan"),
    ("moco", {"c": 0.4}, "bad arguments .* for balancing method 'moco'"),
])
def test_bad_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_balance(["a", "b"], name, kwargs)


def test_mismatched_jacobians():
    moco = MoCo(3)
    with pytest.raises(ValueError, match="MoCo was built for 3 tasks, got a Jacobian with 2 rows"):
        moco(JACOBIANS[0], NO_OBJECTIVES)
    db_mtl = GradientMagnitudeBalancing()
    db_mtl(JACOBIANS[0], NO_OBJECTIVES)
    with pytest.raises(ValueError, match=r"tracks gradients of shape \(2, 3\), got a Jacobian "
                                         r"of shape \(2, 2\)"):
        db_mtl(JACOBIANS[0][:, :2], NO_OBJECTIVES)


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_training_steps(tmp_path, name):
    data = MultiDigitsDataModule(sizes=(64, 16, 16), batch_size=32, cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture="hard",
                            balancing={"weighting": name},
                            optimization={"lr": 0.1, "scheduler": "none"})
    assert not model.automatic_optimization
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)
    trainer.fit(model, data)
    size = sum(p.numel() for p in shared_parameters(model.model.backbone).values())
    assert int(model.aggregator.steps) == 2
    assert model.aggregator.tracked.shape == (2, size)
