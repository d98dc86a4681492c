"""The `bioxlstm` console script: one entry point, subcommands registered by each layer.

Each layer owns a small `cli.py` exposing `register(subparsers)`; those modules import only the
standard library at top level so `bioxlstm --help` stays fast. Errors meant for users carry a
class attribute `user_facing = True`: they are printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) pairs; a module missing from an old checkout is skipped, not fatal.
CLI_MODULES = (
    "data_pipeline.cli",
    "pretrain.cli",
    "launchers.cli",
    "pretrain.export_cli",
    "evaluation.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioxlstm",
        description=(
            "Pretrain Bio-xLSTM language models for DNA, proteins and small molecules: build "
            "WebDataset shards, train with DeepSpeed ZeRO over a context-length curriculum, "
            "launch on SLURM, export and run inference."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `bioxlstm demo` for a CPU-only tour on bundled real data.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in CLI_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - only user-facing errors are shortened
        if getattr(err, "user_facing", False):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
