"""The default job on 2 CPU processes (gloo): DDP trains, syncs metrics and writes results."""

import json

from tasknorm.cli import main


def test_default_job_on_two_processes(workdir, capsys):
    main(["fit", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp_spawn", "--trainer.max_epochs", "4",
          "--data.init_args.sizes", "[3072, 256, 256]", "--data.init_args.batch_size", "32",
          "--model.backbone_args", '{"width": 16}', "--model.sync_stats", "true",
          "--trainer.enable_progress_bar", "false"])
    run = workdir / "runs" / "multidigits" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"left", "right"}
    for task in ("left", "right"):
        assert results["test"][task]["accuracy"] > 0.3  # chance is 0.1
    assert "left" in capsys.readouterr().out
