"""The CosReg paper's MultiDigitMNIST study on MultiDigits (even/odd digits).

Five variants of a hard-sharing ``digits_cnn`` (no regularisation, Dropout, BatchNorm,
CosReg α = 10, CosReg α = 0.1 + BatchNorm) over several seeds, each trained with the packaged
``cosreg_multidigits`` config (Adam 1e-3, batch 64), tested at its best validation epoch.
Reported per variant: the harmonic mean of the two test accuracies (the paper's metric) and the
standard deviation of the task-gradient cosine on the last shared layer
(:class:`~tasknorm.train.callbacks.GradientCosineMonitor`) from the first step to the end of the
best validation epoch (testing restores the monitor's state from that checkpoint). Writes
``study.json`` and ``study.md`` into ``--output`` (one ``runs/<variant>/seed<k>`` folder per run).

    python benchmarks/study_cosreg.py --output runs/cosreg_study
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tasknorm.fit import resolve_config, run_cli
from tasknorm.models import build_backbone
from tasknorm.train import last_shared_layer

VARIANTS: dict[str, dict] = {
    "no regularisation": {"norm": False, "dropout": 0.0, "alpha": 0.0},
    "Dropout": {"norm": False, "dropout": 0.1, "alpha": 0.0},
    "BatchNorm": {"norm": True, "dropout": 0.0, "alpha": 0.0},
    "CosReg (α = 10)": {"norm": False, "dropout": 0.0, "alpha": 10.0},
    "CosReg (α = 0.1) + BatchNorm": {"norm": True, "dropout": 0.0, "alpha": 0.1},
}


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies (0 if either is 0).

    Example:
        >>> round(harmonic_mean(0.9, 0.6), 4)
        0.72
    """
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    spec = VARIANTS[variant]
    backbone_args = {"width": args.width, "norm": spec["norm"], "dropout": spec["dropout"],
                     "pool_size": 3}
    slug = variant.split(" (")[0].replace(" ", "_").lower() + (
        f"_{spec['alpha']:g}" if spec["alpha"] else "") + ("_bn" if spec["norm"] else "")
    return {"variant": variant, **train(slug, seed, args, "digits_cnn", backbone_args,
                                        alpha=spec["alpha"])}


def train(slug: str, seed: int, args: argparse.Namespace, backbone: str, backbone_args: dict,
          head: str | None = None, alpha: float = 0.0, cosreg_args: dict | None = None) -> dict:
    """One run of the packaged ``cosreg_multidigits`` config with the given network and CosReg
    (``args``: ``output``, ``epochs``, ``sizes``, ``every``); its test accuracies at the best
    validation epoch and its gradient-cosine statistics on the last shared layer up to that
    epoch."""
    layer = last_shared_layer(build_backbone(backbone, **backbone_args))
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/selection", "mode": "max", "filename": "best-{epoch}"}},
        {"class_path": "tasknorm.train.callbacks.GradientCosineMonitor",
         "init_args": {"every_n_steps": args.every, "window": 50, "parameters": [layer],
                       "log_pairs": False}}]
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(args.output / "runs"), "name": slug,
                             "version": f"seed{seed}"}}]
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", resolve_config("cosreg_multidigits"),
                   "--seed_everything", str(seed), "--trainer.max_epochs", str(args.epochs),
                   "--trainer.callbacks", json.dumps(callbacks),
                   "--trainer.logger", json.dumps(logger),
                   "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false",
                   "--model.backbone", backbone, *(["--model.head", head] if head else []),
                   "--model.backbone_args", json.dumps(backbone_args),
                   "--model.regularization.cosreg_alpha", str(alpha),
                   "--model.regularization.cosreg_args", json.dumps(cosreg_args or {}),
                   "--data.init_args.sizes", json.dumps(args.sizes)], quiet=True)
    seconds = time.perf_counter() - start
    monitor = next(c for c in cli.trainer.callbacks if type(c).__name__ == "GradientCosineMonitor")
    cosines = [c for row in monitor.history["cosine"] for c in row]
    test = cli.results["test"]
    accuracy = {t: test[t]["accuracy"] for t in ("left", "right")}
    return {"seed": seed, "accuracy": accuracy,
            "harmonic_mean": harmonic_mean(accuracy["left"], accuracy["right"]),
            "cosine_mean": statistics.fmean(cosines), "cosine_std": statistics.pstdev(cosines),
            "measurements": len(cosines), "parameters": monitor.history["parameters"],
            "seconds": seconds}


def table(records: list[dict]) -> str:
    rows = ["| model | accuracy % (harmonic mean), mean ± std | σ of gradient cosine | "
            "μ of gradient cosine | s / run |", "|---|---|---|---|---|"]
    for variant in VARIANTS:
        runs = [r for r in records if r["variant"] == variant]
        if not runs:
            continue
        hm = [100 * r["harmonic_mean"] for r in runs]
        std = statistics.stdev(hm) if len(hm) > 1 else 0.0
        rows.append(f"| {variant} | {statistics.fmean(hm):.1f} ± {std:.1f} (n={len(runs)}) | "
                    f"{statistics.fmean(r['cosine_std'] for r in runs):.3f} | "
                    f"{statistics.fmean(r['cosine_mean'] for r in runs):+.3f} | "
                    f"{statistics.fmean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/cosreg_study"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs=3, default=[3000, 1000, 2000])
    parser.add_argument("--every", type=int, default=3, help="measure cosines every N steps")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for seed in range(args.seeds):
        for variant in args.variants:
            records.append(run(variant, seed, args))
            print(json.dumps(records[-1]), flush=True)
            (args.output / "study.json").write_text(json.dumps(records, indent=1))
            (args.output / "study.md").write_text(table(records) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
