import lightning as L
import pytest
import torch
from torchjd.aggregation import MGDA, UPGrad

from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import AGGREGATORS, MultiTaskModule, build_aggregator
from tasknorm.train.aggregation import aggregate
from tasknorm.train.gradients import shared_parameters, task_gradients

ISSUE_AGGREGATORS = ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "upgrad", "graddrop",
                     "aligned_mtl", "dualproj")


def test_every_method_of_the_issue_is_registered():
    assert set(ISSUE_AGGREGATORS) <= set(AGGREGATORS)


def projected(g, onto):
    """g projected onto the half-space {v : v·onto ≥ 0}."""
    dot = g @ onto
    return g if dot >= 0 else g - dot / (onto @ onto) * onto


def test_upgrad_and_pcgrad_by_hand_on_two_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([-1.0, 2.0, 0.5])
    assert g1 @ g2 < 0
    jacobian = torch.stack([g1, g2]).double()
    g1, g2 = g1.double(), g2.double()
    # UPGrad (2 tasks): each row projected onto the dual cone of both rows, then averaged
    expected = (projected(g1, g2) + projected(g2, g1)) / 2
    # (TorchJD regularises the Gramian slightly before solving its QP)
    torch.testing.assert_close(aggregate(build_aggregator("upgrad", 2), jacobian), expected,
                               atol=1e-4, rtol=1e-3)
    # PCGrad (2 tasks): the same projections, summed
    expected = projected(g1, g2) + projected(g2, g1)
    torch.testing.assert_close(aggregate(build_aggregator("pcgrad", 2), jacobian), expected)


def test_mgda_by_hand_is_the_min_norm_point_of_the_hull():
    g1, g2 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    gamma = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1)
    expected = gamma * g1 + (1 - gamma) * g2  # (0.4, 0.8)
    result = aggregate(build_aggregator("mgda", 2, epsilon=1e-6, max_iters=1000),
                       torch.stack([g1, g2]))
    torch.testing.assert_close(result, expected, atol=1e-3, rtol=0)


def test_unknown_and_bad_aggregators():
    with pytest.raises(ValueError, match=r"unknown aggregator 'adam'; expected one of \["
                                         r"'aligned_mtl', 'cagrad', "):
        build_aggregator("adam", 2)
    with pytest.raises(ValueError, match=r"bad arguments .* 'pcgrad'"):
        build_aggregator("pcgrad", 2, c=0.5)
    upgrad = build_aggregator("upgrad", 2, pref_vector=[0.25, 0.75])
    assert isinstance(upgrad, UPGrad)
    torch.testing.assert_close(upgrad.pref_vector, torch.tensor([0.25, 0.75]))
    assert isinstance(build_aggregator("mgda", 3), MGDA)


class Recording(MultiTaskModule):
    """Keeps the batch and the random state of the last step."""

    def training_step(self, batch, batch_idx):
        self.last_batch = batch
        self.rng = torch.get_rng_state()
        return super().training_step(batch, batch_idx)


class CheckUpdate(L.Callback):
    """Before the optimizer step: the shared gradient is TorchJD's aggregation of the per-task
    Jacobian, the task-specific gradient is that of the summed losses."""

    def __init__(self, name, kwargs):
        self.fresh = build_aggregator(name, 2, **kwargs)
        self.checked = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        shared = list(shared_parameters(pl_module.model.backbone).values())
        batch = pl_module.last_batch
        losses = pl_module._losses(pl_module.model(batch["image"]), batch)
        jacobian = task_gradients(losses, shared)
        state = torch.get_rng_state()
        torch.set_rng_state(pl_module.rng)  # GradDrop draws random numbers
        expected = aggregate(self.fresh, jacobian)
        torch.set_rng_state(state)
        applied = torch.cat([p.grad.reshape(-1) for p in shared])
        torch.testing.assert_close(applied, expected)
        ids = {id(p) for p in shared}
        others = [p for p in pl_module.parameters() if p.requires_grad and id(p) not in ids]
        expected_others = torch.autograd.grad(sum(losses.values()), others, allow_unused=True)
        for parameter, grad in zip(others, expected_others, strict=True):
            torch.testing.assert_close(parameter.grad, grad)
        self.checked += 1


@pytest.mark.parametrize("architecture", ["hard", "task_sigma"])
@pytest.mark.parametrize("name", ISSUE_AGGREGATORS)
def test_one_step_applies_the_aggregated_jacobian(tmp_path, name, architecture):
    """Against the Jacobian of the all-tasks pass, which the step of a task-specific model
    does not use (it runs one pass per task)."""
    data = MultiDigitsDataModule(variant="even_odd", sizes=(16, 8, 8), batch_size=16,
                                 cache_dir=str(tmp_path))
    kwargs = {"c": 0.5} if name == "cagrad" else {}
    L.seed_everything(0)
    model = Recording(data.tasks, backbone_args={"width": 4, "norm": architecture != "hard"},
                      architecture=architecture, aggregator=name, aggregator_args=kwargs,
                      optimizer="sgd", lr=0.1, scheduler="none")
    assert not model.automatic_optimization
    before = [p.detach().clone() for p in model.model.backbone.parameters()]
    check = CheckUpdate(name, kwargs)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[check])
    trainer.fit(model, data)
    assert check.checked == 1
    after = list(model.model.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert "train/aggregator_seconds" in trainer.callback_metrics


def test_aggregator_trains_a_task_specific_model(tmp_path):
    data = MultiDigitsDataModule(sizes=(64, 32, 32), batch_size=32, cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture="task_sigma",
                            aggregator="upgrad")
    gates = [n for n, p in model.named_parameters() if "gate" in n or "task" in n]
    shared = shared_parameters(model.model.backbone)
    assert shared and not any(n in gates for n in shared)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(model, data)
    assert trainer.global_step == 2


def test_aggregator_combines_with_a_loss_weighting_but_not_cosreg():
    data = MultiDigitsDataModule(sizes=(8, 8, 8))
    module = MultiTaskModule(data.tasks, aggregator="upgrad", weighting="dwa")
    assert type(module.weighting).__name__ == "DynamicWeightAverage"
    assert isinstance(module.aggregator.method, UPGrad)
    with pytest.raises(ValueError, match="'pcgrad' already combines the gradients"):
        MultiTaskModule(data.tasks, aggregator="upgrad", weighting="pcgrad")
    with pytest.raises(ValueError, match="'dwa' is a loss weighting, not a gradient method"):
        MultiTaskModule(data.tasks, aggregator="dwa")
    with pytest.raises(ValueError, match="cannot be combined"):
        MultiTaskModule(data.tasks, aggregator="upgrad", cosreg_alpha=1.0)
    with pytest.raises(ValueError, match="unknown aggregator 'sgd'"):
        MultiTaskModule(data.tasks, aggregator="sgd")
