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


# --------------------------------------------------------------------------- resume (run-ptychi)

def _rerun(root):
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split("\t", 1) for line in result.stdout.splitlines())


def _edit_result(path, **changes):
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        target = doc
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    path.write_text(json.dumps(doc))


def test_resume_skips_an_untouched_sweep(real_sweep, tmp_path):
    """Control for the two below: the same copy, untouched, is all done (nothing reruns)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    assert _rerun(root) == {TRAIN: "skipped (resumed)", TEST: "skipped (resumed)"}


def test_resume_does_not_take_another_jobs_result_for_done(real_sweep, tmp_path):
    """test's result.json carrying train's job id (same options, test's input): not done, so test reruns."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    _edit_result(root / TEST / "result.json", job_id=TRAIN)
    lines = _rerun(root)
    assert lines[TRAIN] == "skipped (resumed)" and lines[TEST].startswith("ok\t")
    assert json.loads((root / TEST / "result.json").read_text())["job_id"] == TEST


def test_resume_reruns_after_a_tool_or_engine_upgrade(real_sweep, tmp_path):
    """A result made by another tool version (train) or engine version (test) is not done: both rerun,
    and the new results carry the installed versions."""
    from importlib.metadata import version

    from ptydose import __version__

    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    _edit_result(root / TRAIN / "result.json", versions__tools="0.0.0-older")
    _edit_result(root / TEST / "result.json", engine_version="1.9.0", versions__ptychi="1.9.0")
    lines = _rerun(root)
    assert lines[TRAIN].startswith("ok\t") and lines[TEST].startswith("ok\t")
    for job in (TRAIN, TEST):
        result = json.loads((root / job / "result.json").read_text())
        assert (result["versions"]["tools"], result["engine_version"]) == (__version__, version("ptychi"))
