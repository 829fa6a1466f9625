import math
import re

import lightning as L
import pytest
import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.models import ARCHITECTURES, LEARNED_SHARING
from tasknorm.train import (
    SELECTION_METRIC,
    Balancing,
    Gates,
    MultiTaskModule,
    Optimization,
    Regularization,
)
from tasknorm.train.options import FLAT_NAMES, GROUPS, group_options


@pytest.fixture
def data(tmp_path):
    return MultiDigitsDataModule(sizes=(256, 64, 64), batch_size=32, cache_dir=str(tmp_path))


def trainer(tmp_path, **kwargs):
    options = {"max_epochs": 2, "accelerator": "cpu", "deterministic": True, "logger": False,
               "enable_progress_bar": False, "enable_model_summary": False,
               "default_root_dir": str(tmp_path)}
    return L.Trainer(**{**options, **kwargs})


def module(data, **kwargs):
    return MultiTaskModule(data.tasks, **{"backbone_args": {"width": 8}, **kwargs})


@pytest.mark.parametrize("weighting", ["equal", "uncertainty", "dwa"])
@pytest.mark.parametrize("architecture", ["single_task", "hard", "task_sigma"])
def test_fit_validates_and_tests(tmp_path, data, architecture, weighting):
    L.seed_everything(0)
    model = module(data, architecture=architecture, balancing={"weighting": weighting})
    fit = trainer(tmp_path, enable_checkpointing=False)
    fit.fit(model, data)
    assert SELECTION_METRIC in fit.callback_metrics
    results = fit.test(model, data, verbose=False)[0]
    for task in ("left", "right"):
        assert 0 <= results[f"test/{task}/accuracy"] <= 1


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("balancing", ["equal", "gradvac", "modo", "nash_mtl", "famo", "db_mtl",
                                       "stch", "excess_mtl", "dwa"])
def test_resume_is_exact(tmp_path, data, balancing):
    """Two epochs in one go == one epoch, stop, resume from last.ckpt, second epoch; with
    stateful balancing methods too (GradVac's EMA, MoDo's weights and its three-batch cycle,
    which an epoch of 8 batches leaves in the middle, Nash-MTL's solver state)."""

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def run(folder, callbacks=(), ckpt_path=None):
        L.seed_everything(0)
        model = module(data, balancing={"weighting": balancing})
        checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / folder,
                                                          save_last=True)
        fit = trainer(tmp_path, callbacks=[checkpoints, *callbacks])
        fit.fit(model, data, ckpt_path=ckpt_path)
        return model

    straight = run("straight")
    run("interrupted", callbacks=[StopAfterFirstEpoch()])
    resumed = run("interrupted", ckpt_path=tmp_path / "interrupted" / "last.ckpt")
    resumed_state = resumed.state_dict()
    tensors = {k: v for k, v in straight.state_dict().items() if isinstance(v, torch.Tensor)}
    assert len(tensors) > 20
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, resumed_state[name], msg=name)


def test_nan_loss_stops_naming_task_and_step(tmp_path, data, monkeypatch):
    model = module(data)
    task = model.tasks["right"]
    original = task.loss
    calls = {"n": 0}

    def poisoned(output, target):
        calls["n"] += 1
        loss = original(output, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(task, "loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss of task 'right' is nan at step 2"):
        trainer(tmp_path, enable_checkpointing=False, num_sanity_val_steps=0).fit(model, data)


def test_incompatible_checkpoint_is_refused(tmp_path, data):
    L.seed_everything(0)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_epochs=1, callbacks=[checkpoints]).fit(module(data), data)
    other = module(data, architecture="hard")
    with pytest.raises(ValueError, match=r"incompatible checkpoint.*'architecture': 'task_sigma'"):
        trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(
            other, data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_bad_options(data):
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        module(data, optimization={"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match=r"unknown balancing method 'sgd'; expected one of "
                                         r"\['aligned_mtl', "):
        module(data, balancing={"weighting": "sgd"})
    with pytest.raises(ValueError, match="aggregator 'gradnorm' is a loss weighting"):
        module(data, balancing={"aggregator": "gradnorm"})
    with pytest.raises(ValueError, match=r"weighting 'gradnorm' need.* 'single_task' has none"):
        module(data, balancing={"weighting": "gradnorm"}, architecture="single_task")
    with pytest.raises(ValueError, match="unknown architecture 'soft'"):
        module(data, architecture="soft")


@pytest.mark.parametrize(("option", "value", "wording"), [
    ("lr", -0.1, "non-negative"), ("lr", math.nan, "non-negative"),
    ("momentum", 1.0, "in [0, 1)"),
    ("weight_decay", -1e-4, "non-negative"), ("norm_lr_mult", -1.0, "non-negative"),
    ("heads_lr_mult", math.inf, "non-negative"), ("step_size", 0, "at least 1"),
    ("step_gamma", 0.0, "in (0, 1]"), ("cosreg_alpha", -1.0, "non-negative"),
])
def test_numbers_out_of_range_are_refused_when_built(data, option, value, wording):
    """By the group (built alone or through the module, by grouped or old flat name)."""
    group, field = FLAT_NAMES[option]
    message = re.escape(f"{option} must be {wording}, got {value}")
    with pytest.raises(ValueError, match=message):
        GROUPS[group](**{field: value})
    with pytest.raises(ValueError, match=message):
        module(data, **{group: {field: value}})
    with pytest.raises(ValueError, match=message):
        module(data, **{option: value})


@pytest.mark.parametrize(("group", "fields", "message"), [
    ("optimization", {"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ("optimization", {"scheduler": "linear"}, "unknown scheduler 'linear'"),
    ("balancing", {"weighting": "adam"}, "unknown balancing method 'adam'"),
    ("balancing", {"aggregator": "adam"}, "unknown aggregator 'adam'"),
])
def test_each_group_checks_its_names(group, fields, message):
    with pytest.raises(ValueError, match=message):
        GROUPS[group](**fields)


def test_groups_and_flat_names_build_the_same_module(data):
    """Every old flat name reaches its group's field; hyper-parameters are saved grouped, as
    plain mappings (checkpoints load with ``weights_only=True``)."""
    flat = {"optimizer": "adam", "lr": 0.02, "momentum": 0.5, "weight_decay": 0.0,
            "norm_lr_mult": 2.0, "norm_weight_decay": 1e-5, "heads_lr_mult": 3.0,
            "architecture_lr_mult": 4.0, "scheduler": "step", "step_size": 3, "step_gamma": 0.25,
            "gate_init": "normal", "gate_init_mean": 0.5, "gate_init_std": 0.5,
            "weighting": "fixed",
            "weighting_args": {"weights": {"left": 1.0, "right": 2.0}}, "aggregator": None,
            "aggregator_args": None, "cosreg_alpha": 1.0, "cosreg_args": {"eps": 1e-6}}
    assert set(flat) == set(FLAT_NAMES)
    old = module(data, architecture="hard", **flat)
    new = module(data, architecture="hard", optimization=Optimization(
        optimizer="adam", lr=0.02, momentum=0.5, weight_decay=0.0, norm_lr_mult=2.0,
        norm_weight_decay=1e-5, heads_lr_mult=3.0, architecture_lr_mult=4.0, scheduler="step",
        step_size=3, step_gamma=0.25), gates=Gates(init="normal", mean=0.5, std=0.5),
        balancing=Balancing(weighting="fixed",
                            weighting_args={"weights": {"left": 1.0, "right": 2.0}}),
        regularization=Regularization(cosreg_alpha=1.0, cosreg_args={"eps": 1e-6}))
    assert dict(old.hparams) == dict(new.hparams)
    assert new.hparams["optimization"]["lr"] == 0.02 and new.hparams["gates"]["mean"] == 0.5
    assert all(type(new.hparams[name]) is dict for name in GROUPS)
    assert (old.optimization, old.gates, old.balancing, old.regularization) == (
        new.optimization, new.gates, new.balancing, new.regularization)


def test_unknown_options_are_refused(data):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['learning_rate'\]"):
        module(data, learning_rate=0.1)
    with pytest.raises(TypeError, match=r"unknown optimization option\(s\) \['lrr'\]"):
        module(data, optimization={"lrr": 0.1})
    with pytest.raises(ValueError, match=r"lr is given twice: as lr and as optimization\.lr"):
        group_options({"lr": 0.1, "optimization": {"lr": 0.2}})


@pytest.mark.parametrize("flat", [False, True])
def test_checkpoints_round_trip_the_groups(tmp_path, data, flat):
    """A checkpoint loads to the module's options, also one written before the groups existed
    (its hyper-parameters by the old flat names, and Lightning's CLI instantiator)."""
    L.seed_everything(0)
    model = module(data, optimization={"lr": 0.02, "scheduler": "none"}, gates={"mean": 0.5},
                   balancing={"weighting": "dwa"})
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                  enable_checkpointing=False)
    fit.fit(model, data)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    if flat:
        checkpoint = torch.load(path, weights_only=True)
        hparams = {key: value for key, value in checkpoint["hyper_parameters"].items()
                   if key not in GROUPS}
        hparams.update({"lr": 0.02, "scheduler": "none", "gate_init_mean": 0.5,
                        "weighting": "dwa",
                        "_instantiator": "lightning.pytorch.cli.instantiate_module"})
        checkpoint["hyper_parameters"] = hparams
        torch.save(checkpoint, path)
    loaded = MultiTaskModule.load_from_checkpoint(path, tasks=data.tasks)
    assert dict(loaded.hparams) == dict(model.hparams)
    assert (loaded.optimization, loaded.gates, loaded.balancing) == (
        model.optimization, model.gates, model.balancing)


def test_a_diverged_validation_stops_before_any_checkpoint(tmp_path, data):
    """NaN running variances: training (batch statistics) stays finite, evaluation does not,
    while the accuracies stay finite; no checkpoint, not even ``last``, holds that model."""

    class PoisonStatistics(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            for name, buffer in pl_module.named_buffers():
                if name.endswith("running_var"):
                    buffer.fill_(math.nan)

    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor=SELECTION_METRIC, mode="max", save_last=True)
    fit = trainer(tmp_path, callbacks=[checkpoints, PoisonStatistics()])
    with pytest.raises(FloatingPointError, match=r"validation at epoch 0: the model diverged "
                                                 r"\(non-finite loss of tasks \['left', 'right'\]"):
        fit.fit(module(data), data)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("weighting", ["gradnorm", "rlw"])
def test_new_weightings_train_under_automatic_optimization(tmp_path, data, weighting):
    L.seed_everything(0)
    model = module(data, architecture="task_sigma", weighting=weighting)
    assert model.automatic_optimization
    fit = trainer(tmp_path, max_epochs=1, enable_checkpointing=False, limit_train_batches=2,
                  limit_val_batches=1)
    fit.fit(model, data)
    weights = model.weighting.weights()
    assert all(w > 0 for w in weights.values())
    assert weights != {"left": 1.0, "right": 1.0}  # learned (GradNorm) or drawn (RLW)
    if weighting == "rlw":
        assert sum(weights.values()) == pytest.approx(1.0)


def test_norm_parameters_and_heads_get_their_multipliers(data):
    model = module(data, optimization=Optimization(lr=0.01, norm_lr_mult=100, heads_lr_mult=7,
                                                   scheduler="none"))
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["weights", "norm", "heads"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 1.0, 0.07])
    norm_params = {id(p) for p in groups[1]["params"]}
    gates = [m.gate_logit for m in model.modules() if hasattr(m, "gate")]
    assert gates and all(id(g) in norm_params for g in gates)
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in model.model.heads.parameters()}
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_only_the_branching_logits_get_the_architecture_multiplier(data, architecture):
    """Learning to Branch's logits train at ``lr * architecture_lr_mult``; every other
    architecture has no architecture parameters, so its groups are unchanged."""
    model = module(data, architecture=architecture,
                   optimization=Optimization(lr=0.01, architecture_lr_mult=30, scheduler="none"))
    groups = {g["name"]: g for g in model.configure_optimizers()["optimizer"].param_groups}
    if architecture == "ltb":
        branching = model.model.backbone
        assert groups["architecture"]["lr"] == pytest.approx(0.3)
        assert {id(p) for p in groups["architecture"]["params"]} == {
            id(p) for p in (*branching.branch_logits, branching.task_logits)}
    else:
        assert "architecture" not in groups and not model.model.architecture_parameters()
    everything = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("architecture", ["sigma", "task_sigma"])
def test_gate_init_reaches_the_gates(data, architecture):
    model = module(data, architecture=architecture, gates=Gates(mean=-2.0, std=0.25),
                   backbone_args={"width": 64})
    gates = torch.cat([m.gate_logit.flatten() for m in model.modules() if hasattr(m, "gate")])
    assert gates.numel() >= 576
    assert gates.mean().item() == pytest.approx(-2.0, abs=0.05)
    assert gates.std().item() == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize(("scheduler", "expected"), [
    ("step", [0.1, 0.1, 0.05, 0.05]),  # StepLR(2, 0.5)
    ("poly", [0.1 * (1 - e / 4) ** 0.9 for e in range(4)]),
    ("cosine", [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]),
])
def test_schedulers_follow_their_formula(data, scheduler, expected):
    model = module(data, optimization=Optimization(scheduler=scheduler, step_size=2,
                                                   step_gamma=0.5, lr=0.1, norm_lr_mult=1.0))
    model.trainer = type("T", (), {"max_epochs": 4})()
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx(expected)


def test_relative_selection_is_the_gain_over_the_first_validation(tmp_path, data):
    class Record(L.Callback):
        def __init__(self):
            self.primaries, self.selections = [], []

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                metrics = trainer.callback_metrics
                self.primaries.append({t: float(metrics[f"val/{t}/accuracy"])
                                       for t in ("left", "right")})
                self.selections.append(float(metrics[SELECTION_METRIC]))

    L.seed_everything(0)
    record = Record()
    model = module(data, selection="relative")
    trainer(tmp_path, max_epochs=3, enable_checkpointing=False, callbacks=[record]).fit(model, data)
    first, last = record.primaries[0], record.primaries[-1]
    assert model.selection_reference == pytest.approx(first)
    assert record.selections[0] == pytest.approx(0.0)
    expected = sum(100 * (last[t] - first[t]) / first[t] for t in first) / 2
    assert record.selections[-1] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="unknown selection 'best'"):
        module(data, selection="best")


@pytest.mark.parametrize("architecture", list(LEARNED_SHARING))
def test_learned_sharing_architectures_train(tmp_path, data, architecture):
    L.seed_everything(0)
    # one-hot samples (the default) train only the sampled tree's nodes at each step
    args = {"hard": False} if architecture == "ltb" else None
    model = module(data, architecture=architecture, architecture_args=args)
    before = {name: p.detach().clone() for name, p in model.model.backbone.named_parameters()}
    fit = trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    fit.fit(model, data)  # with the sanity check's validation steps
    assert fit.global_step == 2
    after = dict(model.model.backbone.named_parameters())
    assert all(not torch.equal(p, after[name]) for name, p in before.items())


def test_task_tree_trains_every_parameter_and_resumes_from_its_checkpoint(tmp_path, data):
    L.seed_everything(0)
    args = {"groups": [[["left", "right"]], [["left"], ["right"]]]}
    model = module(data, architecture="tree", architecture_args=args)
    before = {name: p.detach().clone() for name, p in model.model.backbone.named_parameters()}
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=1, enable_checkpointing=False)
    fit.fit(model, data)
    after = dict(model.model.backbone.named_parameters())
    assert all(not torch.equal(p, after[name]) for name, p in before.items())
    fit.save_checkpoint(tmp_path / "tree.ckpt")
    loaded = MultiTaskModule.load_from_checkpoint(tmp_path / "tree.ckpt", tasks=data.tasks)
    assert str(loaded.model.backbone.tree) == "left+right | left, right"
    x = next(iter(data.val_dataloader()))["image"]
    expected, outputs = model.eval()(x), loaded.eval()(x)
    for task in expected:
        torch.testing.assert_close(outputs[task], expected[task])


def test_architecture_args_reach_the_model_and_its_checkpoints(tmp_path, data):
    L.seed_everything(0)
    args = {"nodes": 3, "temperature": 0.5}
    model = module(data, architecture="ltb", architecture_args=args)
    assert len(model.model.backbone.copies) == 3 and model.model.backbone.temperature == 0.5
    fit = trainer(tmp_path, max_steps=1, limit_val_batches=1, enable_checkpointing=False)
    fit.fit(model, data)
    fit.save_checkpoint(tmp_path / "model.ckpt")
    loaded = MultiTaskModule.load_from_checkpoint(tmp_path / "model.ckpt", tasks=data.tasks)
    assert loaded.hparams.architecture_args == args
    x = next(iter(data.val_dataloader()))["image"]
    expected, outputs = model.eval()(x), loaded.eval()(x)
    for task in expected:
        torch.testing.assert_close(outputs[task], expected[task])
    with pytest.raises(ValueError, match="architecture 'ltb' has no option experts"):
        module(data, architecture="ltb", architecture_args={"experts": 2})
