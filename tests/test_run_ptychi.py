"""run-ptychi CLI: a real tiny run end to end, dry run, exit codes, and a kill mid-sweep."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ptychi_checks import check_product_layout, illuminated, phase_rmse

from ptydose.core.jobs import plan_jobs, write_plan
from ptydose.core.manifests import read_json
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.worker import FAULT_ENV
from ptydose.run_ptychi import cli

RUN_PTYCHI = Path(sys.executable).parent / "run-ptychi"


def _plan(data: dict, art: Path, **kwargs) -> Path:
    return write_plan(plan_jobs(data["design"], data["phase_c_root"], data["phase_d_root"], art, **kwargs)).manifest_path


def test_dry_run_prints_commands_and_runs_nothing(smoke_data, tmp_path):
    """--dry-run prints `[DRY RUN] <command>` per job (shell-quoted), exit 0, manifest untouched."""
    manifest = _plan(smoke_data, tmp_path / "art dir")
    before = manifest.read_bytes()
    result = CliRunner().invoke(cli, ["--manifest", str(manifest), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert lines[0] == f"[DRY RUN] run-ptychi --manifest '{manifest}' --only dose_1000/baseline/train"
    assert manifest.read_bytes() == before
    assert not (tmp_path / "art dir" / "dose_1000").exists()


def test_bad_manifest_is_exit_1(tmp_path):
    """A missing or invalid manifest is exit 1 with one line naming the file and the JSON path."""
    result = CliRunner().invoke(cli, ["--manifest", str(tmp_path / "none.json")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'none.json'}: JSON file not found"
    bad = tmp_path / "reconstruction_manifest.json"
    bad.write_text(json.dumps({"schema_version": "1.0", "jobs": []}))
    result = CliRunner().invoke(cli, ["--manifest", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}: (root): 'total_jobs' is a required property")


@pytest.mark.slow
def test_real_run_writes_every_output(smoke_data, tmp_path):
    """One real LSQML job via the CLI: all five outputs, valid JSON, a better-than-flat object, exit 0."""
    art = tmp_path / "art"
    manifest = _plan(smoke_data, art, doses=[100000], views=["baseline"], splits=["train"])
    result = CliRunner().invoke(cli, ["--manifest", str(manifest), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"] == {"ok": 1, "failed": 0, "timeout": 0, "crashed": 0, "resumed": 0}
    assert [(j["job_id"], j["status"], j["resumed"], j["error"]) for j in report["jobs"]] == [
        ("dose_100000/baseline/train", "ok", False, None)]
    out = art / "dose_100000" / "baseline" / "train"
    assert sorted(p.name for p in out.iterdir()) == ["losses.csv", "product.h5", "ptychi.log",
                                                     "reconstruction.npz", "result.json"]
    job_result = read_json(out / "result.json", "job_result")
    # The report's task.run seconds are the job's own, and the overhead ratio is wall over them (as
    # defined in RunReport.to_dict): exact up to float division.
    assert report["reconstruction_s"] == job_result["reconstruction_s"] > 0
    assert report["overhead_ratio"] == pytest.approx(report["wall_s"] / job_result["reconstruction_s"], rel=1e-12)
    assert (job_result["status"], job_result["returncode"], job_result["epochs"]) == ("ok", 0, 8)
    assert job_result["device"] == "cpu" and job_result["versions"]["ptychi"] == "2.2.0"
    assert (job_result["engine"], job_result["algorithm"]) == ("ptychi", "LSQML")
    log = (out / "ptychi.log").read_text()
    assert "run-ptychi: epoch 4/8" in log and "run-ptychi: epoch 8/8" in log
    assert "INFO ptychi" in log  # pty-chi's own logging is captured too
    with open(out / "losses.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "loss"] and len(rows) == 9
    with np.load(out / "reconstruction.npz", allow_pickle=False) as rec:
        assert rec["object"].dtype == np.complex64 and rec["probe"].dtype == np.complex64
        assert rec["loss_epochs"].dtype == np.int64 and rec["positions_x_px"].dtype == np.float64
        meta = json.loads(str(rec["_metadata"]))
        obj = rec["object"]
        np.testing.assert_allclose(rec["loss_values"], [float(r[1]) for r in rows[1:]])
    assert meta["job_id"] == "dose_100000/baseline/train"
    assert meta["options_hash"] == job_result["options_hash"] and meta["engine"] == "ptychi"
    inputs = load_inputs(meta["input_npz"])
    with np.load(meta["input_npz"], allow_pickle=False) as npz:
        truth = npz["objectGuess"]
    mask = illuminated(inputs.probe, inputs.xcoords, inputs.ycoords, inputs.object_shape)
    # Same tolerance reasoning as the engine test: a real reconstruction beats half the flat error.
    assert phase_rmse(obj, truth, mask) < 0.5 * phase_rmse(np.ones_like(truth), truth, mask)
    with check_product_layout(out / "product.h5", truth.shape, inputs.probe.shape, len(inputs.xcoords), 8) as h5:
        assert h5.attrs["probe_photon_count"] == 100000
        np.testing.assert_array_equal(h5["object"][0], obj)
    entry = read_json(manifest, "reconstruction_manifest")["execution_results"][0]
    assert entry["job_id"] == "dose_100000/baseline/train" and entry["status"] == "ok"
    assert entry["selection"]["selection_strategy"] == "direct"
    assert entry["log_path"] == str(out / "ptychi.log")


@pytest.mark.slow
def test_failed_job_exits_3(smoke_data, tmp_path, monkeypatch):
    """A failing job makes the run exit 3 while the other job succeeds."""
    manifest = _plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"], num_epochs=2)
    monkeypatch.setenv(FAULT_ENV, "dose_1000/sparse/train=raise")
    result = CliRunner().invoke(cli, ["--manifest", str(manifest), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines() == [
        "dose_1000/sparse/train\tfailed\tRuntimeError: injected fault",
        next(line for line in result.stdout.splitlines() if line.startswith("dose_1000/sparse/test\tok\t")),
    ]


def _wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_run_leaves_valid_json_and_rerun_finishes(smoke_data, tmp_path):
    """SIGKILL mid-sweep: manifest and results stay valid, the worker dies too, the rerun redoes nothing done."""
    art = tmp_path / "art"
    manifest = _plan(smoke_data, art, doses=[1000], views=["sparse"], num_epochs=2)
    first_result = art / "dose_1000" / "sparse" / "train" / "result.json"
    hung_log = art / "dose_1000" / "sparse" / "test" / "ptychi.log"
    env = {**os.environ, FAULT_ENV: "dose_1000/sparse/test=hang"}
    proc = subprocess.Popen([str(RUN_PTYCHI), "--manifest", str(manifest), "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # result.json is written before the manifest's write-back: wait for both.
        _wait_for(lambda: first_result.exists() and hung_log.exists()
                  and "fault injection: hang" in hung_log.read_text()
                  and '"dose_1000/sparse/train"' in manifest.read_text().split('"execution_results"', 1)[1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    worker_pid = int(hung_log.read_text().split("(worker pid ", 1)[1].split(")", 1)[0])
    _wait_for(lambda: not Path(f"/proc/{worker_pid}").exists() or "zombie" in _proc_state(worker_pid), 30)
    stamp = first_result.stat().st_mtime_ns
    results = {r["job_id"]: r for r in read_json(manifest, "reconstruction_manifest")["execution_results"]}
    assert list(results) == ["dose_1000/sparse/train"] and results["dose_1000/sparse/train"]["status"] == "ok"
    assert not list(art.rglob("*.tmp"))
    rerun = subprocess.run([str(RUN_PTYCHI), "--manifest", str(manifest), "--device", "cpu"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[0] == "dose_1000/sparse/train\tskipped (resumed)"
    assert rerun.stdout.splitlines()[1].startswith("dose_1000/sparse/test\tok\t")
    assert first_result.stat().st_mtime_ns == stamp
    results = {r["job_id"]: r for r in read_json(manifest, "reconstruction_manifest")["execution_results"]}
    assert {k: v["status"] for k, v in results.items()} == {"dose_1000/sparse/train": "ok",
                                                          "dose_1000/sparse/test": "ok"}


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (FileNotFoundError, IndexError):
        return "gone"
