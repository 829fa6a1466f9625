import itertools

import lightning as L
import pytest
import torch
from torch import nn

from tasknorm.data import MultiDigitsDataModule
from tasknorm.models import digits_cnn, digits_encoder
from tasknorm.nn import convert, use_task
from tasknorm.train import CosReg, MultiTaskModule, cosreg_penalty, last_shared_layer
from tasknorm.train.gradients import task_gradients


def reference_penalty(gradients, alpha):
    """α / (T(T−1)) · ‖UᵀU − I‖²_F with U = unit columns, written out element by element."""
    rows = [g / g.norm() for g in gradients.double()]
    t = len(rows)
    total = sum((float(rows[i] @ rows[j]) - (1.0 if i == j else 0.0)) ** 2
                for i, j in itertools.product(range(t), repeat=2))
    return alpha * total / (t * (t - 1))


def test_orthogonal_gradients_cost_nothing():
    g = torch.tensor([[2.0, 0.0, 0.0], [0.0, -5.0, 0.0], [0.0, 0.0, 0.1]])
    assert cosreg_penalty(g, alpha=10.0).item() == pytest.approx(0.0, abs=1e-12)


def test_parallel_gradients_cost_alpha():
    g = torch.tensor([[1.0, 2.0], [-2.0, -4.0], [3.0, 6.0]])  # cos² = 1 for every pair
    assert cosreg_penalty(g, alpha=10.0).item() == pytest.approx(10.0)


def test_penalty_equals_the_matrix_formula():
    torch.manual_seed(0)
    for tasks in (2, 3, 5):
        g = torch.randn(tasks, 7)
        expected = reference_penalty(g, alpha=0.3)
        assert cosreg_penalty(g, alpha=0.3).item() == pytest.approx(expected, rel=1e-5)
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 45°: cos² = 1/2 for both ordered pairs
    assert cosreg_penalty(g, alpha=2.0).item() == pytest.approx(1.0)


def test_penalty_needs_two_tasks():
    with pytest.raises(ValueError, match="at least two tasks"):
        cosreg_penalty(torch.ones(1, 3))


def tiny_penalty(w1, w2, h1, h2, x, alpha=10.0):
    """A two-task network (shared w1 → w2, heads h1, h2); CosReg on w2."""
    features = torch.tanh(torch.tanh(x @ w1) @ w2)
    losses = [(features @ h1).pow(2).mean(), torch.sin(features @ h2).mean()]
    return cosreg_penalty(task_gradients(losses, [w2], create_graph=True), alpha)


def test_penalty_gradient_matches_finite_differences():
    torch.manual_seed(0)
    shapes = [(3, 4), (4, 4), (4, 1), (4, 1)]
    params = tuple(torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *p: tiny_penalty(*p, x), params)
    # the penalty reaches the layer below the regularised one and the heads
    grads = torch.autograd.grad(tiny_penalty(*params, x), params)
    assert all(g.abs().sum() > 0 for g in grads)


def test_last_shared_layer_of_hard_and_task_specific_backbones():
    assert last_shared_layer(digits_cnn(width=4)) == "features.9"
    assert last_shared_layer(digits_cnn(width=4, norm=False)) == "features.6"
    assert last_shared_layer(digits_encoder()) == "features.3"  # conv, BN, ReLU, conv
    assert last_shared_layer(digits_encoder(norm=False)) == "features.2"  # conv, ReLU, conv
    assert CosReg().attach(convert(digits_encoder(), ["a", "b"])) == ["features.3.weight"]
    task_sigma = convert(digits_cnn(width=4), ["a", "b"], kind="task_sigma")
    assert last_shared_layer(task_sigma) == "features.9"
    assert CosReg().attach(task_sigma) == ["features.9.weight"]  # the conv, not the gates
    assert CosReg(parameters=["features.0", "features.3"]).attach(task_sigma) == [
        "features.0.weight", "features.3.weight"]
    everything = CosReg(parameters=["*"]).attach(task_sigma)
    assert everything == [f"features.{i}.weight" for i in (0, 3, 6, 9)]
    with pytest.raises(ValueError, match="no shared convolution or linear layer"):
        last_shared_layer(nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="no trainable shared parameter is named 'head'"):
        CosReg(parameters=["head"]).attach(task_sigma)


def test_loss_scaled_alpha_and_double_backprop_through_the_backbone():
    torch.manual_seed(0)
    backbone = convert(digits_cnn(width=4), ["a", "b"], kind="task_sigma").train()
    with use_task("a"):
        features = backbone(torch.randn(8, 1, 23, 23))
    mix = torch.randn(features.size(1))
    losses = {"a": features.pow(2).mean(), "b": (features @ mix - 1).pow(2).mean()}
    plain, scaled = CosReg(alpha=10.0), CosReg(alpha=10.0, loss_scaled=True)
    plain.attach(backbone)
    scaled.attach(backbone)
    p, s = plain(losses), scaled(losses)
    mean_loss = (losses["a"] + losses["b"]).item() / 2
    assert s.item() == pytest.approx(p.item() * mean_loss, rel=1e-5)
    cos = plain.last_cosines[0, 1].item()
    assert p.item() == pytest.approx(10.0 * cos**2, rel=1e-4)
    first_conv = backbone.features[0].weight
    (grad,) = torch.autograd.grad(p, first_conv)
    assert grad.abs().sum() > 0
    assert plain.last_seconds > 0


def digits_losses(seed=0):
    """Two task losses on a BatchNorm-free digits_cnn (tiny task gradients, as in training)."""
    torch.manual_seed(seed)
    backbone = digits_cnn(width=4, norm=False)
    features = backbone(torch.randn(16, 1, 23, 23))
    heads = torch.randn(2, features.size(1), 5)
    labels = torch.randint(0, 5, (2, 16))
    losses = {t: nn.functional.cross_entropy(features @ heads[i], labels[i])
              for i, t in enumerate("ab")}
    return backbone, losses


def flat_grad(value, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params,
                                                                 retain_graph=True)])


@pytest.mark.parametrize("loss_scaled", [False, True])
def test_max_grad_ratio_caps_the_penalty_gradient_at_a_fraction_of_the_task_gradient(
        loss_scaled):
    backbone, losses = digits_losses()
    params = [backbone.features[6].weight]
    task_norm = flat_grad(sum(losses.values()), params).norm()
    plain = CosReg(alpha=10.0, loss_scaled=loss_scaled)
    capped = CosReg(alpha=10.0, loss_scaled=loss_scaled, max_grad_ratio=0.1)
    for cosreg in (plain, capped):
        assert cosreg.attach(backbone) == ["features.6.weight"]
    plain_grad = flat_grad(plain(losses), params)
    assert plain_grad.norm() > 0.1 * task_norm  # the cap is active
    capped_grad = flat_grad(capped(losses), params)
    torch.testing.assert_close(capped_grad.norm(), 0.1 * task_norm)
    # the direction is the penalty's, on the regularised layer and below it
    torch.testing.assert_close(capped_grad / capped_grad.norm(), plain_grad / plain_grad.norm())
    first = [backbone.features[0].weight]
    scale = capped_grad.norm() / plain_grad.norm()
    torch.testing.assert_close(flat_grad(capped(losses), first),
                               scale * flat_grad(plain(losses), first))
    # a weak penalty is left as it is
    weak, weak_capped = CosReg(alpha=1e-4), CosReg(alpha=1e-4, max_grad_ratio=0.1)
    for cosreg in (weak, weak_capped):
        cosreg.attach(backbone)
    assert weak_capped(losses).item() == pytest.approx(weak(losses).item(), rel=1e-6)


def test_warmup_scales_alpha_linearly_over_the_first_steps():
    backbone, losses = digits_losses()
    plain, warm = CosReg(alpha=10.0), CosReg(alpha=10.0, warmup_steps=4)
    plain.attach(backbone)
    warm.attach(backbone)
    full = plain(losses).item()
    values = [warm(losses).item() for _ in range(7)]
    assert values == pytest.approx([full * min(1.0, t / 4) for t in range(7)], rel=1e-6)
    assert int(warm.step) == 7 and "step" in warm.state_dict()
    assert "warmup_steps=4" in repr(warm) and "max_grad_ratio" not in repr(warm)


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        CosReg(alpha=-1.0)
    with pytest.raises(TypeError, match="list of names"):
        CosReg(parameters="features.9")
    with pytest.raises(ValueError, match="warmup_steps must be a non-negative integer"):
        CosReg(warmup_steps=-1)
    with pytest.raises(ValueError, match="max_grad_ratio must be positive"):
        CosReg(max_grad_ratio=0.0)
    with pytest.raises(RuntimeError, match="attach"):
        CosReg()({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})


@pytest.mark.parametrize("architecture", ["hard", "task_sigma"])
def test_module_trains_with_cosreg_and_logs_its_cost(tmp_path, architecture):
    data = MultiDigitsDataModule(variant="even_odd", sizes=(64, 32, 32), batch_size=32,
                                 cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture=architecture,
                            cosreg_alpha=10.0, cosreg_args={"loss_scaled": True},
                            scheduler="step", step_size=1)
    assert not model.automatic_optimization
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert {"train/cosreg_penalty", "train/cosreg_seconds", "train/cosreg_cosine"} <= set(metrics)
    assert 0 <= float(metrics["train/cosreg_penalty"])
    assert trainer.global_step == 2
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.backbone.features.0.weight" in changed
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5)


class CheckCosRegGradient(L.Callback):
    """Before the optimizer step: every gradient is that of the summed losses plus the penalty
    of a fresh CosReg, both computed through the all-tasks pass, which the step of a
    task-specific model does not use (it runs one pass per task)."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        fresh = CosReg(10.0, loss_scaled=True)
        fresh.attach(pl_module.model.backbone)
        outputs = pl_module.model(self.batch["image"])
        losses = pl_module._losses(outputs, self.batch)
        total = pl_module.weighting(losses) + fresh(losses)
        parameters = [p for p in pl_module.parameters() if p.grad is not None]
        expected = torch.autograd.grad(total, parameters)
        for parameter, grad in zip(parameters, expected, strict=True):
            torch.testing.assert_close(parameter.grad, grad)
        self.checked += 1


def test_a_task_specific_step_with_cosreg_is_that_of_the_all_tasks_pass(tmp_path):
    data = MultiDigitsDataModule(variant="even_odd", sizes=(16, 8, 8), batch_size=16,
                                 cache_dir=str(tmp_path))
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4}, architecture="task_sigma",
                            cosreg_alpha=10.0, cosreg_args={"loss_scaled": True},
                            scheduler="none")
    check = CheckCosRegGradient()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[check])
    trainer.fit(model, data)
    assert check.checked == 1


def test_cosreg_needs_a_shared_backbone():
    data = MultiDigitsDataModule(sizes=(8, 8, 8))
    with pytest.raises(ValueError, match=r"CosReg need.* architecture 'single_task' has none"):
        MultiTaskModule(data.tasks, architecture="single_task", cosreg_alpha=1.0)


def test_packaged_config_trains_a_few_steps(workdir):
    import json

    from tasknorm.cli import main

    main(["fit", "--config", "cosreg_multidigits", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
          "--data.init_args.sizes", "[128, 64, 64]", "--model.backbone_args",
          '{"width": 4, "norm": false, "pool_size": 3}'])
    (run,) = (workdir / "runs" / "cosreg_multidigits").glob("version_*")
    assert set(json.loads((run / "results.json").read_text())["test"]) == {"left", "right"}
    metrics = (run / "metrics.csv").read_text()
    assert "grad_cos/std" in metrics


def test_state_without_the_step_count_loads_from_zero():
    """Checkpoints written before ``CosReg.step`` existed still load."""
    old = {k: v for k, v in CosReg(1.0, warmup_steps=3).state_dict().items() if k != "step"}
    regulariser = CosReg(1.0, warmup_steps=3)
    regulariser.step.fill_(5)
    regulariser.load_state_dict(old)
    assert regulariser.step.item() == 0
