"""Family 2: no hangs — a FIFO, device or folder where a file is expected is a one-line error at once.

Every tool runs in a subprocess with a deadline (conftest.HANG_DEADLINE_S): a tool that blocks on
``open()`` of a FIFO fails the test with TimeoutExpired instead of hanging the suite.
"""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import assert_one_line_error, run_tool


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_design_that_is_not_a_regular_file(tmp_path, kind):
    """gen-synthetic and plan-jobs: --design pointing at a FIFO, /dev/zero or a folder."""
    design = {"fifo": lambda: _fifo(tmp_path / "design.json"), "device": lambda: "/dev/zero",
              "folder": lambda: (tmp_path / "design.json").mkdir() or tmp_path / "design.json"}[kind]()
    expected = {"fifo": "is a FIFO (named pipe), expected a design file", "device": "is a device, expected a design file",
                "folder": "is a folder, expected a design file"}[kind]
    gen = run_tool("gen-synthetic", "--design", design, "--phase-c-root", tmp_path / "c", "--phase-d-root",
                   tmp_path / "d")
    if kind == "folder":  # click refuses a folder for a dir_okay=False option: a usage error
        assert gen.returncode == 2 and "Traceback" not in gen.stderr
    else:
        assert_one_line_error(gen, str(design), expected)
    plan = run_tool("plan-jobs", "--design", design, "--phase-c-root", tmp_path / "c", "--phase-d-root",
                    tmp_path / "d", "--artifact-root", tmp_path / "f")
    if kind == "folder":
        assert plan.returncode == 2 and "Traceback" not in plan.stderr
    else:
        assert_one_line_error(plan, str(design), expected)


def test_manifest_that_is_a_fifo(tmp_path):
    """run-ptychi --dry-run and summarize on an artifact root whose manifest is a FIFO."""
    root = tmp_path / "phase_f"
    root.mkdir()
    manifest = _fifo(root / "reconstruction_manifest.json")
    result = run_tool("run-ptychi", "--manifest", manifest, "--dry-run")
    assert_one_line_error(result, str(manifest), "is a FIFO (named pipe)")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, "reconstruction_manifest.json", "is a FIFO (named pipe)")


def test_result_json_that_is_a_fifo(tmp_path, smoke_data):
    """summarize over a sweep where one job's result.json is a FIFO: one line naming it, no hang."""
    root = tmp_path / "phase_f"
    plan = run_tool("plan-jobs", "--design", smoke_data["design"], "--phase-c-root", smoke_data["phase_c_root"],
                    "--phase-d-root", smoke_data["phase_d_root"], "--artifact-root", root, "--dose", "1000",
                    "--view", "sparse", "--split", "train")
    assert plan.returncode == 0, plan.stderr
    folder = root / "dose_1000" / "sparse" / "train"
    folder.mkdir(parents=True)
    fifo = _fifo(folder / "result.json")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(fifo), "is a FIFO (named pipe)")


def test_validate_npz_on_a_fifo_and_a_device(tmp_path):
    """validate-npz named a FIFO or /dev/zero reports the file as invalid at once (exit 1)."""
    fifo = _fifo(tmp_path / "data.npz")
    result = run_tool("validate-npz", fifo)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{fifo}: (file): not a regular file" in result.stdout + result.stderr
    if shutil.which("true"):
        result = run_tool("validate-npz", "/dev/zero")
        assert result.returncode == 1 and "Traceback" not in result.stderr
