"""``onnxcompress verify REFERENCE CANDIDATE``: compare two models on data and enforce gates.

Exit codes: 0 every gate passed (or none was set), 1 a gate failed (the summary names the gate and
by how much), 2 usage or input error (one line, no traceback).

Reusable pieces for other commands (``compress --verify-data`` calls them after compressing):
:func:`add_data_arguments`, :func:`add_gate_arguments`, :func:`add_report_arguments`,
:func:`gates_from_args`, :func:`options_from_args`, :func:`run_verification`. They read ``args`` with ``getattr`` defaults, so a
command may add only some of the argument groups.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnxcompress.commands.arguments import bounded_float, positive_int
from onnxcompress.errors import DataError
from onnxcompress.evaluation.data import parse_int_range, parse_shape_overrides
from onnxcompress.evaluation.gates import GATES, GateNotApplicableError, Gates, gate
from onnxcompress.evaluation.verify import VerifyOptions, VerifyResult, verify
from onnxcompress.sessions import parse_providers

HELP = "Compare a compressed model with its reference on data; exit 1 when a quality gate fails."


def _group(parser: argparse.ArgumentParser | argparse._ArgumentGroup, title: str) -> Any:
    """A titled group, or ``parser`` itself when it already is a group (nesting is deprecated)."""
    if isinstance(parser, argparse._ArgumentGroup):
        return parser
    return parser.add_argument_group(title)


def add_data_arguments(parser: argparse.ArgumentParser, *, data_flag: str = "--data") -> None:
    """Data-source options (dest names fixed: data, labels, batch_size, shape, int_range, samples, seed).

    ``data_flag`` lets another command spell the data option differently (``--verify-data``).
    ``parser`` may be a parser or an argument group.
    """
    g = _group(parser, "data")
    g.add_argument(
        data_flag,
        dest="data",
        metavar="FILE_OR_DIR",
        help="an .npz (arrays keyed by input name, or one array for a one-input model), an .npy, or a folder "
        "of .npy/.npz files; default: synthetic inputs from the model's input spec",
    )
    g.add_argument("--labels", metavar="KEY", help="labels array in the data (default: 'labels' if present)")
    g.add_argument("--batch-size", type=positive_int, metavar="N", help="samples per run (default 32)")
    g.add_argument(
        "--shape",
        action="append",
        metavar="NAME=AxB",
        help="shape for an input with symbolic dims (leading dim = batch), e.g. input=1x3x224x224, or one "
        "symbolic dim, e.g. seq=128; repeatable",
    )
    g.add_argument(
        "--int-range",
        action="append",
        metavar="LO:HI",
        help="range [LO, HI) of synthetic integer inputs, e.g. 0:30522, or per input ids=0:30522 (default 0:10)",
    )
    g.add_argument("--samples", type=positive_int, metavar="N", help="use at most N samples (synthetic: 64)")
    g.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs (default 0)")


def add_gate_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per row of :data:`onnxcompress.evaluation.gates.GATES` (``--max-accuracy-drop``...;
    dest = the gate name). ``parser`` may be a parser or an argument group."""
    g = _group(parser, "gates (exit 1 when one fails)")
    for spec in GATES:
        g.add_argument(
            spec.flag, dest=spec.name, type=bounded_float(spec.lo, spec.hi), metavar=spec.metavar, help=spec.help
        )


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Report, provider and output options (json, markdown, junit, class_outputs, providers, quiet...)."""
    g = _group(parser, "reports and runtime")
    g.add_argument(
        "--class-outputs",
        metavar="NAMES",
        help="comma-separated outputs to treat as class scores (default: 2-D [N, C] outputs with C >= 2)",
    )
    g.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    g.add_argument("--markdown", metavar="PATH", help="write a Markdown summary (for a PR comment)")
    g.add_argument("--junit", metavar="PATH", help="write JUnit XML (one test case per gate check)")
    g.add_argument(
        "--providers",
        nargs="+",
        metavar="EP",
        help="execution providers in priority order: cpu, cuda, tensorrt, ... (default cpu)",
    )
    g.add_argument(
        "--allow-fallback", action="store_true", help="drop requested providers that are unavailable"
    )
    g.add_argument("--threads", type=positive_int, metavar="N", help="intra-op threads per session")
    g.add_argument(
        "--decode",
        choices=("onnxruntime", "host"),
        default="onnxruntime",
        help="how compressed weights are rebuilt: onnxruntime folds the decode functions (a stock session; "
        "default) or host (numpy first, as onnxcompress.load: same weights, less time and memory)",
    )
    g.add_argument(
        "--quiet", "-q", action="store_true", help="no progress and no table: only the summary line"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", help="the original model (.onnx or .onnxc)")
    parser.add_argument("candidate", help="the model to check against it, e.g. the compressed one")
    add_data_arguments(parser)
    add_gate_arguments(parser)
    add_report_arguments(parser)


def gates_from_args(args: argparse.Namespace) -> Gates:
    """The :class:`Gates` named on the command line (absent options = unchecked)."""
    return Gates(**{g.name: getattr(args, g.name, None) for g in GATES})


def options_from_args(args: argparse.Namespace) -> VerifyOptions:
    """The :class:`VerifyOptions` the flags in ``args`` ask for."""
    from onnxcompress.sessions import resolve_providers

    class_outputs = getattr(args, "class_outputs", None)
    names = tuple(n.strip() for n in class_outputs.split(",") if n.strip()) if class_outputs else None
    providers = parse_providers(getattr(args, "providers", None))
    return VerifyOptions(
        gates=gates_from_args(args),
        labels_key=getattr(args, "labels", None),
        batch_size=getattr(args, "batch_size", None),
        samples=getattr(args, "samples", None),
        shapes=parse_shape_overrides(getattr(args, "shape", None)),
        int_range=parse_int_range(getattr(args, "int_range", None)),
        seed=getattr(args, "seed", 0) or 0,
        class_outputs=names,
        providers=resolve_providers(providers, allow_fallback=getattr(args, "allow_fallback", False)),
        threads=getattr(args, "threads", None),
        decode=getattr(args, "decode", "onnxruntime"),
    )


#: what to do when a gate cannot be checked, by GateNotApplicableError.reason
_GATE_HINTS = {
    "no-labels": " (name the labels array with --labels KEY)",
    "no-class-output": " (name outputs with --class-outputs)",
}


def verify_from_args(reference: Any, candidate: Any, args: argparse.Namespace) -> VerifyResult:
    """Run :func:`~onnxcompress.evaluation.verify.verify` with the options in ``args``; errors
    about a gate name its flag and the flag that helps."""
    from onnxcompress.commands.display import terminal_progress

    options = options_from_args(args)
    try:
        with terminal_progress(enabled=not getattr(args, "quiet", False)) as progress:
            return verify(reference, candidate, getattr(args, "data", None), options, progress=progress)
    except GateNotApplicableError as exc:
        flag = gate(exc.gate).flag
        message = str(exc).replace(exc.gate, flag, 1) + _GATE_HINTS.get(exc.reason, "")
        raise GateNotApplicableError(message, gate=exc.gate, reason=exc.reason) from None


def run_verification(reference: Any, candidate: Any, args: argparse.Namespace) -> int:
    """Verify, print the table (or just the summary with --quiet), write reports; return 0 or 1.

    ``reference`` / ``candidate``: paths (.onnx, .onnxc) or ``onnx.ModelProto``. Usage errors raise
    OnnxCompressError subclasses (exit 2 through the CLI dispatcher).
    """
    from onnxcompress.evaluation.reports import render_text, write_reports

    if getattr(args, "data", None) is None and getattr(args, "labels", None):
        raise DataError("--labels needs --data: synthetic inputs have no labels")
    result = verify_from_args(reference, candidate, args)
    if getattr(args, "quiet", False):
        print(result.summary())
    else:
        print(render_text(result))
    if not result.gates:  # said on stderr too, where a CI log's warnings are looked for
        print("onnxcompress: warning: no gate set: nothing was checked (exit 0 whatever the metrics); "
              "add e.g. --max-accuracy-drop 0.5 or --min-cosine 0.99", file=sys.stderr)  # fmt: skip
    write_reports(
        result,
        json_path=getattr(args, "json", None),
        markdown_path=getattr(args, "markdown", None),
        junit_path=getattr(args, "junit", None),
    )
    if not result.passed:
        sys.stdout.flush()
        return 1
    return 0


def check_paths(args: argparse.Namespace, models: list[str]) -> None:
    """Models, data and report paths, before any work (rules: :mod:`onnxcompress.model_io`)."""
    from onnxcompress import model_io

    for m in models:
        model_io.check_input(m)
    if getattr(args, "data", None):
        model_io.check_data_path(args.data)
    for flag in ("json", "markdown", "junit"):
        if getattr(args, flag, None):
            model_io.check_output(getattr(args, flag), inputs=models, overwrite=True)


def run(args: argparse.Namespace) -> int:
    check_paths(args, [args.reference, args.candidate])
    return run_verification(args.reference, args.candidate, args)
