"""Repair after channel removal: refit the layers that read pruned channels.

He et al. 2017 ("Channel Pruning for Accelerating Very Deep Neural Networks") and ThiNet (Luo et
al. 2017) reconstruct each following layer by least squares: with ``X'`` the layer's input in the
*pruned* network and ``Y`` its output in the *original* network on the same calibration samples,
solve ``min ||[X', 1] [W'; b'] - Y||^2`` (ridge-damped, toward zero or toward the sliced weights).
Layers are refit in topological order, each on the activations of the network whose earlier layers
are already refit, so errors do not pile up; with ``residual`` a layer that feeds a skip
connection also absorbs the error already carried there. ``bias`` mode keeps the sliced weights and only moves the bias by the mean output
change: for a removed channel that is constant on the data (a ReLU that never fires, a zero
filter) this folds its contribution into the bias exactly (Gemm / MatMul, and Conv away from
zero padding).

Convolutions are handled as im2col matrices (one row per output position), grouped convolutions
and ConvTranspose are left as sliced. Activations come from :mod:`onnxcompress.structured.activations`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.algorithms.calibrated.hessian import im2col
from onnxcompress.calibration.capture import get_tensor, set_tensor
from onnxcompress.errors import DataError
from onnxcompress.structured.activations import capture
from onnxcompress.structured.graph import Analysis
from onnxcompress.structured.prune import Pruned

REFIT_MODES = ("lstsq", "bias", "none")
REFIT_PRIORS = ("zero", "sliced")
_CHUNK = 1 << 14


@dataclass(frozen=True)
class RefitRow:
    """What refitting one layer did: relative output error before and after, on calibration data."""

    layer: str
    mode: str
    error_before: float
    error_after: float


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _supported(node: onnx.NodeProto, w: np.ndarray) -> bool:
    a = _attrs(node)
    if node.op_type == "Conv":
        return int(a.get("group", 1)) == 1  # type: ignore[call-overload]
    if node.op_type == "Gemm":
        return not a.get("transA", 0) and w.ndim == 2
    return node.op_type == "MatMul" and w.ndim == 2


def _features(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        a = _attrs(node)
        return im2col(
            x, list(w.shape[2:]), strides=a.get("strides"), pads=a.get("pads"),  # type: ignore[arg-type]
            dilations=a.get("dilations"), auto_pad=str(a.get("auto_pad") or "NOTSET"),  # type: ignore[arg-type]
        )[0]  # fmt: skip
    return x.reshape(-1, x.shape[-1])


def _feature_pairs(
    node: onnx.NodeProto, x_o: np.ndarray, x_p: np.ndarray, w_o: np.ndarray, w_p: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(original, pruned) feature rows, im2col'ed a few samples at a time: the patch matrices of
    all calibration samples at once would not fit in memory for large layers."""
    kernel = int(np.prod(w_o.shape[2:])) if node.op_type == "Conv" else 1
    per_sample = max(1, int(np.prod(x_o.shape[1:])) * kernel)
    step = max(1, (_CHUNK * 64) // per_sample)
    for s in range(0, len(x_o), step):
        yield (
            _features(node, x_o[s : s + step], w_o).astype(np.float64),
            _features(node, x_p[s : s + step], w_p).astype(np.float64),
        )


def _matrix(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The weight as ``[outputs, features]``."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return w
    return w.T


def _unmatrix(node: onnx.NodeProto, m: np.ndarray, like: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return m.reshape(like.shape)
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return m
    return m.T


def _bias_name(model: onnx.ModelProto, index: int) -> str | None:
    node = model.graph.node[index]
    if node.op_type in ("Conv", "Gemm"):
        return node.input[2] if len(node.input) > 2 and node.input[2] else None
    users = [n for n in model.graph.node if node.output[0] in n.input]
    inits = {t.name for t in model.graph.initializer}
    if len(users) == 1 and users[0].op_type == "Add":
        other = [i for i in users[0].input if i != node.output[0]]
        if len(other) == 1 and other[0] in inits:
            return other[0]
    return None


def _residual_name(model: onnx.ModelProto, index: int) -> str | None:
    """The other operand of the residual ``Add`` the layer's output (after its bias ``Add``) feeds,
    when it is a computed tensor (the skip connection), else None."""
    inits = {t.name for t in model.graph.initializer}
    out = model.graph.node[index].output[0]
    for _ in range(2):
        users = [n for n in model.graph.node if out in n.input]
        if len(users) != 1 or users[0].op_type != "Add" or len(users[0].input) != 2:
            return None
        other = [i for i in users[0].input if i != out]
        if len(other) != 1:
            return None
        if other[0] not in inits:
            return other[0]
        out = users[0].output[0]  # the bias Add: look one step further
    return None


def _ensure_bias(model: onnx.ModelProto, index: int, outputs: int, dtype: np.dtype) -> str | None:
    name = _bias_name(model, index)
    node = model.graph.node[index]
    if name is None and node.op_type in ("Conv", "Gemm"):
        taken = {t.name for t in model.graph.initializer}
        name, k = f"{node.input[1]}_refit_bias", 0
        while name in taken:
            k += 1
            name = f"{node.input[1]}_refit_bias_{k}"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(outputs, dtype), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
    return name


def refit(
    original: onnx.ModelProto,
    pruned: Pruned,
    analysis: Analysis,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    mode: str = "lstsq",
    ridge: float = 1e-3,
    prior: str = "zero",
    residual: bool = False,
) -> list[RefitRow]:
    """Refit, in place in ``pruned.model``, every layer that lost input channels.

    ``prior``: what the ridge term pulls the solution toward: ``zero`` (plain ridge) or ``sliced``
    (the layer's sliced original weights, ``min ||A theta - Y||^2 + d ||theta - theta_0||^2``: with
    few calibration rows per weight the fit then stays near weights that already work instead of
    shrinking them). ``residual``: a MatMul / Gemm whose output (after its bias) is added to a
    skip connection is fit to its original output *plus* the error the pruned network carries in
    that skip connection, so each refit also cancels what the layers before it could not.
    """
    if mode == "none":
        return []
    model = pruned.model
    todo: list[tuple[int, str]] = []
    for c in sorted(analysis.consumers, key=lambda c: c.node):
        removed = pruned.removed.get(c.node)
        node = original.graph.node[c.node]
        if removed is None or not len(removed) or any(t[0] == c.node for t in todo):
            continue
        if _supported(node, get_tensor(original, c.weight)):
            todo.append((c.node, c.weight))
    if not todo:
        return []
    streams = {k: _residual_name(original, k) for k, _ in todo} if residual else {}
    wanted = [original.graph.node[k].input[0] for k, _ in todo] + [r for r in streams.values() if r]
    originals = capture(original, wanted, batches)
    rows: list[RefitRow] = []
    for k, weight in todo:
        node = original.graph.node[k]
        w_o = get_tensor(original, weight)
        b_name = _bias_name(original, k)
        b_o = (
            get_tensor(original, b_name).reshape(-1)
            if b_name
            else np.zeros(_matrix(node, w_o).shape[0], w_o.dtype)
        )
        keep_out = pruned.kept_outputs.get(k)
        mo = _matrix(node, w_o).astype(np.float64)
        w_p = get_tensor(model, weight)
        mp = _matrix(node, w_p).astype(np.float64)
        if keep_out is not None:
            mo, b_o = mo[keep_out], b_o[keep_out]
        x_o = originals[node.input[0]]
        if node.op_type == "Conv" and x_o.ndim < 3:
            raise DataError(f"{node.name}: a convolution needs calibration batches of one image size")
        whole = keep_out is None or len(keep_out) == _matrix(node, w_o).shape[0]  # no output removed
        stream = streams.get(k) if whole and node.op_type != "Conv" else None
        got = capture(model, [node.input[0]] + ([stream] if stream else []), batches)
        x_p = got[node.input[0]]
        # the error the pruned network already carries in the residual stream this layer adds to:
        # the layer's target becomes its original output plus that error, so it cancels what it can
        carried = (
            (originals[stream] - got[stream]).reshape(-1, mo.shape[0]).astype(np.float64)
            if stream
            else None
        )
        p_name = _bias_name(model, k)
        b_p = get_tensor(model, p_name).reshape(-1).astype(np.float64) if p_name else np.zeros(mp.shape[0])
        with_bias = p_name is not None or node.op_type in ("Conv", "Gemm")
        n_in = _matrix(node, w_p).shape[1]
        n_feat = n_in + (1 if with_bias else 0)
        hess = np.zeros((n_feat, n_feat))
        cross = np.zeros((n_feat, mo.shape[0]))
        err0 = err1 = norm = 0.0
        resid_sum = np.zeros(mo.shape[0])
        rows_n = 0
        for fo, fp in _feature_pairs(node, x_o, x_p, w_o, w_p):
            y = fo @ mo.T + b_o
            if carried is not None:
                y = y + carried[rows_n : rows_n + len(fo)]
            y_now = fp @ mp.T + b_p
            err0 += float(((y - y_now) ** 2).sum())
            norm += float((y**2).sum())
            resid_sum += (y - y_now).sum(axis=0)
            rows_n += fp.shape[0]
            a = np.hstack([fp, np.ones((fp.shape[0], 1))]) if with_bias else fp
            hess += a.T @ a
            cross += a.T @ y
        new_m: np.ndarray
        new_b: np.ndarray
        if mode == "bias":
            new_m, new_b = mp, b_p + resid_sum / rows_n
        else:
            damp = ridge * float(np.mean(np.diag(hess))) + 1e-12
            theta0 = np.zeros((n_feat, mo.shape[0]))
            if prior == "sliced":
                theta0[:n_in] = mp.T
                if with_bias:
                    theta0[-1] = b_p
            theta = np.linalg.solve(hess + damp * np.eye(n_feat), cross + damp * theta0)
            new_m = theta[:n_in].T
            new_b = theta[-1] if with_bias else b_p
        at = 0
        for fo, fp in _feature_pairs(node, x_o, x_p, w_o, w_p):
            y = fo @ mo.T + b_o
            if carried is not None:
                y = y + carried[at : at + len(fo)]
            at += len(fo)
            err1 += float(((y - (fp @ new_m.T + new_b)) ** 2).sum())
        set_tensor(model, weight, _unmatrix(node, new_m, w_p).astype(w_p.dtype))
        if with_bias:
            name = _ensure_bias(model, k, mp.shape[0], w_p.dtype)
            if name is not None:
                old = get_tensor(model, name)
                set_tensor(model, name, np.asarray(new_b, dtype=old.dtype).reshape(old.shape))
        label = node.name or f"{node.op_type}_{k}"
        rows.append(
            RefitRow(
                label, mode, float(np.sqrt(err0 / max(norm, 1e-30))), float(np.sqrt(err1 / max(norm, 1e-30)))
            )
        )
    return rows
