import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from tasknorm.analysis import gradient_histories
from tasknorm.data import MultiDigitsDataModule
from tasknorm.nn import convert, use_task
from tasknorm.train import MultiTaskModule
from tasknorm.train.callbacks import GradientCosineMonitor
from tasknorm.train.gradients import (
    cosine_statistics,
    gradient_cosines,
    shared_parameters,
    task_gradients,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return MultiDigitsDataModule(sizes=(256, 64, 64), batch_size=32,
                                 cache_dir=str(tmp_path_factory.mktemp("cache")))


def fit(folder, data, callbacks=(), logger=False, **options):
    L.seed_everything(0)
    model = MultiTaskModule(data.tasks, backbone_args={"width": 8}, **options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", deterministic=True, logger=logger,
                        callbacks=list(callbacks), enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=folder)
    trainer.fit(model, data)
    return model, trainer


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("monitored")
    monitor = GradientCosineMonitor(every_n_steps=2, window=3)
    logger = L.pytorch.loggers.CSVLogger(folder, name="run", version=0)
    model, trainer = fit(folder, data, [monitor], logger)
    return model, trainer, monitor, folder


def test_history_of_a_fit(monitored):
    _, trainer, monitor, _ = monitored
    history = monitor.history
    assert trainer.global_step == 8  # 256 samples / 32
    assert history["step"] == [0, 2, 4, 6]
    assert history["epoch"] == [0, 0, 0, 0]
    assert history["tasks"] == ["left", "right"] and history["pairs"] == [["left", "right"]]
    assert history["parameters"] == [f"features.{i}.weight" for i in (0, 3, 6, 9)]
    assert history["num_parameters"] == 8 * 9 + 16 * 8 * 9 + 16 * 16 * 9 + 32 * 16 * 9
    cosines = torch.tensor(history["cosine"])
    assert cosines.shape == (4, 1) and cosines.abs().max() <= 1
    assert cosines.std() > 0  # real measurements, not a constant


def test_logged_statistics(monitored):
    _, _, monitor, folder = monitored
    with open(folder / "run" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("grad_cos/mean")]
    assert [int(r["step"]) for r in rows] == monitor.history["step"]
    pair = "grad_cos/left-right"
    for key in ("cosine", "mean", "std", "rolling_std"):
        assert f"{pair}/{key}" in rows[0] and f"grad_cos/{key}" in rows[0]
    stats = cosine_statistics(torch.tensor(monitor.history["cosine"], dtype=torch.float64), 3)
    last = rows[-1]
    assert float(last[f"{pair}/cosine"]) == pytest.approx(monitor.history["cosine"][-1][0])
    assert float(last[f"{pair}/mean"]) == pytest.approx(float(stats["mean"][0]))
    assert float(last[f"{pair}/std"]) == pytest.approx(float(stats["std"][0]))
    assert float(last[f"{pair}/rolling_std"]) == pytest.approx(float(stats["rolling_std"][-1, 0]))


def test_training_is_unchanged(monitored, tmp_path, data):
    with_monitor = monitored[0].state_dict()
    without = fit(tmp_path, data)[0].state_dict()
    assert with_monitor.keys() == without.keys()
    for name, tensor in without.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, with_monitor[name]), name


def test_manual_optimization(tmp_path, data):
    """Under manual optimization (here CosReg) the monitor measures in manual_backward."""
    monitor = GradientCosineMonitor(every_n_steps=3, window=2)
    fit(tmp_path, data, [monitor], cosreg_alpha=0.1)
    assert monitor.history["step"] == [0, 3, 6]


def test_history_is_saved_in_checkpoints(monitored, tmp_path):
    _, trainer, monitor, _ = monitored
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    histories = gradient_histories(checkpoint)
    assert list(histories) == [monitor.state_key]
    assert histories[monitor.state_key] == monitor.history
    restored = GradientCosineMonitor(every_n_steps=2, window=3)
    restored.load_state_dict(checkpoint["callbacks"][monitor.state_key])
    assert restored.history == monitor.history


class StandIn(nn.Module):
    """The least a LightningModule needs for the monitor: model.backbone and task_losses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.backbone = convert(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6),
                                                    nn.Linear(6, 3)), ["a", "b", "c"])
        self.task_losses = {}

    def step(self):
        x = torch.randn(8, 4)
        losses = {}
        for task in ("a", "b", "c"):
            with use_task(task):
                losses[task] = self.model.backbone(x).pow(2).mean() * (1 + ord(task))
        self.task_losses = losses
        return losses


def fake_trainer(step):
    return SimpleNamespace(global_step=step, is_global_zero=True, current_epoch=0, loggers=[])


def test_measurement_equals_an_independent_computation():
    module = StandIn()
    monitor = GradientCosineMonitor(every_n_steps=1, window=5, parameters=["2"])
    monitor.on_fit_start(fake_trainer(0), module)
    losses = module.step()
    monitor.on_before_backward(fake_trainer(0), module, sum(losses.values()))
    params = list(shared_parameters(module.model.backbone, ["2"]).values())
    cos = gradient_cosines(task_gradients(losses, params))
    expected = [cos[0, 1], cos[0, 2], cos[1, 2]]
    assert monitor.history["cosine"][0] == pytest.approx([float(v) for v in expected])
    assert monitor.history["pairs"] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert monitor.history["parameters"] == ["2.weight", "2.bias"]
    monitor.on_before_backward(fake_trainer(0), module, sum(losses.values()))  # same step
    assert len(monitor.history["step"]) == 1
    with pytest.raises(RuntimeError, match="task_losses was not set by this training step"):
        monitor.on_before_backward(fake_trainer(1), module, sum(losses.values()))


def test_clear_errors():
    with pytest.raises(ValueError, match="at least 1"):
        GradientCosineMonitor(every_n_steps=0)
    module = StandIn()
    del module.task_losses
    with pytest.raises(TypeError, match=r"needs pl_module\.task_losses"):
        GradientCosineMonitor().on_fit_start(fake_trainer(0), module)
    module = StandIn()
    module.model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="needs one backbone shared by all tasks"):
        GradientCosineMonitor().on_fit_start(fake_trainer(0), module)
