"""The balancing interface: properties every method in METHODS must have, and how the training
module applies a method (combined weighting + aggregator, three-batch methods)."""

import copy
import io

import lightning as L
import pytest
import torch
from torch import nn

from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import METHODS, MultiTaskModule, build_aggregator, build_balance
from tasknorm.train.aggregation import aggregate
from tasknorm.train.gradients import task_gradients

TASKS = ("a", "b", "c")
ISSUE_METHODS = ("gls", "gradvac", "imtl", "db_mtl", "famo", "moco", "modo", "fairgrad", "stch",
                 "excess_mtl", "sdmgrad", "rgw", "equal", "uncertainty", "dwa", "gradnorm",
                 "mgda", "pcgrad", "cagrad", "nash_mtl", "aligned_mtl", "upgrad")


def test_every_method_of_the_issue_is_registered():
    assert set(ISSUE_METHODS) <= set(METHODS)


class Toy(nn.Module):
    """A shared linear layer and three task losses of its output, different each step."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(4, 3, bias=False))

    def losses(self, step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(100 + step)
        x = torch.randn(8, 4, generator=generator)
        scale = torch.rand(3, generator=generator) + 0.5
        out = self.shared(x)
        return {t: scale[i] * (out[:, i] - 1).pow(2).mean() + 0.1 for i, t in enumerate(TASKS)}


def run(balance, toy: Toy, steps: range) -> list[torch.Tensor]:
    """What the training module hands on each step: the summed objectives' gradient, or the
    aggregation's update (``None`` entries skipped); after-step and epoch-end calls as it makes
    them. The random state is fixed per step, so interrupted and straight runs draw alike."""
    weight = toy.shared[0].weight
    results = []
    for step in steps:
        torch.manual_seed(step)
        losses = toy.losses(step)
        objectives = balance.weighting.objectives(losses)
        if balance.aggregation is None:
            (update,) = torch.autograd.grad(objectives.sum(), [weight])
            update = update.reshape(-1)
        else:
            jacobian = task_gradients(list(objectives), [weight])
            update = balance.aggregation(jacobian, objectives.detach())
        results += [objectives.detach()] + ([] if update is None else [update])
        if balance.weighting.needs_losses_after_step:
            with torch.no_grad():
                weight.sub_(0.01)  # a stand-in optimizer step
            balance.weighting.after_step({t: v.detach() for t, v in toy.losses(step).items()})
        if step % 2:
            balance.weighting.epoch_end({t: float(v.detach()) for t, v in toy.losses(step).items()})
    return results


def built(name: str, toy: Toy):
    balance = build_balance(TASKS, name)
    if hasattr(balance.weighting, "attach"):
        balance.weighting.attach(toy.shared)
    return balance


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_saved_midway_continues_as_if_never_interrupted(name):
    """Five steps straight == three steps, state dict through ``torch.load(weights_only=True)``
    into a fresh instance, two more steps: every method's state is in its state dict and loads
    into a new one (fixed weights keep their given values, here none are needed)."""
    if name == "fixed":
        pytest.skip("needs weights; stateless")
    torch.manual_seed(0)
    toy = Toy()
    initial = copy.deepcopy(toy.state_dict())
    straight = run(built(name, toy), toy, range(5))

    toy.load_state_dict(initial)
    first = built(name, toy)
    interrupted = run(first, toy, range(3))
    buffer = io.BytesIO()
    torch.save({"toy": toy.state_dict(), "balance": {
        "weighting": first.weighting.state_dict(),
        "aggregation": None if first.aggregation is None else first.aggregation.state_dict()}},
        buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    toy = Toy()
    toy.load_state_dict(saved["toy"])
    second = built(name, toy)
    second.weighting.load_state_dict(saved["balance"]["weighting"])
    if second.aggregation is not None:
        second.aggregation.load_state_dict(saved["balance"]["aggregation"])
    interrupted += run(second, toy, range(3, 5))

    assert len(interrupted) == len(straight)
    for expected, got in zip(straight, interrupted, strict=True):
        torch.testing.assert_close(got, expected)


def test_a_weighting_combined_with_an_aggregator_aggregates_the_weighted_objectives(tmp_path):
    """Uncertainty weighting + UPGrad: the shared update is UPGrad of the Jacobian of the
    weighted objectives; the log-variances get the gradient of their sum."""
    data = MultiDigitsDataModule(variant="even_odd", sizes=(16, 8, 8), batch_size=16,
                                 cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4, "norm": False},
                            architecture="hard", scheduler="none", optimizer="sgd", lr=0.1,
                            balancing={"weighting": "uncertainty", "aggregator": "upgrad"})
    with torch.no_grad():
        model.weighting.log_vars.copy_(torch.tensor([0.5, -1.0]))
    checks = []

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            losses = pl_module._losses(pl_module.model(batch["image"]), batch)
            s = pl_module.weighting.log_vars
            stacked = torch.stack(list(losses.values()))
            objectives = 0.5 * torch.exp(-s) * stacked + 0.5 * s
            shared = list(pl_module.model.backbone.parameters())
            self.update = aggregate(build_aggregator("upgrad", 2),
                                    task_gradients(list(objectives), shared))
            (self.log_var_grad,) = torch.autograd.grad(objectives.sum(), [s], retain_graph=True)
            self.heads = list(pl_module.model.heads.parameters())
            self.head_grads = torch.autograd.grad(objectives.sum(), self.heads)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            applied = torch.cat([p.grad.reshape(-1) for p in pl_module.model.backbone.parameters()])
            torch.testing.assert_close(applied, self.update)
            torch.testing.assert_close(pl_module.weighting.log_vars.grad, self.log_var_grad)
            for head, grad in zip(self.heads, self.head_grads, strict=True):
                torch.testing.assert_close(head.grad, grad)
            checks.append(True)

    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
              callbacks=[Check()]).fit(model, data)
    assert checks == [True]


def test_a_three_batch_method_steps_once_every_three_batches(tmp_path):
    """MoDo: batches 1 and 2 only measure (no parameter moves), batch 3 steps with J₃ᵀλ."""
    data = MultiDigitsDataModule(variant="even_odd", sizes=(48, 8, 8), batch_size=8,
                                 cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture="hard",
                            optimizer="sgd", lr=0.1, scheduler="none",
                            balancing={"weighting": "modo"})
    moved = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = [p.detach().clone() for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            moved.append(any(not torch.equal(p, b) for p, b in
                             zip(pl_module.parameters(), self.before, strict=True)))

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(model, data)
    assert moved == [False, False, True, False, False, True]
    assert trainer.global_step == 2
