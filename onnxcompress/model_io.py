"""Every model file onnxcompress reads or writes goes through this module: the rules, stated once.

Reading (:func:`open_model`, :func:`check_input`, :func:`model_bytes`, :func:`size_on_disk`)
  * A path must name an existing, non-empty regular file: a missing path, a folder or an empty
    file is refused with one :class:`~onnxcompress.errors.InvalidModelError` line naming the path.
  * An ``.onnxc`` container is recognised by its magic bytes (:func:`is_container`), never by its
    extension: a container renamed ``.onnx`` and a plain model named ``.onnxc`` both open. A
    container is expanded (every checksum verified) to the exact model that was packed; a corrupt
    one is a :class:`~onnxcompress.errors.ContainerError` naming the file.
  * Anything else must parse as an ONNX ``ModelProto`` with a graph and an opset import;
    otherwise "not an ONNX model" (truncated files and other formats land here).
  * External data is checked once, before a byte of it is read: every location must be a relative
    path that stays inside the model's folder after resolving ``..`` and symlinks (absolute paths
    and escapes are an :class:`~onnxcompress.errors.UnsafeExternalDataError`), and the file must
    exist and be long enough for the tensor's offset and length.
  * Sessions (:mod:`onnxcompress.sessions`) hand an ``.onnx`` path straight to onnxruntime (it
    applies the same location rules); when onnxruntime refuses a file, the file is diagnosed here
    so the user sees the same message as from every other subcommand.

Writing (:func:`save`, :func:`write_bytes`, :func:`write_report`, :func:`atomic_files`)
  * One atomic writer, :func:`atomic_files`: files are written into a temporary folder beside
    the destination and moved into place with ``os.replace`` only when complete, so a failure never
    leaves a partial output; files are created with ``open``, so their mode follows the umask (0644
    under umask 022) for models, external data, containers and reports alike.
  * A model is written as one protobuf up to :data:`PROTOBUF_LIMIT`, the one protobuf limit of
    the package; above it (or when asked) its tensors go to ``<name>.data`` beside it, with the
    model file's permission bits. A stale ``<name>.data`` from an earlier run is replaced or
    removed, never appended to.
  * Parent folders of an output are created when it is written, never earlier, so a failed run
    leaves the file system as it was.

Output paths (:func:`check_output`, the one check), before any work:
  * an existing folder at the output path is refused first ("is a folder");
  * the output may not be an input (same file after resolving links);
  * a model output that exists needs ``--overwrite`` (``overwrite=True``); a report file (``--json``,
    ``--report``, ``--markdown``, ``--junit``) is replaced, as CI reruns expect (commands check it
    with ``overwrite=True``);
  * the nearest existing ancestor of the output must be a writable folder.

Input data files (:func:`check_data_path`): an ``.npz``/``.npy`` file (checked by its magic bytes)
or a folder; anything else is a :class:`~onnxcompress.errors.DataError` naming the file and flag.
A plan file (``--config``, :func:`check_plan_path`) must be an existing file. Commands check every
input path before any work, so a wrong one never leaves an output behind.

Sizes (:func:`size_on_disk`): the real bytes on disk, the model file plus every distinct external
data file it references; a container is its file size (its checksums verified). Every table and
ratio uses it, the container's staircase included.

Messages: one per failure kind, the same from every subcommand and from ``oc.load`` /
``oc.load_model``; each starts with the path it is about and says what to do. The CLI prints it as
one ``onnxcompress: error:`` line and exits 2. ``compress`` also refuses a model that already
holds ``ai.onnxcompress`` decode nodes ("already compressed"); ``inspect`` accepts one.

onnx is imported inside the functions, so that importing this module (and the CLI's ``--help``
and ``--version``) stays cheap.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from onnxcompress.errors import (
    DataError,
    InvalidModelError,
    OutputExistsError,
    UnsafeExternalDataError,
)

if TYPE_CHECKING:
    import onnx

PathLike = str | os.PathLike[str]

#: The one protobuf size limit. protobuf refuses to serialize (or parse) a message of 2 GiB or
#: more; models above this many bytes are written with external data, the checker runs on the
#: saved file, sessions load them from a temporary external-data copy, and containers (which hold
#: one protobuf) refuse them.
PROTOBUF_LIMIT = 2**31 - 2**24
#: Tensors above this many bytes go to the ``.data`` file when a model is saved with external data.
EXTERNAL_THRESHOLD = 1024

#: First bytes of the files :func:`check_data_path` accepts (.npz is a zip archive).
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


# --------------------------------------------------------------------------- reading


def check_input(path: PathLike) -> Path:
    """``path`` as a :class:`Path` if it names a non-empty regular file; else one clear error."""
    p = Path(path)
    if p.is_dir():
        raise InvalidModelError(f"{p}: is a folder, not a model file")
    if not p.exists():
        raise InvalidModelError(f"{p}: no such file")
    if not p.is_file():
        raise InvalidModelError(f"{p}: not a regular file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise InvalidModelError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if size == 0:
        raise InvalidModelError(f"{p}: the file is empty, not an ONNX model")
    return p


def is_container(path: PathLike) -> bool:
    """Whether ``path`` is an ``.onnxc`` container: the one test, by magic bytes (not extension)."""
    from onnxcompress.container.format import MAGIC, looks_like_container

    try:
        with open(path, "rb") as fh:
            return looks_like_container(fh.read(len(MAGIC)))
    except OSError:
        return False


def parse_model(data: bytes, label: PathLike) -> onnx.ModelProto:
    """Parse serialized bytes into a ``ModelProto`` with a graph and an opset import, or raise
    "``label``: not an ONNX model" (``label``: the file or a description of the bytes)."""
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        raise InvalidModelError(
            f"{label}: not an ONNX model (the protobuf does not parse; the file may be truncated or of another format)"
        ) from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(f"{label}: not an ONNX model (no graph found; truncated or another format)")
    if not model.opset_import:
        raise InvalidModelError(
            f"{label}: the model declares no opset import; re-export it with a current exporter"
        )
    return model


def _expand_container(path: Path) -> bytes:
    from onnxcompress.container import read_model_bytes

    return read_model_bytes(path)  # ContainerError messages name the file


def open_model(path: PathLike, *, load_external: bool = True) -> onnx.ModelProto:
    """The validated ``ModelProto`` of an ``.onnx`` file or ``.onnxc`` container (by magic bytes).

    ``load_external=False`` leaves external tensors as references to their (checked) files:
    :func:`~onnxcompress.compressor.compress_file` then reads each weight only while compressing
    it, and :func:`load_external_data` reads the rest later. See the module docstring for the rules.
    """
    p = check_input(path)
    if is_container(p):
        return parse_model(_expand_container(p), p)  # containers hold one self-contained protobuf
    model = parse_model(p.read_bytes(), p)
    check_external_data(model, p)
    if load_external:
        load_external_data(model, p)
    return model


def model_bytes(path: PathLike) -> bytes:
    """The exact serialized model a file stands for (what a container packs and unpacks to).

    An ``.onnx`` without external data: its bytes as they are (byte identity with the file). A
    container: the model it holds. A model with external data: loaded with its (checked) data and
    re-serialized with the data inline, so the result is one self-contained protobuf (refused
    above :data:`PROTOBUF_LIMIT`).
    """
    p = check_input(path)
    if is_container(p):
        data = _expand_container(p)
        parse_model(data, p)
        return data
    data = p.read_bytes()
    model = parse_model(data, p)
    if not has_external_data(model):
        return data
    del data
    check_external_data(model, p)
    load_external_data(model, p)
    inline_external_data(model)
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"{p}: the model with its external data is 2 GB or larger and cannot be held in one protobuf"
        )
    return model.SerializeToString()


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    yield from _get_all_tensors(model)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` (subgraphs included) keeps its data in an external file."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def inline_external_data(model: onnx.ModelProto) -> None:
    """Drop the external-data records of tensors whose data has been loaded into ``model``."""
    import onnx

    for t in _all_tensors(model):
        # onnx leaves an explicit DEFAULT location behind: drop it, the data is inline now.
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")
        del t.external_data[:]


def load_external_data(model: onnx.ModelProto, path: PathLike) -> None:
    """Read the external data of ``model``, opened from ``path`` with ``load_external=False``
    (which already checked the locations), into the ModelProto."""
    import onnx

    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    except Exception as exc:  # the locations were checked at open, so this is an I/O problem
        raise InvalidModelError(f"{path}: cannot read external data: {exc}") from None


def check_external_data(model: onnx.ModelProto, path: PathLike) -> None:
    """Refuse external-data locations outside the folder of the model file ``path``, and missing
    or short data files."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    base = Path(path).parent.resolve()
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = info.location or ""
        if not location or os.path.isabs(location) or Path(location).drive:
            raise UnsafeExternalDataError(
                f"{path}: tensor {tensor.name!r}: external data location {location!r} must be a relative path inside the model's folder"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise UnsafeExternalDataError(
                f"{path}: tensor {tensor.name!r}: external data location {location!r} points outside the model's folder; "
                "move the data file next to the model"
            )
        if not target.is_file():
            raise InvalidModelError(
                f"{path}: tensor {tensor.name!r}: external data file {location!r} is missing; keep it next to the model"
            )
        size = target.stat().st_size
        offset = info.offset or 0
        length = info.length if info.length is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidModelError(
                f"{path}: tensor {tensor.name!r}: external data {location!r} is truncated "
                f"(needs bytes {offset}..{offset + length}, file has {size})"
            )


def size_on_disk(path: PathLike) -> int:
    """Bytes on disk of a model: the file plus every distinct external-data file it references
    (validated as :func:`open_model` does; a container is its file, whose layout and checksums
    are verified without decoding it)."""
    p = check_input(path)
    total = p.stat().st_size
    if is_container(p):
        from onnxcompress.container.format import parse
        from onnxcompress.errors import ContainerError

        try:
            parse(p.read_bytes())  # layout and checksums (cheap: nothing is decoded)
        except ContainerError as exc:
            raise ContainerError(f"{p}: {exc}") from None
        return total
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = parse_model(p.read_bytes(), p)
    check_external_data(model, p)
    seen: set[Path] = set()
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            f = (p.parent / (ExternalDataInfo(tensor).location or "")).resolve()
            if f not in seen:
                seen.add(f)
                total += f.stat().st_size
    return total


def check_data_path(path: PathLike, flag: str = "--data") -> Path:
    """An input data path (``--data``, ``--verify-data``, ``--calibration-data``): an existing
    folder, or an ``.npz``/``.npy`` file recognised by its first bytes."""
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise DataError(f"{flag} {p}: no such file or folder")
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"{flag} {p}: cannot read it ({exc.strerror or exc})") from None
    if not (head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGICS)):
        raise DataError(
            f"{flag} {p}: not an .npz or .npy file (save arrays with numpy.savez or numpy.save, "
            "or give a folder of them)"
        )
    return p


def check_plan_path(path: PathLike, flag: str = "--config") -> Path:
    """A YAML/JSON plan file: it must exist and be a file (its content is read by the config)."""
    from onnxcompress.errors import ConfigError

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder; give a YAML or JSON plan file")
    if not p.is_file():
        raise ConfigError(f"{flag} {p}: no such file")
    return p


# --------------------------------------------------------------------------- output paths


def _check_ancestor(p: Path) -> None:
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputExistsError(f"{p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{p}: cannot write in folder {anc} (permission denied)")


def check_output(out: PathLike, *, inputs: Iterable[PathLike] = (), overwrite: bool = False) -> Path:
    """The one check of an output path (model, container or report), before any work: refuses a
    folder, an input, an existing file unless ``overwrite``, and a parent that cannot be a folder."""
    p = Path(out)
    if p.is_dir():
        raise OutputExistsError(f"{p}: is a folder; give a file path")
    if p.exists():
        for inp in inputs:
            try:
                same = os.path.samefile(p, inp)
            except OSError:
                same = False
            if same:
                raise OutputExistsError(f"{p}: the output is the input; choose another output path")
        if not overwrite:
            raise OutputExistsError(f"{p}: already exists; pass --overwrite to replace it")
    _check_ancestor(p)
    return p


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_files(*targets: PathLike) -> Iterator[list[Path]]:
    """The one atomic writer: yields a temporary path for each target (all in one folder).

    Write the files there (with ``open``, so the umask applies); when the block ends without an
    exception, each temporary file that was written is moved onto its target with ``os.replace``,
    in order (put a model after its data file, so it never points at missing data). Missing
    parent folders are created here, at write time. The temporary folder is always removed.
    """
    paths = [Path(t) for t in targets]
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise ValueError("atomic_files: all targets must share one folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputExistsError(
            f"{paths[0]}: cannot create folder {folder} ({exc.strerror or exc})"
        ) from None
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnxcompress-", dir=folder))
    try:
        temps = [tmpdir / p.name for p in paths]
        yield temps
        for tmp, target in zip(temps, paths, strict=True):
            if tmp.exists():
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_files`)."""
    p = Path(path)
    with atomic_files(p) as (tmp,):
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return p


def write_report(path: PathLike, text: str) -> Path:
    """Write a report file (UTF-8 text): parent folders created, replaced atomically; an OS
    failure is one :class:`~onnxcompress.errors.OutputExistsError` line naming the file."""
    p = check_output(path, overwrite=True)
    try:
        return write_bytes(p, text.encode("utf-8"))
    except OSError as exc:
        raise OutputExistsError(f"cannot write report {p}: {exc.strerror or exc}") from None


def save(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write ``model`` atomically; returns the files written.

    ``external_data=None`` decides automatically: external data only when the model would not fit
    in one protobuf (:data:`PROTOBUF_LIMIT`); ``True`` always writes tensors above
    :data:`EXTERNAL_THRESHOLD` bytes there (onnxruntime can then map them from the file instead of
    copying them out of the protobuf). The data file is ``<name>.data`` beside the model, with the
    model file's permission bits (onnx creates it 0600 whatever the umask, which would make a model
    that others may read unloadable for them).
    """
    import onnx

    p = Path(path)
    size = model.ByteSize()
    if external_data is None:
        external_data = size > PROTOBUF_LIMIT
    elif not external_data and size > PROTOBUF_LIMIT:
        from onnxcompress.errors import ConfigError

        raise ConfigError(
            f"{p}: the model is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one file; "
            "write it with external data (drop --no-external-data)"
        )
    data_path = p.parent / (p.name + ".data")
    with atomic_files(data_path, p) as (tmp_data, tmp_model):
        if external_data:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_path.name,
                size_threshold=EXTERNAL_THRESHOLD,
            )
            # save_model converts the tensors in place; bring the data back so the caller's
            # ModelProto stays self-contained.
            onnx.external_data_helper.load_external_data_for_model(model, str(tmp_model.parent))
            wrote_data = tmp_data.exists()  # not when no tensor is above the threshold
            if wrote_data:
                # onnx opens the data file itself with mode 0600: give it the model file's mode (umask)
                os.chmod(tmp_data, stat.S_IMODE(os.stat(tmp_model).st_mode))
        else:
            wrote_data = False
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
    if not wrote_data and data_path.exists():
        # a stale data file from an earlier run would be confusing; it belongs to this output.
        # Removed only once the new model is in place: a failed write leaves the old pair whole.
        data_path.unlink()
    return [p, data_path] if wrote_data else [p]
