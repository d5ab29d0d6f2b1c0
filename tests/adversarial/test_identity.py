"""Family 6: identity — a job's files must be its own (result.json and reconstruction.npz)."""

from __future__ import annotations

import json
import shutil

from conftest import assert_one_line_error, copy_sweep, run_tool

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"


def test_summarize_refuses_another_jobs_reconstruction(real_sweep, tmp_path):
    """test's reconstruction.npz replaced by train's: exit 1 naming the file and _metadata/job_id."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    shutil.copyfile(root / TRAIN / "reconstruction.npz", root / TEST / "reconstruction.npz")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / TEST / "reconstruction.npz"), "_metadata/job_id",
                          f"'{TRAIN}' is not this job's ({TEST})")
    assert not (root / "summary" / "summary.json").exists()


def test_summarize_refuses_another_jobs_result(real_sweep, tmp_path):
    """test's result.json replaced by train's: exit 1 naming the file and job_id."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    shutil.copyfile(root / TRAIN / "result.json", root / TEST / "result.json")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / TEST / "result.json"), f"job_id: {TRAIN} is not the folder's job {TEST}")


def test_untouched_copy_summarizes(real_sweep, tmp_path):
    """Control: the same copy without tampering scores both jobs (the refusals above are not spurious)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    result = run_tool("summarize", "--artifact-root", root)
    assert result.returncode == 0, result.stderr
    summary = json.loads((root / "summary" / "summary.json").read_text())
    assert {(job["job_id"], job["status"]) for job in summary["jobs"]} == {(TRAIN, "scored"), (TEST, "scored")}
