"""ONNX function bodies of the decode operators, built from standard ops for a given opset.

Each operator's file gives a ``body(b)`` that calls the building blocks of :class:`Body`;
:func:`build_function` wraps the nodes into the operator's ``FunctionProto`` with the inputs and
attributes of its :class:`~onnxcompress.ops.spec.OpSpec`. Everything runs on int32 tensors with
Div/Mod/Gather, so the bodies are valid from opset 12 up (integer Pow and Min arrive in 12;
Constant's ``value_int`` too). The unpack exploits the stream's group structure: 8 codes of ``k``
bits fill ``k`` bytes, so code ``c`` of a group starts at byte ``c*k div 8``, bit ``c*k mod 8``
and spans at most two bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.ops.registry import HELPERS, get_op
from onnxcompress.ops.spec import DOMAIN, MIN_OPSET, VERSION, OpSpec


class Body:
    """Tiny builder of one operator's body: each call appends a node and returns its (auto-named)
    output. ``spec`` says which attributes hold each stream's width and count (:meth:`read_codes`)."""

    def __init__(
        self, spec: OpSpec, opset: int = 17, widths: dict[str, int] | None = None, single_segment: bool = False
    ) -> None:
        self.spec = spec
        self.opset = opset
        # stream-width attributes whose value every node of this model shares (e.g. bits 8)
        self.widths = dict(widths or {})
        # every node of this operator in the model has one segment: no per-position segment lookup
        self.single_segment = single_segment
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._memo: dict[tuple[Any, ...], str] = {}

    def _fresh(self) -> str:
        """Short internal names: the body is stored once per model, and small models notice."""
        self._n += 1
        return f"_{self._n}"

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        out = name or self._fresh()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value: Any, dtype: Any = np.int32) -> str:
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
        """``x`` cast to the calling node's output type (its ``to`` attribute)."""
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

    def size(self) -> str:
        """The ``size`` attribute as a 1-D shape (every decode operator's output length)."""
        if ("size",) not in self._memo:
            self._memo[("size",)] = self.vec1(self.attr_int("size"))
        return self._memo[("size",)]

    def call_unpack(self, stream: str, bits: str | int, count_attr: str) -> str:
        """uint8 [count] codes of a bit-packed stream through the ``Unpack`` helper function
        (``bits``: the caller's attribute holding the width, or a fixed width); the caller's
        attributes are passed by reference."""
        out = self._fresh()
        node = helper.make_node("Unpack", [stream], [out], domain=DOMAIN)
        for name, ref in (("bits", bits), ("count", count_attr)):
            if isinstance(ref, int):
                node.attribute.append(helper.make_attribute(name, ref))
                continue
            a = onnx.AttributeProto()
            a.name, a.ref_attr_name, a.type = name, ref, onnx.AttributeProto.INT
            node.attribute.append(a)
        self.nodes.append(node)
        return out

    def unpack(self, stream: str, bits_attr: str | int, count_attr: str) -> str:
        """uint8 [count] codes of a bit-packed stream (``bits_attr``: attribute name or a fixed
        width): the body of ``Unpack``.

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
        bits64 = self.const(bits_attr, np.int64) if isinstance(bits_attr, int) else self.attr_int(bits_attr)
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

    def read_codes(self, input_name: str) -> str:
        """int32 [count] codes of the stream input ``input_name``, with the width and count its
        :class:`~onnxcompress.ops.spec.Input` declares."""
        inp = self.spec.input(input_name)
        if inp.bits is None or inp.count is None:
            raise ValueError(f"{self.spec.name}: input {input_name!r} is not a bit-packed stream")
        width = inp.bits if isinstance(inp.bits, int) else self.widths.get(inp.bits)
        if width == 8:  # 8-bit codes are the stream's bytes: no unpacking, no Unpack function
            codes = self.op("Slice", input_name, self.const([0], np.int64), self.vec1(self.attr_int(inp.count)))
        else:
            codes = self.call_unpack(input_name, inp.bits, inp.count)
        return self.op("Cast", codes, to=TensorProto.INT32)

    def segment_offsets(self, segments: str, bits_attr: str) -> str | None:
        """int32 [size]: seg(p) * 2^bits, the offset of each position's codebook row in the flat
        codebook (a CumSum of 2^bits scattered at the segment boundaries); None with one segment,
        where every offset is 0 (16 bytes per position that onnxruntime would hold while folding)."""
        if self.single_segment:
            return None
        k = self.op("Pow", self.const(2), self.op("Cast", self.attr_int(bits_attr), to=TensorProto.INT32))
        interior = self.op("Slice", segments, self.const([1], np.int64), self.const([-1], np.int64))
        ks = self.op("Expand", k, self.op("Shape", interior))
        zeros = self.op("ConstantOfShape", self.size(), value=numpy_helper.from_array(np.array([0], np.int32)))
        marks = self.op("ScatterElements", zeros, interior, ks, axis=0)
        return self.op("CumSum", marks, self.const(0))

    def segment_ids(self, segments: str) -> str | None:
        """int32 [size]: seg(p), a CumSum of ones scattered at the interior segment bounds; None
        with one segment (every id is 0)."""
        if self.single_segment:
            return None
        interior = self.op("Slice", segments, self.const([1], np.int64), self.const([-1], np.int64))
        ones = self.op("Expand", self.const(1), self.op("Shape", interior))
        zeros = self.op("ConstantOfShape", self.size(), value=numpy_helper.from_array(np.array([0], np.int32)))
        return self.op("CumSum", self.op("ScatterElements", zeros, interior, ones, axis=0), self.const(0))

    def scaled_lookup(self, codebook: str, scales: str, seg: str | None, codes: str) -> str:
        """``to(float32(codebook[code]) * float32(scales[seg]))``: one product per position (with
        ``seg`` None, the one scale broadcast: the same float32 product)."""
        f32 = TensorProto.FLOAT
        table = self.op("Cast", self.op("Reshape", codebook, self.const([-1], np.int64)), to=f32)
        values = self.op("Gather", table, codes, axis=0)
        scale = self.op("Cast", scales, to=f32)
        per_position = scale if seg is None else self.op("Gather", scale, seg, axis=0)
        return self.cast_to(self.op("Mul", values, per_position))

    def lookup(self, codebook: str, offsets: str | None, codes: str) -> str:
        """codebook[offset + code] (``offsets`` None: codebook[code]), cast to ``to`` before the
        gather (the codebook is small)."""
        flat_cb = self.cast_to(self.op("Reshape", codebook, self.const([-1], np.int64)))
        index = codes if offsets is None else self.op("Add", offsets, codes)
        return self.op("Gather", flat_cb, index, axis=0)

    def zeros(self, size: str) -> str:
        """``size`` zeros of the output type."""
        return self.cast_to(
            self.op("ConstantOfShape", size, value=numpy_helper.from_array(np.array([0], np.float32)))
        )

    def scatter(self, size: str, positions: str, values: str) -> str:
        return self.op("ScatterElements", self.zeros(size), positions, values, axis=0)

    def kept_or_zero(self, keep: str, stored: str, rank: str, zero: str) -> str:
        """``stored[rank]`` where ``keep``, else ``zero``: one entry per position or per relative
        entry, gathered from the kept-only stream ``stored``."""
        return self.op("Where", keep, self.op("Gather", stored, rank, axis=0), zero)

    def kept_index(self, keep: str, rank: str) -> str:
        """int32 ``rank + 1`` where ``keep``, else 0: indices into :meth:`gather_values`' table."""
        return self.op("Where", keep, self.op("Add", rank, self.const(1)), self.const(0))

    def gather_values(self, index: str) -> str:
        """``[0, values...][index]`` in the output type. Float values are only cast and moved
        (Concat, Gather), never selected with ``Where``: onnxruntime 1.32's CPU provider has no
        bfloat16 ``Where`` (nor ``ScatterElements``), and moving bits is exact for every type."""
        table = self.op("Concat", self.cast_to(self.const([0.0], np.float32)), self.cast_to("values"), axis=0)
        return self.op("Gather", table, index, axis=0)

    def relative_entries(self) -> tuple[str, str, str]:
        """(positions, is_kept, rank) of every relative-index entry. A gap of 2^gap_bits - 1 is a
        filler: it advances by that much and takes no code; rank indexes the kept-only stream."""
        gaps = self.read_codes("gaps")
        gap_bits = self.spec.input("gaps").bits
        assert isinstance(gap_bits, str)
        filler = self.op(
            "Sub",
            self.op("Pow", self.const(2), self.op("Cast", self.attr_int(gap_bits), to=TensorProto.INT32)),
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
        mask = self.read_codes("mask")
        rank = self.op(
            "Max", self.op("Sub", self.op("CumSum", mask, self.const(0)), self.const(1)), self.const(0)
        )
        return self.op("Cast", mask, to=TensorProto.BOOL), rank


def build_function(
    op_type: str, opset: int, widths: dict[str, int] | None = None, single_segment: bool = False
) -> onnx.FunctionProto:
    """The FunctionProto of one decode operator for a model whose default-domain opset is ``opset``.

    ``widths``: stream-width attributes (``bits``, ``gap_bits``) that every node of this operator
    in the model sets to the same value; an 8-bit stream is then read as plain bytes (a Slice)
    instead of through ``Unpack``. ``single_segment``: every node of this operator in the model
    has one segment (``segments`` is ``[0, size]``), so the body skips the per-position segment
    lookup. Either way the body stays valid for that model only, which is the only model it is
    stored in."""
    if opset < MIN_OPSET:
        raise ValueError(f"decode functions need opset >= {MIN_OPSET}, got {opset}")
    spec = get_op(op_type)
    b = Body(spec, opset, widths, single_segment)
    b.nodes.append(helper.make_node("Identity", [spec.body(b)], ["Y"]))
    return helper.make_function(
        DOMAIN,
        spec.name,
        list(spec.input_names),
        ["Y"],
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
        attributes=list(spec.attributes),
    )


def functions_for(
    op_types: Iterable[str],
    opset: int,
    widths: Mapping[str, dict[str, int]] | None = None,
    single_segment: Iterable[str] = (),
) -> list[onnx.FunctionProto]:
    """Function protos a model using ``op_types`` needs (the helpers they call included, listed
    first: evaluators resolve callees in order). ``widths[op]`` and ``op in single_segment``: see
    :func:`build_function`."""
    widths = widths or {}
    single = set(single_segment)
    ops = sorted(set(op_types) - set(HELPERS))
    bodies = [build_function(op, opset, widths.get(op), op in single) for op in ops]
    called = {(n.domain, n.op_type) for f in bodies for n in f.node}
    helpers = [build_function(h, opset) for h in HELPERS if (DOMAIN, h) in called]
    return helpers + bodies
