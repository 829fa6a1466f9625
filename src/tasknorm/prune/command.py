"""``tasknorm prune``: train σBN+RNI, L1 (network slimming) and uniform models, prune each
one-shot at several ratios, fine-tune, and tabulate accuracy, parameters, MACs and latency.

With no arguments it runs on scikit-learn's bundled digits (8×8 images, a small VGG-style CNN;
a few minutes on a laptop CPU). ``--config FILE|NAME`` runs a CIFAR protocol config
(``cifar10_vgg16``, ``cifar10_resnet56``, …; see ``docs/pruning.md``), with
``--data_root`` pointing at the unpacked python-pickle release.

Writes ``results.json``, ``results.md`` and ``importance_<method>.png`` / ``importance.png``
(histograms of channel importance after training) to ``--output``, which must be empty unless
``--overwrite`` is given. The whole configuration (and the CIFAR folder) is checked before
anything is trained.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tasknorm.errors import ArgumentParser, UsageError, command
from tasknorm.io import atomic_write, write_json, write_text
from tasknorm.models.cifar import CifarVGG, resnet56, resnet56_projection, vgg16
from tasknorm.prune.measure import accuracy, measure_latency, model_stats
from tasknorm.prune.recipe import OptimConfig, fit, prune_and_finetune
from tasknorm.prune.surgery import build_graph, prune_units

CONFIGS = files("tasknorm") / "configs" / "prune"
METHODS = {  # norm, regulariser, threshold mode
    "rni": ("sigma", "rni", "global"),
    "l1": ("bn", "l1", "global"),
    "uniform": ("bn", None, "layer"),
}
DIGITS_CONFIG = (32, 32, "M", 64, 64, "M", 128)
ARCHITECTURES = {"digits": ("digits_vgg",),
                 "cifar10": ("vgg16", "resnet56", "resnet56_projection"),
                 "cifar100": ("vgg16", "resnet56", "resnet56_projection")}
"""The architectures each dataset can train."""


@dataclass
class PruneConfig:
    """Everything one ``tasknorm prune`` run needs (YAML keys have the same names)."""

    data: str = "digits"  # digits | cifar10 | cifar100
    data_root: str | None = None
    architecture: str = "digits_vgg"  # digits_vgg | vgg16 | resnet56 | resnet56_projection
    methods: list[str] = field(default_factory=lambda: ["rni", "l1", "uniform"])
    strength: dict[str, float] = field(default_factory=lambda: {"rni": 1e-2, "l1": 1e-3})
    offset: float = 0.0
    ratios: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9])
    min_keep: int = 3
    batch_size: int = 64
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 20, "lr": 0.05})
    finetune: dict[str, Any] = field(default_factory=lambda: {"epochs": 5, "lr": 0.01})
    val_split: str | float = 0.2
    select_best: bool = False
    latency_batches: list[int] = field(default_factory=lambda: [1, 64])
    latency_threads: int = 1  # 1: stable on a shared machine; the benchmark uses 2
    seed: int = 0
    threads: int | None = 1  # training threads; 1 avoids OpenMP oversubscription on small nets
    num_workers: int = 0
    accelerator: str = "auto"


class _Digits(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(images).float().unsqueeze(1)
        self.labels = torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


def digits_loaders(batch_size: int, seed: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    """scikit-learn's digits (1,797 8×8 images, bundled: no download), standardised, split
    60/20/20 into train/val/test with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 - 0.5) / 0.5
    order = np.random.default_rng(seed).permutation(len(images))
    n = len(order)
    parts = order[: int(0.6 * n)], order[int(0.6 * n): int(0.8 * n)], order[int(0.8 * n):]
    sets = [_Digits(images[p], digits.target[p]) for p in parts]
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(sets[0], batch_size, shuffle=True, drop_last=True, generator=generator),
            DataLoader(sets[1], 256), DataLoader(sets[2], 256))


def cifar_loaders(cfg: PruneConfig) -> tuple[DataLoader, DataLoader, DataLoader]:
    from tasknorm.data.cifar import CifarDataModule

    dm = CifarDataModule(cfg.data_root, cfg.data, cfg.batch_size, cfg.num_workers,
                         cfg.val_split, cfg.seed)
    dm.setup()
    return dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()


def build_model(architecture: str, norm: str, num_classes: int) -> nn.Module:
    if architecture == "digits_vgg":
        return CifarVGG(DIGITS_CONFIG, num_classes, norm, in_channels=1)
    builders = {"vgg16": vgg16, "resnet56": resnet56, "resnet56_projection": resnet56_projection}
    if architecture not in builders:
        raise UsageError(f"unknown architecture {architecture!r}; expected digits_vgg or one of "
                         f"{sorted(builders)}")
    return builders[architecture](num_classes, norm)


def importance_scores(model: nn.Module, example: Tensor) -> np.ndarray:
    """Scores of every prunable channel (what the global threshold sees)."""
    units = prune_units(model, build_graph(model, example))
    return torch.cat([u.scores for u in units]).numpy()


def save_histograms(scores: dict[str, np.ndarray], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(scores), 3), layout="constrained")
    axes = fig.subplots(1, len(scores), squeeze=False)[0]
    for ax, (method, values) in zip(axes, scores.items(), strict=True):
        ax.hist(values, bins=50, color="tab:blue")
        label = "gate sigmoid(γ)" if method == "rni" else "|γ|"
        ax.set(title=f"{method}: {len(values)} channels", xlabel=label, ylabel="channels")
        ax.set_yscale("log")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def run(cfg: PruneConfig, output: Path) -> dict[str, Any]:
    """Train, prune, fine-tune and measure every method; return the records. ``cfg`` is
    checked first (:func:`check_config`)."""
    check_config(cfg)
    if cfg.data == "digits":
        train, val, test = digits_loaders(cfg.batch_size, cfg.seed)
        num_classes, shape = 10, (1, 1, 8, 8)
    else:
        train, val, test = cifar_loaders(cfg)
        num_classes, shape = (10 if cfg.data == "cifar10" else 100), (1, 3, 32, 32)
    # a random input: an all-zero one makes activations denormal and latency meaningless
    example = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    records: list[dict[str, Any]] = []
    scores: dict[str, np.ndarray] = {}
    for method in cfg.methods:
        norm, regularizer, mode = METHODS[method]
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)  # each method's initialisation, whatever ran before it
        model = build_model(cfg.architecture, norm, num_classes)
        optim = OptimConfig(**{**cfg.train, **({} if norm == "sigma" else {
            "norm_lr_mult": 1.0, "norm_weight_decay": cfg.train.get("weight_decay", 1e-4)})})
        fit(model, train, val, optim, regularizer=regularizer,
            strength=cfg.strength.get(method, 0.0), offset=cfg.offset,
            select_best=cfg.select_best, seed=cfg.seed, accelerator=cfg.accelerator)
        model.eval()
        scores[method] = importance_scores(model, example)
        base = model_stats(model, example)
        latency = {b: measure_latency(model, example.expand(b, *example.shape[1:]).contiguous(),
                                      threads=cfg.latency_threads) for b in cfg.latency_batches}
        records.append({"method": method, "ratio": 0.0, "realised_ratio": 0.0, **base,
                        "accuracy_pruned": accuracy(model, test), "accuracy_finetuned": None,
                        "latency_s": latency})
        finetune = OptimConfig(**{**cfg.finetune, **({} if norm == "sigma" else {
            "norm_lr_mult": 1.0,
            "norm_weight_decay": cfg.finetune.get("weight_decay", 1e-4)})})
        results = prune_and_finetune(model, example, cfg.ratios, train, val, test,
                                     finetune=finetune, mode=mode, min_keep=cfg.min_keep,
                                     latency_batches=cfg.latency_batches,
                                     latency_threads=cfg.latency_threads,
                                     select_best=cfg.select_best, seed=cfg.seed,
                                     accelerator=cfg.accelerator)
        for r in results:
            record = asdict(r)
            record.pop("model")
            records.append({"method": method, **record})
        print(f"[{method}] done in {time.perf_counter() - start:.0f} s", flush=True)
    write_json(output / "results.json", {"config": asdict(cfg), "records": records})
    save_histograms(scores, output / "importance.png")
    for method, values in scores.items():
        save_histograms({method: values}, output / f"importance_{method}.png")
    table = format_table(records, cfg.latency_batches)
    write_text(output / "results.md", table + "\n")
    return {"records": records, "table": table}


def format_table(records: list[dict[str, Any]], batches: Sequence[int]) -> str:
    """Markdown table: one row per method and ratio; latency speed-up relative to the unpruned
    model of the same method, next to its MAC reduction."""
    head = ["method", "ratio", "realised", "params", "MACs", "acc pruned", "acc fine-tuned",
            *[f"latency bs{b} ms (×)" for b in batches], "MAC ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["ratio"] == 0.0:
            base[r["method"]] = r
        b = base[r["method"]]
        tuned = r["accuracy_finetuned"]
        finetuned = "–" if tuned is None else f"{100 * tuned:.2f}"
        lat = [f"{1e3 * r['latency_s'][k]:.2f} ({b['latency_s'][k] / r['latency_s'][k]:.2f})"
               for k in batches]
        lines.append("| " + " | ".join([
            r["method"], f"{r['ratio']:.2f}", f"{r['realised_ratio']:.3f}", f"{r['params']:,}",
            f"{r['macs']:,}", f"{100 * r['accuracy_pruned']:.2f}", finetuned, *lat,
            f"{b['macs'] / r['macs']:.2f}"]) + " |")
    return "\n".join(lines)


def load_config(value: str | None) -> PruneConfig:
    if value is None:
        return PruneConfig()
    path = Path(value)
    if not path.is_file():
        name = value.removesuffix(".yaml")
        path = Path(str(CONFIGS / f"{name}.yaml"))
        if not path.is_file():
            raise UsageError(f"config {value!r} is neither a file nor a packaged config")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - set(PruneConfig.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown config keys {sorted(unknown)}")
    return PruneConfig(**data)


def config_problems(cfg: PruneConfig) -> list[str]:
    """What in ``cfg`` cannot run (empty when it can), every field checked before anything is
    trained.

    Example:
        >>> config_problems(PruneConfig(ratios=[0.5, 1.5], min_keep=0))
        ['ratios must lie in (0, 1), got [0.5, 1.5]', 'min_keep must be at least 1, got 0']
    """
    def positive_ints(values: Sequence[Any]) -> bool:
        return bool(values) and all(isinstance(v, int) and v >= 1 for v in values)

    checks = [
        (cfg.data in ARCHITECTURES,
         f"data must be one of {sorted(ARCHITECTURES)}, got {cfg.data!r}"),
        (cfg.data == "digits" or cfg.data_root is not None,
         f"{cfg.data} needs --data_root (the folder holding the python-pickle release)"),
        (cfg.architecture in ARCHITECTURES.get(cfg.data, ()),
         f"architecture {cfg.architecture!r} does not train on {cfg.data!r}; expected one of "
         f"{list(ARCHITECTURES.get(cfg.data, ()))}"),
        (bool(cfg.methods) and len(set(cfg.methods)) == len(cfg.methods)
         and set(cfg.methods) <= set(METHODS),
         f"methods must be distinct names from {sorted(METHODS)}, got {cfg.methods}"),
        (set(cfg.strength) <= set(METHODS) and all(0 <= v < math.inf
                                                  for v in cfg.strength.values()),
         f"strength must map methods of {sorted(METHODS)} to non-negative numbers, got "
         f"{cfg.strength}"),
        (bool(cfg.ratios) and all(0 < r < 1 for r in cfg.ratios),
         f"ratios must lie in (0, 1), got {cfg.ratios}"),
        (cfg.min_keep >= 1, f"min_keep must be at least 1, got {cfg.min_keep}"),
        (cfg.batch_size >= 1, f"batch_size must be at least 1, got {cfg.batch_size}"),
        (cfg.val_split == "test" or (not isinstance(cfg.val_split, str)
                                     and 0 < cfg.val_split < 1),
         f"val_split must be 'test' or a fraction in (0, 1), got {cfg.val_split!r}"),
        (positive_ints(cfg.latency_batches),
         f"latency_batches must be positive integers, got {cfg.latency_batches}"),
        (cfg.latency_threads >= 1, f"latency_threads must be at least 1, got "
                                   f"{cfg.latency_threads}"),
        (cfg.threads is None or cfg.threads >= 1, f"threads must be at least 1, got "
                                                  f"{cfg.threads}"),
        (cfg.num_workers >= 0, f"num_workers must be non-negative, got {cfg.num_workers}"),
    ]
    return [message for ok, message in checks if not ok] + [
        problem for name in ("train", "finetune") for problem in _recipe_problems(cfg, name)]


def check_config(cfg: PruneConfig) -> None:
    """Raise UsageError listing every :func:`config_problems` of ``cfg``, or FileNotFoundError
    if its CIFAR folder lacks a file of the release."""
    problems = config_problems(cfg)
    if problems:
        raise UsageError("; ".join(problems))
    if cfg.data != "digits":
        from tasknorm.data.cifar import cifar_folder

        cifar_folder(cfg.data_root, cfg.data)


def _recipe_problems(cfg: PruneConfig, name: str) -> list[str]:
    """What in ``cfg.train`` or ``cfg.finetune`` (``name``) is not a valid
    :class:`~tasknorm.prune.recipe.OptimConfig`."""
    recipe = getattr(cfg, name)
    unknown = sorted(set(recipe) - set(OptimConfig.__dataclass_fields__))
    if unknown:
        return [f"{name} has unknown keys {unknown}; expected some of "
                f"{list(OptimConfig.__dataclass_fields__)}"]
    optim = OptimConfig(**recipe)
    problems = []
    if not (isinstance(optim.epochs, int) and optim.epochs >= 1):
        problems.append(f"{name} epochs must be at least 1, got {optim.epochs}")
    if not 0 < optim.lr < math.inf:
        problems.append(f"{name} lr must be positive, got {optim.lr}")
    return problems


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an ``output`` that is a file, or a folder with files in it unless
    ``overwrite``."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; expected a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"--output {output} is not empty; choose another folder or pass "
                         "--overwrite")


@command("tasknorm prune")
def main(argv: Sequence[str]) -> None:
    parser = ArgumentParser(prog="tasknorm prune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file or packaged config name")
    parser.add_argument("--data_root", help="folder of the CIFAR python-pickle release")
    parser.add_argument("--output", default="runs/prune", help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --output even if it holds files")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    parser.add_argument("--ratios", nargs="+", type=float)
    parser.add_argument("--epochs", type=int, help="training epochs (overrides the config)")
    parser.add_argument("--finetune_epochs", type=int)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.data_root:
        cfg.data_root = args.data_root
    if args.methods:
        cfg.methods = args.methods
    if args.ratios:
        cfg.ratios = args.ratios
    if args.epochs is not None:
        cfg.train = {**cfg.train, "epochs": args.epochs}
    if args.finetune_epochs is not None:
        cfg.finetune = {**cfg.finetune, "epochs": args.finetune_epochs}
    output = Path(args.output)
    check_output(output, args.overwrite)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        result = run(cfg, output)
    print(result["table"])
    print(f"\nlatency: median of 20 runs after warm-up, CPU, {cfg.latency_threads} thread(s), eval "
          "mode; (×) = speed-up over the same method's unpruned model; MAC × = MAC reduction")
    print(f"\nwrote {output / 'results.json'}, {output / 'results.md'}, "
          f"{output / 'importance.png'} (+ one PNG per method)")
