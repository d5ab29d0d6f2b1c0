"""The runner on the Dask backend: jobs on a (loopback-only) LocalCluster, recorded like local workers."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ptydose import __version__
from ptydose.core.jobs import MANIFEST_SCHEMA, plan_jobs, write_plan
from ptydose.core.manifests import read_json
from ptydose.core.run.runner import run_manifest
from ptydose.core.run.worker import FAULT_ENV
from ptydose.run_ptychi import cli

pytestmark = pytest.mark.slow  # real pty-chi runs on a spawned Dask worker (seconds each)

JOB_FILES = ["losses.csv", "product.h5", "ptychi.log", "reconstruction.npz", "result.json"]


@pytest.fixture
def start_cluster():
    """Start loopback-only one-worker, one-thread Dask LocalClusters; all are closed at teardown."""
    import dask
    from distributed import LocalCluster

    clusters = []

    def start(env: dict | None = None, allowed_failures: int = 3) -> str:
        # allowed_failures=0: a worker death fails its job at once instead of after retries. With
        # worker-saturation 1.0 a worker holds only the task it runs, so its death hits that task alone.
        with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures,
                              "distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, env=env or {})  # env: set in the worker process
        clusters.append(cluster)
        return cluster.scheduler_address

    yield start
    for cluster in clusters:
        cluster.close()


def _plan(data: dict, art: Path, **kwargs) -> Path:
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("doses", [1000])
    plan = plan_jobs(data["design"], data["phase_c_root"], data["phase_d_root"], art, **kwargs)
    return write_plan(plan).manifest_path


def _results(manifest_path: Path) -> dict:
    return {r["job_id"]: r for r in read_json(manifest_path, MANIFEST_SCHEMA)["execution_results"]}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sweep_on_scheduler_matches_local_and_resumes(smoke_data, tmp_path, start_cluster):
    """Jobs run on Dask are recorded exactly like local ones (same files, keys, losses); a rerun runs nothing."""
    address = start_cluster()
    art = tmp_path / "dask"
    manifest = _plan(smoke_data, art, views=["sparse"])
    lines: list[str] = []
    report = run_manifest(manifest, device="cpu", scheduler=address, echo=lines.append)
    # Outcomes are recorded as they arrive, in any order.
    assert sorted((o.job_id, o.status, o.resumed) for o in report.outcomes) == [
        ("dose_1000/sparse/test", "ok", False), ("dose_1000/sparse/train", "ok", False)]
    assert any(line.startswith("[start] dose_1000/sparse/test (") and "on Dask worker tcp://127.0.0.1:" in line
               for line in lines)
    # The same job through a local worker, for comparison.
    local_manifest = _plan(smoke_data, tmp_path / "local", views=["sparse"], splits=["test"])
    assert [o.status for o in run_manifest(local_manifest, device="cpu", echo=lambda line: None).outcomes] == ["ok"]
    dask_out, local_out = art / "dose_1000" / "sparse" / "test", tmp_path / "local" / "dose_1000" / "sparse" / "test"
    assert sorted(p.name for p in dask_out.iterdir()) == sorted(p.name for p in local_out.iterdir()) == JOB_FILES
    dask_result = read_json(dask_out / "result.json", "job_result")
    local_result = read_json(local_out / "result.json", "job_result")
    assert dask_result.keys() == local_result.keys()
    assert (dask_result["status"], dask_result["returncode"], dask_result["device"], dask_result["epochs"]) == \
        ("ok", 0, "cpu", 2)
    assert dask_result["options_hash"] == local_result["options_hash"]
    dask_entry = _results(manifest)["dose_1000/sparse/test"]
    local_entry = _results(local_manifest)["dose_1000/sparse/test"]
    assert dask_entry.keys() == local_entry.keys() and dask_entry["log_path"] == str(dask_out / "ptychi.log")
    assert {k: v for k, v in dask_entry.items() if k in ("status", "returncode", "error", "epochs", "resumed")} == \
        {"status": "ok", "returncode": 0, "error": None, "epochs": 2, "resumed": False}
    # Same seeded job, same code: the losses agree; only the torch thread count may differ (the Dask
    # nanny sets OMP_NUM_THREADS=1), which reorders float32 sums, hence rtol 1e-4 rather than equality.
    with np.load(dask_out / "reconstruction.npz") as a, np.load(local_out / "reconstruction.npz") as b:
        np.testing.assert_allclose(a["loss_values"], b["loss_values"], rtol=1e-4)
    log = (dask_out / "ptychi.log").read_text()
    assert "run-ptychi: epoch 2/2" in log and "INFO ptychi" in log  # the job's own and pty-chi's output
    # Rerun through the scheduler: everything resumes, nothing is rewritten.
    stamp = (dask_out / "result.json").stat().st_mtime_ns
    rerun = run_manifest(manifest, device="cpu", scheduler=address, echo=lambda line: None)
    assert [(o.status, o.resumed) for o in rerun.outcomes] == [("ok", True), ("ok", True)]
    assert rerun.reconstruction_s == 0 and (dask_out / "result.json").stat().st_mtime_ns == stamp
    assert all(r["resumed"] for r in _results(manifest).values())


def test_raising_and_crashing_jobs_on_scheduler(smoke_data, tmp_path, start_cluster):
    """Via the CLI: raising or contract-breaking jobs fail, one killing its Dask worker crashes, one is ok; exit 3."""
    address = start_cluster(env={FAULT_ENV: "dose_1000/sparse/train=raise,dose_1000/sparse/test=exit"},
                            allowed_failures=0)
    data = {"design": smoke_data["design"], "phase_c_root": tmp_path / "c", "phase_d_root": tmp_path / "d"}
    shutil.copytree(smoke_data["phase_c_root"] / "dose_1000", data["phase_c_root"] / "dose_1000")
    shutil.copytree(smoke_data["phase_d_root"] / "dose_1000", data["phase_d_root"] / "dose_1000")
    corrupt = data["phase_d_root"] / "dose_1000" / "dense" / "dense_train.npz"
    with np.load(corrupt, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["diffraction"] = -arrays["diffraction"] - 1  # breaks the contract, metadata still readable
    np.savez(corrupt, **arrays)
    art = tmp_path / "art"
    manifest = _plan(data, art, views=["sparse", "dense"])
    result = CliRunner().invoke(cli, ["--manifest", str(manifest), "--device", "cpu", "--scheduler", address])
    assert result.exit_code == 3, result.output
    statuses = {job_id: r["status"] for job_id, r in _results(manifest).items()}
    assert statuses == {"dose_1000/sparse/train": "failed", "dose_1000/sparse/test": "crashed",
                        "dose_1000/dense/train": "failed", "dose_1000/dense/test": "ok"}
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert lines["dose_1000/sparse/train"] == "failed\tRuntimeError: injected fault"
    assert re.fullmatch(r"crashed\tDask worker tcp://127\.0\.0\.1:\d+ died while running the job \(KilledWorker\)",
                        lines["dose_1000/sparse/test"])
    assert lines["dose_1000/dense/test"].startswith("ok\t")
    failed = read_json(art / "dose_1000" / "sparse" / "train" / "result.json", "job_result")
    assert (failed["status"], failed["returncode"], failed["error"]) == ("failed", 1, "RuntimeError: injected fault")
    log = (art / "dose_1000" / "sparse" / "train" / "ptychi.log").read_text()
    assert "fault injection: raise" in log and "Traceback" in log
    crashed = read_json(art / "dose_1000" / "sparse" / "test" / "result.json", "job_result")
    assert (crashed["status"], crashed["returncode"]) == ("crashed", None)
    log = (art / "dose_1000" / "sparse" / "test" / "ptychi.log").read_text()
    assert "fault injection: exit" in log and f"run-ptychi: {crashed['error']}" in log
    # The broken input was sent (the parent reads no input in full) and its Dask worker's contract check
    # failed it, exactly as a local worker does: error line, return code and traceback in the job's log.
    assert lines["dose_1000/dense/train"].startswith("failed\tContractError: ") and "diffraction" in lines[
        "dose_1000/dense/train"]
    broken = read_json(art / "dose_1000" / "dense" / "train" / "result.json", "job_result")
    assert (broken["status"], broken["returncode"], broken["device"]) == ("failed", 1, "cpu")
    log = (art / "dose_1000" / "dense" / "train" / "ptychi.log").read_text()
    assert f"run-ptychi {__version__}: job dose_1000/dense/train on cpu (worker pid " in log
    assert "Traceback" in log and log.rstrip().splitlines()[-1].endswith(broken["error"])
    assert "input check before submission" not in log
    assert "1 ok, 2 failed, 0 timed out, 1 crashed" in result.stderr


def test_scheduler_bad_input_and_usage(smoke_data, tmp_path):
    """Unreachable scheduler: one-line error, exit 1, nothing written; --dry-run connects to nothing; usage is 2."""
    manifest = _plan(smoke_data, tmp_path / "art", views=["sparse"])
    before = manifest.read_bytes()
    address = f"tcp://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(cli, ["--manifest", str(manifest), "--device", "cpu", "--scheduler", address])
    assert result.exit_code == 1, result.output
    assert result.output == (f"Error: --scheduler {address}: cannot connect to the Dask scheduler (OSError: Timed "
                             f"out trying to connect to {address} after 10 s)\n")
    assert manifest.read_bytes() == before and not (tmp_path / "art" / "dose_1000").exists()
    dry = CliRunner().invoke(cli, ["--manifest", str(manifest), "--scheduler", address, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [f"[DRY RUN] run-ptychi --manifest {manifest} --only dose_1000/sparse/{split}"
                                       for split in ("train", "test")]
    both = CliRunner().invoke(cli, ["--manifest", str(manifest), "--scheduler", address, "--workers", "2"])
    assert both.exit_code == 2 and "--scheduler and --workers > 1 exclude each other" in both.output
    malformed = CliRunner().invoke(cli, ["--manifest", str(manifest), "--scheduler", "127.0.0.1:8786"])
    assert malformed.exit_code == 2 and "expected tcp://HOST:PORT" in malformed.output


def test_timeout_on_scheduler_restarts_the_worker(smoke_data, tmp_path, start_cluster):
    """A job past --timeout is cancelled, its Dask worker restarted, recorded timeout; the next job still runs."""
    # Default allowed-failures: the job the scheduler hands the worker between cancel and restart is retried.
    address = start_cluster(env={FAULT_ENV: "dose_1000/sparse/train=hang"})
    art = tmp_path / "art"
    manifest = _plan(smoke_data, art, views=["sparse"])
    report = run_manifest(manifest, device="cpu", scheduler=address, timeout=5, echo=lambda line: None)
    assert sorted((o.job_id, o.status) for o in report.outcomes) == [
        ("dose_1000/sparse/test", "ok"), ("dose_1000/sparse/train", "timeout")]
    hung = read_json(art / "dose_1000" / "sparse" / "train" / "result.json", "job_result")
    assert (hung["status"], hung["returncode"]) == ("timeout", None)
    assert hung["error"].startswith("cancelled after the --timeout of 5 s; its Dask worker tcp://127.0.0.1:")
    assert hung["error"].endswith(": restart OK")
    assert "fault injection: hang" in (art / "dose_1000" / "sparse" / "train" / "ptychi.log").read_text()
