"""Command-line entry point (``onnxcompress`` and ``python -m onnxcompress``).

Each sub-command lives in its own module ``onnxcompress.commands.<name>`` exposing ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. This module only dispatches and turns our
own exceptions into one clear error line plus a non-zero exit code (never a traceback).

Start-up stays fast (``--version`` and ``--help`` import neither onnx nor onnxruntime): only the
chosen sub-command's arguments are built, and the command modules import heavy packages inside
their functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown by --help.
COMMANDS: tuple[str, ...] = ("compress", "search", "inspect", "verify", "bench", "pack", "unpack", "decode")


def _load(name: str):
    return importlib.import_module(f"onnxcompress.commands.{name}")


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the sub-command it names gets its arguments (fast start)."""
    from onnxcompress import __version__

    parser = argparse.ArgumentParser(
        prog="onnxcompress",
        description="Prune and codebook-quantize ONNX models into smaller ONNX models that stock onnxruntime runs.",
    )
    parser.add_argument("--version", action="version", version=f"onnxcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _chosen(argv) if argv is not None else None
    for name in COMMANDS:
        if argv is not None and "--version" in argv[:1]:
            break  # nothing but the version is needed
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:  # a command whose module is not installed yet
            if exc.name != f"onnxcompress.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if argv is None or name == chosen:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from onnxcompress.errors import OnnxCompressError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
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
