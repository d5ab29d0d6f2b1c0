"""Helpers of the adversarial suite: run a tool as a user would, with a deadline so a hang fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
#: A tool that has not answered by then is hanging (a FIFO read blocks forever): the test fails.
HANG_DEADLINE_S = 120


def run_tool(name: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script in a subprocess; a hang past HANG_DEADLINE_S raises TimeoutExpired."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=HANG_DEADLINE_S, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int = 1) -> None:
    """Exit ``code``, no traceback, and one ``Error:`` line on stderr holding every needle."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every root a test names: nothing may ever be written here."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing changed there)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory, smoke_data) -> Path:
    """A real, tiny pty-chi sweep (smoke design, dose 1000, sparse view, both splits, 2 epochs), read-only.

    Tests that change it work on a copy (:func:`copy_sweep`).
    """
    root = tmp_path_factory.mktemp("real_sweep") / "phase_f"
    plan = run_tool("plan-jobs", "--design", smoke_data["design"], "--phase-c-root", smoke_data["phase_c_root"],
                    "--phase-d-root", smoke_data["phase_d_root"], "--artifact-root", root, "--dose", "1000",
                    "--view", "sparse", "--num-epochs", "2")
    assert plan.returncode == 0, plan.stderr
    run = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json")
    assert run.returncode == 0, run.stdout + run.stderr
    return root


def copy_sweep(root: Path, dest: Path) -> Path:
    """A copy of a sweep whose manifest is re-planned to its new folder (so every tool accepts it)."""
    import json
    import shutil

    shutil.copytree(root, dest, symlinks=True)
    manifest_path = dest / "reconstruction_manifest.json"
    text = manifest_path.read_text().replace(str(root), str(dest))
    manifest_path.write_text(text)
    json.loads(text)
    for result in dest.glob("dose_*/*/*/result.json"):
        result.write_text(result.read_text().replace(str(root), str(dest)))
    return dest
