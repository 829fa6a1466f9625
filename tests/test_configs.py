"""Every packaged protocol config trains for a few steps on tiny data written in its real layout."""

import json

import pytest
import torch

from tasknorm.cli import main
from tasknorm.data import (
    write_tiny_celeba,
    write_tiny_cityscapes,
    write_tiny_nyuv2,
    write_tiny_pascal_context,
)
from tasknorm.data.celeba import ATTRIBUTES, attribute_task_name
from tasknorm.data.multidigits import ATTRIBUTE_TASKS
from tasknorm.fit import TasknormCLI, packaged_configs, resolve_config

FEW_STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
             "--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
FROM_SCRATCH = ["--model.gates.init", "normal"]

# config -> (writer of its tiny dataset, extra options shrinking the model)
PROTOCOLS = {
    "nyuv2_resnet50": (write_tiny_nyuv2, ["--model.backbone_args", '{"weights": null}',
                                          *FROM_SCRATCH]),
    "cityscapes_resnet50": (write_tiny_cityscapes, ["--model.backbone_args", '{"weights": null}',
                                                    *FROM_SCRATCH]),
    "nyuv2_segnet": (write_tiny_nyuv2, ["--model.backbone_args", '{"width": 0.125}']),
    "cityscapes_segnet": (write_tiny_cityscapes, ["--model.backbone_args", '{"width": 0.125}']),
    "pascal_context_vit_s": (write_tiny_pascal_context, [
        "--model.backbone_args", '{"weights": null, "img_size": 32}', *FROM_SCRATCH,
        "--data.init_args.image_size", "32"]),
    "celeba": (write_tiny_celeba, ["--model.backbone_args", '{"width": 8}']),
}


def test_every_packaged_protocol_is_tested():
    assert set(packaged_configs()) == {*PROTOCOLS, "multidigits", "multidigits_contested",
                                       "multidigits_rni_recipe", "scenes", "cosreg_multidigits",
                                       "multidigits_attributes"}


@pytest.mark.parametrize("config", sorted(PROTOCOLS))
def test_protocol_trains_a_few_steps(workdir, config):
    write, shrink = PROTOCOLS[config]
    root = write(workdir / "data")
    main(["fit", "--config", config, "--data.init_args.root", str(root),
          "--data.init_args.batch_size", "2", *FEW_STEPS, *shrink])
    runs = list((workdir / "runs" / config).glob("version_*/results.json"))
    assert len(runs) == 1
    results = json.loads(runs[0].read_text())["test"]
    assert results and all(values for values in results.values())


def test_celeba_trains_a_task_tree(workdir):
    """The real-data counterpart of multidigits_attributes: 40 attributes shared for four of
    the CNN's five stages, then in two groups."""
    root = write_tiny_celeba(workdir / "data")
    tasks = [attribute_task_name(a) for a in ATTRIBUTES]
    groups = [[tasks]] * 4 + [[tasks[:20], tasks[20:]]]
    main(["fit", "--config", "celeba", "--data.init_args.root", str(root),
          "--data.init_args.batch_size", "2", *FEW_STEPS, *PROTOCOLS["celeba"][1],
          "--model.architecture", "tree", "--model.architecture_args",
          json.dumps({"groups": groups})])
    (run,) = (workdir / "runs" / "celeba").glob("version_*")
    assert list(json.loads((run / "results.json").read_text())["test"]) == tasks


def test_pretrained_weights_asked_for_but_absent(workdir):
    root = write_tiny_nyuv2(workdir / "data")
    with pytest.raises(SystemExit, match=r"resnet50-0676ba61\.pth"):
        main(["fit", "--config", "nyuv2_resnet50", "--data.init_args.root", str(root),
              *FEW_STEPS])


def test_scenes_default_trains_on_a_small_render(workdir):
    main(["fit", "--config", "scenes", "--data.init_args.sizes", "[12, 4]",
          "--data.init_args.height", "32", "--data.init_args.width", "48",
          "--data.init_args.batch_size", "4", *FEW_STEPS])
    results = json.loads(next((workdir / "runs" / "scenes").glob("*/results.json")).read_text())
    assert set(results["test"]) == {"segmentation", "depth", "normals"}


def test_contested_multidigits_trains_a_few_steps(workdir):
    main(["fit", "--config", "multidigits_contested", "--data.init_args.sizes", "[64, 16, 16]",
          "--data.init_args.batch_size", "16", *FEW_STEPS])
    (run,) = (workdir / "runs" / "multidigits_contested").glob("version_*")
    results = json.loads((run / "results.json").read_text())["test"]
    assert list(results) == ["left", "right", "sum_parity", "larger"]


def test_attribute_multidigits_trains_a_few_steps(workdir):
    main(["fit", "--config", "multidigits_attributes", "--data.init_args.sizes", "[64, 16, 16]",
          "--data.init_args.batch_size", "16", *FEW_STEPS])
    (run,) = (workdir / "runs" / "multidigits_attributes").glob("version_*")
    results = json.loads((run / "results.json").read_text())["test"]
    assert tuple(results) == ATTRIBUTE_TASKS


@pytest.mark.parametrize(("config", "gate_mean", "heads_lr_mult"), [
    ("multidigits", 2.0, 10.0), ("multidigits_rni_recipe", 0.0, 1.0)])
def test_multidigits_recipes(workdir, monkeypatch, config, gate_mean, heads_lr_mult):
    """The main job's recipe and the σBN code's: the gate init reaches the model's gates."""
    monkeypatch.setattr("sys.argv", ["tasknorm"])
    cli = TasknormCLI(["--config", resolve_config(config), "--model.backbone_args",
                       '{"width": 64}'], run=False)
    layers = [m for m in cli.model.modules() if hasattr(m, "gate")]
    gates = torch.cat([m.gate_logit.detach().flatten() for m in layers])
    assert gates.numel() == 2 * 576 and all(m.init_mean == gate_mean for m in layers)
    assert gates.mean().item() == pytest.approx(gate_mean, abs=0.15)
    assert gates.std().item() == pytest.approx(1.0, abs=0.15)
    assert cli.model.optimization.heads_lr_mult == heads_lr_mult
