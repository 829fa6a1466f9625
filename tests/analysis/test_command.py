"""``tasknorm analyze`` end to end on a checkpoint trained here, and every bad-input error."""

import json

import pytest
import torch

from tasknorm.analysis import build_report
from tasknorm.cli import main

TINY = ["--trainer.max_epochs", "1", "--data.init_args.sizes", "[256, 64, 64]",
        "--data.init_args.batch_size", "32", "--model.backbone_args", '{"width": 8}',
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false",
        "--trainer.callbacks+=tasknorm.train.callbacks.GradientCosineMonitor",
        "--trainer.callbacks.every_n_steps=2", "--trainer.callbacks.window=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TSσBN checkpoint of MultiDigits with a gradient-cosine history, as tasknorm fit
    writes it."""
    folder = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("TASKNORM_CACHE", str(folder / "cache"))
        main(["fit", *TINY, "--trainer.default_root_dir", "run"])
    (checkpoint,) = (folder / "run" / "checkpoints").glob("best-*.ckpt")
    return checkpoint


def analyze(*args):
    main(["analyze", *map(str, args)])


def test_report_of_a_trained_model(trained, capsys):
    analyze(trained)
    out = trained.parent.parent / f"analysis-{trained.stem}"
    assert "report:" in capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["capacity.png", "dendrogram.png", "gates.png", "gradient_cosines.png",
                     "layer_similarity.png", "report.html", "report.json", "similarity.png",
                     "specialization.png", "tau_sweep.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["source"]["architecture"] == "task_sigma"
    gates = report["gates"]
    assert gates["tasks"] == ["left", "right"] and gates["tau"] == 0.5
    # the gates are the sigmoid of the trained gate logits in the checkpoint
    state = torch.load(trained, weights_only=True)["state_dict"]
    for layer in gates["layers"]:
        expected = torch.sigmoid(state[f"model.backbone.{layer['name']}.gate_logit"])
        torch.testing.assert_close(torch.tensor(layer["gates"]), expected, atol=1e-4, rtol=0)
    assert [layer["channels"] for layer in gates["layers"]] == [8, 16, 16, 32]
    (summary,) = report["gradients"].values()
    assert summary["steps"] == [0, 2, 4, 6]
    with pytest.raises(SystemExit, match="exists already"):
        analyze(trained)


def test_out_tau_and_an_existing_empty_folder(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    analyze(trained, "--out", tmp_path / "empty", "--tau", "0.7")
    high = json.loads((tmp_path / "empty" / "report.json").read_text())["gates"]
    low = build_report(trained, tau=0.3)["gates"]
    assert low["tau"] == 0.3 and high["tau"] == 0.7
    for task in ("left", "right"):
        assert (low["capacity"]["network"]["active_fraction"][task]
                > high["capacity"]["network"]["active_fraction"][task])
    with pytest.raises(SystemExit):
        analyze(trained, "--out", tmp_path / "c", "--tau", "2")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is not an empty folder"):
        analyze(trained, "--out", tmp_path / "file")


def without_history(checkpoint: dict) -> dict:
    checkpoint["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items()
                               if not k.startswith("GradientCosineMonitor")}
    return checkpoint


@pytest.mark.parametrize(("architecture", "message"), [
    ("hard", r"architecture 'hard' \(one shared backbone with shared BatchNorm\) and has no "
             r"task-specific gates; the gate analysis needs a TSσBN model"),
    ("single_task", "architecture 'single_task'"),
    ("sigma", "architecture 'sigma' .one shared backbone with σBN gates shared by all tasks"),
    ("task", r"architecture 'task' \(TSBN: per-task BatchNorm scale and shift, not gates\)"),
])
def test_models_without_gates_are_refused(trained, tmp_path, architecture, message):
    checkpoint = without_history(torch.load(trained, weights_only=True))
    checkpoint["tasknorm"]["architecture"] = architecture
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match=message) as error:
        analyze(tmp_path / "other.ckpt")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "analysis-other").exists()


def test_gradient_history_alone_is_reported_without_gates(trained, tmp_path, capsys):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["tasknorm"]["architecture"] = "hard"
    torch.save(checkpoint, tmp_path / "hard.ckpt")
    analyze(tmp_path / "hard.ckpt")
    assert "Gradient cosines only" in capsys.readouterr().out
    out = tmp_path / "analysis-hard"
    assert sorted(p.name for p in out.iterdir()) == ["gradient_cosines.png", "report.html",
                                                     "report.json"]
    assert json.loads((out / "report.json").read_text())["gates"] is None


def test_bad_files(tmp_path):
    with pytest.raises(SystemExit, match=r"^tasknorm analyze: error: checkpoint missing.ckpt "
                                         r"does not exist$"):
        analyze("missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="is not a readable PyTorch checkpoint"):
        analyze(tmp_path / "text.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(SystemExit, match="is not a tasknorm checkpoint: it has no 'tasknorm'"):
        analyze(tmp_path / "foreign.ckpt")


def test_weights_that_do_not_fit(trained, tmp_path):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"]["backbone_args"] = {"width": 4}
    torch.save(checkpoint, tmp_path / "wrong.ckpt")
    with pytest.raises(SystemExit, match="do not fit the backbone rebuilt") as error:
        analyze(tmp_path / "wrong.ckpt")
    assert "\n" not in str(error.value)
