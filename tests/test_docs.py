"""Every code block in README.md and docs/*.md runs as written (rules in tests/doc_blocks.py).

Blocks of one file run in order in one scratch folder, so a later block may use an earlier one's
output, as a reader following the page would. The install the docs give (a wheel built from the
repository) is checked by :func:`test_wheel_installs`, marked slow (about 20 s): it runs with
``python -m pytest -m slow tests``, not in the default run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from doc_blocks import ROOT, Block, blocks, make_workspace, run_block, shell_commands

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(doc: Path, tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "work")
    for block in blocks(doc):
        run_block(block, workspace)


def test_every_block_is_tagged() -> None:
    bad = [b.where for doc in DOCS for b in blocks(doc) if b.tag not in ("bash", "python", "yaml", "text")]
    assert not bad, f"untagged or unknown fence tags (use bash, python, yaml or text): {bad}"


def test_readme_starts_with_the_setup_commands() -> None:
    first = blocks(ROOT / "README.md")[0]
    commands = [ln for ln in first.text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[0].startswith("pip install -e . && onnxcompress compress models/lenet5.onnx")
    assert commands[1] == "pip install -e '.[test]' && python -m mypy && python -m pytest -q tests"


def test_ci_script_runs_the_readme_test_command() -> None:
    readme_test = blocks(ROOT / "README.md")[0].text.splitlines()[-1].split("&& ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_test in ci, f".ci/run must run the README's test command {readme_test!r}"


def test_shell_filter_drops_only_installs_and_the_suite() -> None:
    block = Block(ROOT / "README.md", 1, "bash", "")
    assert block.where == "README.md:1"
    text = "pip install -e . && onnxcompress inspect m.onnx\npython -m pytest -q tests\nruff check .\n"
    assert shell_commands(text) == "onnxcompress inspect m.onnx\nruff check ."
    assert shell_commands("onnxcompress bench a b --runs 200 --rounds 5") == (
        "onnxcompress bench a b --runs 20 --rounds 1"
    )


@pytest.mark.slow
def test_wheel_installs(tmp_path: Path) -> None:
    """docs/ci.md's install: ``pip wheel --no-deps . -w dist`` then install the wheel in a fresh venv.

    Offline: no build isolation (setuptools from this environment) and ``--no-index --no-deps`` (the
    venv sees this environment's numpy/onnx/onnxruntime through ``--system-site-packages``). The
    build runs on a copy of the tracked sources so the checkout gets no build/ or egg-info folders.
    """
    if importlib.util.find_spec("wheel") is None and _setuptools_version() < (70, 1):
        pytest.skip(
            "building a wheel offline needs the 'wheel' package (in the [test] extra) or setuptools>=70.1"
        )
    src = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", "onnxcompress"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "onnxcompress"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in tracked + untracked:
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((ROOT / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(tmp_path / "dist")], src, env)
    (wheel,) = (tmp_path / "dist").glob("onnxcompress-*.whl")
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=False)
    py = tmp_path / "venv" / "bin" / "python"
    _run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    probe = (
        "import importlib.resources, onnxcompress; "
        "print(onnxcompress.__file__); "
        "print(importlib.resources.files('onnxcompress').joinpath('py.typed').is_file())"
    )
    out = _run([str(py), "-c", probe], tmp_path, env).split()
    assert out[0].startswith(str(tmp_path / "venv")), f"imported {out[0]}, not the installed wheel"
    assert out[1] == "True", "py.typed is not in the wheel"
    script = tmp_path / "venv" / "bin" / "onnxcompress"
    assert "0.1.0" in _run([str(script), "--version"], tmp_path, env)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _setuptools_version() -> tuple[int, ...]:
    import setuptools

    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
