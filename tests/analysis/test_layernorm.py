"""``tasknorm analyze`` on a Transformer: a ViT-S checkpoint with task σ LayerNorm."""

import json

import pytest
import torch

from tasknorm.cli import main
from tasknorm.models import build_backbone
from tasknorm.nn import TaskSigmaLayerNorm, convert

pytest.importorskip("timm")
TASKS = ["segmentation", "depth", "normals"]


def test_vit_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = convert(build_backbone("vit_small", img_size=32), TASKS)
    last = backbone.vit.norm
    assert isinstance(last, TaskSigmaLayerNorm)
    with torch.no_grad():  # final norm: segmentation and depth share the first half only
        last.gate_logit.fill_(-4.0)
        last.gate_logit[0, :192] = 4.0
        last.gate_logit[1, :192] = 4.0
        last.gate_logit[2, 192:] = 4.0
    checkpoint = {
        "state_dict": {f"model.backbone.{k}": v for k, v in backbone.state_dict().items()},
        # a pretrained-weight file that is not there: analysis must not need it
        "hyper_parameters": {"backbone": "vit_small",
                             "backbone_args": {"img_size": 32, "weights": "weights/vit.pth"}},
        "tasknorm": {"tasks": TASKS, "backbone": "vit_small", "architecture": "task_sigma"},
        "epoch": 3, "global_step": 120,
    }
    torch.save(checkpoint, tmp_path / "vit.ckpt")
    main(["analyze", str(tmp_path / "vit.ckpt"), "--out", str(tmp_path / "out")])
    assert "9600 gated channels in 25 layers" in capsys.readouterr().out  # 2 per block + final
    report = json.loads((tmp_path / "out" / "report.json").read_text())["gates"]
    names = [layer["name"] for layer in report["layers"]]
    assert names[:2] == ["vit.blocks.0.norm1", "vit.blocks.0.norm2"] and names[-1] == "vit.norm"
    final = report["specialization"]["layers"]["vit.norm"]
    assert final["by_k"] == [0, 192, 192, 0]
    assert final["exclusive_per_task"] == {"segmentation": 0, "depth": 0, "normals": 192}
    jaccard = report["similarity"]["layers"]["vit.norm"]["jaccard"]
    assert jaccard == {"segmentation-depth": 1.0, "segmentation-normals": 0.0,
                       "depth-normals": 0.0}
    figures = sorted(p.name for p in (tmp_path / "out").glob("gates-*.png"))
    assert figures == ["gates-1.png", "gates-2.png", "gates-3.png"]  # 12 layers per figure
