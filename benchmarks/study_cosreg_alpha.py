"""Why CosReg with a large α stalls training, on MultiDigits (even/odd digits).

Two networks, both 20 filters wide, trained with the packaged ``cosreg_multidigits`` config
(hard sharing, Adam 1e-3, batch 64): ``digits_cnn`` (the config's network, ``pool_size: 3``)
and ``digits_encoder`` with the ``conv_fc`` head (the CosReg paper's MultiDigitMNIST shape: two
shared conv layers, a conv and two fully connected layers per task). Each with and without
BatchNorm in the shared layers.

``ratio``: for the first ``--steps`` training steps, the norm of the CosReg penalty's gradient
divided by the norm of the gradient of the summed task losses, both on all shared parameters,
for α in ``--alphas``, ``loss_scaled`` off/on and ``--seeds`` seeds (the training loop is the
module's manual step: loss + penalty, Adam). Writes ``ratio.json`` and ``ratio.md``.

``sweep``: one run per network × BatchNorm × α (0 and ``--alphas``) × ``loss_scaled`` (and the
α = 10 runs with ``--fixes``: CosReg options that bound the penalty); harmonic mean of the two
test accuracies at the best validation epoch, and σ / μ of the task-gradient cosine on the last
shared layer (see ``study_cosreg.train``). Writes ``sweep.json`` and ``sweep.md``.

    python benchmarks/study_cosreg_alpha.py ratio --output runs/cosreg_alpha
    python benchmarks/study_cosreg_alpha.py sweep --output runs/cosreg_alpha
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import lightning as L
import torch
import yaml
from torch import Tensor

from study_cosreg import train
from tasknorm.data import MultiDigitsDataModule
from tasknorm.fit import resolve_config
from tasknorm.train import MultiTaskModule
from tasknorm.train.gradients import shared_parameters

NETWORKS: dict[str, dict] = {
    "digits_cnn": {"backbone": "digits_cnn", "backbone_args": {"width": 20, "pool_size": 3},
                   "head": None},
    "digits_encoder + conv_fc": {"backbone": "digits_encoder", "backbone_args": {"width": 20},
                                 "head": "conv_fc"},
}
FIXES: dict[str, dict] = {
    "max_grad_ratio 0.1": {"max_grad_ratio": 0.1},
    "warmup 138 steps": {"warmup_steps": 138},
}


def network(name: str, norm: bool) -> dict:
    spec = NETWORKS[name]
    return {**spec, "backbone_args": {**spec["backbone_args"], "norm": norm}}


def flat(tensors: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def measure(name: str, norm: bool, alpha: float, loss_scaled: bool, seed: int,
            data: MultiDigitsDataModule, steps: int) -> dict:
    """Gradient norms of the first ``steps`` steps of one training run."""
    config = yaml.safe_load(Path(resolve_config("cosreg_multidigits")).read_text())["model"]
    L.seed_everything(seed, verbose=False)
    regularization = {"cosreg_alpha": alpha, "cosreg_args": {"loss_scaled": loss_scaled}}
    module = MultiTaskModule(data.tasks, **{**config, **network(name, norm),
                                            "regularization": regularization})
    optimizer = module.configure_optimizers()["optimizer"]
    shared = list(shared_parameters(module.model.backbone).values())
    ratios, task_norms, losses_seen = [], [], []
    for _, batch in zip(range(steps), data.train_dataloader(), strict=False):
        outputs = module(batch["image"])
        losses = {t: task.loss(outputs[t], batch[t]) for t, task in module.tasks.items()}
        total = module.weighting(losses)
        penalty = module.cosreg(losses)
        task_norm = flat(torch.autograd.grad(total, shared, retain_graph=True)).norm()
        penalty_norm = flat(torch.autograd.grad(penalty, shared, retain_graph=True)).norm()
        ratios.append(float(penalty_norm / task_norm))
        task_norms.append(float(task_norm))
        losses_seen.append(float(total) / len(losses))
        optimizer.zero_grad()
        (total + penalty).backward()
        optimizer.step()
    return {"network": name, "norm": norm, "alpha": alpha, "loss_scaled": loss_scaled,
            "seed": seed, "ratio": ratios, "task_grad_norm": task_norms, "loss": losses_seen}


def ratio_table(records: list[dict]) -> str:
    rows = ["| network | BN | loss_scaled | α | ratio at step 0 | median ratio, all steps | "
            "mean loss, last 5 steps | ‖∇ task losses‖, first → last step |", "|---" * 8 + "|"]

    def key(r: dict) -> tuple:
        return list(NETWORKS).index(r["network"]), r["norm"], r["loss_scaled"], r["alpha"]

    for setting in sorted({key(r) for r in records}):
        runs = [r for r in records if key(r) == setting]
        first = statistics.median(r["ratio"][0] for r in runs)
        median = statistics.median(statistics.median(r["ratio"]) for r in runs)
        loss = statistics.fmean(statistics.fmean(r["loss"][-5:]) for r in runs)
        task = [statistics.median(r["task_grad_norm"][i] for r in runs) for i in (0, -1)]
        rows.append(f"| {runs[0]['network']} | {'yes' if setting[1] else 'no'} | "
                    f"{'on' if setting[2] else 'off'} | {setting[3]:g} | {first:.3g} | "
                    f"{median:.3g} | {loss:.3f} | {task[0]:.2g} → {task[1]:.2g} |")
    return "\n".join(rows)


def sweep_runs(args: argparse.Namespace) -> list[dict]:
    """The sweep's runs: ``{network, norm, alpha, loss_scaled, fix}``."""
    runs = []
    for name, norm in itertools.product(NETWORKS, (False, True)):
        runs.append({"network": name, "norm": norm, "alpha": 0.0, "loss_scaled": False,
                     "fix": None})
        for alpha, loss_scaled in itertools.product(args.alphas, (False, True)):
            runs.append({"network": name, "norm": norm, "alpha": alpha,
                         "loss_scaled": loss_scaled, "fix": None})
        runs += [{"network": name, "norm": norm, "alpha": 10.0, "loss_scaled": False,
                  "fix": fix} for fix in args.fixes]
    return runs


def sweep_table(records: list[dict]) -> str:
    rows = ["| network | BN | α | loss_scaled | CosReg option | accuracy % (harmonic mean) | "
            "σ / μ of gradient cosine |", "|---|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['network']} | {'yes' if r['norm'] else 'no'} | {r['alpha']:g} | "
                    f"{'on' if r['loss_scaled'] else 'off'} | {r['fix'] or '–'} | "
                    f"{100 * r['harmonic_mean']:.1f} | "
                    f"{r['cosine_std']:.3f} / {r['cosine_mean']:+.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["ratio", "sweep"])
    parser.add_argument("--output", type=Path, default=Path("runs/cosreg_alpha"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--sizes", type=int, nargs=3, default=[3000, 1000, 2000])
    parser.add_argument("--seeds", type=int, default=3, help="ratio: seeds per setting")
    parser.add_argument("--steps", type=int, default=30, help="ratio: steps per run")
    parser.add_argument("--seed", type=int, default=0, help="sweep: the seed")
    parser.add_argument("--epochs", type=int, default=3, help="sweep: epochs per run")
    parser.add_argument("--every", type=int, default=3, help="sweep: cosine every N steps")
    parser.add_argument("--fixes", nargs="*", default=list(FIXES), choices=list(FIXES))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    records: list[dict] = []
    if args.part == "ratio":
        data = MultiDigitsDataModule(variant="even_odd", sizes=tuple(args.sizes), batch_size=64)
        data.prepare_data()
        data.setup("fit")
        for name, norm, loss_scaled, alpha, seed in itertools.product(
                NETWORKS, (False, True), (False, True), args.alphas, range(args.seeds)):
            records.append(measure(name, norm, alpha, loss_scaled, seed, data, args.steps))
            print(json.dumps({k: v for k, v in records[-1].items() if k != "loss"}), flush=True)
        table = ratio_table(records)
    else:
        for run in sweep_runs(args):
            spec = network(run["network"], run["norm"])
            cosreg_args = {"loss_scaled": run["loss_scaled"], **FIXES.get(run["fix"], {})}
            slug = "_".join([spec["backbone"], "bn" if run["norm"] else "plain",
                             f"alpha{run['alpha']:g}", *(["ls"] if run["loss_scaled"] else []),
                             *([run["fix"].replace(" ", "")] if run["fix"] else [])])
            records.append({**run, **train(slug, args.seed, args, spec["backbone"],
                                           spec["backbone_args"], spec["head"],
                                           run["alpha"], cosreg_args)})
            print(json.dumps(records[-1]), flush=True)
            (args.output / "sweep.json").write_text(json.dumps(records, indent=1))
        table = sweep_table(records)
    (args.output / f"{args.part}.json").write_text(json.dumps(records, indent=1))
    (args.output / f"{args.part}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
