"""Exact 1-D Lloyd k-means, fast enough to run per channel on every weight of a large model.

Why it is fast, yet exactly Lloyd's algorithm:

* In 1-D, the points nearest to centroid ``c_j`` (centroids sorted) are exactly the points between the
  midpoints ``(c_{j-1} + c_j) / 2`` and ``(c_j + c_{j+1}) / 2``. So, once the data are sorted, an
  assignment step is ``k - 1`` binary searches instead of ``n * k`` distances.
* The data are reduced once to their distinct values with (weighted) multiplicities -- exact, and a huge
  win for fp16/bf16 weights, which have at most 65536 distinct values.
* With prefix sums of ``w`` and ``w * x``, every cluster mean is two subtractions, so an update step is
  O(k). One Lloyd iteration costs O(k log n); the O(n log n) sort and the final O(n log k) labelling
  dominate.

Several independent problems (one per channel or group) are solved together in :func:`lloyd_rows`,
vectorized across rows, which is what :mod:`onnxcompress.algorithms.codebook` uses.

Conventions (the brute-force reference in the tests follows the same ones):

* A point exactly halfway between two centroids goes to the lower one (``argmin`` picks the first).
* Iteration stops when an assignment equals the previous one (then the centroids are the means of it),
  when the squared centroid shift falls to ``tol * variance`` (only if ``tol > 0``), or after
  ``max_iter`` assignment steps. The returned labels are a fresh nearest-centroid assignment to the
  returned centroids.
* Empty clusters are re-seeded as scikit-learn does: the ``m`` distinct values farthest (squared
  distance, weights ignored) from the centroid they were assigned to, ties to the smaller value, become
  the ``m`` empty clusters' centroids and leave their old cluster, whose mean is updated. A value that
  is the last one left in its cluster is skipped (moving it would only relabel that cluster), and an
  empty cluster without a candidate keeps its previous centroid. When the last update re-seeded
  clusters, its centroids are returned as they are; otherwise they are recomputed as direct (not
  prefix-sum) means of the last assignment.
* When there are at most ``k`` distinct values (among points with positive weight) the answer is those
  values themselves (zero error), followed by copies of the largest one to make ``k`` entries; labels
  only ever point at the first copy.

Pure numpy; never imports onnx or onnxruntime.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.errors import ConfigError

__all__ = ["INITS", "kmeans_1d", "kmeans_sse"]

INITS = ("linear", "density", "random", "kmeans++")


# --- init


def _init_rows(
    init: str,
    vals: np.ndarray,
    wts: np.ndarray,
    cumw: np.ndarray,
    row_ptr: np.ndarray,
    rows: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Initial sorted centroids [len(rows), k] for rows that have more than k distinct values."""
    lo = row_ptr[rows]
    hi = row_ptr[rows + 1]
    if init == "linear":
        # Deep Compression's best: evenly spaced over [min, max], which keeps the rare large weights.
        return np.linspace(vals[lo], vals[hi - 1], k, axis=-1)
    if init == "density":
        # Evenly spaced in the (weighted) CDF: quantiles at (i + 1/2) / k.
        p = (np.arange(k) + 0.5) / k
        target = cumw[lo][:, None] + p[None, :] * (cumw[hi] - cumw[lo])[:, None]
        idx = np.searchsorted(cumw, target, side="right") - 1
        idx = np.clip(idx, lo[:, None], (hi - 1)[:, None])
        return vals[idx]
    out = np.empty((rows.size, k))
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        v, w = vals[a:b], wts[a:b]
        if init == "random":
            # k distinct observations; an observation is a value drawn with its (weighted) multiplicity.
            pick = rng.choice(v.size, size=k, replace=False, p=w / w.sum())
            out[i] = np.sort(v[pick])
        else:
            out[i] = _kmeanspp_row(v, w, k, rng)
    return out


def _kmeanspp_row(v: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Plain k-means++ (D^2 sampling) on sorted distinct values with weights.

    A new centre only changes D^2 for the values between its midpoints with its neighbouring centres,
    and sampling goes through block sums, so this is roughly O(n log k + k sqrt(n)) rather than O(n k).
    """
    n = v.size
    cw = np.cumsum(w)
    first = int(np.searchsorted(cw, rng.random() * cw[-1], side="right"))
    centres = [float(v[min(first, n - 1)])]
    d2 = w * (v - centres[0]) ** 2
    bs = max(64, int(np.sqrt(n)))
    bstart = np.arange(0, n, bs)
    bsum = np.add.reduceat(d2, bstart)
    for _ in range(1, k):
        total = bsum.sum()
        if not total > 0:
            break
        r = rng.random() * total
        cb = np.cumsum(bsum)
        bi = min(int(np.searchsorted(cb, r, side="right")), bsum.size - 1)
        r -= cb[bi] - bsum[bi]
        seg = d2[bi * bs : (bi + 1) * bs]
        cs = np.cumsum(seg)
        j = int(np.searchsorted(cs, r, side="right"))
        if j >= seg.size or seg[j] <= 0:  # float round-off at the very end of the block
            j = int(np.flatnonzero(seg > 0)[-1]) if (seg > 0).any() else int(np.argmax(d2 > 0) - bi * bs)
        idx = bi * bs + j
        c = float(v[idx])
        pos = int(np.searchsorted(centres, c))
        centres.insert(pos, c)
        left = -np.inf if pos == 0 else 0.5 * (centres[pos - 1] + c)
        right = np.inf if pos == len(centres) - 1 else 0.5 * (c + centres[pos + 1])
        a = int(np.searchsorted(v, left, side="left"))
        b = int(np.searchsorted(v, right, side="right"))
        if b > a:
            d2[a:b] = np.minimum(d2[a:b], w[a:b] * (v[a:b] - c) ** 2)
            b0, b1 = a // bs, (b - 1) // bs + 1
            bsum[b0:b1] = np.add.reduceat(
                d2[b0 * bs : min(b1 * bs, n)], np.arange(0, min(b1 * bs, n) - b0 * bs, bs)
            )
    out = np.asarray(centres, dtype=np.float64)
    if out.size < k:  # only when every value already sits on a centre; cannot happen with > k distinct
        out = np.concatenate([out, np.full(k - out.size, out[-1])])
    return np.sort(out)


# --- core


def _bisect(vals: np.ndarray, a: np.ndarray, b: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Vectorized: first index i in [a, b] with i == b or vals[i] > thr, given vals[a-1] <= thr.

    Each query has its own bounds, so many rows stored back to back are searched at once without
    ever crossing into a neighbouring row. ``a`` and ``b`` (1-D) are modified in place.
    """
    todo = np.flatnonzero(a < b)
    while todo.size:
        aa, bb, tt = a[todo], b[todo], thr[todo]
        m = (aa + bb) >> 1
        gt = vals[m] > tt
        b[todo] = np.where(gt, m, bb)
        a[todo] = np.where(gt, aa, m + 1)
        todo = todo[a[todo] < b[todo]]
    return a


def _search_near(
    vals: np.ndarray, lo: np.ndarray, hi: np.ndarray, prev: np.ndarray, thr: np.ndarray
) -> np.ndarray:
    """Same result as a per-row ``searchsorted(side="right")``, warm-started at the previous boundary.

    Lloyd boundaries move little from one iteration to the next (and most not at all near
    convergence), so a check plus an exponential search from ``prev`` beats a fresh binary search.
    """
    shape = thr.shape
    lo, hi, b, t = lo.reshape(-1), hi.reshape(-1), prev.reshape(-1).copy(), thr.reshape(-1)
    last = vals.size - 1
    right = np.flatnonzero((b < hi) & (vals[np.minimum(b, last)] <= t))
    left = np.flatnonzero((b > lo) & (vals[np.maximum(b - 1, 0)] > t))
    if right.size:
        # vals[b] <= t: the answer is in [b+1, hi]; gallop for an upper bound.
        br, hr, tr = b[right], hi[right], t[right]
        a_ = br + 1
        bb = hr.copy()
        todo = np.arange(right.size)
        step = 1
        while todo.size:
            cand = np.minimum(br[todo] + 2 * step, hr[todo])
            stop = (cand >= hr[todo]) | (vals[np.minimum(cand, last)] > tr[todo])
            bb[todo[stop]] = cand[stop]
            go = ~stop
            a_[todo[go]] = cand[go] + 1
            todo = todo[go]
            step *= 2
        b[right] = _bisect(vals, a_, bb, tr)
    if left.size:
        # vals[b-1] > t: the answer is in [lo, b-1]; gallop for a lower bound.
        bl, ll, tl = b[left], lo[left], t[left]
        bb = bl - 1
        a_ = ll.copy()
        todo = np.arange(left.size)
        step = 1
        while todo.size:
            cand = np.maximum(bl[todo] - 1 - step, ll[todo])
            stop = (cand <= ll[todo]) | (vals[np.maximum(cand - 1, 0)] <= tl[todo])
            a_[todo[stop]] = cand[stop]
            go = ~stop
            bb[todo[go]] = cand[go] - 1
            todo = todo[go]
            step *= 2
        b[left] = _bisect(vals, a_, bb, tl)
    return b.reshape(shape)


def _relocate_empty(
    vals: np.ndarray,
    wts: np.ndarray,
    bnd: np.ndarray,
    c_old: np.ndarray,
    c_new: np.ndarray,
    wsum: np.ndarray,
    wxsum: np.ndarray,
    empty: np.ndarray,
) -> None:
    """Re-seed the empty clusters of one row in place (see the module docstring for the rule)."""
    m = int(empty.sum())
    ne = np.flatnonzero(~empty)
    a, b = bnd[:-1][ne], bnd[1:][ne]
    # |v - c| is convex along a sorted cluster: its m farthest values are among its m first and m last.
    off = np.arange(m)
    left = a[:, None] + off[None, :]
    right = b[:, None] - 1 - off[None, :]
    ok_l, ok_r = left < b[:, None], right >= a[:, None]
    cand = np.concatenate([left[ok_l], right[ok_r]])
    cl = np.concatenate(
        [np.broadcast_to(ne[:, None], left.shape)[ok_l], np.broadcast_to(ne[:, None], right.shape)[ok_r]]
    )
    cand, first = np.unique(cand, return_index=True)
    cl = cl[first]
    d = (vals[cand] - c_old[cl]) ** 2
    order = np.lexsort((vals[cand], -d))
    left_in = bnd[1:] - bnd[:-1]  # distinct values still in each cluster
    wsum, wxsum = wsum.copy(), wxsum.copy()
    picks: list[float] = []
    touched: set[int] = set()
    for o in order.tolist():
        if d[o] <= 0 or len(picks) == m:
            break
        j, g = int(cl[o]), int(cand[o])
        if left_in[j] <= 1:  # moving its last value would just swap the cluster's label
            continue
        left_in[j] -= 1
        wsum[j] -= wts[g]
        wxsum[j] -= wts[g] * vals[g]
        touched.add(j)
        picks.append(float(vals[g]))
    for j in touched:
        c_new[j] = wxsum[j] / wsum[j]
    c_new[np.flatnonzero(empty)[: len(picks)]] = picks


def lloyd_rows(
    vals: np.ndarray,
    wts: np.ndarray,
    row_ptr: np.ndarray,
    k: int,
    *,
    init: str,
    max_iter: int,
    tol: float,
    seed: int,
) -> np.ndarray:
    """Weighted Lloyd k-means on many independent rows at once.

    ``vals`` holds, row after row, each row's distinct values in ascending order, with positive weights
    ``wts``; row ``r`` is ``vals[row_ptr[r]:row_ptr[r+1]]`` (a row may be empty). Returns sorted
    centroids [S, k]; an empty row gets zeros.
    """
    s = row_ptr.size - 1
    # prefix sums written straight into their arrays (no product/concatenate temporaries: for a
    # weight of all-distinct fp32 values each of those is 8 bytes per weight)
    cumw = np.zeros(vals.size + 1)
    np.cumsum(wts, out=cumw[1:])
    cumwx = np.zeros(vals.size + 1)
    np.multiply(wts, vals, out=cumwx[1:])
    np.cumsum(cumwx[1:], out=cumwx[1:])
    lo_all, hi_all = row_ptr[:-1], row_ptr[1:]
    dcount = hi_all - lo_all

    cent = np.zeros((s, k))
    # Rows with at most k distinct values: the values themselves, padded with the largest.
    small = np.flatnonzero((dcount > 0) & (dcount <= k))
    if small.size:
        col = np.minimum(np.arange(k)[None, :], (dcount[small] - 1)[:, None])
        cent[small] = vals[lo_all[small][:, None] + col]
    big = np.flatnonzero(dcount > k)
    if big.size == 0:
        return cent
    rng = np.random.default_rng(seed)
    cent[big] = _init_rows(init, vals, wts, cumw, row_ptr, big, k, rng)

    if tol > 0:
        n_w = cumw[hi_all[big]] - cumw[lo_all[big]]
        mean = (cumwx[hi_all[big]] - cumwx[lo_all[big]]) / n_w
        # Variance via prefix sums: only used to scale tol, so cancellation does not matter here.
        cumwx2 = np.concatenate([[0.0], np.cumsum(wts * vals * vals)])
        var = (cumwx2[hi_all[big]] - cumwx2[lo_all[big]]) / n_w - mean**2
        tol_abs = np.zeros(s)
        tol_abs[big] = tol * np.maximum(var, 0.0)
    bounds = np.zeros((s, k + 1), dtype=np.int64)
    assigned = np.zeros(s, dtype=bool)
    last = np.zeros((s, k))
    reloc = np.zeros(s, dtype=bool)  # last update re-seeded empty clusters
    active = big
    for it in range(max_iter):
        if active.size == 0:
            break
        ca = cent[active]
        ba = np.empty((active.size, k + 1), dtype=np.int64)
        ba[:, 0] = lo_all[active]
        ba[:, -1] = hi_all[active]
        if k > 1:
            thr = 0.5 * (ca[:, :-1] + ca[:, 1:])
            rlo = np.broadcast_to(ba[:, :1], thr.shape)
            rhi = np.broadcast_to(ba[:, -1:], thr.shape)
            if active.size == 1:  # one row (plain kmeans_1d): numpy's own searchsorted is cheapest
                a0, a1 = int(ba[0, 0]), int(ba[0, -1])
                ba[0, 1:-1] = a0 + np.searchsorted(vals[a0:a1], thr[0], side="right")
            elif it == 0:
                ba[:, 1:-1] = _bisect(
                    vals, rlo.reshape(-1).copy(), rhi.reshape(-1).copy(), thr.reshape(-1)
                ).reshape(thr.shape)
            else:
                ba[:, 1:-1] = _search_near(vals, rlo, rhi, bounds[active][:, 1:-1], thr)
        if it > 0:
            moving = (ba != bounds[active]).any(axis=1)
            active, ba, ca = active[moving], ba[moving], ca[moving]
            if active.size == 0:
                break
        bounds[active] = ba
        assigned[active] = True
        wc = cumw[ba[:, 1:]] - cumw[ba[:, :-1]]
        empty = ba[:, 1:] == ba[:, :-1]
        sx = cumwx[ba[:, 1:]] - cumwx[ba[:, :-1]]
        cn = np.where(empty, ca, sx / np.where(empty, 1.0, wc))
        has_empty = empty.any(axis=1)
        reloc[active] = has_empty
        for i in np.flatnonzero(has_empty).tolist():
            _relocate_empty(vals, wts, ba[i], ca[i], cn[i], wc[i], sx[i], empty[i])
        last[active] = cn  # unsorted: column j still belongs to cluster j of `bounds`
        cn.sort(axis=1)
        cent[active] = cn
        if tol > 0:
            shift = ((cn - ca) ** 2).sum(axis=1)
            active = active[shift > tol_abs[active]]

    # Final centroids: direct means of the last assignment (no prefix-sum cancellation).
    # Rows whose last update re-seeded clusters keep that update as is.
    del cumw, cumwx
    rows = np.flatnonzero(assigned & ~reloc)
    if rows.size:
        b = bounds[rows]
        nonempty = b[:, 1:] > b[:, :-1]
        # Interleave [start, end) pairs (ascending) and drop the last end: reduceat then sums
        # each [start, end) and the last start up to the end of the slice, which is its own end;
        # the odd (gap) pieces are dropped, so rows not iterated in between are never summed in.
        idx = np.stack([b[:, :-1][nonempty], b[:, 1:][nonempty]], axis=1).reshape(-1)
        end = int(idx[-1])
        sw = np.add.reduceat(wts[:end], idx[:-1])[::2]
        swx = np.add.reduceat(wts[:end] * vals[:end], idx[:-1])[::2]
        cr = last[rows]
        cr[nonempty] = swx / sw
        cr.sort(axis=1)
        cent[rows] = cr
    return cent


# --- API


def _check_common(k: int, init: str, max_iter: int, tol: float) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer number of clusters, got {k!r}")
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r}; use one of {', '.join(INITS)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ConfigError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not (float(tol) >= 0.0):
        raise ConfigError(f"tol must be >= 0 (0 = run until assignments stop changing), got {tol!r}")


def _check_weights(sample_weight: np.ndarray | None, size: int, shape: tuple[int, ...]) -> np.ndarray | None:
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.size != size or (sw.shape != shape and sw.ndim != 1):
        raise ConfigError(f"sample_weight must have one weight per element ({shape}), got shape {sw.shape}")
    sw = sw.reshape(-1)
    if not np.isfinite(sw).all() or (sw < 0).any():
        raise ConfigError("sample_weight must be finite and non-negative")
    return sw


def kmeans_1d(
    x: np.ndarray,
    k: int,
    *,
    init: str = "linear",
    sample_weight: np.ndarray | None = None,
    max_iter: int = 300,
    tol: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (weighted) Lloyd k-means of the flattened ``x``: (centroids float64 [k] ascending, labels int64 [n]).

    ``init``: ``"linear"`` (evenly spaced on [min, max], Deep Compression's best), ``"density"``
    (evenly spaced in the CDF), ``"random"`` (k distinct observations), ``"kmeans++"``.
    ``sample_weight`` (non-negative, one per element) gives weighted k-means, e.g. sensitivity-weighted
    as in SqueezeLLM; zero-weight points do not move centroids but still get a label. If every weight
    is zero the weights are ignored (plain k-means) rather than failing, because a layer whose
    calibration sensitivity is all zero still has to be quantized somehow.
    See the module docstring for ties, stopping, empty clusters and the ``<= k`` distinct values case.
    """
    _check_common(k, init, max_iter, tol)
    k = int(k)
    xa = np.asarray(x)
    if xa.dtype.kind not in "fiu" and xa.dtype.name != "bfloat16":
        raise ConfigError(f"x must be a real numeric array, got dtype {xa.dtype}")
    shape = xa.shape
    flat = xa.reshape(-1)
    if flat.size == 0:
        raise ConfigError("kmeans_1d of an empty array is undefined; skip empty tensors")
    sw = _check_weights(sample_weight, flat.size, shape)
    x64 = flat.astype(np.float64) + 0.0  # +0.0 folds -0.0 into +0.0
    if not np.isfinite(x64).all():
        raise ConfigError("x contains NaN or Inf; k-means needs finite values -- fix the weights first")
    if sw is not None and not (sw > 0).any():
        sw = None

    if sw is None:
        # sort and find the distinct values in the narrow type when there is one (float32/16 compare
        # exactly as their float64 images do, -0.0 == +0.0 included): half the memory traffic
        xs = np.sort(flat) if flat.dtype in (np.float32, np.float16) else np.sort(x64)
        new_value = np.empty(xs.size, dtype=bool)
        new_value[0] = True
        np.not_equal(xs[1:], xs[:-1], out=new_value[1:])
        starts = np.flatnonzero(new_value)
        del new_value
        vals = xs[starts].astype(np.float64) + 0.0
        wts = np.empty(starts.size, dtype=np.float64)  # run lengths, written straight as float64
        np.subtract(starts[1:], starts[:-1], out=wts[:-1])
        wts[-1] = xs.size - starts[-1]
        del xs
    else:
        pos = sw > 0
        xv, wv = x64[pos], sw[pos]
        order = np.argsort(xv, kind="stable")
        xs, ws = xv[order], wv[order]
        starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
        vals = xs[starts]
        wts = np.add.reduceat(ws, starts)

    row_ptr = np.array([0, vals.size], dtype=np.int64)
    cent = lloyd_rows(
        vals,
        wts,
        row_ptr,
        k,
        init=init,
        max_iter=int(max_iter),
        tol=float(tol),
        seed=seed,
    )[0]
    labels = _nearest(cent, x64)
    return cent, labels


def _nearest(cent: np.ndarray, x64: np.ndarray) -> np.ndarray:
    """Nearest sorted centroid, ties to the lower index; duplicates are never chosen past the first."""
    k = cent.size
    if k == 1:
        return np.zeros(x64.size, dtype=np.int64)
    distinct = np.concatenate([[True], cent[1:] != cent[:-1]])
    first = np.flatnonzero(distinct)
    u = cent[first]
    mids = 0.5 * (u[:-1] + u[1:])
    return first[np.searchsorted(mids, x64, side="left")].astype(np.int64)


def kmeans_sse(
    x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """(Weighted) sum of squared errors of a clustering, accumulated in float64."""
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    c = np.asarray(centroids, dtype=np.float64)
    lab = np.asarray(labels).reshape(-1)
    if lab.size != x64.size:
        raise ConfigError(f"labels has {lab.size} entries but x has {x64.size}")
    err = (x64 - c[lab]) ** 2
    if sample_weight is None:
        return float(err.sum())
    return float(np.dot(err, np.asarray(sample_weight, dtype=np.float64).reshape(-1)))
