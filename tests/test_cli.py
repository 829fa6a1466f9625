import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tasknorm.cli import main
from tasknorm.data import write_tiny_celeba
from tasknorm.fit import checkpoint_differences, parse_results
from tasknorm.models import LEARNED_SHARING
from tasknorm.train import METHODS

TINY = ["--trainer.max_epochs", "2", "--data.init_args.sizes", "[256, 64, 64]",
        "--data.init_args.batch_size", "32", "--model.backbone_args", '{"width": 8}',
        "--trainer.enable_progress_bar", "false"]
FEW_STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
             "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
             "--data.init_args.sizes", "[96, 32, 32]", "--data.init_args.batch_size", "32",
             "--model.backbone_args", '{"width": 2}', "--trainer.enable_progress_bar", "false"]
"""Three training batches of a 2-wide network: a few steps of ``tasknorm fit``."""
TASKNORM = Path(sys.executable).with_name("tasknorm")
POISON = """
from lightning.pytorch.callbacks import Callback


class PoisonStatistics(Callback):
    \"\"\"NaN running variances after each training step: training (batch statistics) goes on,
    evaluation diverges.\"\"\"

    def on_train_batch_end(self, trainer, pl_module, *args):
        for name, buffer in pl_module.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(float("nan"))
"""


def tasknorm(folder: Path, *args: str, **env: str) -> tuple[int, list[str]]:
    """Run the ``tasknorm`` command in ``folder``: its exit status and non-empty stderr lines."""
    result = subprocess.run(
        [str(TASKNORM), *args], cwd=folder, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TASKNORM_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1",
             **env})
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]


def reported(capsys) -> list[str]:
    """The non-empty stderr lines of a command run in this process."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The folder of a one-epoch TSσBN run of MultiDigits, as ``tasknorm fit`` writes it."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("TASKNORM_CACHE", str(folder / "cache"))
        main(["fit", *TINY, "--trainer.max_epochs", "1", "--trainer.logger", "false",
              "--trainer.default_root_dir", "run"])
    return folder / "run"


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


def test_fit_and_test_a_task_tree_given_in_the_command(workdir):
    groups = '{"groups": [[["left", "right"]], [["left"], ["right"]]]}'
    main(["fit", *TINY, "--trainer.max_epochs", "1", "--model.architecture", "tree",
          "--model.architecture_args", groups])
    run = workdir / "runs" / "multidigits" / "version_0"
    results = json.loads((run / "results.json").read_text())
    main(["test", results["checkpoint"]])
    retested = json.loads((run / f"test-{Path(results['checkpoint']).stem}" /
                           "results.json").read_text())
    for task, values in results["test"].items():
        assert retested["test"][task] == pytest.approx(values)


def test_second_run_gets_a_new_folder(workdir):
    main(["fit", *TINY, "--trainer.max_epochs", "1"])
    main(["fit", *TINY, "--trainer.max_epochs", "1"])
    versions = sorted(p.name for p in (workdir / "runs" / "multidigits").iterdir())
    assert versions == ["version_0", "version_1"]


@pytest.mark.parametrize(("options", "message"), [
    (["--model.architecturee", "hard"], "unrecognized arguments: --model.architecturee hard"),
    (["--model.architecture", "soft"],
     "Parser key \"model.architecture\": Expected a typing.Literal['single_task', 'hard', "),
    (["--data.init_args.tasks", "[left, nope]"], "unknown MultiDigits task 'nope'; expected"),
    (["--model.balancing.weighting", "nope"], "unknown balancing method 'nope'; expected one of"),
    (["--model.balancing.aggregator", "nope"], "unknown aggregator 'nope'; expected one of"),
    (["--model.head", "nope"], "unknown head 'nope'; expected one of"),
    (["--model.optimization.lrr", "1"], "unrecognized arguments: --model.optimization.lrr 1"),
    (["--model.lr", "-1"], "lr must be non-negative, got -1.0"),
    (["--model.optimization.momentum", "1.5"], "momentum must be in [0, 1), got 1.5"),
    (["--model.weighting", "fixed", "--model.weighting_args", "{weights: {left: .nan, right: 1}}"],
     "fixed loss weights must be finite and non-negative, got {'left': nan}"),
    (["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor", "val/nope"],
     "ModelCheckpoint monitors 'val/nope', which is not logged; expected one of val/selection"),
    (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"],
     "--lr_scheduler would train every parameter alike, dropping the norm and heads parameter "
     "groups; use the model's options instead: --model.optimization.NAME for optimizer"),
    (["--data.init_args.sizes", "[16, 8, 8]"],
     "the training split has 16 samples, fewer than one batch (32 per process × 1)"),
])
def test_a_mistake_is_one_line_with_status_2(workdir, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY, *options])
    assert exit_info.value.code == 2
    (line,) = reported(capsys)
    assert line.startswith("tasknorm fit: error: ") and message in line
    assert not list(workdir.rglob("*.ckpt"))


@pytest.mark.parametrize("debug", [{"argument": "--debug"}, {"variable": "1"}])
def test_debug_shows_the_traceback_before_the_line(workdir, capsys, monkeypatch, debug):
    if "variable" in debug:
        monkeypatch.setenv("TASKNORM_DEBUG", debug["variable"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *debug.get("argument", "").split(), *TINY, "--model.backbone", "nope"])
    assert exit_info.value.code == 2
    lines = reported(capsys)
    assert lines[0].startswith("Traceback")
    assert any(line.startswith("ValueError: unknown backbone 'nope'") for line in lines)
    assert lines[-1].startswith("tasknorm fit: error: unknown backbone 'nope'")


def test_test_needs_an_existing_checkpoint(workdir):
    with pytest.raises(SystemExit, match=r"^tasknorm test: error: checkpoint missing\.ckpt does "):
        main(["test", "missing.ckpt"])


@pytest.mark.parametrize(("content", "message"), [
    ("truncated", "is not a readable PyTorch checkpoint, e.g. a truncated or text file"),
    ("text", "is not a readable PyTorch checkpoint, e.g. a truncated or text file"),
    ("foreign", "is not a tasknorm checkpoint: it has no 'tasknorm' entry"),
])
@pytest.mark.parametrize("command", ["fit", "test"])
def test_an_unusable_checkpoint_is_one_line(trained, capsys, monkeypatch, content, message,
                                           command):
    monkeypatch.chdir(trained.parent)
    path = trained / "checkpoints" / f"{content}.ckpt"
    if content == "truncated":
        best = next((trained / "checkpoints").glob("best-*.ckpt"))
        path.write_bytes(best.read_bytes()[:5000])
    elif content == "text":
        path.write_text("hello\n")
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
    args = ["fit", *TINY, "--ckpt_path", str(path)] if command == "fit" else ["test", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    (line,) = reported(capsys)
    assert line.startswith(f"tasknorm {command}: error: {path} {message}")


@pytest.mark.parametrize("saved", [
    {"backbone_args": {"sizes": (1, 2)}, "gate_init_mean": 0.5},  # before the option groups
    {"backbone_args": {"sizes": (1, 2)}, "gates": {"init": "normal", "mean": 0.5, "std": 1.0}},
])
def test_checkpoint_differences_normalise_tuples_groups_and_defaults(saved):
    checkpoint = {"hyper_parameters": saved,
                  "datamodule_hyper_parameters": {"_class_path": "a.B", "sizes": (8, 4),
                                                  "root": "/old", "num_workers": 4}}
    config = {"model": {"backbone_args": {"sizes": [1, 2]}, "gates": {"mean": 0.5},
                        "optimization": {"heads_lr_mult": 1.0, "norm_lr_mult": 3.0}},
              "data": {"class_path": "a.B",
                       "init_args": {"sizes": [8, 4], "root": "/new", "num_workers": 0}}}
    assert checkpoint_differences(checkpoint, config) == [
        "model.optimization.norm_lr_mult: 10.0 in the checkpoint, 3.0 here"]


def test_data_folder_mistakes_cost_no_training_step(workdir, capsys):
    """A missing folder, and a malformed one (the first training image is not a JPEG): both are
    found when the data is set up, before the first step."""
    root = write_tiny_celeba(workdir / "celeba")
    (root / "Img" / "img_align_celeba" / "000001.jpg").write_bytes(b"not a jpeg")
    options = ["--config", "celeba", "--model.backbone_args", '{"width": 8}',
               "--data.init_args.batch_size", "2", "--trainer.max_epochs", "1",
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    for folder, message in [(workdir / "nowhere", "CelebA root {} is not a folder; expected "),
                            (root, "cannot read CelebA image {}/Img/img_align_celeba/000001.jpg")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *options, "--data.init_args.root", str(folder)])
        assert exit_info.value.code == 2
        (line,) = reported(capsys)
        assert line.startswith(f"tasknorm fit: error: {message.format(folder)}")
    assert not list(workdir.rglob("*.ckpt"))


@pytest.mark.parametrize(("args", "message"), [
    (["fit", *TINY, "--model.backbone", "nope"], "tasknorm fit: error: unknown backbone 'nope'; "
                                                  "expected one of ['celeba_cnn', "),
    (["fit", *TINY, "--optimizer", "Adam"], "tasknorm fit: error: --optimizer would train every "
                                             "parameter alike, dropping the norm and heads "),
    (["prune", "--ratios", "1.5", "--output", "out"],
     "tasknorm prune: error: ratios must lie in (0, 1), got [1.5]"),
    (["prune", "--output", "full"], "tasknorm prune: error: --output full is not empty; "
                                    "choose another folder or pass --overwrite"),
])
def test_the_command_reports_a_mistake_in_one_line_with_status_2(tmp_path, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    status, lines = tasknorm(tmp_path, *args)
    assert status == 2 and len(lines) == 1 and lines[0].startswith(message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "lightning_logs").exists()


def test_resuming_refuses_other_options_and_lists_them(trained):
    status, lines = tasknorm(
        trained.parent, "fit", *TINY, "--ckpt_path", "run/checkpoints/last.ckpt",
        "--model.architecture", "hard", "--model.backbone_args", '{"width": 4}',
        "--data.init_args.variant", "even_odd", "--data.init_args.num_workers", "1")
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith(
        "tasknorm fit: error: checkpoint run/checkpoints/last.ckpt was written with other "
        "options than this command line's: model.backbone_args: {'width': 8} in the "
        "checkpoint, {'width': 4} here; model.architecture: 'task_sigma' in the checkpoint, "
        "'hard' here; data.variant: 'left_right' in the checkpoint, 'even_odd' here. ")


def test_a_diverged_run_fails_with_status_1_and_leaves_no_checkpoint(tmp_path):
    (tmp_path / "poison.py").write_text(POISON)
    status, lines = tasknorm(tmp_path, "fit", *TINY, "--trainer.default_root_dir", "run",
                             "--trainer.logger", "false",
                             "--trainer.callbacks+=poison.PoisonStatistics",
                             PYTHONPATH=str(tmp_path))
    assert status == 1 and not any("Traceback" in line for line in lines)
    assert lines[-1].startswith("tasknorm fit: failed: validation at epoch 0: the model "
                                "diverged (non-finite loss of tasks ['left', 'right'], ")
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_parse_results():
    logged = {"test/left/accuracy": 0.5, "test/left_loss": 1.0, "val/left/accuracy": 0.4}
    assert parse_results(logged) == {"left": {"accuracy": 0.5}}


def test_packaged_config_by_name(workdir, monkeypatch):
    from tasknorm import fit

    assert "multidigits" in fit.packaged_configs()
    assert fit.resolve_config("multidigits") == fit.DEFAULT_CONFIG
    assert fit.resolve_config("multidigits.yaml") == fit.DEFAULT_CONFIG
    (workdir / "mine.yaml").write_text("seed_everything: 1\n")
    assert fit.resolve_config("mine.yaml") == "mine.yaml"
    with pytest.raises(ValueError, match="neither a file nor a packaged config"):
        fit.resolve_config("nyuv3")
    assert fit.resolve_configs(["fit", "--config", "multidigits", "--config=mine.yaml"]) == [
        "fit", "--config", fit.DEFAULT_CONFIG, "--config=mine.yaml"]


@pytest.mark.parametrize("names", ["grouped", "flat"])
def test_gate_init_and_heads_multiplier_from_the_command_line(workdir, names):
    from tasknorm.fit import run_cli

    options = {"grouped": ["--model.gates.mean", "-1", "--model.gates.std", "0",
                           "--model.optimization.heads_lr_mult", "4"],
               "flat": ["--model.gate_init_mean", "-1", "--model.gate_init_std", "0",
                        "--model.heads_lr_mult=4"]}[names]
    cli = run_cli(["fit", "--model.architecture", "sigma", *options, *TINY,
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                   "--trainer.limit_val_batches", "1"], quiet=True)
    gates = [m for m in cli.model.modules() if hasattr(m, "gate")]
    assert gates and all(m.init_mean == -1.0 and m.init_std == 0.0 for m in gates)
    groups = {g["name"]: g["lr"] for g in cli.trainer.optimizers[0].param_groups}
    assert groups["heads"] == pytest.approx(4 * groups["weights"])


def test_an_old_flat_config_loads_to_the_same_module(workdir, monkeypatch):
    """Every packaged config with its model options by their old flat names (as configs and
    run folders' config.yaml files were written before the option groups) builds the same
    module; a name given both ways is refused."""
    from tasknorm.fit import TasknormCLI, resolve_config
    from tasknorm.train.options import FLAT_NAMES, GROUPS

    monkeypatch.setattr("sys.argv", ["tasknorm"])
    old_names = {group_field: name for name, group_field in FLAT_NAMES.items()}
    for name in ("multidigits", "cosreg_multidigits"):
        config = yaml.safe_load(Path(resolve_config(name)).read_text())
        flat = {key: value for key, value in config["model"].items() if key not in GROUPS}
        for group in GROUPS:
            flat.update({old_names[group, field]: value
                         for field, value in config["model"].get(group, {}).items()})
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump({**config, "model": flat}))
        modules = [TasknormCLI(["--config", path, "--model.backbone_args", '{"width": 4}'],
                               run=False).model
                   for path in (resolve_config(name), f"{name}.yaml")]
        assert dict(modules[0].hparams) == dict(modules[1].hparams)
    with pytest.raises(ValueError, match=r"lr is given twice: as lr and as optimization\.lr"):
        TasknormCLI(["--config", "model: {lr: 0.1, optimization: {lr: 0.2}}"], run=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_balancing_method_trains_through_fit(workdir, name):
    """Each name of ``METHODS`` as ``--model.balancing.weighting`` takes training steps (three
    batches: one update of the three-batch methods) and the run ends with its results."""
    weights = {"fixed": '{"weights": {"left": 1.0, "right": 2.0}}'}
    main(["fit", *FEW_STEPS, "--model.balancing.weighting", name,
          *(["--model.balancing.weighting_args", weights[name]] if name in weights else [])])
    results = json.loads(next(workdir.glob("runs/multidigits/version_0/results.json")).read_text())
    assert set(results["test"]) == {"left", "right"}


@pytest.mark.parametrize("architecture", sorted(LEARNED_SHARING))
def test_every_learned_sharing_architecture_trains_through_fit(workdir, architecture):
    """Each learned-sharing architecture as ``--model.architecture`` takes training steps on
    MultiDigits, and the run ends with its results."""
    main(["fit", *FEW_STEPS, "--model.architecture", architecture])
    results = json.loads(next(workdir.glob("runs/multidigits/version_0/results.json")).read_text())
    assert set(results["test"]) == {"left", "right"}
