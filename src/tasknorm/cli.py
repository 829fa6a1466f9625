"""The ``tasknorm`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tasknorm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a TSσBN ResNet-18 on two synthetic tasks")
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from tasknorm.demo import main as demo_main

        demo_main(args.steps, args.batch_size, args.seed)
