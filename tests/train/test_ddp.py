"""The default job on 2 CPU processes (gloo): DDP trains, syncs metrics and writes results."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasknorm.cli import main
from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import METHODS


def test_default_job_on_two_processes(workdir, capsys):
    main(["fit", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp_spawn", "--trainer.max_epochs", "4",
          "--data.init_args.sizes", "[3072, 256, 256]", "--data.init_args.batch_size", "32",
          "--model.backbone_args", '{"width": 16}', "--model.sync_stats", "true",
          "--trainer.enable_progress_bar", "false"])
    run = workdir / "runs" / "multidigits" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"left", "right"}
    for task in ("left", "right"):
        assert results["test"][task]["accuracy"] > 0.3  # chance is 0.1
    assert "left" in capsys.readouterr().out


def _one_step(tmp_path, devices, batch_size, **options):
    import lightning as L

    from tasknorm.data import MultiDigitsDataModule
    from tasknorm.train import MultiTaskModule

    data = MultiDigitsDataModule(variant="even_odd", sizes=(64, 16, 16), batch_size=batch_size,
                                 cache_dir=str(tmp_path / "cache"))
    L.seed_everything(0)
    # no BatchNorm: the joined batch then gives exactly the same forward pass
    options = {"optimizer": "sgd", "lr": 0.5, "scheduler": "none", **options}
    model = MultiTaskModule(data.tasks, backbone_args={"width": 4, "norm": False},
                            architecture="hard", **options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=devices,
                        strategy="ddp_spawn" if devices > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path / f"d{devices}"))
    trainer.fit(model, data)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("options", [{"aggregator": "upgrad"}, {"cosreg_alpha": 10.0}],
                         ids=["upgrad", "cosreg"])
def test_per_task_gradients_are_reduced_before_aggregation(tmp_path, options):
    """Two processes with 32 images each make the same update as one process with all 64."""
    initial = _one_step(tmp_path, 1, 64, **{**options, "lr": 0.0})
    single = _one_step(tmp_path, 1, 64, **options)
    double = _one_step(tmp_path, 2, 32, **options)
    assert all(not torch.equal(single[n], initial[n]) for n in single if "backbone" in n)
    for name, value in single.items():
        # float32 round-off of the double backward (CosReg) reaches ~2e-6 at lr 0.5
        torch.testing.assert_close(double[name], value, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_every_balancing_method_trains_on_two_processes(tmp_path):
    """Every name in ``METHODS`` takes steps under DDP launched by ``torchrun`` (two gloo
    processes), and both processes end with the same finite state (parameters, buffers and the
    method's own state): each method reduces what it keeps across processes, or computes it from
    reduced values."""
    cache = tmp_path / "cache"
    MultiDigitsDataModule(variant="even_odd", sizes=(192, 16, 16), cache_dir=str(cache)) \
        .prepare_data()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = Path(__file__).with_name("ddp_every_method.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(port), str(script), str(cache), str(tmp_path)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(first) == set(METHODS)
    for name, (initial, ended) in first.items():
        _assert_equal(second[name][1], ended, name)
        model = [key for key in ended if key.startswith("model.")]
        assert all(torch.isfinite(ended[key]).all() for key in model), f"{name}: not finite"
        assert any(not torch.equal(initial[key], ended[key]) for key in model), \
            f"{name} took no step"


def _assert_equal(got, expected, where: str) -> None:
    """``got == expected``, tensors bit for bit, through nested mappings and sequences."""
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            _assert_equal(got[key], expected[key], f"{where}, {key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_equal(a, b, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"
