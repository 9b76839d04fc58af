"""The `dtfsal` command: parses arguments and calls the library's functions.

Each subcommand lives in a `_add_<name>` function that registers its parser and a handler that
imports what it needs lazily, so `dtfsal --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print parameters and multiply-accumulates of a configuration")
    parser.add_argument("--model", default=None, help="a model folder or Hub id; default: the paper's configuration")
    parser.add_argument("--visual-only", action="store_true", help="DTFSal(V): no audio branch")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts (they run the model once)")
    parser.set_defaults(handler=_run_info)


def _run_info(args) -> int:
    from .complexity import describe_model

    print(describe_model(args.model, visual_only=args.visual_only, tiny=args.tiny, count_flops=not args.no_flops))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtfsal", description="DTFSal audio-visual video saliency prediction")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info,):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
