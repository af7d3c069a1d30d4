"""What a decode operator is: its inputs, attributes, numpy reference and function body.

One :class:`OpSpec` per operator, defined in that operator's own file and listed once in
:mod:`onnxcompress.ops.registry`. Everything else reads the spec: the encoder names the node's
inputs from :attr:`OpSpec.inputs`, the container learns which inputs are bit-packed streams (and
their widths and code counts) from :class:`Input`, :mod:`onnxcompress.passes.host_decode` runs
:attr:`OpSpec.reference`, and :mod:`onnxcompress.ops.functions` turns :attr:`OpSpec.body` into the
model-local ``FunctionProto``.

No onnx import here (nor in the operator files): the container reads the table without paying
for onnx; only building function bodies needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body

DOMAIN = "ai.onnxcompress"
"""The operator domain of every decode node and decode function (docs/format.md, part 1)."""
VERSION = 1
"""The version of :data:`DOMAIN` a compressed model imports."""
MIN_OPSET = 12
"""The lowest default-domain opset the function bodies are valid for."""

InputKind = Literal["stream", "float", "int"]


@dataclass(frozen=True)
class Input:
    """One operator input, by position.

    ``kind`` is ``stream`` (a uint8 bit-packed stream, docs/format.md "Bit-packed stream"),
    ``float`` (codebook rows or raw values, any float type) or ``int`` (int32 segment bounds).
    For a stream, ``bits`` is the attribute holding its code width (or the fixed width itself, 1
    for masks) and ``count`` the attribute holding how many codes it declares: the function body
    unpacks exactly that many, and the container codes them as symbols.
    """

    name: str
    kind: InputKind
    bits: str | int | None = None
    count: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "stream") != (self.bits is not None and self.count is not None):
            raise ValueError(f"input {self.name!r}: a stream needs bits and count, other inputs neither")

    def stream_shape(self, attrs: dict[str, int]) -> tuple[int, int]:
        """``(bits, count)`` of this stream on a node with attributes ``attrs`` (KeyError if absent)."""
        if self.kind != "stream" or self.bits is None or self.count is None:
            raise ValueError(f"input {self.name!r} is not a bit-packed stream")
        bits = self.bits if isinstance(self.bits, int) else int(attrs[self.bits])
        return bits, int(attrs[self.count])


def stream(name: str, *, bits: str | int, count: str) -> Input:
    """A bit-packed stream input of ``bits`` (attribute name or fixed width) and ``count`` codes."""
    return Input(name, "stream", bits, count)


def floats(name: str) -> Input:
    return Input(name, "float")


def ints(name: str) -> Input:
    return Input(name, "int")


@dataclass(frozen=True)
class OpSpec:
    """One decode operator of domain :data:`DOMAIN`.

    ``reference(*inputs, **attributes)`` is the exact numpy semantics (positional inputs in
    :attr:`inputs` order, attributes as keywords, output dtype from ``to``); onnxruntime's folding
    of the function body must equal it bit for bit. ``body(b)`` appends the body's nodes to the
    builder ``b`` (see :class:`onnxcompress.ops.functions.Body`) and returns the name of the output.
    ``kept`` names the attribute that counts the weights a sparse operator stores and
    ``positions`` the stream that says where they go (both None for dense operators, which store
    every position). A ``helper`` is called from other bodies, never placed in a graph by us.
    """

    name: str
    inputs: tuple[Input, ...]
    attributes: tuple[str, ...]
    reference: Callable[..., np.ndarray]
    body: Callable[[Body], str]
    kept: str | None = None
    positions: str | None = None
    helper: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        names = self.input_names
        for inp in self.inputs:
            for ref in (inp.bits, inp.count):
                if isinstance(ref, str) and ref not in self.attributes:
                    raise ValueError(f"{self.name}: input {inp.name!r} refers to unknown attribute {ref!r}")
        if self.kept is not None and self.kept not in self.attributes:
            raise ValueError(f"{self.name}: kept attribute {self.kept!r} is not an attribute")
        if self.positions is not None and self.positions not in names:
            raise ValueError(f"{self.name}: positions input {self.positions!r} is not an input")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def input(self, name: str) -> Input:
        for inp in self.inputs:
            if inp.name == name:
                return inp
        raise KeyError(f"{self.name} has no input {name!r}")

    @property
    def streams(self) -> tuple[Input, ...]:
        """The bit-packed inputs (codes, gaps, mask)."""
        return tuple(i for i in self.inputs if i.kind == "stream")
