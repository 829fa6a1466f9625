import csv
import json
import statistics

import pytest

from tasknorm.compare import main, markdown, summarise


def record(architecture, seed, left, right):
    return {"architecture": architecture, "seed": seed,
            "test": {"left": {"accuracy": left}, "right": {"accuracy": right}},
            "parameters": 10, "flops": 2_000_000, "seconds": 1.0 + seed,
            "higher_is_better": {"left": {"accuracy": True}, "right": {"accuracy": True}},
            "fractions": {"left": {"accuracy": True}, "right": {"accuracy": True}}}


def test_summary_statistics_and_delta():
    records = [record("single_task", 0, 0.8, 0.6), record("single_task", 1, 0.6, 0.6),
               record("task_sigma", 0, 0.9, 0.6), record("task_sigma", 1, 0.7, 0.6)]
    baseline = {"left": {"accuracy": 0.7}, "right": {"accuracy": 0.6}}
    summary = summarise(records, baseline)
    left = summary["task_sigma"]["metrics"]["left"]["accuracy"]
    assert left["mean"] == pytest.approx(0.8)
    assert left["std"] == pytest.approx(statistics.stdev([0.9, 0.7]))
    assert summary["single_task"]["delta_m"] == pytest.approx(0.0)
    # left +0.1/0.7, right 0 → mean over tasks of the gains, in percent
    assert summary["task_sigma"]["delta_m"] == pytest.approx(100 * (0.1 / 0.7) / 2)
    table = markdown(summary)
    assert "| left accuracy % | right accuracy % |" in table
    assert "| TSσBN | 80.00 ± 14.14 | 60.00 ± 0.00 | +7.14 | 10 | 2.0 | 1.5 ± 0.7 |" in table
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
          "--output", "out", "--", "--data.init_args.sizes", "[128, 32, 32]",
          "--data.init_args.batch_size", "32", "--model.backbone_args", '{"width": 8}'])
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
