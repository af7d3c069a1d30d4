"""Exception hierarchy.

Every error a user can cause derives from :class:`OnnxCompressError`; the CLI prints its message as
one line and exits non-zero, so each message must say what went wrong *and what to do about it*.
Modules add their own subclasses here so that callers can catch one family.
"""

from __future__ import annotations


class OnnxCompressError(Exception):
    """Base class of every error onnxcompress raises on purpose."""

    exit_code: int = 2


class InvalidModelError(OnnxCompressError):
    """The input is not a loadable ONNX model (not ONNX, truncated, missing external data...)."""


class UnsafeExternalDataError(InvalidModelError):
    """External data points outside the model's folder."""


class ConfigError(OnnxCompressError):
    """A configuration value is out of range, of the wrong type, or names something unknown."""


class NoCompressibleWeightsError(OnnxCompressError):
    """Nothing in the model matched the plan: all weights are too small, skipped or excluded."""


class EncodingError(OnnxCompressError):
    """A tensor could not be encoded in the requested form."""


class OutputExistsError(OnnxCompressError):
    """The output path exists (or is the input) and overwriting was not asked for."""


class DataError(OnnxCompressError):
    """Evaluation or calibration data is missing, malformed, or does not fit the model's inputs."""


class ContainerError(OnnxCompressError):
    """An .onnxc container is corrupt, truncated, of an unknown version, or fails a checksum."""


class GateFailedError(OnnxCompressError):
    """A verification gate failed (exit code 1, unlike usage errors)."""

    exit_code = 1
