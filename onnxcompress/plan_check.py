"""Check a compression plan against a model's inventory before compressing: what would be silent.

Why: a plan is matched against names and op types by string, so a typo (``op_types: {Cnov: ...}``),
a name pattern from another export (``names: {"fc1.weight": ...}`` where the exporter wrote
``onnx::MatMul_12``) or a stale ``--exclude`` glob simply matches nothing, and the user gets the
default setting without a word. ``pruning: global`` computes *one* magnitude threshold for every
weight that uses it; the plan takes weights with their own ``sparsity`` override out of that pool
(:meth:`~onnxcompress.config.CompressionConfig.resolve`), and the check here verifies that none is
left behind. Findings are returned as data; the caller (``compress``, ``inspect``) prints them.

Pure: it reads a :class:`~onnxcompress.config.CompressionConfig` and an
:class:`~onnxcompress.inventory.Inventory`, nothing else (no onnx, no onnxruntime).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from onnxcompress.config import CompressionConfig, WeightConfig
from onnxcompress.inventory import Inventory, WeightInfo

#: kinds of :class:`PlanIssue`
UNMATCHED = "unmatched"  # the pattern matches no tensor of the model
NO_EFFECT = "no-effect"  # it matches only tensors that are left alone anyway (biases, small, ...)
GLOBAL_PRUNING = "global-pruning-override"  # sparsity overrides under one global threshold


@dataclass(frozen=True)
class PlanIssue:
    """One thing in the plan that would not do what it says.

    ``section`` is ``op_types``, ``names``, ``exclude`` or ``weight``; ``key`` the op type, name
    pattern or glob (``pruning`` for the global-pruning conflict); ``weights`` the tensors
    concerned (for a conflict: the weights whose own sparsity would be ignored)."""

    kind: str
    section: str
    key: str
    message: str
    weights: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.message


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(set(candidates)), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or fnmatch.fnmatchcase(name, pattern)


def _reasons(ws: list[WeightInfo]) -> str:
    reasons = sorted({w.skip_reason or "" for w in ws})
    return "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")


def unmatched_patterns(
    config: CompressionConfig, inventory: Inventory, *, base: CompressionConfig | None = None
) -> list[PlanIssue]:
    """``op_types`` keys, ``names`` patterns and ``exclude`` globs that match no tensor, or only
    tensors the inventory leaves alone (where the override changes nothing).

    ``base``: the preset the plan started from; entries it holds unchanged are not reported (the
    ``balanced`` preset's ``Gather`` override on a CNN is not the user's doing)."""
    issues: list[PlanIssue] = []
    base_ops = base.op_types if base is not None else {}
    base_names = base.names if base is not None else {}
    base_exclude = set(base.exclude) if base is not None else set()
    weights = inventory.weights
    all_ops = {op for w in weights for op in w.op_types}
    all_names = [w.name for w in weights]

    for op in config.op_types:
        if op in base_ops and base_ops[op] == config.op_types[op]:
            continue
        hit = [w for w in weights if op in w.op_types]
        if not hit:
            issues.append(
                PlanIssue(
                    UNMATCHED, "op_types", op,
                    f"op_types: {op!r} matches no operator of the model{_suggest(op, all_ops)}; "
                    f"its weights are consumed by {', '.join(sorted(all_ops)) or 'no operator'}",
                )
            )  # fmt: skip
        elif not any(w.compressible for w in hit):
            issues.append(
                PlanIssue(
                    NO_EFFECT, "op_types", op,
                    f"op_types: {op!r} matches only tensors left alone ({_reasons(hit)}); the override changes nothing",
                    tuple(w.name for w in hit),
                )
            )  # fmt: skip

    for section, patterns in (("names", list(config.names)), ("exclude", list(config.exclude))):
        where = "names" if section == "names" else "exclude (--exclude or the plan's exclude)"
        for pat in patterns:
            if section == "names" and pat in base_names and base_names[pat] == config.names[pat]:
                continue
            if section == "exclude" and pat in base_exclude:
                continue
            hit = [w for w in weights if _matches(pat, w.name)]
            if not hit:
                issues.append(
                    PlanIssue(
                        UNMATCHED, section, pat,
                        f"{where}: {pat!r} matches no tensor of the model{_suggest(pat, all_names)}; "
                        "`onnxcompress inspect MODEL` lists the names",
                    )
                )  # fmt: skip
            elif not any(w.compressible for w in hit):
                issues.append(
                    PlanIssue(
                        NO_EFFECT, section, pat,
                        f"{where}: {pat!r} matches only tensors left alone ({_reasons(hit)}); it changes nothing",
                        tuple(w.name for w in hit),
                    )
                )  # fmt: skip
    return issues


def _override_keys(config: CompressionConfig, w: WeightInfo, field: str) -> list[str]:
    """The plan entries that set ``field`` for weight ``w`` (op type first, then name)."""
    keys: list[str] = []
    for op in w.op_types:
        ov = config.op_types.get(op, {})
        if op in config.op_types:
            if ov is not None and field in ov:
                keys.append(f"op_types.{op}")
            break  # resolve() applies the first matching op type only
    pat = next((p for p in config.names if p == w.name), None) or next(
        (p for p in config.names if fnmatch.fnmatchcase(w.name, p)), None
    )
    if pat is not None and (config.names[pat] or {}).get(field) is not None:
        keys.append(f"names.{pat}")
    return keys


def global_pruning_conflicts(config: CompressionConfig, inventory: Inventory) -> list[PlanIssue]:
    """Weights under ``pruning: global`` whose resolved ``sparsity`` differs from the one the
    shared threshold is computed from (the largest among them): their override is not honoured.

    Since :meth:`CompressionConfig.resolve` takes a weight with its own ``sparsity`` override out
    of the global pool (magnitude pruning at that sparsity), every weight left in the pool has the
    plan's sparsity and this finds nothing; it stays as the check of that invariant.

    Returns at most one issue, naming the overrides responsible and the weights affected; empty
    when every global-pruned weight asks for the same sparsity."""
    resolved: list[tuple[WeightInfo, WeightConfig]] = []
    for w in inventory.compressible():
        cfg = config.resolve(w.name, w.op_types)
        if cfg is not None and cfg.prunes and cfg.pruning == "global":
            resolved.append((w, cfg))
    sparsities = {cfg.sparsity for _, cfg in resolved}
    if len(sparsities) <= 1:
        return []
    used = max(sparsities)
    ignored = [(w, cfg) for w, cfg in resolved if cfg.sparsity != used]
    keys = sorted({k for w, _ in resolved for k in _override_keys(config, w, "sparsity")})
    wanted = ", ".join(f"{w.name}: {cfg.sparsity:g}" for w, cfg in ignored[:4])
    more = f" and {len(ignored) - 4} more" if len(ignored) > 4 else ""
    return [
        PlanIssue(
            GLOBAL_PRUNING,
            "weight",
            "pruning",
            f"pruning: global uses one threshold for {len(resolved)} weights, computed at the largest "
            f"sparsity ({used:g}); the sparsity set by {', '.join(keys) or 'the overrides'} is not honoured "
            f"({wanted}{more}). Give those weights pruning: magnitude to prune each at its own sparsity, "
            "or drop the overrides",
            tuple(w.name for w, _ in ignored),
        )
    ]


def check_plan(
    config: CompressionConfig, inventory: Inventory, *, base: CompressionConfig | None = None
) -> list[PlanIssue]:
    """Every issue of ``config`` on this model: unmatched or ineffective patterns (not those
    inherited unchanged from ``base``, the preset), then the global-pruning conflict. Empty when
    the plan does what it says.

    ``inventory`` must be built with ``config.min_elements`` (compress's own inventory)."""
    return unmatched_patterns(config, inventory, base=base) + global_pruning_conflicts(config, inventory)
