"""The bad-input corpus: every entry point over every bad file, and the rules of onnxcompress.model_io.

Each bad file goes through every subcommand (compress, inspect, verify, bench, pack, unpack) and
through ``oc.load`` / ``oc.load_model``: one ``onnxcompress: error:`` line on stderr naming the
failure the same way everywhere, exit 2, no traceback, nothing written, the input untouched. A
container under an ``.onnx`` name and a plain model under an ``.onnxc`` name are not bad: files are
recognised by their bytes, so both load.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcompress as oc
from onnxcompress.cli import main
from onnxcompress.container import write_container
from onnxcompress.errors import OnnxCompressError

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, n: int = 32) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _external(folder: Path, location: str, data_file: Path | None) -> Path:
    """A model whose weight lives in external data at ``location`` (``data_file``: where its bytes go)."""
    model = _model()
    t = model.graph.initializer[0]
    raw = t.raw_data
    if data_file is not None:
        data_file.write_bytes(raw)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# name -> (builder(folder, outside) -> path, expected message fragment)
BAD: dict[str, tuple[Callable[[Path, Path], Path], str]] = {}


def _bad(name: str, message: str):
    def register(fn: Callable[[Path, Path], Path]) -> Callable[[Path, Path], Path]:
        BAD[name] = (fn, message)
        return fn

    return register


@_bad("not-onnx", "not an ONNX model")
def _not_onnx(d: Path, outside: Path) -> Path:
    (d / "m.onnx").write_text("this is a text file, not a model\n" * 20)
    return d / "m.onnx"


@_bad("empty", "is empty")
def _empty(d: Path, outside: Path) -> Path:
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


@_bad("truncated", "not an ONNX model")
def _truncated(d: Path, outside: Path) -> Path:
    data = _model().SerializeToString()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return d / "m.onnx"


@_bad("folder", "is a folder")
def _folder(d: Path, outside: Path) -> Path:
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


@_bad("missing", "no such file")
def _missing(d: Path, outside: Path) -> Path:
    return d / "m.onnx"


@_bad("dotdot", "outside the model's folder")
def _dotdot(d: Path, outside: Path) -> Path:
    return _external(d, "../outside/w.bin", outside / "w.bin")


@_bad("absolute", "must be a relative path")
def _absolute(d: Path, outside: Path) -> Path:
    return _external(d, str(outside / "w.bin"), outside / "w.bin")


@_bad("symlink", "outside the model's folder")
def _symlink(d: Path, outside: Path) -> Path:
    path = _external(d, "w.bin", outside / "w.bin")
    (d / "w.bin").symlink_to(outside / "w.bin")
    return path


@_bad("missing-external", "is missing")
def _missing_external(d: Path, outside: Path) -> Path:
    return _external(d, "w.bin", None)


@_bad("corrupt-container", "container")
def _corrupt_container(d: Path, outside: Path) -> Path:
    write_container(_model(), d / "m.onnxc")
    blob = bytearray((d / "m.onnxc").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / "m.onnxc").write_bytes(bytes(blob))
    return d / "m.onnxc"


@_bad("truncated-container", "container")
def _truncated_container(d: Path, outside: Path) -> Path:
    write_container(_model(), d / "m.onnx")  # and under an .onnx name
    (d / "m.onnx").write_bytes((d / "m.onnx").read_bytes()[:-40])
    return d / "m.onnx"


def _tree(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (links not followed) with its content hash."""
    out: dict[str, str] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(root) / name
                if p.is_symlink() or p.is_dir():
                    out[str(p)] = "link" if p.is_symlink() else "dir"
                else:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


VAL_DATA = Path(__file__).resolve().parents[1] / "models" / "digits_val.npz"


def _argvs(bad: Path, good: Path, out: Path) -> dict[str, list[str]]:
    return {
        "compress": ["compress", str(bad), "-o", str(out / "c.onnx"), "--report", str(out / "r.json")],
        "compress-onnxc": ["compress", str(bad), "-o", str(out / "new" / "c.onnxc")],  # no folder made
        "inspect": ["inspect", str(bad), "--json", str(out / "i.json")],
        "verify": ["verify", str(good), str(bad), "--json", str(out / "v.json"), "-q"],
        "verify-ref": ["verify", str(bad), str(good), "-q"],
        "bench": [
            "bench",
            str(good),
            str(bad),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "-q",
            "--json",
            str(out / "b.json"),
        ],  # fmt: skip
        "pack": ["pack", str(bad), "-o", str(out / "p.onnxc")],
        "unpack": ["unpack", str(bad), "-o", str(out / "u.onnx")],
        "decode": ["decode", str(bad), "-o", str(out / "d.onnx")],
        "search": ["search", str(bad), "-o", str(out / "s.onnx"), "--data", str(VAL_DATA), "--max-accuracy-drop", "1", "-q"],
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("good") / "good.onnx"
    onnx.save(_model(), p)
    return p


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_entry_point_refuses_a_bad_file_the_same_way(
    kind: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, message = BAD[kind]
    folder, outside, out = tmp_path / "in", tmp_path / "outside", tmp_path / "out"
    for d in (folder, outside, out):
        d.mkdir()
    bad = build(folder, outside)
    before = _tree(folder, outside, good.parent)
    for name, argv in _argvs(bad, good, out).items():
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, code, err)
        assert err.startswith("onnxcompress: error:") and "\n" not in err, (name, err)
        assert "Traceback" not in err and "INVALID_PROTOBUF" not in err, (name, err)
        if name != "unpack" or kind in ("empty", "folder", "missing") or "container" in kind:
            assert message in err, (name, err)  # one message per failure kind, whatever the command
        assert str(bad.name) in err, (name, err)
        assert list(out.iterdir()) == [], (name, list(out.iterdir()))
        assert _tree(folder, outside, good.parent) == before, name
    for fn in (oc.load, oc.load_model):
        with pytest.raises(OnnxCompressError) as info:
            fn(bad)
        assert message in str(info.value) and "\n" not in str(info.value)
    assert _tree(folder, outside, good.parent) == before


def test_files_are_recognised_by_their_bytes_not_their_name(good: Path, tmp_path: Path) -> None:
    """A container named .onnx and a plain model named .onnxc both work everywhere."""
    renamed = tmp_path / "container.onnx"
    write_container(good, renamed)
    plain = tmp_path / "plain.onnxc"
    plain.write_bytes(good.read_bytes())
    x = {"x": np.ones((2, 32), np.float32)}
    want = oc.load(good).run(None, x)[0]
    for path in (renamed, plain):
        assert oc.load_model(path) == onnx.load(good)
        np.testing.assert_array_equal(oc.load(path).run(None, x)[0], want)
        np.testing.assert_array_equal(oc.load(path, decode="onnxruntime").run(None, x)[0], want)
        assert main(["inspect", str(path), "-q"]) == 0
        assert main(["verify", str(good), str(path), "-q", "--max-rel-error", "0"]) == 0
    assert main(["unpack", str(renamed), "-o", str(tmp_path / "back.onnx")]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == good.read_bytes()
    assert main(["pack", str(plain), "-o", str(tmp_path / "again.onnxc")]) == 0


def test_compressing_a_compressed_model_says_so(good: Path, tmp_path: Path, capsys) -> None:
    small = tmp_path / "small.onnx"
    assert main(["compress", str(good), "-o", str(small), "-q"]) == 0
    assert main(["pack", str(small), "-o", str(tmp_path / "small.onnxc"), "-q"]) == 0
    capsys.readouterr()
    for src in (small, tmp_path / "small.onnxc"):
        assert main(["compress", str(src), "-o", str(tmp_path / "again.onnx")]) == 2
        assert "already compressed" in capsys.readouterr().err
        assert main(["inspect", str(src), "-q"]) == 0  # inspecting one is fine
    assert not (tmp_path / "again.onnx").exists()


def test_input_paths_are_checked_before_any_work(good: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    not_npz = tmp_path / "data.npz"
    not_npz.write_text("a,b\n1,2\n")
    cases = {
        ("--verify-data", str(tmp_path / "missing.npz")): "no such file",
        ("--verify-data", str(not_npz)): "not an .npz or .npy file",
        ("--calibration-data", str(tmp_path / "missing.npz")): "no such file",
        ("--config", str(tmp_path / "missing.yaml")): "no such file",
        ("--report", str(out)): "is a folder",
    }
    for (flag, value), message in cases.items():
        assert main(["compress", str(good), "-o", str(out / "c.onnx"), flag, value]) == 2
        err = capsys.readouterr().err
        assert message in err and flag in err or str(value) in err, err
        assert "pickle" not in err
        assert list(out.iterdir()) == [], flag
    assert main(["verify", str(good), str(good), "--data", str(not_npz)]) == 2
    err = capsys.readouterr().err
    assert "not an .npz or .npy file" in err and "pickle" not in err


def test_output_on_an_existing_folder_is_refused_first(good: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "taken.onnx"
    folder.mkdir()
    packed = tmp_path / "packed.onnxc"
    write_container(good, packed)
    for argv in (
        ["compress", str(good), "-o", str(folder)],
        ["compress", str(good), "-o", str(folder), "--overwrite"],
        ["pack", str(good), "-o", str(folder)],
        ["unpack", str(packed), "-o", str(folder)],
    ):
        assert main(argv) == 2
        assert "is a folder" in capsys.readouterr().err, argv
    assert list(folder.iterdir()) == []


def test_report_paths_create_their_folders_everywhere(good: Path, tmp_path: Path) -> None:
    """The one rule for report files: parent folders are created (at write time), the file replaced."""
    r = tmp_path / "reports"
    assert main(["inspect", str(good), "-q", "--json", str(r / "a" / "i.json")]) == 0
    assert (
        main(
            ["compress", str(good), "-o", str(tmp_path / "c.onnx"), "-q", "--report", str(r / "b" / "c.json")]
        )
        == 0
    )
    assert main(["verify", str(good), str(tmp_path / "c.onnx"), "-q", "--json", str(r / "c" / "v.json"),
                 "--markdown", str(r / "d" / "v.md"), "--junit", str(r / "e" / "v.xml")]) == 0  # fmt: skip
    assert main(["bench", str(good), "--runs", "1", "--warmup", "0", "--rounds", "1", "-q",
                 "--json", str(r / "f" / "b.json")]) == 0  # fmt: skip
    for f in ("a/i.json", "b/c.json", "c/v.json", "e/v.xml", "f/b.json"):
        assert (r / f).stat().st_size > 0, f
    json.loads((r / "a" / "i.json").read_text())
    assert main(["inspect", str(good), "-q", "--json", str(r / "a" / "i.json")]) == 0  # replaced
    # model outputs follow the same rule: their folders are created when they are written
    assert main(["compress", str(good), "-o", str(r / "g" / "h" / "c.onnx"), "-q"]) == 0
    assert main(["pack", str(r / "g" / "h" / "c.onnx"), "-o", str(r / "i" / "c.onnxc"), "-q"]) == 0


def test_outputs_follow_the_umask(good: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert (
            main(
                [
                    "compress",
                    str(good),
                    "-o",
                    str(tmp_path / "c.onnx"),
                    "-q",
                    "--report",
                    str(tmp_path / "r.json"),
                ]
            )
            == 0
        )
        assert main(["compress", str(good), "-o", str(tmp_path / "c.onnxc"), "-q"]) == 0
        assert main(["pack", str(tmp_path / "c.onnx"), "-o", str(tmp_path / "p.onnxc"), "-q"]) == 0
        assert main(["unpack", str(tmp_path / "p.onnxc"), "-o", str(tmp_path / "u.onnx"), "-q"]) == 0
        assert main(["inspect", str(good), "-q", "--json", str(tmp_path / "i.json")]) == 0
        assert (
            main(["verify", str(good), str(tmp_path / "c.onnx"), "-q", "--json", str(tmp_path / "v.json")])
            == 0
        )
        for name in ("c.onnx", "r.json", "c.onnxc", "p.onnxc", "u.onnx", "i.json", "v.json"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
        os.umask(0o077)
        assert main(["pack", str(tmp_path / "c.onnx"), "-o", str(tmp_path / "q.onnxc"), "-q"]) == 0
        assert (tmp_path / "q.onnxc").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".onnxcompress-*"))


def test_saved_external_data_follows_the_umask_like_the_model(tmp_path: Path) -> None:
    """onnx creates the ``.data`` file 0600 whatever the umask: ``model_io.save`` gives it the model
    file's bits (a model others may read must not have data only its owner can)."""
    from onnxcompress import model_io

    old = os.umask(0o022)
    try:
        written = model_io.save(_model(n=64), tmp_path / "m.onnx", external_data=True)
        assert written == [tmp_path / "m.onnx", tmp_path / "m.onnx.data"]
        for p in written:
            assert p.stat().st_mode & 0o777 == 0o644, p
        # nothing above the threshold: no data file, and a stale one is removed
        tiny = helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        )  # fmt: skip
        assert model_io.save(tiny, tmp_path / "m.onnx", external_data=True) == [tmp_path / "m.onnx"]
        assert not (tmp_path / "m.onnx.data").exists()
    finally:
        os.umask(old)


def test_a_failed_save_keeps_the_old_model_and_its_data(tmp_path: Path, monkeypatch) -> None:
    """The stale ``.data`` file is removed only after the new model is in place: when moving the
    new file fails, the old model still finds its data."""
    from onnxcompress import model_io

    model_io.save(_model(n=64), tmp_path / "m.onnx", external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_io.os, "replace", fail)
    with pytest.raises(OSError):
        model_io.save(_model(n=4), tmp_path / "m.onnx", external_data=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    onnx.load(str(tmp_path / "m.onnx"))  # loads with its external data


def test_container_tables_use_the_real_file_size(tmp_path: Path, capsys) -> None:
    src = ROOT / "models" / "lenet5.onnx"
    report = tmp_path / "r.json"
    out = tmp_path / "l.onnxc"
    assert main(["compress", str(src), "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["file_bytes_before"] == src.stat().st_size
    assert data["file_bytes_after"] == out.stat().st_size
    original, pruned = data["container"]["steps"][:2]
    assert original["bytes"] == src.stat().st_size and original["ratio"] == 1.0
    assert pruned["bytes"] == src.stat().st_size  # the default preset does not prune
    ratio = f"{src.stat().st_size / out.stat().st_size:.2f}x"
    assert f"ratio {ratio}" in text and f"{ratio}\n" in text  # the file line and the staircase agree


def test_python_m_onnxcompress_starts_without_onnx() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-m", "onnxcompress", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert run.stdout.startswith("onnxcompress ")
    probe = (
        "import sys\nfrom onnxcompress.cli import main\n"
        "for argv in (['--version'], ['--help'], ['verify', '--help'], ['bench', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout


def test_quiet_is_accepted_by_every_subcommand(good: Path, tmp_path: Path) -> None:
    from onnxcompress.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        flags = {s for a in choices[name]._actions for s in a.option_strings}
        assert {"-q", "--quiet"} <= flags, name
