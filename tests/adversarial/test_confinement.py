"""Family 1: confinement — nothing is written, truncated or deleted outside the folders the user named.

Links inside a root are the attack: a job folder, summary folder, figures folder or output file that
is a symbolic link to somewhere else must be refused, and the place it points at left byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from conftest import assert_one_line_error, copy_sweep, run_tool, snapshot

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"


def test_summary_folder_linked_outside(real_sweep, tmp_path, outside):
    """<root>/summary -> outside: summarize refuses; outside unchanged."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    before = snapshot(outside)
    os.symlink(outside, root / "summary")
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / "summary"), "is a symbolic link inside")
    assert snapshot(outside) == before


def test_figures_folder_linked_outside(real_sweep, tmp_path, outside):
    """--out folder whose figures/ links outside: refused before any figure is drawn."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    out = tmp_path / "my_summary"
    out.mkdir()
    os.symlink(outside, out / "figures")
    before = snapshot(outside)
    result = run_tool("summarize", "--artifact-root", root, "--out", out)
    assert_one_line_error(result, str(out / "figures"), "is a symbolic link inside")
    assert snapshot(outside) == before
    assert not (out / "summary.json").exists()


def test_summary_json_link_is_replaced_not_followed(real_sweep, tmp_path, outside):
    """summary.json that is a link to a precious file: the link is replaced, the file keeps its bytes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    (root / "summary").mkdir(exist_ok=True)
    link = root / "summary" / "summary.json"
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(outside / "precious.txt", link)
    before = snapshot(outside)
    result = run_tool("summarize", "--artifact-root", root)
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before
    assert not link.is_symlink() and link.is_file()


def test_job_folder_linked_to_another_job(real_sweep, tmp_path):
    """A job folder that is a link (to another job's folder) is refused by summarize, naming it."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    shutil.rmtree(root / TEST)
    os.symlink(root / TRAIN, root / TEST)
    result = run_tool("summarize", "--artifact-root", root)
    assert_one_line_error(result, str(root / TEST), "is a symbolic link inside")


# --------------------------------------------------------------------------- run-ptychi and plan-jobs

def _run(root, *args):
    return run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--device", "cpu", *args)


def _job_lines(stdout: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in stdout.splitlines())


def _statuses(root) -> dict[str, str]:
    manifest = json.loads((root / "reconstruction_manifest.json").read_text())
    return {entry["job_id"]: entry["status"] for entry in manifest["execution_results"]}


def test_run_refuses_a_job_folder_linked_outside(real_sweep, tmp_path, outside):
    """<root>/dose_1000/sparse/test -> a copy of that job outside: that job fails (exit 3), the other reruns;
    outside is byte-identical (no result.json removed, no output written)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    shutil.move(root / TEST, outside / "test")
    os.symlink(outside / "test", root / TEST)
    before = snapshot(outside)
    result = _run(root, "--force")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = _job_lines(result.stdout)
    assert lines[TRAIN].startswith("ok\t")
    assert lines[TEST] == (f"failed\tPathError: {root / TEST}: is a symbolic link inside {root}; refusing to follow "
                           "it (a job folder must stay inside its root)")
    assert _statuses(root) == {TRAIN: "ok", TEST: "failed"}
    assert snapshot(outside) == before


def test_run_refuses_a_dose_folder_linked_outside(real_sweep, tmp_path, outside):
    """<root>/dose_1000 -> outside (holding both jobs' old outputs): both jobs fail, nothing outside changes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    shutil.move(root / "dose_1000", outside / "dose_1000")
    os.symlink(outside / "dose_1000", root / "dose_1000")
    before = snapshot(outside)
    result = _run(root, "--force")
    assert result.returncode == 3, result.stdout + result.stderr
    lines = _job_lines(result.stdout)
    for job in (TRAIN, TEST):
        assert lines[job].startswith(f"failed\tPathError: {root / 'dose_1000'}: is a symbolic link inside"), lines
    assert _statuses(root) == {TRAIN: "failed", TEST: "failed"}
    assert snapshot(outside) == before
    # Without --force the linked folder's old results are not taken for done either.
    result = _run(root)
    assert result.returncode == 3 and "skipped" not in result.stdout
    assert snapshot(outside) == before


def test_run_never_truncates_through_a_linked_log(real_sweep, tmp_path, outside):
    """ptychi.log -> outside/precious.txt: that job fails naming the log, the file keeps its bytes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    log = root / TEST / "ptychi.log"
    log.unlink()
    os.symlink(outside / "precious.txt", log)
    before = snapshot(outside)
    result = _run(root, "--force")
    assert result.returncode == 3, result.stdout + result.stderr
    lines = _job_lines(result.stdout)
    assert lines[TRAIN].startswith("ok\t")
    assert lines[TEST] == (f"failed\tPathError: {log}: is a symbolic link; refusing to follow it (a job log "
                           "(ptychi.log) must be a regular file)")
    assert snapshot(outside) == before and log.is_symlink()


def test_run_replaces_a_linked_result_json_without_following_it(real_sweep, tmp_path, outside):
    """result.json -> outside/precious.txt: the job is not done, reruns, and its result replaces the link."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    result_path = root / TEST / "result.json"
    result_path.unlink()
    os.symlink(outside / "precious.txt", result_path)
    before = snapshot(outside)
    result = _run(root)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _job_lines(result.stdout)
    assert lines == {TRAIN: "skipped (resumed)", TEST: lines[TEST]} and lines[TEST].startswith("ok\t")
    assert snapshot(outside) == before
    assert not result_path.is_symlink() and json.loads(result_path.read_text())["job_id"] == TEST


@pytest.mark.parametrize("tool", ["run-ptychi", "plan-jobs"])
def test_a_linked_lock_file_is_refused(real_sweep, tmp_path, outside, tool):
    """.run-ptychi.lock -> outside/precious.txt: exit 1, one line naming the lock; the file is not truncated."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    lock = root / ".run-ptychi.lock"
    lock.unlink(missing_ok=True)
    os.symlink(outside / "precious.txt", lock)
    before = snapshot(outside)
    manifest_before = (root / "reconstruction_manifest.json").read_bytes()
    if tool == "run-ptychi":
        result = _run(root, "--force")
    else:
        prov = json.loads(manifest_before)["provenance"]
        result = run_tool("plan-jobs", "--design", prov["design"], "--phase-c-root", prov["phase_c_root"],
                          "--phase-d-root", prov["phase_d_root"], "--artifact-root", root, "--dose", "1000")
    assert_one_line_error(result, str(lock), "is a symbolic link; refusing to follow it")
    assert snapshot(outside) == before
    assert (root / "reconstruction_manifest.json").read_bytes() == manifest_before


def test_manifest_roots_cannot_widen_what_a_run_reads(real_sweep, tmp_path, outside):
    """A manifest claiming phase_d_root "/" and an input outside the data layout: exit 1 naming the field,
    before any job runs; the foreign file's bytes appear nowhere (output, result.json, log)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    secret = outside / "secret.npz"
    secret.write_bytes(b"SECRET-BYTES-0123456789 root:x:0:0\n" * 4)
    manifest_path = root / "reconstruction_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["provenance"]["phase_d_root"] = "/"
    for job in manifest["jobs"]:  # jobs/0 is dose_1000/sparse/train
        job["input_npz"] = str(secret)
        job["input_sha256"] = hashlib.sha256(secret.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    before = snapshot(root)
    for tool, args in (("run-ptychi", ("--manifest", manifest_path, "--force")),
                       ("summarize", ("--artifact-root", root))):
        result = run_tool(tool, *args)
        assert_one_line_error(result, f"{manifest_path}: jobs/0/input_npz: {secret} is not the job's input "
                                      "/dose_1000/sparse/sparse_train.npz")
        assert "SECRET" not in result.stdout + result.stderr
    assert snapshot(root) == before


def test_plan_replaces_linked_manifest_files_without_following_them(real_sweep, tmp_path, outside):
    """reconstruction_manifest.json and skip_summary.json as links to outside files: plan-jobs replaces the
    links themselves with its documents; the files they pointed at keep their bytes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    prov = json.loads((root / "reconstruction_manifest.json").read_text())["provenance"]
    (outside / "skip.json").write_text("{}\n")
    for name, target in (("reconstruction_manifest.json", "precious.txt"), ("skip_summary.json", "skip.json")):
        (root / name).unlink()
        os.symlink(outside / target, root / name)
    before = snapshot(outside)
    result = run_tool("plan-jobs", "--design", prov["design"], "--phase-c-root", prov["phase_c_root"],
                      "--phase-d-root", prov["phase_d_root"], "--artifact-root", root, "--dose", "1000",
                      "--view", "sparse")
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before
    for name in ("reconstruction_manifest.json", "skip_summary.json"):
        assert not (root / name).is_symlink() and json.loads((root / name).read_text())["schema_version"] == "1.0"
