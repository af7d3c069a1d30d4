"""``onnxcompress search MODEL -o OUT --data VAL [gates] [size target]``: per-weight search.

Finds the smallest file that passes the gates on the validation data (or the best metric at a size
target, or the size/metric front; with ``--objective ram`` the size is the estimated memory a
session keeps after load, with ``--objective latency`` the batch latency of a stock onnxruntime
session predicted from per-weight timings taken on this machine at the start (``--latency-batch``
samples per run; cached in ``OUT.latency.json``; the report puts the chosen plan's measured p50
beside the prediction and the input's), and ``--formats codebook,runtime`` adds runtime-native
choices), writes it with its plan (``OUT.plan.yaml``, which ``compress
--config`` turns into the same bytes), a report (``OUT.search.json`` / ``.md``), the front
(``OUT.front.png``) and the stage-1 sensitivity (``OUT.sensitivity.json`` / ``.md`` / ``.png``).
Exit 1 with nothing written when no tried plan passes; 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from onnxcompress.errors import ConfigError

HELP = "search per-weight sparsity and bits for the smallest model that passes accuracy gates"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from onnxcompress.commands.verify import add_gate_arguments
    from onnxcompress.structured.config import CRITERION_CHOICES

    p.add_argument("model", help="input ONNX model")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="where the best model goes (.onnx, or .onnxc: sizes are then .onnxc sizes)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="VAL",
        help="validation data (.npz keyed by input name, or a folder); never the test set",
    )
    p.add_argument("--labels", metavar="KEY", help="labels array in the data (default: 'labels' if present)")
    add_gate_arguments(p)
    g = p.add_argument_group("objective")
    g.add_argument(
        "--objective", default="size",
        help="what the search minimises (and --target-ratio/--max-bytes limit): size (default: the file's bytes), "
        "ram (an estimate of the bytes an onnxruntime session keeps after constant folding: folded codebook "
        "weights count dense, runtime-native MatMulNBits/GatherBlockQuantized codes count packed; use with "
        "--formats codebook,runtime; onnxcompress bench measures the real RSS) or latency (the batch latency "
        "of a stock onnxruntime session, predicted from each weight's consumer ops timed on this machine; needs "
        "runtime among --formats; --target-ratio is then a speed-up and --max-bytes is refused)",
    )  # fmt: skip
    g.add_argument(
        "--latency-batch", type=int, default=1, metavar="N",
        help="with --objective latency: validation samples per timed run (default 1)",
    )  # fmt: skip
    g.add_argument(
        "--target-ratio", type=float, metavar="R", help="best metric at a file R times smaller than the input"
    )
    g.add_argument("--max-bytes", type=int, metavar="B", help="best metric at a file of at most B bytes")
    g.add_argument(
        "--pareto", action="store_true", help="multi-objective: search the whole size/metric front"
    )
    g.add_argument(
        "--metric", default="auto",
        help="accuracy, agreement, cosine, nn_agreement (embeddings: same nearest neighbour as the original), or module:function taking (session, data) -> float (default: accuracy with labels, else agreement)",
    )  # fmt: skip
    g.add_argument(
        "--metric-direction",
        choices=("max", "min"),
        help="whether a larger metric is better (default max, or function.direction)",
    )
    g.add_argument(
        "--metric-limit",
        type=float,
        metavar="X",
        help="gate on the metric itself (>= X for max, <= X for min)",
    )
    b = p.add_argument_group("budget and study")
    b.add_argument(
        "--trials", type=int, default=40, help="trials in the study, stage 2 included (default 40)"
    )
    b.add_argument("--timeout", type=float, metavar="S", help="stop stage 3 after S seconds")
    b.add_argument(
        "--uniform-evaluations", type=int, default=8, metavar="N",
        help="model runs on uniform seeds after stage 2 (one bit width, global-magnitude sparsities; 0: none)",
    )  # fmt: skip
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sampler", choices=("tpe", "gp", "random"), default="tpe")
    b.add_argument(
        "--storage",
        default="default",
        help="Optuna storage URL (default: sqlite file OUT.search.db, so a rerun resumes); 'memory' keeps nothing",
    )
    b.add_argument("--study", help="study name (default: derived from the model and the settings)")
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes on the study (needs a shared --storage)",
    )
    b.add_argument("--no-early-stop", action="store_true", help="evaluate every trial fully")
    s = p.add_argument_group("search space")
    s.add_argument(
        "--sparsities",
        type=_floats,
        metavar="LIST",
        help="stage-1 grid of pruned fractions (default 0,.5,.6,.7,.75,.8,.85,.9,.95,.97)",
    )
    s.add_argument(
        "--bits", type=_ints, metavar="LIST", help="stage-1 grid of codebook bits (default 2,3,4,5,6)"
    )
    s.add_argument(
        "--granularity", default="tensor", help="comma-separated: tensor, channel, group (default tensor)"
    )
    s.add_argument(
        "--formats", type=_words, metavar="LIST", default=["codebook"],
        help="weight formats to choose from, comma-separated: codebook (folded codebooks: the smallest file, dense "
        "float in RAM after load), runtime (affine codes onnxruntime keeps quantized for MatMul/Gemm/Gather: "
        "the least RAM) (default codebook)",
    )  # fmt: skip
    s.add_argument(
        "--runtime-bits", type=_ints, metavar="LIST", default=[4, 8],
        help="bit widths of the runtime format's choices, among 2,4,8 (default 4,8)",
    )  # fmt: skip
    s.add_argument(
        "--sensitivity-samples",
        type=int,
        default=256,
        help="validation samples per stage-1 point (default 256)",
    )
    s.add_argument("--min-elements", type=int, default=256)
    s.add_argument(
        "--calibration-data",
        metavar="DATA",
        help="candidates use the calibrated methods (OBS, GPTQ, refit) on this data; by default one-shot: "
        "statistics captured once, each weight setting calibrated once (the plan records calibration: "
        "{sequential: false}); see --sequential and --bias-correction",
    )
    s.add_argument(
        "--sequential", action="store_true",
        help="with --calibration-data: calibrate every candidate sequentially, as compress does (each layer "
        "sees the compressed layers before it; exact, a full calibration per candidate)",
    )  # fmt: skip
    s.add_argument(
        "--bias-correction", action="store_true",
        help="with --calibration-data: shift biases by the mean output change (a full calibration per candidate)",
    )  # fmt: skip
    st = p.add_argument_group("structured pruning (channel ratio as one more dimension)")
    st.add_argument(
        "--structured-ratios", type=_floats, metavar="LIST",
        help="channel ratios to try, e.g. 0,0.5,0.6,0.7: each ratio's structurally pruned model (refit on "
        "--calibration-data) is checked alone against the original and, if it passes, searched per weight "
        "(--trials each); the smallest passing file wins, sized against the original; its plan has a "
        "structured: section, so compress --config reproduces it",
    )  # fmt: skip
    st.add_argument(
        "--structured-allocation", choices=("uniform", "global"), default="global",
        help="how each ratio is spread over the layers (default global: the cheapest channels anywhere)",
    )  # fmt: skip
    st.add_argument(
        "--structured-criterion", choices=CRITERION_CHOICES, default="obs",
        help="which channels go (default obs: the least output damage after refit; needs --calibration-data, "
        "else l1 is used)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--external-data", action=argparse.BooleanOptionalAction, default=None,
        help="write the best model's initializers to OUTPUT.data beside the .onnx, or (--no-external-data) "
        "everything in one file; default: as the input is stored, like compress (onnxruntime maps external "
        "weights instead of copying them: less memory for --objective ram plans); not with an .onnxc output",
    )  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")


class _Progress:
    """One status line on stderr: stage, trial count, best size so far (``original`` 0: sizes are
    not file sizes, so no ratio against the file is shown)."""

    def __init__(self, enabled: bool, original: int, trials: int, objective: str = "size") -> None:
        self.enabled = enabled
        self.objective = objective
        self.original = original
        self.trials = trials
        self.count = 0
        self.last = 0.0
        self.best: int | None = None

    def __call__(self, stage: str, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage == "sensitivity":
            if now - self.last < 0.5 and info["done"] < info["total"]:
                return
            line = f"stage 1 sensitivity {info['done']}/{info['total']} {info['what']}"
        elif stage == "latency":
            if now - self.last < 0.5 and info["done"] < info["total"]:
                return
            line = f"latency table {info['done']}/{info['total']} {info['what']}"
        elif stage == "structured":
            line = f"structured ratio {info['ratio']:g} ({info['index'] + 1}/{info['total']}): pruned, searching"
        else:
            from onnxcompress.search.candidates import cost_text

            rec = info["record"]
            self.count += 1
            if rec.passed and rec.size is not None and (self.best is None or rec.size < self.best):
                self.best = rec.size
            ratio = f" ({self.original / self.best:.1f}x)" if self.original and self.best else ""
            best = f"best {cost_text(self.best, self.objective)}{ratio}" if self.best else "no passing plan yet"
            line = (f"{rec.stage} trial {rec.number + 1}/{self.trials}: {cost_text(rec.size or 0, self.objective)} "
                    f"{rec.state.lower()}; {best}")  # fmt: skip
        self.last = now
        print("\r" + line[:120].ljust(120), end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def run(args: argparse.Namespace) -> int:

    from onnxcompress import model_io
    from onnxcompress.commands.verify import gates_from_args
    from onnxcompress.search import load_metric, search
    from onnxcompress.search.api import side_files

    model_io.check_input(args.model)
    model_io.check_data_path(args.data)
    if getattr(args, "calibration_data", None):
        model_io.check_data_path(args.calibration_data, "--calibration-data")
    model_io.check_output(args.output, inputs=[args.model], overwrite=args.overwrite)
    from onnxcompress.compressor import check_external_data_output

    check_external_data_output(args.output, args.external_data)
    for path in side_files(args.output).values():
        if (
            path.suffix != ".json"
            and path.exists()
            and not args.overwrite
            and path.name.endswith(".plan.yaml")
        ):
            raise ConfigError(f"{path}: already exists; pass --overwrite to replace it")
    metric: Any = args.metric
    if args.metric != "auto" or args.metric_limit is not None or args.metric_direction:
        metric = load_metric(
            "accuracy" if args.metric == "auto" else args.metric,
            direction=args.metric_direction,
            limit=args.metric_limit,
        )
    granularities = tuple(g.strip() for g in args.granularity.split(",") if g.strip())
    original = model_io.size_on_disk(args.model) if args.objective == "size" else 0
    progress = _Progress(not args.quiet, original, args.trials, args.objective)
    kwargs: dict[str, Any] = {}
    if args.sparsities:
        kwargs["sparsities"] = args.sparsities
    if args.bits:
        kwargs["bits"] = args.bits
    if args.structured_ratios:
        from onnxcompress.search.structured import StructuredSearch
        from onnxcompress.structured.config import StructuredConfig

        criterion = args.structured_criterion
        if criterion in ("obs", "activation") and not args.calibration_data:
            criterion = "l1"  # data-driven criteria need calibration samples
        kwargs["structured"] = StructuredSearch(
            tuple(args.structured_ratios), StructuredConfig(allocation=args.structured_allocation, criterion=criterion)
        )
    try:
        result = search(
            args.model, args.data, output=args.output, gates=gates_from_args(args), metric=metric,
            target_ratio=args.target_ratio, max_bytes=args.max_bytes, pareto=args.pareto, trials=args.trials,
            timeout=args.timeout, seed=args.seed, storage=None if args.storage == "memory" else args.storage,
            study=args.study, workers=args.workers, labels_key=args.labels, sampler=args.sampler,
            granularities=granularities, sensitivity_samples=args.sensitivity_samples,
            calibration_data=args.calibration_data, calibration_sequential=args.sequential,
            bias_correction=args.bias_correction, min_elements=args.min_elements,
            uniform_evaluations=args.uniform_evaluations, formats=tuple(args.formats),
            runtime_bits=tuple(args.runtime_bits), objective=args.objective, latency_batch=args.latency_batch,
            early_stop=not args.no_early_stop, progress=progress, **kwargs,
        )  # fmt: skip
    finally:
        progress.done()
    side = side_files(args.output)
    if not result.passed:
        print(f"onnxcompress: {result.summary()}; nothing written", file=sys.stderr)
        return 1
    written = result.save(args.output, overwrite=args.overwrite, external_data=args.external_data)
    table = result.sensitivity
    model_io.write_bytes(side["sensitivity_md"], table.markdown().encode())
    if table.plot(side["sensitivity_png"]):
        written.append(side["sensitivity_png"])
    if not args.quiet:
        print(result.markdown().split("## Trials")[0].rstrip())
        print()
    print(result.summary())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
