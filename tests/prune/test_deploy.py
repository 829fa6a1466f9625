import copy
import subprocess
import sys

import pytest
import torch
import torchvision

from tasknorm.models.cifar import resnet56
from tasknorm.nn import SigmaBatchNorm2d, convert, use_task
from tasknorm.prune import (
    mask_plan,
    prune_model,
    save_pruned,
    task_subnetwork,
    to_plain,
)

LOAD_WITHOUT_TASKNORM = """
import sys
sys.modules["tasknorm"] = None  # any import of tasknorm now fails
import torch
path, x_path, y_path, kind = sys.argv[1:]
model = (torch.export.load(path).module() if kind == "pt2"
         else torch.load(path, weights_only=False))
x, expected = torch.load(x_path), torch.load(y_path)
with torch.no_grad():
    assert torch.allclose(model(x), expected, atol=1e-6), "outputs differ"
print("ok")
"""


def _run_fresh(tmp_path, model_path, x, y, kind):
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TASKNORM, str(model_path),
                             str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), kind],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_pruned_torchvision_model_loads_in_a_fresh_process_without_tasknorm(tmp_path):
    torch.manual_seed(0)
    model = convert(torchvision.models.resnet18(num_classes=5), kind="sigma").eval()
    x = torch.randn(2, 3, 64, 64)
    pruned, _ = prune_model(model, x, 0.5)
    plain = to_plain(pruned)
    assert not any(isinstance(m, SigmaBatchNorm2d) for m in plain.modules())
    with torch.no_grad():
        expected = plain(x)
    path = save_pruned(plain, tmp_path / "resnet18.pt")
    _run_fresh(tmp_path, path, x, expected, "pickle")


@pytest.mark.slow
def test_pruned_cifar_model_export_runs_without_tasknorm(tmp_path):
    torch.manual_seed(0)
    model = resnet56(norm="sigma").eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, plan = prune_model(model, x, 0.7)
    assert plan.realised_ratio > 0.6
    plain = to_plain(pruned).eval()
    with torch.no_grad():
        expected = plain(x)
    save_pruned(plain, tmp_path / "r56.pt", export_example=x)
    _run_fresh(tmp_path, tmp_path / "r56.pt.pt2", x[:1], expected[:1], "pt2")


def test_task_subnetwork_matches_the_task_with_its_unused_channels_masked():
    torch.manual_seed(0)
    model = convert(torchvision.models.resnet18(num_classes=3), ["a", "b"])
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "gate"):
                m.gate_logit.copy_(torch.randn_like(m.gate_logit) * 3)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    sizes = {}
    for task in ("a", "b"):
        small, plan = task_subnetwork(model, task, x, threshold=0.5)
        # the same function: the task's network with the channels it does not use zeroed
        from tasknorm.nn import extract_task
        reference = extract_task(model, task).eval()
        with torch.no_grad(), mask_plan(reference, plan):
            expected = reference(x)
        with torch.no_grad():
            assert torch.allclose(small(x), expected, atol=1e-5)
        sizes[task] = sum(p.numel() for p in small.parameters())
        with torch.no_grad(), use_task(task):
            full = model(x)
        assert full.shape == small(x).shape
    assert sizes["a"] != sizes["b"]  # each task keeps its own channels
    assert max(sizes.values()) < sum(p.numel() for p in copy.deepcopy(model).parameters())
