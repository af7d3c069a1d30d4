"""ONNX function bodies of the decode operators, built from standard ops for a given opset.

Everything runs on int32 tensors with Div/Mod/Gather, so the bodies are valid from opset 12 up
(integer Pow and Min arrive in 12; Constant's ``value_int`` too). The unpack exploits the stream's
group structure: 8 codes of ``k`` bits fill ``k`` bytes, so code ``c`` of a group starts at byte
``c*k div 8``, bit ``c*k mod 8`` and spans at most two bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.ops import DOMAIN, MIN_OPSET

INPUTS = {
    "CodebookDense": ["codes", "codebook", "segments"],
    "CodebookRelative": ["codes", "gaps", "codebook", "segments"],
    "CodebookMask": ["codes", "mask", "codebook", "segments"],
    "SparseRelative": ["values", "gaps"],
    "SparseMask": ["values", "mask"],
    "Unpack": ["stream"],
}
ATTRIBUTES = {
    "CodebookDense": ["bits", "size", "to"],
    "CodebookRelative": ["bits", "gap_bits", "entries", "kept", "size", "to"],
    "CodebookMask": ["bits", "entries", "size", "to"],
    "SparseRelative": ["gap_bits", "entries", "kept", "size", "to"],
    "SparseMask": ["entries", "size", "to"],
    "Unpack": ["bits", "count"],
}
#: the helper every decode body calls to read a bit-packed stream (one body per model, not one per use)
HELPERS = ("Unpack",)


class _Body:
    """Tiny builder: each call appends a node and returns its (auto-named) output."""

    def __init__(self, opset: int = 17) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._memo: dict[tuple, str] = {}

    def _fresh(self) -> str:
        """Short internal names: the body is stored once per model, and small models notice."""
        self._n += 1
        return f"_{self._n}"

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs) -> str:
        out = name or self._fresh()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=np.int32) -> str:
        arr = np.array(value, dtype=dtype)
        key = ("const", arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._memo:
            self._memo[key] = self.op("Constant", value=numpy_helper.from_array(arr))
        return self._memo[key]

    def attr_int(self, attr: str) -> str:
        """int64 scalar holding the calling node's integer attribute ``attr``."""
        if ("attr", attr) in self._memo:
            return self._memo[("attr", attr)]
        out = self._memo[("attr", attr)] = self._fresh()
        node = helper.make_node("Constant", [], [out])
        a = onnx.AttributeProto()
        a.name = "value_int"
        a.ref_attr_name = attr
        a.type = onnx.AttributeProto.INT
        node.attribute.append(a)
        self.nodes.append(node)
        return out

    def cast_to(self, x: str) -> str:
        out = self._fresh()
        node = helper.make_node("Cast", [x], [out])
        a = onnx.AttributeProto()
        a.name = "to"
        a.ref_attr_name = "to"
        a.type = onnx.AttributeProto.INT
        node.attribute.append(a)
        self.nodes.append(node)
        return out

    def vec1(self, scalar: str) -> str:
        """Scalar -> 1-D tensor of one element (Reshape works at every opset, Unsqueeze does not)."""
        return self.op("Reshape", scalar, self.const([1], np.int64))

    def call_unpack(self, stream: str, bits_attr: str | None, count_attr: str) -> str:
        """uint8 [count] codes of a bit-packed stream through the ``Unpack`` helper function
        (``bits_attr`` None means a 1-bit stream); the caller's attributes are passed by reference."""
        out = self._fresh()
        node = helper.make_node("Unpack", [stream], [out], domain=DOMAIN)
        for name, ref in (("bits", bits_attr), ("count", count_attr)):
            if ref is None:
                node.attribute.append(helper.make_attribute(name, 1))
                continue
            a = onnx.AttributeProto()
            a.name, a.ref_attr_name, a.type = name, ref, onnx.AttributeProto.INT
            node.attribute.append(a)
        self.nodes.append(node)
        return out

    def unpack(self, stream: str, bits_attr: str | None, count_attr: str) -> str:
        """uint8 [count] codes of a bit-packed stream (``bits_attr`` None means a 1-bit stream): the
        body of ``Unpack``.

        8 codes of k bits fill k bytes, so code c of a group starts at byte c*k div 8, bit
        s = c*k mod 8, and reaches into the next byte only when s + k > 8. Everything runs on
        uint8 (onnxruntime holds every folded intermediate until folding ends, so each full-size
        temporary costs a byte per weight rather than four): low = byte >> s; the spill-over
        byte (or a zero column when there is none) << (8 - s); their bits are disjoint, so Add
        combines them; masking to k bits is a left then a right shift by 8 - k. No shift ever
        reaches 8. It is a function of its own because Relative and Mask bodies read two streams
        and a model holds several decode ops: one copy of these ~30 nodes per model, not per use
        (onnx's ReferenceEvaluator and onnxruntime both run nested model-local functions).
        """
        bits64 = self.const(1, np.int64) if bits_attr is None else self.attr_int(bits_attr)
        count = self.vec1(self.attr_int(count_attr))
        bits = self.op("Cast", bits64, to=TensorProto.INT32)
        grouped = self.op(
            "Reshape", stream, self.op("Concat", self.const([-1], np.int64), self.vec1(bits64), axis=0)
        )
        rows = self.op(
            "Slice", self.op("Shape", grouped), self.const([0], np.int64), self.const([1], np.int64)
        )
        zero_col = self.op(
            "ConstantOfShape",
            self.op("Concat", rows, self.const([1], np.int64), axis=0),
            value=numpy_helper.from_array(np.array([0], np.uint8)),
        )
        padded = self.op("Concat", grouped, zero_col, axis=1)  # column `bits` is all zeros
        eight = self.const(8)
        bitpos = self.op("Mul", self.op("Range", self.const(0), eight, self.const(1)), bits)
        lo = self.op("Div", bitpos, eight)
        s = self.op("Mod", bitpos, eight)
        spans = self.op("Greater", self.op("Add", s, bits), eight)
        hi = self.op("Where", spans, self.op("Add", lo, self.const(1)), bits)
        up = self.op("Mod", self.op("Sub", eight, s), eight)
        u8 = TensorProto.UINT8
        low = self.op(
            "BitShift", self.op("Gather", padded, lo, axis=1), self.op("Cast", s, to=u8), direction="RIGHT"
        )
        high = self.op(
            "BitShift", self.op("Gather", padded, hi, axis=1), self.op("Cast", up, to=u8), direction="LEFT"
        )
        drop = self.op("Cast", self.op("Sub", eight, bits), to=u8)
        if self.opset >= 14:
            both = self.op("Add", low, high)
        else:  # Add accepts uint8 from opset 14 on: combine in int32 below that
            i32 = TensorProto.INT32
            both = self.op(
                "Cast", self.op("Add", self.op("Cast", low, to=i32), self.op("Cast", high, to=i32)), to=u8
            )
        masked = self.op(
            "BitShift", self.op("BitShift", both, drop, direction="LEFT"), drop, direction="RIGHT"
        )
        flat = self.op("Reshape", masked, self.const([-1], np.int64))
        return self.op("Slice", flat, self.const([0], np.int64), count)

    def codes_int32(self, stream: str, bits_attr: str | None, count_attr: str) -> str:
        return self.op("Cast", self.call_unpack(stream, bits_attr, count_attr), to=TensorProto.INT32)

    def segment_offsets(self, segments: str, size: str, bits_attr: str) -> str:
        """int32 [size]: seg(p) * 2^bits, the offset of each position's codebook row in the flat
        codebook (a CumSum of 2^bits scattered at the segment boundaries)."""
        k = self.op("Pow", self.const(2), self.op("Cast", self.attr_int(bits_attr), to=TensorProto.INT32))
        interior = self.op("Slice", segments, self.const([1], np.int64), self.const([-1], np.int64))
        ks = self.op("Expand", k, self.op("Shape", interior))
        zeros = self.op("ConstantOfShape", size, value=numpy_helper.from_array(np.array([0], np.int32)))
        marks = self.op("ScatterElements", zeros, interior, ks, axis=0)
        return self.op("CumSum", marks, self.const(0))

    def lookup(self, codebook: str, offsets: str, codes: str) -> str:
        """codebook[offset + code], cast to ``to`` before the gather (the codebook is small)."""
        flat_cb = self.cast_to(self.op("Reshape", codebook, self.const([-1], np.int64)))
        return self.op("Gather", flat_cb, self.op("Add", offsets, codes), axis=0)

    def scatter(self, size: str, positions: str, values: str) -> str:
        zeros = self.cast_to(
            self.op("ConstantOfShape", size, value=numpy_helper.from_array(np.array([0], np.float32)))
        )
        return self.op("ScatterElements", zeros, positions, values, axis=0)

    def relative_entries(self) -> tuple[str, str, str]:
        """(positions, is_kept, rank) of every relative-index entry. A gap of 2^gap_bits - 1 is a
        filler: it advances by that much and takes no code; rank indexes the kept-only stream."""
        gaps = self.codes_int32("gaps", "gap_bits", "entries")
        filler = self.op(
            "Sub",
            self.op("Pow", self.const(2), self.op("Cast", self.attr_int("gap_bits"), to=TensorProto.INT32)),
            self.const(1),
        )
        real = self.op("Cast", self.op("Not", self.op("Equal", gaps, filler)), to=TensorProto.INT32)
        pos = self.op("Sub", self.op("CumSum", self.op("Add", gaps, real), self.const(0)), self.const(1))
        rank = self.op(
            "Max", self.op("Sub", self.op("CumSum", real, self.const(0)), self.const(1)), self.const(0)
        )
        return pos, self.op("Cast", real, to=TensorProto.BOOL), rank

    def mask_rank(self) -> tuple[str, str]:
        """(keep, rank): keep[p] is the mask bit as bool, rank[p] the index of p among the kept
        positions (clamped at 0). onnxruntime does not constant-fold NonZero, so positions are
        never materialised: every output position gathers its own entry instead."""
        mask = self.codes_int32("mask", None, "size")
        rank = self.op(
            "Max", self.op("Sub", self.op("CumSum", mask, self.const(0)), self.const(1)), self.const(0)
        )
        return self.op("Cast", mask, to=TensorProto.BOOL), rank


def build_function(op_type: str, opset: int) -> onnx.FunctionProto:
    """The FunctionProto of one decode operator for a model whose default-domain opset is ``opset``."""
    if opset < MIN_OPSET:
        raise ValueError(f"decode functions need opset >= {MIN_OPSET}, got {opset}")
    b = _Body(opset)
    if op_type == "Unpack":
        b.nodes.append(helper.make_node("Identity", [b.unpack("stream", "bits", "count")], ["Y"]))
        return _function(op_type, b, opset)
    size = b.vec1(b.attr_int("size"))
    if op_type == "CodebookDense":
        codes = b.codes_int32("codes", "bits", "size")
        out = b.lookup("codebook", b.segment_offsets("segments", size, "bits"), codes)
    elif op_type in ("CodebookMask", "SparseMask"):
        keep, rank = b.mask_rank()
        if op_type == "CodebookMask":
            # pruned positions take code 0, which is exactly zero in every row of a pruned codebook
            kept_codes = b.codes_int32("codes", "bits", "entries")
            codes = b.op("Where", keep, b.op("Gather", kept_codes, rank, axis=0), b.const(0))
            out = b.lookup("codebook", b.segment_offsets("segments", size, "bits"), codes)
        else:
            zeros = b.cast_to(
                b.op("ConstantOfShape", size, value=numpy_helper.from_array(np.array([0], np.float32)))
            )
            out = b.op("Where", keep, b.op("Gather", b.cast_to("values"), rank, axis=0), zeros)
    elif op_type in ("CodebookRelative", "SparseRelative"):
        pos, real, rank = b.relative_entries()
        if op_type == "CodebookRelative":
            # fillers take code 0, exactly zero in every row, and land on pruned positions
            kept_codes = b.codes_int32("codes", "bits", "kept")
            codes = b.op("Where", real, b.op("Gather", kept_codes, rank, axis=0), b.const(0))
            offsets = b.op("Gather", b.segment_offsets("segments", size, "bits"), pos, axis=0)
            values = b.lookup("codebook", offsets, codes)
        else:
            zero = b.cast_to(b.const([0.0], np.float32))
            values = b.op("Where", real, b.op("Gather", b.cast_to("values"), rank, axis=0), zero)
        out = b.scatter(size, pos, values)
    else:
        raise ValueError(f"unknown decode operator {op_type!r}")
    b.nodes.append(helper.make_node("Identity", [out], ["Y"]))
    return _function(op_type, b, opset)


def _function(op_type: str, b: _Body, opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN,
        op_type,
        INPUTS[op_type],
        ["Y"],
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
        attributes=ATTRIBUTES[op_type],
    )


def functions_for(op_types: Iterable[str], opset: int) -> list[onnx.FunctionProto]:
    """Function protos a model using ``op_types`` needs (the ``Unpack`` helper they call included)."""
    ops = sorted(set(op_types) - set(HELPERS))
    helpers = list(HELPERS) if ops else []  # listed first: evaluators resolve callees in order
    return [build_function(op, opset) for op in helpers + ops]
