import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from tasknorm import compare
from tasknorm.compare import grid_points, main, markdown, summarise
from tasknorm.curves import convergence, improvement, line_styles, plot_curves, read_curves
from tasknorm.models import LEARNED_SHARING
from tasknorm.train import METHODS

TINY = ["--data.init_args.sizes", "[128, 32, 32]", "--data.init_args.batch_size", "32",
        "--model.backbone_args", '{"width": 8}']


def record(architecture, seed, left, right, converged=True):
    return {"architecture": architecture, "seed": seed,
            "test": {"left": {"accuracy": left}, "right": {"accuracy": right}},
            "parameters": 10, "flops": 2_000_000, "seconds": 1.0 + seed,
            "higher_is_better": {"left": {"accuracy": True}, "right": {"accuracy": True}},
            "fractions": {"left": {"accuracy": True}, "right": {"accuracy": True}},
            "point": {}, "converged": converged}


def test_summary_statistics_and_delta():
    records = [record("single_task", 0, 0.8, 0.6), record("single_task", 1, 0.6, 0.6),
               record("task_sigma", 0, 0.9, 0.6), record("task_sigma", 1, 0.7, 0.6, False)]
    baseline = {"left": {"accuracy": 0.7}, "right": {"accuracy": 0.6}}
    summary = summarise(records, baseline)
    left = summary["task_sigma"]["metrics"]["left"]["accuracy"]
    assert left["mean"] == pytest.approx(0.8)
    assert left["std"] == pytest.approx(statistics.stdev([0.9, 0.7]))
    assert summary["single_task"]["delta_m"] == pytest.approx(0.0)
    # left +0.1/0.7, right 0 → mean over tasks of the gains, in percent
    assert summary["task_sigma"]["delta_m"] == pytest.approx(100 * (0.1 / 0.7) / 2)
    # the seeds' own Δm: +0.2/0.7 and 0 on left, 0 on right
    seeds = [100 * (0.2 / 0.7) / 2, 0.0]
    assert summary["task_sigma"]["delta_m_std"] == pytest.approx(statistics.stdev(seeds))
    assert statistics.fmean(seeds) == pytest.approx(summary["task_sigma"]["delta_m"])
    table = markdown(summary)
    assert "| left accuracy % | right accuracy % |" in table
    assert "| converged |" in table
    assert ("| TSσBN | 80.00 ± 14.14 | 60.00 ± 0.00 | +7.14 ± 10.10 | 10 | 2.0 | 1.5 ± 0.7 | 1/2 |"
            in table)
    assert "| single-task | 70.00 ± 14.14 |" in table and "| 2/2 |" in table
    assert summarise(records, None)["task_sigma"]["delta_m"] is None


def test_markdown_keeps_units_of_metrics_that_are_not_fractions():
    row = record("hard", 0, 0.5, 0.5)
    row["test"] = {"depth": {"abs_err": 0.71234}, "normals": {"mean_angle": 26.348}}
    row["higher_is_better"] = {"depth": {"abs_err": False}, "normals": {"mean_angle": False}}
    row["fractions"] = {"depth": {"abs_err": False}, "normals": {"mean_angle": False}}
    table = markdown(summarise([row], None))
    assert "| depth abs_err | normals mean_angle |" in table
    assert "| 0.7123 ± 0.0000 | 26.35 ± 0.00 |" in table


def test_compare_end_to_end(workdir, capsys):
    tmp_path = workdir
    main(["--architectures", "single_task", "task_sigma", "--seeds", "2", "--epochs", "1",
          "--output", "out", "--", *TINY])
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [(r["architecture"], r["seed"]) for r in result["records"]] == [
        ("single_task", 0), ("single_task", 1), ("task_sigma", 0), ("task_sigma", 1)]
    stl = [r for r in result["records"] if r["architecture"] == "single_task"]
    baseline = json.loads((tmp_path / "out" / "baseline.json").read_text())
    assert baseline["left"]["accuracy"] == pytest.approx(
        statistics.fmean(r["test"]["left"]["accuracy"] for r in stl))
    assert result["summary"]["single_task"]["delta_m"] == pytest.approx(0.0)
    single, shared = (result["summary"][a] for a in ("single_task", "task_sigma"))
    assert single["parameters"] > 1.9 * shared["parameters"]
    assert shared["flops"] == pytest.approx(single["flops"], rel=0.01)
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").read_text().splitlines()))
    assert len(rows) == 4 * 2 * 2  # runs × tasks × metrics
    assert "TSσBN" in (tmp_path / "out" / "compare.md").read_text()
    assert "Δm" in capsys.readouterr().out
    # one validation epoch says nothing about convergence
    assert all(r["converged"] is False and r["point"] == {} for r in result["records"])
    assert result["tuning"] is None and not (tmp_path / "out" / "tuning.json").exists()
    assert (tmp_path / "out" / "curves.png").is_file()


def test_compare_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    with pytest.raises(SystemExit):
        main(["--architectures", "soft"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "compare.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "full")])
    assert (tmp_path / "full" / "compare.json").read_text() == "{}"
    with pytest.raises(SystemExit, match="cannot read baseline"):
        main(["--baseline", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")])


def write_metrics(folder, left, right):
    """A CSVLogger-like metrics.csv: a validation row and a training row per epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/left/accuracy", "val/right/abs_err"])
        for epoch, (a, b) in enumerate(zip(left, right, strict=True)):
            writer.writerow([epoch, 4 * epoch + 3, "", a, b])
            writer.writerow([epoch, 4 * epoch + 3, 2.0 - epoch / 10, "", ""])


VAL_SCORES = {("hard", "0.02"): 0.5, ("hard", "0.05"): 0.7,
              ("task_sigma", "0.02"): 0.8, ("task_sigma", "0.05"): 0.8,
              ("sigma", "0.02"): 0.6, ("sigma", "0.05"): None}
"""Validation score of each architecture and learning rate; ``None``: the loss diverges."""


class FakeRun:
    """Stands in for ``run_one``: returns the preset validation score of ``VAL_SCORES`` and writes
    a metrics.csv where the real run would log."""

    def __init__(self):
        self.calls = []

    def __call__(self, architecture, seed, output, config, overrides, version=None, name=None):
        lr = overrides[overrides.index("--model.lr") + 1]
        self.calls.append((architecture, seed, lr, Path(output).name))
        score = VAL_SCORES[architecture, lr]
        if score is None:
            raise FloatingPointError("loss of task 'left' is nan")
        log_dir = Path(output) / (name or architecture) / (version or f"seed{seed}")
        write_metrics(log_dir, [0.5, 0.8, 0.9, 0.9, 0.9], [2.0, 1.0, 0.9, 0.8, 0.7])
        return {"architecture": architecture, "seed": seed, "val_score": score,
                "test": {"left": {"accuracy": 0.9}, "right": {"abs_err": 0.5}},
                "parameters": 10, "flops": 2_000_000, "seconds": 1.0, "log_dir": str(log_dir),
                "primary": {"left": "accuracy", "right": "abs_err"},
                "higher_is_better": {"left": {"accuracy": True}, "right": {"abs_err": False}},
                "fractions": {"left": {"accuracy": True}, "right": {"abs_err": False}}}


def test_tuning_picks_the_best_validation_point_and_reuses_its_seed_zero_run(
        tmp_path, monkeypatch, capsys):
    fake = FakeRun()
    monkeypatch.setattr(compare, "run_one", fake)
    out = tmp_path / "out"
    main(["--architectures", "hard", "sigma", "task_sigma", "--seeds", "3",
          "--grid", "lr=0.02,0.05", "--output", str(out)])
    # every point at seed 0, in the tuning folder; then seeds 1 and 2 at each pick only
    assert fake.calls == [
        ("hard", 0, "0.02", "tuning"), ("hard", 0, "0.05", "tuning"),
        ("sigma", 0, "0.02", "tuning"), ("sigma", 0, "0.05", "tuning"),
        ("task_sigma", 0, "0.02", "tuning"), ("task_sigma", 0, "0.05", "tuning"),
        ("hard", 1, "0.05", "out"), ("hard", 2, "0.05", "out"),
        ("sigma", 1, "0.02", "out"), ("sigma", 2, "0.02", "out"),  # 0.05 diverged
        ("task_sigma", 1, "0.02", "out"), ("task_sigma", 2, "0.02", "out")]  # first on ties
    tuning = json.loads((out / "tuning.json").read_text())
    picks = {"hard": {"lr": 0.05}, "sigma": {"lr": 0.02}, "task_sigma": {"lr": 0.02}}
    assert tuning["grid"] == {"lr": [0.02, 0.05]} and tuning["picks"] == picks
    assert tuning["scores"]["hard"] == {"lr=0.02": 0.5, "lr=0.05": 0.7}
    assert tuning["scores"]["sigma"] == {"lr=0.02": 0.6, "lr=0.05": None}
    result = json.loads((out / "compare.json").read_text())
    records = result["records"]
    assert [(r["architecture"], r["seed"]) for r in records] == [
        (a, s) for a in ("hard", "sigma", "task_sigma") for s in range(3)]
    assert all(r["point"] == picks[r["architecture"]] for r in records)
    assert records[0]["log_dir"] == str(out / "tuning" / "hard" / "lr=0.05")
    assert records[1]["log_dir"] == str(out / "hard" / "seed1")
    assert result["summary"]["sigma"]["point"] == {"lr": 0.02}
    table = "| hard sharing (BN) | 0.5000 | 0.7000 | lr=0.05 |"
    assert table in capsys.readouterr().out
    report = (out / "compare.md").read_text()
    assert table in report and "| hard sharing (σBN) | 0.6000 | diverged | lr=0.02 |" in report
    # left gained 0 points and right (lower is better) 0.1 over the last epoch: converged
    assert all(r["converged"] for r in records)
    assert records[0]["improvements"] == {"left": 0.0, "right": pytest.approx(0.1)}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class InterruptedRun(FakeRun):
    """:class:`FakeRun` killed during its ``stop``-th call, after that run began logging."""

    def __init__(self, stop):
        super().__init__()
        self.stop = stop

    def __call__(self, architecture, seed, output, config, overrides, version=None, name=None):
        if len(self.calls) + 1 == self.stop:
            write_metrics(Path(output) / name / version, [0.1], [9.0])
            (Path(output) / name / version / "last.ckpt").write_text("partial")
            raise KeyboardInterrupt
        return super().__call__(architecture, seed, output, config, overrides, version, name)


def test_resume_trains_only_the_runs_an_interrupted_comparison_did_not_finish(
        tmp_path, monkeypatch, capsys):
    """Killed in its fifth run, a comparison resumed with ``--resume`` reuses the four finished
    runs (the diverged one included), retrains the unfinished one from a clean folder and ends
    with the tables of an uninterrupted comparison; other settings or a plain rerun into the
    folder are refused."""
    args = ["--architectures", "hard", "sigma", "task_sigma", "--seeds", "3",
            "--grid", "lr=0.02,0.05"]
    whole = FakeRun()
    monkeypatch.setattr(compare, "run_one", whole)
    main([*args, "--output", str(tmp_path / "whole" / "out")])  # same folder name: same calls
    killed = InterruptedRun(stop=5)
    monkeypatch.setattr(compare, "run_one", killed)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--output", str(out)])
    assert killed.calls == whole.calls[:4]
    for refused, message in [([], "is not empty; choose another --output, or --resume"),
                             (["--resume", "--epochs", "4"],
                              "run with another --epochs or fit options after --"),
                             (["--resume", "--grid", "lr=0.02,0.1"], "run with another --grid")]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--output", str(out), *refused])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    resumed = FakeRun()
    monkeypatch.setattr(compare, "run_one", resumed)
    main([*args, "--output", str(out), "--resume"])
    assert resumed.calls == whole.calls[4:]
    reused = [line for line in capsys.readouterr().out.splitlines() if "reusing" in line]
    assert reused == [f"tasknorm compare: {name} {label}: reusing the finished run in "
                      f"{out / 'tuning' / name / label}" for name, label in [
                          ("hard", "lr=0.02"), ("hard", "lr=0.05"), ("sigma", "lr=0.02"),
                          ("sigma", "lr=0.05")]]
    unfinished = out / "tuning" / "task_sigma" / "lr=0.02"
    assert not (unfinished / "last.ckpt").exists()
    assert len(read_curves(unfinished, {"left": "accuracy"})["left"]) == 5
    result = json.loads((out / "compare.json").read_text())
    expected = json.loads((tmp_path / "whole" / "out" / "compare.json").read_text())
    assert result["summary"] == expected["summary"] and result["tuning"] == expected["tuning"]
    assert json.loads((out / "tuning" / "sigma" / "lr=0.05" / "record.json").read_text()) == {
        "diverged": "loss of task 'left' is nan"}
    (out / "hard" / "seed1" / "record.json").write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--output", str(out), "--resume"])
    assert "cannot read the saved run" in capsys.readouterr().err


def test_resume_refuses_a_folder_that_compare_did_not_write(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "has no settings.json; it is not a tasknorm compare folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("grid", "message"), [
    (["lr=0.01,0.02,0.03", "norm_lr_mult=1,10"], "--grid has 6 points (3 × 2); at most 4"),
    (["lr"], "--grid entry 'lr' is not KEY=V1,V2,..."),
    (["lr="], "--grid entry 'lr=' is not KEY=V1,V2,..."),
    (["=0.1"], "--grid entry '=0.1' is not KEY=V1,V2,..."),
    (["lr=0.1,"], "--grid lr: values must be finite numbers, got '0.1,'"),
    (["lr=0.1,fast"], "--grid lr: values must be finite numbers, got '0.1,fast'"),
    (["lr=nan"], "--grid lr: values must be finite numbers, got 'nan'"),
    (["lr=0.1,0.1"], "--grid lr: repeated value in '0.1,0.1'"),
    (["lr=0.1", "lr=0.2"], "--grid key 'lr' is given twice"),
    (["lr=0.1", "optimization.lr=0.2"], "--grid key 'optimization.lr' is given twice"),
    (["learning_rate=0.1"], "--grid key 'learning_rate' is not a model option (backbone"),
    (["optimization.learning_rate=0.1"], "not a model option"),
    (["architecture=1"], "--grid key 'architecture' is not a model option"),
])
def test_grid_errors_are_one_line_and_come_before_any_run(tmp_path, capsys, grid, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--grid", *grid, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tasknorm compare: error: ") and message in last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("key", "option"), [
    ("lr", "--model.lr=0.3"), ("optimization.lr", "--model.lr=0.3"),
    ("lr", "--model.optimization.lr=0.3"), ("gates.mean", "--model.gate_init_mean")])
def test_grid_must_not_contradict_a_fit_option(tmp_path, capsys, key, option):
    with pytest.raises(SystemExit):
        main(["--grid", f"{key}=0.1,0.2", "--output", str(tmp_path / "out"), "--", option, "1"])
    name = option.partition("=")[0]
    assert f"--grid {key} and the fit option {name} contradict" in capsys.readouterr().err


def test_grid_points_are_the_product_of_the_values():
    assert grid_points({"lr": [0.1, 0.2], "momentum": [0.8, 0.9]}) == [
        {"lr": 0.1, "momentum": 0.8}, {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.2, "momentum": 0.8}, {"lr": 0.2, "momentum": 0.9}]
    assert compare.parse_grid(["step_size=10,20"]) == {"step_size": [10, 20]}  # ints stay ints
    assert compare.parse_grid(["optimization.lr=0.1", "gates.mean=0,2"]) == {
        "optimization.lr": [0.1], "gates.mean": [0, 2]}


@pytest.mark.parametrize(("values", "higher", "fraction", "expected"), [
    ([0.5, 0.8, 0.9, 0.902, 0.903], True, True, 0.1),  # converged: +0.1 points at the end
    ([0.5, 0.8, 0.9, 0.9, 0.91], True, True, 1.0),  # not: +1 point
    ([0.5, 0.8, 0.9, 0.9, 0.91], True, False, 0.01),  # the same curve in its own units
    ([3.0, 2.0, 1.5, 1.4, 1.3], False, False, 0.1),  # lower is better, converged
    ([3.0, 2.0, 1.9, 1.8, 1.0], False, False, 0.8),  # lower is better, not converged
    ([1.0, 2.0, 3.0, 4.0, 5.0], False, False, 0.0),  # got worse: no improvement
    ([0.1] * 8 + [0.5, 0.6], True, True, 50.0),  # 10 epochs: the last 2 count
    ([0.1] * 11 + [0.5] * 4, True, True, 0.0),  # 15 epochs: the last 3 (not 4) count
])
def test_convergence_rule(values, higher, fraction, expected):
    gain = improvement(values, higher, 100.0 if fraction else 1.0)
    assert gain == pytest.approx(expected)
    curve = {epoch: value for epoch, value in enumerate(values, 1)}
    converged, gains = convergence({"t": curve}, {"t": higher}, {"t": fraction})
    assert converged is (expected < 0.5) and gains == {"t": gain}


def test_convergence_needs_every_task_and_more_than_one_epoch():
    flat, rising = {1: 0.5, 2: 0.5}, {1: 0.5, 2: 0.9}
    assert convergence({"a": flat, "b": flat}, {"a": True, "b": True},
                       {"a": True, "b": True})[0] is True
    assert convergence({"a": flat, "b": rising}, {"a": True, "b": True},
                       {"a": True, "b": True})[0] is False
    assert improvement([0.9], True) is None
    assert convergence({"a": {1: 0.9}}, {"a": True}, {"a": True}) == (False, {"a": None})


def test_curves_are_read_from_metrics_csv_and_plotted(tmp_path):
    write_metrics(tmp_path / "run0", [0.5, 0.75], [2.0, 1.5])
    write_metrics(tmp_path / "run1", [0.25, 0.5], [3.0, 1.0])
    metrics = {"left": "accuracy", "right": "abs_err"}
    curves = [read_curves(tmp_path / f"run{i}", metrics) for i in range(2)]
    assert curves[0] == {"left": {1: 0.5, 2: 0.75}, "right": {1: 2.0, 2: 1.5}}
    path = plot_curves({"TSσBN": curves, "hard": curves[:1]},
                       {"left": "val accuracy %", "right": "val abs_err"},
                       {"left": 100.0, "right": 1.0}, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match=r"missing/metrics\.csv"):
        read_curves(tmp_path / "missing", metrics)


@pytest.mark.parametrize("count", [1, 4, 31, 80])
def test_every_line_of_a_plot_has_its_own_colour_and_style(count):
    styles = line_styles(count)
    assert len(styles) == count and len(set(styles)) == count


def test_a_plot_of_many_rows_keeps_every_label_in_its_legend(tmp_path, monkeypatch):
    write_metrics(tmp_path / "run", [0.5, 0.75], [2.0, 1.5])
    curves = [read_curves(tmp_path / "run", {"left": "accuracy", "right": "abs_err"})]
    saved = {}
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, f, **kwargs: saved.setdefault("figure", fig))
    labels = [f"row {i}" for i in range(31)]
    plot_curves(dict.fromkeys(labels, curves), {"left": "val accuracy %", "right": "val abs_err"},
                {"left": 100.0, "right": 1.0}, tmp_path / "curves.png")
    (legend,) = saved["figure"].legends
    assert [text.get_text() for text in legend.get_texts()] == labels


def test_compare_tuning_end_to_end(workdir):
    out = workdir / "out"
    main(["--architectures", "task_sigma", "--seeds", "2", "--grid", "lr=0.02,0.05",
          "--epochs", "2", "--output", "out", "--", *TINY])
    tuning = json.loads((out / "tuning.json").read_text())
    scores = tuning["scores"]["task_sigma"]
    assert list(scores) == ["lr=0.02", "lr=0.05"]
    assert all(math.isfinite(s) for s in scores.values())
    best = max(scores, key=scores.get)
    assert compare.point_label(tuning["picks"]["task_sigma"]) == best
    assert (out / "tuning" / "task_sigma" / "lr=0.02" / "metrics.csv").is_file()
    records = json.loads((out / "compare.json").read_text())["records"]
    assert [r["seed"] for r in records] == [0, 1]
    assert records[0]["log_dir"] == f"out/tuning/task_sigma/{best}"
    assert records[0]["val_score"] == scores[best]
    assert all(r["point"] == tuning["picks"]["task_sigma"] for r in records)
    assert all(set(r["improvements"]) == {"left", "right"} for r in records)
    assert (out / "curves.png").is_file()
    assert f"| {best} |" in (out / "compare.md").read_text()


def test_relative_tuning_scores_best_epoch_metrics_against_the_grid_mean(tmp_path, monkeypatch):
    """Under ``selection: relative`` each run's val/selection is a gain over its own first epoch,
    so the pick compares the primary metrics at each run's best epoch instead."""
    # Run lr=0.02 has the higher own relative gain (0.9) but the worse metrics at its best epoch
    logs = {"0.02": ([0.2, 0.5, 0.9], [0.4, 0.6, 0.8], [5.0, 4.0, 3.0]),
            "0.05": ([0.1, 0.3, 0.2], [0.8, 0.9, 0.85], [1.0, 1.0, 2.0])}

    def relative(architecture, seed, output, config, overrides, version=None, name=None):
        lr = overrides[overrides.index("--model.lr") + 1]
        selection, left, right = logs[lr] if seed == 0 else logs["0.05"]
        record = FakeRun()(architecture, seed, output, config, overrides, version)
        with open(Path(record["log_dir"]) / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "val/selection", "val/left/accuracy", "val/right/abs_err"])
            writer.writerows([epoch, *row] for epoch, row in
                             enumerate(zip(selection, left, right, strict=True)))
        return {**record, "val_score": max(selection), "selection": "relative"}

    monkeypatch.setattr(compare, "run_one", relative)
    out = tmp_path / "out"
    main(["--architectures", "hard", "--seeds", "2", "--grid", "lr=0.02,0.05",
          "--output", str(out)])
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["metric"] == compare.RELATIVE_TUNING
    # best epochs: lr=0.02 → epoch 3 (left 0.8, right 3.0); lr=0.05 → epoch 2 (0.9, 1.0);
    # reference = their mean (0.85, 2.0); Δm = mean of +(M − R)/R and −(M − R)/R, in percent
    expected = {"lr=0.02": 100 * ((0.8 - 0.85) / 0.85 - (3.0 - 2.0) / 2.0) / 2,
                "lr=0.05": 100 * ((0.9 - 0.85) / 0.85 - (1.0 - 2.0) / 2.0) / 2}
    assert tuning["scores"]["hard"] == pytest.approx(expected)
    assert tuning["picks"] == {"hard": {"lr": 0.05}}


def test_compare_runs_every_learned_sharing_architecture(workdir, capsys):
    """Every learned-sharing architecture runs in one comparison and gets its row (test metrics,
    parameters, FLOPs per image), but only when asked for: the default list is the norms'."""
    main(["--architectures", *LEARNED_SHARING, "--seeds", "1", "--epochs", "1", "--output",
          "out", "--", *TINY, "--trainer.limit_train_batches", "2"])
    result = json.loads((workdir / "out" / "compare.json").read_text())
    assert [r["architecture"] for r in result["records"]] == list(LEARNED_SHARING)
    assert all(set(r["test"]) == {"left", "right"} for r in result["records"])
    table = (workdir / "out" / "compare.md").read_text()
    for name in LEARNED_SHARING:
        assert result["summary"][name]["parameters"] > 0 and result["summary"][name]["flops"] > 0
        assert f"| {compare.LABELS[name]} |" in table
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "default: single_task hard sigma task task_sigma" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compare_trains_with_every_balancing_method(workdir, name):
    """A balancing method given as a fit option reaches every run of the comparison."""
    weights = {"fixed": ["--model.balancing.weighting_args",
                         '{"weights": {"left": 1.0, "right": 2.0}}']}
    main(["--architectures", "hard", "--seeds", "1", "--epochs", "1", "--output", "out", "--",
          "--data.init_args.sizes", "[96, 32, 32]", "--data.init_args.batch_size", "32",
          "--model.backbone_args", '{"width": 2}', "--trainer.limit_train_batches", "3",
          "--model.balancing.weighting", name, *weights.get(name, [])])
    (record,) = json.loads((workdir / "out" / "compare.json").read_text())["records"]
    config = yaml.safe_load((Path(record["log_dir"]) / "config.yaml").read_text())
    assert config["model"]["balancing"]["weighting"] == name
    assert set(record["test"]) == {"left", "right"}


def test_merge_tabulates_separate_comparisons_as_one(workdir, capsys):
    """Two comparisons run apart (single-task; hard sharing) merged: one table, Δm of hard
    sharing against the single-task runs of the other folder; nothing is trained."""
    for architecture in ("single_task", "hard"):
        main(["--architectures", architecture, "--seeds", "1", "--epochs", "1", "--output",
              architecture, "--", *TINY])
    main(["--merge", "single_task", "hard", "--output", "merged"])
    single, hard = (json.loads((workdir / a / "compare.json").read_text())["records"][0]
                    for a in ("single_task", "hard"))
    merged = json.loads((workdir / "merged" / "compare.json").read_text())
    assert merged["records"] == [single, hard]
    expected = statistics.fmean(
        statistics.fmean((hard["test"][t][m] - v) / v for m, v in metrics.items())
        for t, metrics in single["test"].items())
    assert merged["summary"]["hard"]["delta_m"] == pytest.approx(100 * expected)
    assert not (workdir / "merged" / "hard").exists()
    assert (workdir / "merged" / "curves.png").is_file()
    capsys.readouterr()
    for args, message in [(["hard", "hard"], "repeats hard seed 0"),
                          (["hard", "nowhere"], "cannot read nowhere/compare.json")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--merge", *args, "--output", "refused"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (workdir / "refused").exists()


class FakeMethodRun(FakeRun):
    """:class:`FakeRun` whose score also depends on the balancing method given as a fit option:
    ``pcgrad`` adds 0.3 at lr 0.02, so it flips hard sharing's pick."""

    def __call__(self, architecture, seed, output, config, overrides, version=None, name=None):
        method = overrides[overrides.index("--model.balancing.weighting") + 1]
        run = super().__call__(architecture, seed, output, config, overrides, version, name)
        self.calls[-1] = (*self.calls[-1], method, name)
        if method == "pcgrad" and "--model.lr" in overrides and "0.02" in overrides:
            run["val_score"] += 0.3
        return {**run, "method": method}


def test_methods_make_one_row_per_architecture_and_method(tmp_path, monkeypatch, capsys):
    """``--methods``: every (architecture, method) pair is tuned, picked and seeded as a row of
    its own, logged under ``<architecture>+<method>`` (``equal`` keeps the architecture's
    name in the table)."""
    fake = FakeMethodRun()
    monkeypatch.setattr(compare, "run_one", fake)
    out = tmp_path / "out"
    main(["--architectures", "hard", "task_sigma", "--methods", "equal", "pcgrad", "--seeds",
          "2", "--grid", "lr=0.02,0.05", "--output", str(out)])
    assert [call[4:] for call in fake.calls[:8]] == [
        (m, a if m == "equal" else f"{a}+{m}") for a in ("hard", "task_sigma")
        for m in ("equal", "pcgrad") for _ in range(2)]
    assert fake.calls[8:] == [
        ("hard", 1, "0.05", "out", "equal", "hard"),
        ("hard", 1, "0.02", "out", "pcgrad", "hard+pcgrad"),
        ("task_sigma", 1, "0.02", "out", "equal", "task_sigma"),
        ("task_sigma", 1, "0.02", "out", "pcgrad", "task_sigma+pcgrad")]
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["picks"] == {"hard": {"lr": 0.05}, "hard+pcgrad": {"lr": 0.02},
                               "task_sigma": {"lr": 0.02}, "task_sigma+pcgrad": {"lr": 0.02}}
    assert tuning["scores"]["hard+pcgrad"] == {"lr=0.02": pytest.approx(0.8), "lr=0.05": 0.7}
    result = json.loads((out / "compare.json").read_text())
    assert list(result["summary"]) == ["hard", "hard+pcgrad", "task_sigma", "task_sigma+pcgrad"]
    assert result["summary"]["hard+pcgrad"]["method"] == "pcgrad"
    assert result["summary"]["hard+pcgrad"]["seeds"] == [0, 1]
    assert "| hard sharing (BN) + pcgrad | 0.8000 | 0.7000 | lr=0.02 |" in capsys.readouterr().out
    table = (out / "compare.md").read_text()
    assert "| TSσBN + pcgrad | 90.00 ± 0.00 |" in table and "| TSσBN | 90.00 ± 0.00 |" in table
    rows = list(csv.DictReader((out / "compare.csv").read_text().splitlines()))
    assert {(r["architecture"], r["method"]) for r in rows} == {
        (a, m) for a in ("hard", "task_sigma") for m in ("equal", "pcgrad")}


def test_methods_train_each_method_and_merge_by_row(workdir):
    """A real two-method comparison: each run trains with its method (its saved config says so);
    merging it with a folder of the same architecture under another method is allowed, the same
    row twice is refused."""
    small = ["--data.init_args.sizes", "[96, 32, 32]", "--data.init_args.batch_size", "32",
             "--model.backbone_args", '{"width": 2}', "--trainer.limit_train_batches", "2"]
    main(["--architectures", "hard", "--methods", "uncertainty", "mgda", "--seeds", "1",
          "--epochs", "1", "--output", "two", "--", *small])
    records = json.loads((workdir / "two" / "compare.json").read_text())["records"]
    assert [(r["architecture"], r["method"]) for r in records] == [
        ("hard", "uncertainty"), ("hard", "mgda")]
    for r in records:
        config = yaml.safe_load((Path(r["log_dir"]) / "config.yaml").read_text())
        assert config["model"]["balancing"]["weighting"] == r["method"]
        assert Path(r["log_dir"]).parent.name == f"hard+{r['method']}"
    main(["--architectures", "hard", "--seeds", "1", "--epochs", "1", "--output", "ew", "--",
          *small])
    main(["--merge", "two", "ew", "--output", "merged"])
    summary = json.loads((workdir / "merged" / "compare.json").read_text())["summary"]
    assert list(summary) == ["hard+uncertainty", "hard+mgda", "hard"]
    with pytest.raises(SystemExit, match="repeats hard\\+uncertainty seed 0"):
        main(["--merge", "two", "two", "--output", "refused"])


@pytest.mark.parametrize("option", [["--model.balancing.weighting=pcgrad"],
                                    ["--model.weighting", "pcgrad"],
                                    ["--model.balancing", '{"weighting": "pcgrad"}']])
def test_methods_must_not_contradict_a_fit_option(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["--methods", "equal", "--output", str(tmp_path / "out"), "--", *option])
    assert exit_info.value.code == 2
    assert "--methods and the fit option" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["--methods", "nope", "--output", str(tmp_path / "out")])
