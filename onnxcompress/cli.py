"""Command-line entry point.

Each sub-command lives in its own module ``onnxcompress.commands.<name>`` exposing ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. This module only dispatches and turns our
own exceptions into one clear error line plus a non-zero exit code (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from onnxcompress.errors import OnnxCompressError

# Order is the order shown by --help.
COMMANDS: tuple[str, ...] = ("compress", "search", "inspect", "verify", "bench", "pack", "unpack")


def _load(name: str):
    return importlib.import_module(f"onnxcompress.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    from onnxcompress import __version__

    parser = argparse.ArgumentParser(
        prog="onnxcompress",
        description="Prune and codebook-quantize ONNX models into smaller ONNX models that stock onnxruntime runs.",
    )
    parser.add_argument("--version", action="version", version=f"onnxcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:  # a command whose module is not installed yet
            if exc.name != f"onnxcompress.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except OnnxCompressError as exc:
        print(f"onnxcompress: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxcompress: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends: not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
