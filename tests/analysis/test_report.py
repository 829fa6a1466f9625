import json

import pytest
import torch

from tasknorm.analysis import analyze_gates, analyze_gradients, write_report
from tasknorm.analysis.command import figures
from tasknorm.analysis.html import EXPLANATIONS

HIGH, LOW = 0.95, 0.05
PNG = b"\x89PNG\r\n\x1a\n"


def hand_gates():
    first = torch.tensor([HIGH] * 4 + [LOW] * 4)
    return {"backbone.features.1": torch.stack([first, first.flip(0)]),
            "backbone.features.4": torch.full((2, 6), 0.9),
            "backbone.features.7": torch.full((2, 3), 0.2)}


def history(pairs=(("left", "right"),), steps=6):
    generator = torch.Generator().manual_seed(0)
    tasks = list(dict.fromkeys(t for pair in pairs for t in pair))
    return {"tasks": tasks, "pairs": [list(p) for p in pairs], "step": list(range(0, 2 * steps, 2)),
            "epoch": [0] * (steps // 2) + [1] * (steps - steps // 2),
            "cosine": (torch.rand(steps, len(pairs), generator=generator) * 2 - 1).tolist(),
            "every_n_steps": 2, "window": 3, "parameters": ["w"], "num_parameters": 10}


def test_gate_report_numbers():
    report = analyze_gates(hand_gates(), ["left", "right"], tau=0.5)
    json.dumps(report, allow_nan=False)  # valid JSON: NaN became null
    assert [layer["short_name"] for layer in report["layers"]] == [
        "features.1", "features.4", "features.7"]
    assert [layer["channels"] for layer in report["layers"]] == [8, 6, 3]
    assert report["layers"][0]["gates"][0] == [HIGH] * 4 + [LOW] * 4
    capacity = report["capacity"]
    assert capacity["active_fraction"]["left"] == [0.5, 1.0, 0.0]
    assert capacity["network"]["active_fraction"]["left"] == pytest.approx(round(10 / 17, 4))
    layers = report["specialization"]["layers"]
    assert layers["backbone.features.1"]["exclusive"] == 8
    assert layers["backbone.features.4"]["shared_by_all"] == 6
    assert layers["backbone.features.7"]["unused"] == 3
    assert report["specialization"]["network"]["by_k"] == [3, 8, 6]
    per_layer = report["similarity"]["layers"]
    assert per_layer["backbone.features.1"]["jaccard"] == {"left-right": 0.0}
    assert per_layer["backbone.features.4"]["cosine"] == {"left-right": 1.0}
    assert per_layer["backbone.features.7"]["jaccard"] == {"left-right": None}
    assert report["similarity"]["network"]["jaccard"][0][1] == pytest.approx(6 / 14, abs=1e-4)
    assert report["clustering"]["order"] in ([0, 1], [1, 0])
    assert analyze_gates({"x": torch.full((1, 3), 0.7)}, ["only"])["clustering"] is None


def test_gradient_summary():
    summary = analyze_gradients(history())
    cosines = torch.tensor(history()["cosine"], dtype=torch.float64)[:, 0]
    pair = summary["pairs"]["left-right"]
    assert pair["mean"] == pytest.approx(float(cosines.mean()), abs=1e-4)
    assert pair["std"] == pytest.approx(float(cosines.std(correction=0)), abs=1e-4)
    assert pair["first_epoch_std"] == pytest.approx(float(cosines[:3].std(correction=0)),
                                                    abs=1e-4)
    assert pair["final_rolling_std"] == pytest.approx(float(cosines[-3:].std(correction=0)),
                                                      abs=1e-4)
    assert summary["steps"] == [0, 2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="no measurement"):
        analyze_gradients({**history(), "step": []})


def test_write_report(tmp_path):
    report = {"source": {"checkpoint": "x.ckpt", "architecture": "task_sigma"},
              "gates": analyze_gates(hand_gates(), ["left", "right"]),
              "gradients": {"GradientCosineMonitor{}": analyze_gradients(history())}}
    written = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["capacity.png", "dendrogram.png", "gates.png", "gradient_cosines.png",
                     "layer_similarity.png", "report.html", "report.json", "similarity.png",
                     "specialization.png", "tau_sweep.png"]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG)
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 8
    for title, _ in EXPLANATIONS.values():
        assert title in html
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(
        json.dumps(report))


def test_figures_stay_legible_with_many_tasks_and_channels():
    generator = torch.Generator().manual_seed(0)
    tasks = [f"attribute_{i:02d}" for i in range(40)]
    gates = {f"encoder.stage{i}.block.norm": torch.rand(40, 2000, generator=generator)
             for i in range(8)}
    pairs = [(tasks[i], tasks[j]) for i in range(8) for j in range(i + 1, 8)]
    report = {"gates": analyze_gates(gates, tasks),
              "gradients": {"m": analyze_gradients(history(pairs, steps=30))}}
    drawn = figures(report)
    assert [name for name, _, _ in drawn] == [
        "gates-1.png", "gates-2.png", "capacity.png", "tau_sweep.png", "specialization.png",
        "similarity.png", "dendrogram.png", "layer_similarity.png", "gradient_cosines.png"]
    for name, _, figure in drawn:
        width, height = figure.get_size_inches()
        assert width <= 24 and height <= 24, name  # at 110 dpi: at most 2640 pixels a side
        for ax in figure.axes:
            for label in ax.get_yticklabels():
                assert label.get_fontsize() >= 5, name
