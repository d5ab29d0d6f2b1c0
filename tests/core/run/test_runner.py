"""The runner on local worker processes: isolation of failures and crashes, timeouts, resume, write-back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ptydose.core.errors import StudyError
from ptydose.core.jobs import MANIFEST_SCHEMA, options_hash, plan_jobs, write_plan
from ptydose.core.manifests import read_json, write_json
from ptydose.core.run.runner import run_manifest
from ptydose.core.run.worker import FAULT_ENV

pytestmark = pytest.mark.slow  # real pty-chi runs in spawned workers (seconds each)


def _copy_dose(smoke_data: dict, tmp_path: Path, dose: int = 1000) -> dict:
    """A private copy of one dose of the smoke data (tests may corrupt it)."""
    data = {"design": smoke_data["design"], "phase_c_root": tmp_path / "c", "phase_d_root": tmp_path / "d"}
    shutil.copytree(smoke_data["phase_c_root"] / f"dose_{dose}", data["phase_c_root"] / f"dose_{dose}")
    shutil.copytree(smoke_data["phase_d_root"] / f"dose_{dose}", data["phase_d_root"] / f"dose_{dose}")
    return data


def _plan(data: dict, art: Path, **kwargs) -> Path:
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("doses", [1000])
    plan = write_plan(plan_jobs(data["design"], data["phase_c_root"], data["phase_d_root"], art, **kwargs))
    return plan.manifest_path


def _results(manifest_path: Path) -> dict:
    return {r["job_id"]: r for r in read_json(manifest_path, MANIFEST_SCHEMA)["execution_results"]}


def test_failures_are_isolated_and_recorded(smoke_data, tmp_path, monkeypatch):
    """A corrupted input, a raising job, a worker that exits and one that hangs fail alone; the rest succeed."""
    data = _copy_dose(smoke_data, tmp_path)
    corrupt = data["phase_d_root"] / "dose_1000" / "dense" / "dense_test.npz"
    with np.load(corrupt, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["diffraction"] = -arrays["diffraction"] - 1  # breaks the contract, metadata still readable
    np.savez(corrupt, **arrays)
    manifest = _plan(data, tmp_path / "art", views=["dense", "sparse"])
    monkeypatch.setenv(FAULT_ENV, "dose_1000/sparse/train=raise,dose_1000/sparse/test=exit,"
                                  "dose_1000/dense/train=hang")
    report = run_manifest(manifest, device="cpu", workers=2, timeout=5, echo=lambda line: None)
    statuses = {o.job_id: o.status for o in report.outcomes}
    assert statuses == {"dose_1000/dense/test": "failed", "dose_1000/sparse/train": "failed",
                        "dose_1000/sparse/test": "crashed", "dose_1000/dense/train": "timeout"}
    monkeypatch.delenv(FAULT_ENV)
    # The same sweep plus a healthy job: the healthy one runs although the others fail again.
    manifest = _plan(data, tmp_path / "art", views=["dense", "sparse", "baseline"], splits=["test"])
    monkeypatch.setenv(FAULT_ENV, "dose_1000/sparse/test=segfault")
    report = run_manifest(manifest, device="cpu", workers=1, echo=lambda line: None)
    statuses = {o.job_id: o.status for o in report.outcomes}
    assert statuses == {"dose_1000/baseline/test": "ok", "dose_1000/dense/test": "failed",
                        "dose_1000/sparse/test": "crashed"}
    results = _results(manifest)
    assert results["dose_1000/dense/test"]["error"].startswith("ContractError: ")
    assert "diffraction" in results["dose_1000/dense/test"]["error"]
    assert results["dose_1000/sparse/test"]["returncode"] == -11  # SIGSEGV
    assert results["dose_1000/baseline/test"]["status"] == "ok"
    first = read_json(tmp_path / "art" / "dose_1000" / "sparse" / "train" / "result.json", "job_result")
    assert (first["status"], first["returncode"], first["error"]) == ("failed", 1, "RuntimeError: injected fault")
    hung = read_json(tmp_path / "art" / "dose_1000" / "dense" / "train" / "result.json", "job_result")
    assert (hung["status"], hung["returncode"]) == ("timeout", -9)
    log = (tmp_path / "art" / "dose_1000" / "sparse" / "test" / "ptychi.log").read_text()
    assert "fault injection: segfault" in log and "worker process died (exit code -11)" in log


def test_exit_in_worker_is_a_crash_with_its_code(smoke_data, tmp_path, monkeypatch):
    """os._exit(13) in the worker is recorded as crashed with returncode 13."""
    manifest = _plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"], splits=["test"])
    monkeypatch.setenv(FAULT_ENV, "dose_1000/sparse/test=exit")
    report = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [(o.status, o.error) for o in report.outcomes] == [
        ("crashed", "worker process died (exit code 13) while running the job")]
    assert _results(manifest)["dose_1000/sparse/test"]["returncode"] == 13


def test_resume_skips_finished_jobs_and_force_redoes_them(smoke_data, tmp_path):
    """A second run reconstructs nothing; --force redoes; a changed option redoes too."""
    art = tmp_path / "art"
    manifest = _plan(smoke_data, art, doses=[1000], views=["sparse"])
    first = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [o.status for o in first.outcomes] == ["ok", "ok"]
    result_file = art / "dose_1000" / "sparse" / "train" / "result.json"
    stamp = result_file.stat().st_mtime_ns
    second = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [(o.status, o.resumed) for o in second.outcomes] == [("ok", True), ("ok", True)]
    assert second.reconstruction_s == 0 and result_file.stat().st_mtime_ns == stamp
    assert all(r["resumed"] for r in _results(manifest).values())
    forced = run_manifest(manifest, only=["dose_1000/sparse/train"], device="cpu", force=True,
                          echo=lambda line: None)
    assert [(o.job_id, o.resumed) for o in forced.outcomes] == [("dose_1000/sparse/train", False)]
    assert result_file.stat().st_mtime_ns != stamp
    manifest = _plan(smoke_data, art, doses=[1000], views=["sparse"], num_epochs=3)  # new options hash
    third = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [o.resumed for o in third.outcomes] == [False, False]
    assert read_json(result_file, "job_result")["epochs"] == 3


def test_dry_run_records_nothing(smoke_data, tmp_path):
    """--dry-run returns the commands and leaves the manifest and artifact root untouched."""
    manifest = _plan(smoke_data, tmp_path / "art", doses=None)
    before = manifest.read_bytes()
    listing = sorted(p.name for p in (tmp_path / "art").iterdir())
    report = run_manifest(manifest, dry_run=True)
    assert len(report.dry_run_commands) == 12
    assert report.dry_run_commands[0][:2] == ["run-ptychi", "--manifest"]
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == listing
    assert "reconstruction_manifest.json" in listing and not any((tmp_path / "art").glob("dose_*"))


def test_unknown_only_job_is_bad_input(smoke_data, tmp_path):
    """--only with a job id the manifest lacks is an error naming it."""
    manifest = _plan(smoke_data, tmp_path / "art", doses=[1000])
    with pytest.raises(StudyError, match=r"--only dose_5/dense/train: no such job in the manifest"):
        run_manifest(manifest, only=["dose_5/dense/train"], dry_run=True)


def test_an_input_gone_since_planning_fails_before_submission(smoke_data, tmp_path):
    """An input deleted after planning fails its job in the parent (cheap check), noted in its log; the rest run."""
    data = _copy_dose(smoke_data, tmp_path)
    manifest = _plan(data, tmp_path / "art", views=["sparse"])
    gone = data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_train.npz"
    gone.unlink()
    report = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [(o.job_id, o.status, o.error) for o in report.outcomes] == [
        ("dose_1000/sparse/train", "failed",
         f"StudyError: {gone.resolve()}: not a regular file (moved or deleted since planning?)"),
        ("dose_1000/sparse/test", "ok", None)]
    log = (tmp_path / "art" / "dose_1000" / "sparse" / "train" / "ptychi.log").read_text()
    assert log == f"\nrun-ptychi: input check before submission failed: {report.outcomes[0].error}\n"
    result = read_json(tmp_path / "art" / "dose_1000" / "sparse" / "train" / "result.json", "job_result")
    assert (result["status"], result["returncode"], result["device"]) == ("failed", 1, None)


def test_a_manifest_planned_before_engines_were_named_resumes(smoke_data, tmp_path):
    """Jobs without an "engine" field run as pty-chi, with the options hash they always had; a rerun resumes."""
    manifest = _plan(smoke_data, tmp_path / "art", views=["sparse"], splits=["test"])
    doc = read_json(manifest, MANIFEST_SCHEMA)
    job = doc["jobs"][0]
    hash_with_engine = options_hash(job)
    assert job.pop("engine") == "ptychi"
    write_json(manifest, doc, MANIFEST_SCHEMA)
    assert options_hash(job) == hash_with_engine
    first = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [(o.status, o.resumed) for o in first.outcomes] == [("ok", False)]
    result = read_json(tmp_path / "art" / "dose_1000" / "sparse" / "test" / "result.json", "job_result")
    assert (result["engine"], result["options_hash"]) == ("ptychi", hash_with_engine)
    second = run_manifest(manifest, device="cpu", echo=lambda line: None)
    assert [(o.status, o.resumed) for o in second.outcomes] == [("ok", True)]
