import json

import pytest

from tasknorm.cli import main
from tasknorm.prune.command import PruneConfig, format_table, load_config, run


def test_prune_command_on_digits(tmp_path, capsys):
    main(["prune", "--output", str(tmp_path), "--epochs", "1", "--finetune_epochs", "1",
          "--ratios", "0.5", "--methods", "rni", "uniform"])
    out = capsys.readouterr().out
    assert "| rni | 0.50 |" in out and "| uniform | 0.50 |" in out
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert [(r["method"], r["ratio"]) for r in records] == [
        ("rni", 0.0), ("rni", 0.5), ("uniform", 0.0), ("uniform", 0.5)]
    pruned = records[1]
    assert pruned["params"] < records[0]["params"] and pruned["macs"] < records[0]["macs"]
    assert 0.0 <= pruned["accuracy_finetuned"] <= 1.0
    for name in ("importance.png", "importance_rni.png", "importance_uniform.png", "results.md"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("name", ["cifar10_vgg16", "cifar100_resnet56"])
def test_packaged_cifar_configs_load(name):
    cfg = load_config(name)
    assert cfg.data.startswith("cifar") and cfg.train["epochs"] == 160 and cfg.select_best


def test_unknown_config_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: digits\nratio: 0.5\n")
    with pytest.raises(SystemExit, match="unknown config keys"):
        load_config(str(path))


def test_cifar_without_root_is_a_clear_error(tmp_path):
    from tasknorm.prune.command import run

    with pytest.raises(SystemExit, match="--data_root"):
        run(PruneConfig(data="cifar10", architecture="vgg16"), tmp_path)


def test_table_shows_speedups():
    base = {"method": "rni", "ratio": 0.0, "realised_ratio": 0.0, "params": 100, "macs": 400,
            "accuracy_pruned": 0.9, "accuracy_finetuned": None, "latency_s": {1: 0.002}}
    pruned = {**base, "ratio": 0.5, "realised_ratio": 0.5, "macs": 100,
              "accuracy_finetuned": 0.95, "latency_s": {1: 0.001}}
    table = format_table([base, pruned], [1])
    assert "| rni | 0.50 | 0.500 | 100 | 100 | 90.00 | 95.00 | 1.00 (2.00) | 4.00 |" in table


def test_fit_select_best_reloads_the_best_epoch():
    import torch

    from tasknorm.prune.command import build_model, digits_loaders
    from tasknorm.prune.measure import accuracy
    from tasknorm.prune.recipe import OptimConfig, fit

    train, val, _ = digits_loaders(64, 0)
    model = build_model("digits_vgg", "sigma", 10)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, train, val, OptimConfig(epochs=2, lr=0.05), regularizer="rni", strength=1e-3,
        select_best=True, accelerator="cpu")
    assert model.training  # fit leaves the model in train mode, on the CPU
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert accuracy(model, val) > 0.2


def test_each_method_starts_from_the_seeded_initialisation(tmp_path):
    """A method's run does not depend on the methods trained before it in the same process."""
    options = {"ratios": [0.5], "train": {"epochs": 1, "lr": 0.05},
               "finetune": {"epochs": 1, "lr": 0.01}, "latency_batches": [1]}
    alone = run(PruneConfig(methods=["uniform"], **options), tmp_path / "alone")
    after = run(PruneConfig(methods=["l1", "uniform"], **options), tmp_path / "after")
    uniform = [r for r in after["records"] if r["method"] == "uniform"]
    assert [r["accuracy_pruned"] for r in uniform] == [
        r["accuracy_pruned"] for r in alone["records"]]
