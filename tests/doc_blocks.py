"""Run the fenced code blocks of a Markdown file as a reader would (shared by test_docs and test_examples).

A block's fence tag says what it is:

- ``bash``: commands, run with ``bash -eo pipefail`` in a scratch folder that holds a copy of the
  repository's ``models/``; ``onnxcompress`` and ``python`` resolve to this checkout (a shim on
  ``PATH`` running ``sys.executable -m onnxcompress``, ``PYTHONPATH`` at the repository root).
  Install commands (``pip install ...``, ``pip wheel ...``) and the test suite itself
  (``python -m pytest ... tests``) and ``python -m mypy`` are dropped: ``test_docs.test_wheel_installs`` builds and installs the
  wheel instead, and ``.ci/run`` runs the suite. ``bench`` runs with ``--runs 20 --rounds 1``, as the
  README's Development section says. Blocks whose commands are all ``ruff`` check the repository and
  run in it.
- ``python``: ``exec`` in the same scratch folder; any ``test_*`` function it defines is called.
- ``yaml`` whose first line is ``# PATH``: written to PATH in the scratch folder; a plan file is
  loaded with ``onnxcompress.config.load_config``, a ``.github/workflows/*.yml`` file's ``run:``
  steps are run in order (install steps dropped as above).
- ``text``: output samples and file layouts; not run.

Any other tag, or none, is an error: every block must say which of these it is.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_TAGS = ("bash", "python", "yaml")
SKIP_TAGS = ("text",)
TIMEOUT_S = 300

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INSTALL_PREFIX = re.compile(r"\bpip (?:install|wheel)\b[^&\n]*&&\s*")
_DROPPED_LINE = re.compile(r"^\s*(?:pip (?:install|wheel)\b|python3? -m (?:mypy\b|pytest\b.*\btests\s*$))")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    tag: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    text = path.read_text(encoding="utf-8")
    return [
        Block(path, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in _FENCE.finditer(text)
    ]


def make_workspace(folder: Path) -> Path:
    """A scratch folder with a copy of ``models/`` and a ``bin/`` shim folder; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shims = folder / ".bin"
    shims.mkdir()
    for name, cmd in (
        ("onnxcompress", f'exec "{sys.executable}" -m onnxcompress "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
        ("python3", f'exec "{sys.executable}" "$@"'),
    ):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\n{cmd}\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def environment(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{workspace / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def shell_commands(text: str) -> str:
    """The block's commands as the test runs them: installs and the suite dropped, bench cut short."""
    text = _INSTALL_PREFIX.sub("", text)
    lines = [ln for ln in text.splitlines() if not _DROPPED_LINE.match(ln)]
    out = "\n".join(lines)
    out = re.sub(r"(\bonnxcompress bench\b[^\n]*?)--runs \d+", r"\1--runs 20", out)
    out = re.sub(r"(\bonnxcompress bench\b[^\n]*?)--rounds \d+", r"\1--rounds 1", out)
    return out


def _is_only(commands: str, program: str) -> bool:
    lines = [ln.strip() for ln in commands.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return bool(lines) and all(ln.startswith(program + " ") for ln in lines)


def run_bash(
    commands: str, workspace: Path, where: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run ``commands`` (already filtered) in ``cwd`` (default: the workspace); fail with both streams."""
    cwd = ROOT if _is_only(commands, "ruff") else (cwd or workspace)
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", commands],
        cwd=cwd,
        env=environment(workspace, env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{where}: exit {proc.returncode}\n--- commands\n{commands}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def run_python(code: str, cwd: Path, where: str) -> dict[str, object]:
    """``exec`` a python block in ``cwd`` and call the ``test_*`` functions it defines."""
    old = Path.cwd()
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))
    try:
        namespace: dict[str, object] = {"__name__": f"doc_block_{where}"}
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own code, run as written
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                value()
        return namespace
    finally:
        sys.path.remove(str(cwd))
        os.chdir(old)


def yaml_target(block: Block) -> str:
    first = block.text.splitlines()[0] if block.text.strip() else ""
    if not first.startswith("# "):
        raise AssertionError(f"{block.where}: a yaml block starts with '# FILE' naming the file it shows")
    return first[2:].split()[0].rstrip(":")


def run_workflow(block: Block, workspace: Path, cwd: Path) -> list[str]:
    """Run a GitHub Actions workflow block's ``run:`` steps in order; returns the upload paths."""
    import yaml

    doc = yaml.safe_load(block.text)
    env = {str(k): str(v) for k, v in (doc.get("env") or {}).items()}
    summary = cwd / "step_summary.md"
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    uploads: list[str] = []
    for job in doc["jobs"].values():
        env_job = {**env, **{str(k): str(v) for k, v in (job.get("env") or {}).items()}}
        for step in job["steps"]:
            if "run" in step:
                commands = shell_commands(step["run"])
                if commands.strip():
                    run_bash(commands, workspace, f"{block.where} step {step.get('name')!r}", env_job, cwd)
            elif str(step.get("uses", "")).startswith("actions/upload-artifact"):
                uploads += str(step["with"]["path"]).split()
    return uploads


def run_block(block: Block, workspace: Path, cwd: Path | None = None) -> None:
    """Run one block by its tag (see the module docstring) in ``cwd`` (default: the workspace)."""
    cwd = cwd or workspace
    if block.tag in SKIP_TAGS:
        return
    if block.tag not in RUN_TAGS:
        raise AssertionError(
            f"{block.where}: fence tag {block.tag!r}: use bash or python (run by the tests), yaml with a "
            "'# FILE' first line, or text for output samples and layouts"
        )
    if block.tag == "bash":
        commands = shell_commands(block.text)
        if commands.strip():
            run_bash(commands, workspace, block.where, cwd=cwd)
    elif block.tag == "python":
        run_python(block.text, cwd, block.where)
    else:
        target = yaml_target(block)
        dest = cwd / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(block.text, encoding="utf-8")
        if target.startswith(".github/workflows/"):
            for path in run_workflow(block, workspace, cwd):
                assert (cwd / path).is_file(), f"{block.where}: the workflow did not write {path}"
        else:
            from onnxcompress.config import load_config

            load_config(dest)
