"""Parameters and FLOPs of the LibMTL NYUv2 model: hard sharing vs TSBN vs TSσBN.

The model is the LibMTL protocol's: a dilated ResNet-50 (output stride 8) shared by three tasks
(13-class segmentation, depth, normals), one DeepLab ASPP head per task, 288×384 input. FLOPs are
counted by ``torch.utils.flop_counter`` for one forward pass of one image producing every task's
output (TSσBN runs the backbone once per task, in one batched call). The TSσBN paper reports
1.00× parameters and 1.69× FLOPs relative to hard sharing.

Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from functools import partial

import torch

from tasknorm.io import write_json
from tasknorm.models import MultiTaskModel, build_backbone, count_flops, count_parameters
from tasknorm.tasks import DepthTask, NormalsTask, SegmentationTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architectures", nargs="+", default=["hard", "task", "task_sigma"])
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tasks = [SegmentationTask("segmentation", 13), DepthTask("depth"), NormalsTask("normals")]
    image = torch.randn(1, 3, args.height, args.width)
    backbone = partial(build_backbone, "resnet50_dilated")
    rows = []
    for architecture in args.architectures:
        torch.manual_seed(0)
        model = MultiTaskModel(backbone, tasks, architecture, head="aspp").eval()
        heads = sum(count_parameters(h) for h in model.heads.values())
        rows.append({"architecture": architecture, "parameters": count_parameters(model),
                     "head_parameters": heads, "flops": count_flops(model, image)})
    reference = rows[0]
    for row in rows:
        row["parameters_ratio"] = row["parameters"] / reference["parameters"]
        row["flops_ratio"] = row["flops"] / reference["flops"]
    command = "python " + " ".join(sys.argv)
    if args.output:
        write_json(args.output, {"command": command, "torch": torch.__version__,
                                 "input": [args.height, args.width],
                                 "date": datetime.date.today().isoformat(), "rows": rows})
    print(f"`{command}`\n")
    print(f"| architecture | parameters | ÷ {reference['architecture']} | of which heads | "
          f"GFLOPs/image | ÷ {reference['architecture']} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['parameters']:,} | {r['parameters_ratio']:.4f} | "
              f"{r['head_parameters']:,} | {r['flops'] / 1e9:.1f} | {r['flops_ratio']:.3f} |")


if __name__ == "__main__":
    main()
