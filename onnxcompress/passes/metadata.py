"""Passes that touch model-level data rather than the graph: the producer stamp, and loading the
external data of the tensors a compression left alone."""

from __future__ import annotations

import json
import os

import onnx
from onnx.external_data_helper import load_external_data_for_model

from onnxcompress import __version__
from onnxcompress.config import CompressionConfig
from onnxcompress.passes.base import Pass, PassResult

__all__ = ["LoadExternalDataPass", "StampMetadataPass"]


class StampMetadataPass(Pass):
    """Record the producing tool and plan in ``metadata_props["onnxcompress"]``, keeping the user's
    own entries. Only what differs from the defaults of this version is written: ``from_dict``
    rebuilds the full plan, and small models feel every byte (the full record is ~370 B, 1% of a
    25x LeNet-300-100)."""

    name = "stamp"
    reported = False

    def __init__(self, config: CompressionConfig) -> None:
        self.config = config

    def call(self, model: onnx.ModelProto) -> PassResult:
        entries = {p.key: p for p in model.metadata_props}
        plan, default = self.config.to_dict(), CompressionConfig().to_dict()
        diff: dict[str, object] = {k: v for k, v in plan.items() if v != default[k] and k != "weight"}
        weight = {k: v for k, v in plan["weight"].items() if v != default["weight"][k]}
        if weight:
            diff["weight"] = weight
        value = json.dumps(
            {"version": __version__, "config": diff}, sort_keys=True, default=str, separators=(",", ":")
        )
        if "onnxcompress" in entries:
            entries["onnxcompress"].value = value
        else:
            model.metadata_props.add(key="onnxcompress", value=value)
        return PassResult(model, True)


class LoadExternalDataPass(Pass):
    """Load the external data of the tensors left in the model (after the compressed weights have
    been replaced, so their data is never read into the ModelProto)."""

    name = "load-external-data"
    reported = False

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = str(base_dir)

    def call(self, model: onnx.ModelProto) -> PassResult:
        load_external_data_for_model(model, self.base_dir)
        return PassResult(model, True)
