"""Family 2: no hangs — a FIFO, device or folder where a file is expected is a one-line error at once.

Every tool runs in a subprocess with a deadline (conftest.HANG_DEADLINE_S): a tool that blocks on
``open()`` of a FIFO fails the test with TimeoutExpired instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import assert_one_line_error, copy_sweep, run_tool

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"


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


# --------------------------------------------------------------------------- run-ptychi and plan-jobs

def _job_lines(stdout: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in stdout.splitlines())


@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("tool", ["run-ptychi", "plan-jobs"])
def test_lock_file_that_is_not_a_regular_file(real_sweep, tmp_path, kind, tool):
    """.run-ptychi.lock is a FIFO (opening it for writing blocked forever) or a folder: one line, exit 1."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    lock = root / ".run-ptychi.lock"
    lock.unlink(missing_ok=True)
    _fifo(lock) if kind == "fifo" else lock.mkdir()
    before = (root / "reconstruction_manifest.json").read_bytes()
    if tool == "run-ptychi":
        result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--force")
    else:
        prov = json.loads(before)["provenance"]
        result = run_tool("plan-jobs", "--design", prov["design"], "--phase-c-root", prov["phase_c_root"],
                          "--phase-d-root", prov["phase_d_root"], "--artifact-root", root, "--dose", "1000")
    expected = "is a FIFO (named pipe), expected a lock file" if kind == "fifo" else "is a folder, expected a lock file"
    assert_one_line_error(result, str(lock), expected)
    assert (root / "reconstruction_manifest.json").read_bytes() == before


def test_manifest_that_is_a_fifo_for_a_real_run(tmp_path):
    """run-ptychi (not a dry run) on a FIFO manifest: one line at once, no lock file made beside it."""
    root = tmp_path / "phase_f"
    root.mkdir()
    manifest = _fifo(root / "reconstruction_manifest.json")
    result = run_tool("run-ptychi", "--manifest", manifest, "--force")
    assert_one_line_error(result, str(manifest), "is a FIFO (named pipe)")
    assert sorted(p.name for p in root.iterdir()) == ["reconstruction_manifest.json"]


def test_result_json_that_is_a_fifo_means_not_done(real_sweep, tmp_path):
    """One job's result.json is a FIFO: that job is not done and reruns (the FIFO replaced), no hang."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    result_path = root / TEST / "result.json"
    result_path.unlink()
    _fifo(result_path)
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _job_lines(result.stdout)
    assert lines[TRAIN] == "skipped (resumed)" and lines[TEST].startswith("ok\t")
    assert result_path.is_file() and json.loads(result_path.read_text())["status"] == "ok"


def test_result_json_that_is_a_folder_fails_that_job(real_sweep, tmp_path):
    """One job's result.json is a folder: that job fails naming it (exit 3), the folder is left alone."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    result_path = root / TEST / "result.json"
    result_path.unlink()
    result_path.mkdir()
    (result_path / "keep.txt").write_text("mine\n")
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--device", "cpu")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _job_lines(result.stdout) == {
        TRAIN: "skipped (resumed)",
        TEST: f"failed\tPathError: {result_path}: is a folder where the job's result.json belongs (remove it)"}
    assert (result_path / "keep.txt").read_text() == "mine\n"
    manifest = json.loads((root / "reconstruction_manifest.json").read_text())
    assert {e["job_id"]: e["status"] for e in manifest["execution_results"]} == {TRAIN: "ok", TEST: "failed"}


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_gen_synthetic_lock_file_that_is_a_fifo_or_a_link(smoke_design_path, tmp_path, outside, kind):
    """gen-synthetic's per-root lock: a FIFO is a one-line error at once; a link is refused, never followed."""
    from conftest import snapshot

    c = tmp_path / "c"
    c.mkdir()
    lock = c / ".gen-synthetic.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        os.symlink(outside / "created_by_lock", lock)  # dangling: following it would create a file outside
    before = snapshot(outside)
    result = run_tool("gen-synthetic", "--design", smoke_design_path, "--phase-c-root", c, "--phase-d-root",
                      tmp_path / "d", "--dose", "1000")
    expected = "is a FIFO (named pipe)" if kind == "fifo" else "is a symbolic link; refusing to follow it"
    assert_one_line_error(result, str(lock), expected)
    assert snapshot(outside) == before and not (outside / "created_by_lock").exists()
