import json

import pytest

from tasknorm.cli import main
from tasknorm.errors import UsageError
from tasknorm.prune.command import PruneConfig, config_problems, format_table, load_config, run


def test_prune_command_on_digits(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")  # an earlier run's, overwritten as asked
    main(["prune", "--output", str(tmp_path), "--overwrite", "--epochs", "1",
          "--finetune_epochs", "1", "--ratios", "0.5", "--methods", "rni", "uniform"])
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
    with pytest.raises(UsageError, match="unknown config keys"):
        load_config(str(path))


def test_cifar_without_root_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="cifar10 needs --data_root"):
        run(PruneConfig(data="cifar10", architecture="vgg16"), tmp_path)
    with pytest.raises(FileNotFoundError, match="expected the python-pickle release in"):
        run(PruneConfig(data="cifar10", architecture="vgg16", data_root=str(tmp_path)), tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"data": "mnist"}, "data must be one of ['cifar10', 'cifar100', 'digits'], got 'mnist'"),
    ({"architecture": "vgg16"}, "architecture 'vgg16' does not train on 'digits'; expected one "
                                "of ['digits_vgg']"),
    ({"methods": ["rni", "rni"]}, "methods must be distinct names from ['l1', 'rni', 'uniform']"),
    ({"strength": {"rni": -1.0}}, "strength must map methods of ['l1', 'rni', 'uniform'] to "
                                  "non-negative numbers"),
    ({"ratios": [0.0]}, "ratios must lie in (0, 1), got [0.0]"),
    ({"ratios": []}, "ratios must lie in (0, 1), got []"),
    ({"val_split": 1.0}, "val_split must be 'test' or a fraction in (0, 1), got 1.0"),
    ({"latency_batches": [0]}, "latency_batches must be positive integers, got [0]"),
    ({"train": {"epochs": 0, "lr": 0.05}}, "train epochs must be at least 1, got 0"),
    ({"finetune": {"epoch": 1}}, "finetune has unknown keys ['epoch']; expected some of "),
    ({"finetune": {"lr": -1}}, "finetune lr must be positive, got -1"),
])
def test_every_config_field_is_checked_before_training(tmp_path, changes, message):
    """A bad field is refused (by :func:`run`) before any training, leaving nothing behind."""
    cfg = PruneConfig(**changes)
    assert any(problem.startswith(message) for problem in config_problems(cfg))
    with pytest.raises(UsageError):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


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
