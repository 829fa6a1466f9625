import json

import pytest
import torch

from tasknorm.cli import main

FIT = ["fit", "--trainer.max_epochs", "1", "--data.init_args.sizes", "[256, 64, 64]",
       "--data.init_args.batch_size", "32", "--model.backbone_args", '{"width": 8}',
       "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
       "--trainer.default_root_dir", "run",
       "--data.init_args.tasks", "[left, right, sum_parity]"]
SMALL = ["--budget", "2", "--epochs", "1", "--max-trees", "3", "--top", "2",
         "--recalibration-batches", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The best checkpoint of a one-epoch 3-task TSσBN run (shared by the tests: none writes
    into its run)."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("TASKNORM_CACHE", str(folder / "cache"))
        main(FIT)
    (path,) = (folder / "run" / "checkpoints").glob("best-*.ckpt")
    return path


def test_simplify_writes_a_tree_that_tasknorm_test_accepts(workdir, checkpoint, capsys):
    main(["simplify", str(checkpoint), "--out", "simple", *SMALL])
    out = capsys.readouterr().out
    assert "gates candidate trees within 2×" in out and "chosen:" in out
    report = json.loads((workdir / "simple" / "report.json").read_text())
    assert 0 < report["flops_ratio"] < 1
    assert report["flops_vs_hard"]["simplified"] <= 2.0
    assert report["flops_vs_hard"]["original"] == pytest.approx(
        report["flops"]["original"] / report["flops"]["hard"])
    assert report["params"]["simplified"] < report["params"]["original"]  # fewer gate rows
    assert 1 <= len(report["candidates"]) <= 3 and len(report["finetuned"]) <= 2
    assert {c["merge"] for c in report["candidates"]} <= {"mean", "central"}
    assert set(report["original"]["test"]) == set(report["simplified"]["test"]) == {
        "left", "right", "sum_parity"}
    assert report["tree"]["text"] in {f["text"] for f in report["finetuned"]}
    html = (workdir / "simple" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    main(["test", "simple/simplified.ckpt"])  # the run's own config beside the checkpoint
    retested = json.loads((workdir / "simple" / "test-simplified" / "results.json").read_text())
    for task, values in report["simplified"]["test"].items():
        assert retested["test"][task] == pytest.approx(values)


def test_finetuning_trains_in_training_mode_and_random_grouping_runs(workdir, checkpoint,
                                                                     capsys):
    """Running statistics move only in training mode; the candidates are scored in eval mode,
    which Lightning would otherwise keep through fine-tuning (normalising with frozen
    statistics while the weights change)."""
    main(["simplify", str(checkpoint), "--out", "simple", *SMALL, "--top", "1",
          "--grouping", "random"])
    assert "random candidate trees within 2×" in capsys.readouterr().out
    report = json.loads((workdir / "simple" / "report.json").read_text())
    assert report["grouping"] == "random"
    assert all(c["flops_vs_hard"] <= 2.0 for c in report["candidates"])
    folder = workdir / "simple" / "finetune" / "tree_0"
    (finetuned,) = (folder / "checkpoints").glob("best-*.ckpt")
    before, after = (torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
                     for path in (folder / "before-finetuning.ckpt", finetuned))
    means = [name for name in before if name.endswith("running_mean")]
    assert means and all(not torch.equal(before[name], after[name]) for name in means)


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "0.5"], "--budget must be at least 1"),
    (["--top", "0"], "--top must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 0"),
])
def test_bad_options_are_one_line(workdir, checkpoint, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["simplify", str(checkpoint), "--out", "simple", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "simple").exists()


def test_an_existing_output_and_other_architectures_are_refused(workdir, checkpoint, capsys):
    (workdir / "simple").mkdir()
    (workdir / "simple" / "kept.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists already and is not an empty folder"):
        main(["simplify", str(checkpoint), "--out", "simple"])
    assert (workdir / "simple" / "kept.txt").read_text() == "mine"
    main([*FIT, "--model.architecture", "hard", "--trainer.default_root_dir", "hard"])
    (hard,) = (workdir / "hard" / "checkpoints").glob("best-*.ckpt")
    with pytest.raises(SystemExit, match="simplify needs a TSσBN model"):
        main(["simplify", str(hard), "--out", "other"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["simplify", "missing.ckpt", "--out", "other"])
