"""Family 5: faults — a kill, a full disk, a read-only folder or a broken log never leave a lie behind.

The invariant every test here checks (:func:`assert_manifest_truthful`): the manifest never says
"ok" for a job unless that job's result.json says ok for it and its outputs are in place. Kills
are real SIGKILLs to the whole process group of a running ``run-ptychi``; disk errors are real
OS errors (a file-size limit makes the kernel refuse the write, as a full disk would).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, HANG_DEADLINE_S, copy_sweep, run_tool

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"
OUTPUTS = ("reconstruction.npz", "losses.csv", "product.h5")
FAULT_ENV = "RUN_PTYCHI_FAULT_INJECTION"


def manifest_of(root: Path) -> dict:
    return json.loads((root / "reconstruction_manifest.json").read_text())


def results_of(root: Path) -> dict[str, dict]:
    return {entry["job_id"]: entry for entry in manifest_of(root)["execution_results"]}


def job_lines(stdout: str) -> dict[str, str]:
    """run-ptychi's stdout, one line per job, by job id: ``status[\tseconds][\terror]``."""
    return dict(line.split("\t", 1) for line in stdout.splitlines())


def assert_manifest_truthful(root: Path) -> None:
    """Every "ok" in execution_results has its own ok result.json and all its outputs, as regular files."""
    for job_id, entry in results_of(root).items():
        if entry["status"] != "ok":
            continue
        folder = root / job_id
        result_path = folder / "result.json"
        assert result_path.is_file() and not result_path.is_symlink(), f"{job_id}: manifest says ok, no result.json"
        result = json.loads(result_path.read_text())
        assert (result["job_id"], result["status"]) == (job_id, "ok"), result
        for name in OUTPUTS:
            assert (folder / name).is_file() and not (folder / name).is_symlink(), f"{job_id}: {name} missing"


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable for the block, also for root (which ignores mode bits): chattr +i."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a folder read-only")
    try:
        probe = folder / ".write-probe"
        with contextlib.suppress(OSError):
            probe.touch()
            probe.unlink()
            pytest.skip("chattr +i did not make the folder read-only on this filesystem")
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def _wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _start(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """run-ptychi in its own process group (workers included), stderr piped for the progress lines."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([str(BIN / "run-ptychi"), "--manifest", str(root / "reconstruction_manifest.json"),
                             "--device", "cpu", *args], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, stdin=subprocess.DEVNULL)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    if proc.stderr is not None:
        proc.stderr.close()


def test_sigkill_while_a_forced_job_runs_leaves_no_ok_without_outputs(real_sweep, tmp_path):
    """--force, killed (whole group) while the first job computes: no "ok" without outputs; a rerun completes."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    assert set(results_of(root)) == {TRAIN, TEST}  # both ok before
    log = root / TRAIN / "ptychi.log"
    proc = _start(root, "--force", env={FAULT_ENV: f"{TRAIN}=hang"})
    try:
        _wait_for(lambda: log.is_file() and "fault injection: hang" in log.read_text())
    finally:
        _kill_group(proc)
    assert_manifest_truthful(root)
    assert TRAIN not in results_of(root) or results_of(root)[TRAIN]["status"] != "ok"
    rerun = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--device", "cpu")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert job_lines(rerun.stdout)[TRAIN].startswith("ok\t")
    assert {k: v["status"] for k, v in results_of(root).items()} == {TRAIN: "ok", TEST: "ok"}
    assert_manifest_truthful(root)


def test_sigkill_between_jobs_keeps_what_finished(real_sweep, tmp_path):
    """Killed right after the first job's [ok] line: that job stays ok with its files, the other is not ok."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    proc = _start(root, "--force")
    try:
        deadline = time.monotonic() + HANG_DEADLINE_S
        for line in proc.stderr:
            if line.startswith(f"[ok] {TRAIN}") or time.monotonic() > deadline:
                break
    finally:
        _kill_group(proc)
    assert_manifest_truthful(root)
    assert results_of(root)[TRAIN]["status"] == "ok"


def test_rerun_removes_stale_temporaries(real_sweep, tmp_path):
    """`.<name>.<random>.tmp` left by killed atomic writes go on the next run (or plan); other files stay."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    stale = [root / ".reconstruction_manifest.json.k1ll3d.tmp", root / ".skip_summary.json.abc.tmp",
             root / TEST / ".result.json.x7.tmp", root / TEST / ".reconstruction.npz.q2.tmp",
             root / TRAIN / ".product.h5.z.tmp", root / TRAIN / ".losses.csv.a.tmp"]
    keep = [root / TEST / "notes.tmp", root / TEST / ".my.txt.1.tmp"]
    for path in stale + keep:
        path.write_bytes(b"half a file")
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{TRAIN}\tskipped (resumed)", f"{TEST}\tskipped (resumed)"]
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"half a file" for p in keep)
    again = root / ".reconstruction_manifest.json.k1ll3d.tmp"
    again.write_bytes(b"half a file")
    design = manifest_of(root)["provenance"]
    plan = run_tool("plan-jobs", "--design", design["design"], "--phase-c-root", design["phase_c_root"],
                    "--phase-d-root", design["phase_d_root"], "--artifact-root", root, "--dose", "1000",
                    "--view", "sparse", "--num-epochs", "2")
    assert plan.returncode == 0, plan.stderr
    assert not again.exists()


def _file_size_limit(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_refused_write_names_the_output_and_fails_that_job(real_sweep, tmp_path):
    """The kernel refuses to grow a file past a limit (as a full disk refuses): the job fails naming the file."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    # 40 kB: the manifest, logs and result.json fit, reconstruction.npz (about 85 kB here) does not.
    limit = 40_000
    assert (root / TEST / "reconstruction.npz").stat().st_size > limit
    assert (root / "reconstruction_manifest.json").stat().st_size < limit // 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(BIN / "run-ptychi"), "--manifest", str(root / "reconstruction_manifest.json"),
                             "--only", TEST, "--force", "--device", "cpu"], capture_output=True, text=True, env=env,
                            timeout=HANG_DEADLINE_S, preexec_fn=_file_size_limit(limit), stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    entry = results_of(root)[TEST]
    assert entry["status"] == "failed"
    assert entry["error"] == f"OutputError: {root / TEST / 'reconstruction.npz'}: File too large"
    assert result.stdout.splitlines() == [f"{TEST}\tfailed\t{entry['error']}"]
    assert json.loads((root / TEST / "result.json").read_text())["error"] == entry["error"]
    assert not list((root / TEST).glob(".*.tmp"))
    assert_manifest_truthful(root)


def test_a_read_only_job_folder_fails_that_job_only(real_sweep, tmp_path):
    """One job folder that cannot be written: that job fails naming it (exit 3), the other job runs."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    with read_only(root / TEST):
        result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--force",
                          "--device", "cpu")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines = job_lines(result.stdout)
        assert lines[TRAIN].startswith("ok\t")
        assert lines[TEST].startswith(f"failed\tPathError: {root / TEST / 'result.json'}: cannot remove the old")
        results = results_of(root)
        assert (results[TRAIN]["status"], results[TEST]["status"]) == ("ok", "failed")
        assert_manifest_truthful(root)


def test_a_log_that_is_a_folder_fails_that_job_only(real_sweep, tmp_path):
    """ptychi.log is a folder: that job fails before submission naming it (exit 3); the other job runs."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    log = root / TEST / "ptychi.log"
    log.unlink()
    log.mkdir()
    (log / "inside.txt").write_text("mine\n")
    result = run_tool("run-ptychi", "--manifest", root / "reconstruction_manifest.json", "--force", "--device", "cpu")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = job_lines(result.stdout)
    assert lines[TRAIN].startswith("ok\t")
    assert lines[TEST] == f"failed\tPathError: {log}: is a folder, expected a job log (ptychi.log)"
    assert (log / "inside.txt").read_text() == "mine\n"
    assert read_status(root / TEST / "result.json") == "failed"
    assert_manifest_truthful(root)


def read_status(path: Path) -> str:
    return json.loads(path.read_text())["status"]


def _item(root: Path, input_npz: Path):
    """A work item for job TEST below ``root`` (what a backend hands a worker)."""
    from ptydose.core.run.engines.options import PtychiOptions
    from ptydose.core.run.records import Instrument, JobSpec, WorkItem

    options = PtychiOptions(noise_model="gaussian", batch_size=8, optimize_probe=True, probe_update_start_epoch=1,
                            seed=1, chunk_epochs=1, wavelength_m=1e-10, object_pixel_size_m=1e-7)
    job = JobSpec(id=TEST, dose=1000, view="sparse", split="test", input_npz=str(input_npz), input_sha256="0" * 64,
                  n_images=1, output_dir=root / TEST, engine="ptychi", algorithm="LSQML", num_epochs=1,
                  options=options, options_hash="0" * 64, selection={}, artifact_root=root)
    return WorkItem(job, Instrument(8800.0, 2.0, 75e-6, 0.1, 1e-10, 1e-7), "faults")


def test_the_worker_refuses_a_folder_or_log_it_may_not_write(tmp_path, outside):
    """The worker itself (a Dask worker runs it without the parent's checks) fails the job, writing nothing:
    a log that is a link to a precious file, then a dose folder that is a link out of the artifact root."""
    from conftest import snapshot
    from ptydose.core.run.worker import WorkerSession

    root = tmp_path / "art"
    (root / TEST).mkdir(parents=True)
    os.symlink(outside / "precious.txt", root / TEST / "ptychi.log")
    before = snapshot(outside)
    session = WorkerSession("cpu", 0)
    outcome = session.run(_item(root, tmp_path / "missing.npz"))
    assert (outcome.status, outcome.returncode) == ("failed", 1)
    assert outcome.error.startswith(f"PathError: {root / TEST / 'ptychi.log'}: is a symbolic link; refusing")
    assert snapshot(outside) == before and stat.S_ISLNK(os.lstat(root / TEST / "ptychi.log").st_mode)
    shutil.rmtree(root / "dose_1000")
    os.symlink(outside, root / "dose_1000")
    outcome = session.run(_item(root, tmp_path / "missing.npz"))
    assert outcome.error.startswith(f"PathError: {root / 'dose_1000'}: is a symbolic link inside {root}")
    assert snapshot(outside) == before and not (outside / "sparse").exists()
