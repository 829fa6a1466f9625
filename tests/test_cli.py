import json
from pathlib import Path

import pytest

from tasknorm.cli import main, parse_results

TINY = ["--trainer.max_epochs", "2", "--data.init_args.sizes", "[256, 64, 64]",
        "--data.init_args.batch_size", "32", "--model.backbone_args", '{"width": 8}',
        "--trainer.enable_progress_bar", "false"]


def test_fit_then_test_checkpoint(workdir, capsys):
    main(["fit", *TINY])
    out = capsys.readouterr().out
    run = workdir / "runs" / "multidigits" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"left", "right"}
    assert set(results["test"]["left"]) == {"accuracy", "f1"}
    assert "results:" in out and "left" in out and "runs/multidigits/version_0" in out
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    best = results["checkpoint"]
    assert best.startswith("runs/multidigits/version_0/checkpoints/best-")
    main(["test", best])
    retested = json.loads((run / f"test-{Path(best).stem}" / "results.json").read_text())
    for task, values in results["test"].items():
        assert retested["test"][task] == pytest.approx(values)
    assert json.loads((run / "results.json").read_text()) == results  # not overwritten
    assert not (workdir / "config.yaml").exists()
    with pytest.raises(SystemExit, match="exists already"):
        main(["test", best])


def test_second_run_gets_a_new_folder(workdir):
    main(["fit", *TINY, "--trainer.max_epochs", "1"])
    main(["fit", *TINY, "--trainer.max_epochs", "1"])
    versions = sorted(p.name for p in (workdir / "runs" / "multidigits").iterdir())
    assert versions == ["version_0", "version_1"]


def test_unknown_config_key_is_a_clear_error(workdir, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.architecturee", "hard"])
    assert "architecturee" in capsys.readouterr().err


def test_unknown_architecture_is_a_clear_error(workdir, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *TINY, "--model.architecture", "soft"])
    error = capsys.readouterr().err
    assert "model.architecture" in error and "soft" in error


def test_test_needs_an_existing_checkpoint(workdir):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["test", "missing.ckpt"])


def test_parse_results():
    logged = {"test/left/accuracy": 0.5, "test/left_loss": 1.0, "val/left/accuracy": 0.4}
    assert parse_results(logged) == {"left": {"accuracy": 0.5}}


def test_packaged_config_by_name(workdir, monkeypatch):
    from tasknorm import cli

    assert "multidigits" in cli.packaged_configs()
    assert cli.resolve_config("multidigits") == cli.DEFAULT_CONFIG
    assert cli.resolve_config("multidigits.yaml") == cli.DEFAULT_CONFIG
    (workdir / "mine.yaml").write_text("seed_everything: 1\n")
    assert cli.resolve_config("mine.yaml") == "mine.yaml"
    with pytest.raises(SystemExit, match="neither a file nor a packaged config"):
        cli.resolve_config("nyuv3")
    assert cli._resolve_configs(["fit", "--config", "multidigits", "--config=mine.yaml"]) == [
        "fit", "--config", cli.DEFAULT_CONFIG, "--config=mine.yaml"]


def test_gate_init_and_heads_multiplier_from_the_command_line(workdir):
    from tasknorm.cli import run_cli

    cli = run_cli(["fit", "--model.architecture", "sigma", "--model.gate_init_mean", "-1",
                   "--model.gate_init_std", "0", "--model.heads_lr_mult", "4", *TINY,
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                   "--trainer.limit_val_batches", "1"], quiet=True)
    gates = [m for m in cli.model.modules() if hasattr(m, "gate")]
    assert gates and all(m.init_mean == -1.0 and m.init_std == 0.0 for m in gates)
    groups = {g["name"]: g["lr"] for g in cli.trainer.optimizers[0].param_groups}
    assert groups["heads"] == pytest.approx(4 * groups["weights"])
