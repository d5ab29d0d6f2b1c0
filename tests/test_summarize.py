"""summarize: a sweep with scored, failed, unscored and skipped jobs; the CLI's output and exit codes.

The sweeps are built here following the artifact layout run-ptychi writes (manifest, skip
summary, result.json, reconstruction.npz, contract input NPZs): each "reconstruction" is the
ground truth shifted by a known sub-pixel amount, times a phase factor, plus noise that falls
with dose, so the metrics have a known order.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import builders
from builders import example_arrays
from ptydose.core.design import load_design
from ptydose.core.geometry import position_origin
from ptydose.core.jobs import options_hash
from ptydose.core.manifests import read_json, write_json
from ptydose.core.summary import summarize
from ptydose.summarize import cli

M, N = 80, 16  # object and probe size: a sweep of 8 jobs scores in about a second
DOSES = (1000, 100000)
PLANNED_VIEWS = ("baseline", "dense")
FAILED_JOB = "dose_1000/dense/test"
FAILED_ERROR = "EngineError: LSQML diverged at epoch 3 (loss is NaN)"


def _band_limited_object(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = np.hypot(np.fft.fftfreq(M)[:, None], np.fft.fftfreq(M)[None, :]) <= 0.35

    def field() -> np.ndarray:
        spectrum = np.fft.fft2(rng.standard_normal((M, M)))
        spectrum[~keep] = 0
        out = np.fft.ifft2(spectrum).real
        return out / np.abs(out).max()

    return (0.85 + 0.12 * field()) * np.exp(1j * 0.8 * field())


def _shift(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    fy = np.fft.fftfreq(M)[:, None]
    fx = np.fft.fftfreq(M)[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1])))


def _probe() -> np.ndarray:
    r = np.hypot(*(np.indices((N, N)) - (N - 1) / 2))
    return np.exp(-(r / 5.0) ** 2).astype(np.complex64)


def _positions(split: str, view: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(14.0, 37.0, 4.0) if split == "train" else np.arange(44.0, 67.0, 4.0)
    ys, xs = np.meshgrid(rows, np.arange(14.0, 67.0, 4.0), indexing="ij")
    xs, ys = xs.ravel() + 0.25, ys.ravel() - 0.25
    if view == "dense":  # every other position: a genuine subset
        xs, ys = xs[::2], ys[::2]
    return xs, ys


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_input(path: Path, gt: np.ndarray, dose: int, view: str, split: str) -> None:
    xs, ys = _positions(split, view)
    n = xs.size
    # A complete contract _metadata (summarize checks the input's headers and metadata).
    meta = example_arrays()[1]
    meta.update(dose=dose, view=view, split=split, n_images=n, amplitude_scale=math.sqrt(dose) / N,
                position_origin=position_origin(gt.shape).tolist(),
                selection={**meta["selection"], "n_accepted": n})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, diffraction=np.zeros((n, N, N), np.float32), Y=np.zeros((n, N, N), np.complex64),
             objectGuess=gt.astype(np.complex64), probeGuess=_probe(), xcoords=xs, ycoords=ys,
             scan_index=np.arange(n, dtype=np.int64), _metadata=np.array(json.dumps(meta)))


def _selection(view: str, n: int) -> dict:
    return {"selection_strategy": "direct" if view == "baseline" else "greedy",
            "spacing_threshold": 0.0 if view == "baseline" else 3.6,
            "n_accepted": n, "n_rejected": 0 if view == "baseline" else n, "acceptance_rate": 1.0 if view == "baseline" else 0.5,
            "measured_overlap": None}


def _result(job: dict, status: str, error: str | None) -> dict:
    return {"schema_version": "1.0", "job_id": job["id"], "dose": job["dose"], "view": job["view"], "split": job["split"],
            "status": status, "returncode": 0 if status == "ok" else 1, "error": error, "device": "cpu", "wall_s": 1.5,
            "reconstruction_s": 1.2 if status == "ok" else None, "epochs": 4 if status == "ok" else 2,
            "final_loss": 0.5 if status == "ok" else None, "input_npz": job["input_npz"], "input_sha256": job["input_sha256"],
            "options_hash": options_hash(job), "algorithm": "LSQML", "num_epochs": 4, "finished": "2026-01-01T00:00:00+00:00",
            "versions": {"python": "3", "numpy": "2", "torch": None, "ptychi": None, "tools": "0"}}


def build_sweep(base: Path, design_path: Path) -> Path:
    """A 2 dose x 2 view x 2 split sweep: 7 ok, 1 failed; sparse skipped (file missing) at every dose."""
    design = load_design(design_path)
    gt = _band_limited_object(seed=11)
    c_root, d_root, root = base / "phase_c", base / "phase_d", base / "phase_f"
    root.mkdir(parents=True)
    jobs, executions, missing = [], [], []
    rng = np.random.default_rng(5)
    for dose in DOSES:
        for view in PLANNED_VIEWS:
            for split in ("train", "test"):
                jid = f"dose_{dose}/{view}/{split}"
                path = (c_root / f"dose_{dose}" / f"patched_{split}.npz" if view == "baseline"
                        else d_root / f"dose_{dose}" / view / f"{view}_{split}.npz")
                _write_input(path, gt, dose, view, split)
                n = _positions(split, view)[0].size
                job = {"id": jid, "dose": dose, "view": view, "split": split, "input_npz": str(path),
                       "input_sha256": _sha(path), "n_images": n, "output_dir": str(root / jid), "algorithm": "LSQML",
                       "num_epochs": 4, "engine_options": {"noise_model": "gaussian", "batch_size": 8, "optimize_probe": True,
                                                           "probe_update_start_epoch": 1, "seed": 123, "chunk_epochs": 2,
                                                           "wavelength_m": 1.4e-10, "object_pixel_size_m": 5e-8},
                       "selection": _selection(view, n),
                       "command": ["run-ptychi", "--manifest", str(root / "reconstruction_manifest.json"), "--only", jid]}
                jobs.append(job)
                folder = root / jid
                folder.mkdir(parents=True)
                (folder / "ptychi.log").write_text("log\n")
                failed = jid == FAILED_JOB
                result = _result(job, "failed" if failed else "ok", FAILED_ERROR if failed else None)
                write_json(folder / "result.json", result, "job_result")
                executions.append({"job_id": jid, "dose": dose, "view": view, "split": split, "status": result["status"],
                                   "returncode": result["returncode"], "error": result["error"],
                                   "log_path": str(folder / "ptychi.log"), "result_path": str(folder / "result.json"),
                                   "wall_s": 1.5, "reconstruction_s": result["reconstruction_s"], "epochs": result["epochs"],
                                   "final_loss": result["final_loss"], "device": "cpu", "finished": result["finished"],
                                   "resumed": False, "selection": job["selection"]})
                if failed:
                    continue
                # Noise falls with dose and is higher for the sparser view: a known metric order.
                sigma = (0.1 if view == "baseline" else 0.2) / np.sqrt(dose / 1000)
                noise = sigma * (rng.standard_normal((M, M)) + 1j * rng.standard_normal((M, M)))
                obj = _shift(gt, tuple(rng.uniform(-0.8, 0.8, 2))) * np.exp(1j * rng.uniform(-3, 3)) + noise
                epochs = np.arange(1, 5, dtype=np.int64)
                np.savez(folder / "reconstruction.npz", object=obj.astype(np.complex64), probe=_probe(),
                         positions_x_px=_positions(split, view)[0], positions_y_px=_positions(split, view)[1],
                         loss_epochs=epochs, loss_values=(1.0 / epochs).astype(np.float64),
                         _metadata=np.array(json.dumps({"job_id": jid, "input_sha256": job["input_sha256"],
                                                        "options_hash": options_hash(job)})))
    for dose in DOSES:
        for split in ("train", "test"):
            missing.append({"dose": dose, "view": "sparse", "split": split,
                            "reason": f"Phase D NPZ not found: {d_root}/dose_{dose}/sparse/sparse_{split}.npz"})
    manifest = {
        "schema_version": "1.0", "jobs": jobs, "total_jobs": 12, "filtered_jobs": len(jobs), "missing_jobs": missing,
        "execution_results": executions,
        "instrument": {"photon_energy_eV": 8800.0, "detector_distance_m": 2.0, "detector_pixel_size_m": 7.5e-5,
                       "exposure_time_s": 0.1, "wavelength_m": 1.4e-10, "object_pixel_size_m": 5e-8},
        "provenance": {"design": str(design_path), "design_name": design.name, "design_hash": design.design_hash,
                       "phase_c_root": str(c_root), "phase_d_root": str(d_root), "artifact_root": str(root),
                       "filters": {"doses": None, "views": None, "splits": None}, "allow_missing_phase_d": True,
                       "spacing_thresholds": design.spacing_thresholds, "created": "2026-01-01T00:00:00+00:00",
                       "tool": "plan-jobs", "tool_version": "0"},
    }
    write_json(root / "reconstruction_manifest.json", manifest, "reconstruction_manifest")
    write_json(root / "skip_summary.json", {"schema_version": "1.0", "timestamp": "2026-01-01T00:00:00+00:00",
                                            "skipped_count": len(missing), "skipped_jobs": missing,
                                            "missing_phase_d_count": len(missing)}, "skip_summary")
    return root


def _engine_options() -> dict:
    return {"noise_model": "gaussian", "batch_size": 8, "optimize_probe": True, "probe_update_start_epoch": 1,
            "seed": 123, "chunk_epochs": 2, "wavelength_m": 1.4e-10, "object_pixel_size_m": 5e-8}


def _write_manifest(root, jobs, executions, design, design_path, c_root, d_root) -> None:
    """The reconstruction manifest plan-jobs would write for crafted ``jobs`` and their results."""
    manifest = {
        "schema_version": "1.0", "jobs": jobs, "total_jobs": len(jobs), "filtered_jobs": len(jobs), "missing_jobs": [],
        "execution_results": executions,
        "instrument": {"photon_energy_eV": 8800.0, "detector_distance_m": 2.0, "detector_pixel_size_m": 7.5e-5,
                       "exposure_time_s": 0.1, "wavelength_m": 1.4e-10, "object_pixel_size_m": 5e-8},
        "provenance": {"design": str(design_path), "design_name": design.name, "design_hash": design.design_hash,
                       "phase_c_root": str(c_root), "phase_d_root": str(d_root), "artifact_root": str(root),
                       "filters": {"doses": None, "views": None, "splits": None}, "allow_missing_phase_d": False,
                       "spacing_thresholds": design.spacing_thresholds, "created": "2026-01-01T00:00:00+00:00",
                       "tool": "plan-jobs", "tool_version": "0"},
    }
    write_json(root / "reconstruction_manifest.json", manifest, "reconstruction_manifest")


def build_crafted_sweep(base: Path, design_path: Path, doses: tuple[int, ...], views: dict[str, tuple[float, float | None]],
                        replicates: int = 1, twins: dict[str, str] | None = None, seed: int = 5) -> Path:
    """A sweep whose jobs all ran ok, built in the artifact layout (replicate r >= 1 under rep<r>).

    ``views``: view -> (noise sigma at dose 1000, measured overlap recorded in its selection);
    each reconstruction is the ground truth shifted by a random sub-pixel amount, times a random
    phase factor, plus complex Gaussian noise of sigma / sqrt(dose / 1000) (independent per job).
    ``twins``: view -> an earlier view whose input and reconstructions it copies exactly (only the
    identity metadata differs), so the two are identical by construction.
    """
    from ptydose.core.jobs import input_path, job_id, run_command

    design = load_design(design_path)
    twins = twins or {}
    gt = _band_limited_object(seed=11)
    c_root, d_root, root = base / "phase_c", base / "phase_d", base / "phase_f"
    root.mkdir(parents=True)
    jobs, executions = [], []
    rng = np.random.default_rng(seed)
    objects: dict[tuple, np.ndarray] = {}
    for replicate in range(replicates):
        for dose in doses:
            for view, (sigma0, overlap) in views.items():
                for split in ("train", "test"):
                    jid = job_id(dose, view, split, None, replicate)
                    path = input_path(view, dose, split, c_root, d_root, replicate)
                    layout = "baseline" if view == "baseline" else "dense"  # every other position off baseline
                    _write_input(path, gt, dose, layout, split)
                    n = _positions(split, layout)[0].size
                    job = {"id": jid, "dose": dose, "view": view, "split": split, "input_npz": str(path),
                           "input_sha256": _sha(path), "n_images": n, "output_dir": str(root / jid), "algorithm": "LSQML",
                           "num_epochs": 4, "engine_options": _engine_options(),
                           "selection": {**_selection(layout, n), "measured_overlap": overlap},
                           "command": run_command(root / "reconstruction_manifest.json", jid)}
                    if replicates > 1:
                        job["replicate"] = replicate
                    jobs.append(job)
                    folder = root / jid
                    folder.mkdir(parents=True)
                    (folder / "ptychi.log").write_text("log\n")
                    result = _result(job, "ok", None)
                    write_json(folder / "result.json", result, "job_result")
                    executions.append({"job_id": jid, "dose": dose, "view": view, "split": split, "status": "ok",
                                       "returncode": 0, "error": None, "log_path": str(folder / "ptychi.log"),
                                       "result_path": str(folder / "result.json"), "wall_s": 1.5,
                                       "reconstruction_s": result["reconstruction_s"], "epochs": result["epochs"],
                                       "final_loss": result["final_loss"], "device": "cpu", "finished": result["finished"],
                                       "resumed": False, "selection": job["selection"]})
                    if view in twins:
                        obj = objects[(replicate, dose, twins[view], split)]
                    else:
                        sigma = sigma0 / np.sqrt(dose / 1000)
                        noise = sigma * (rng.standard_normal((M, M)) + 1j * rng.standard_normal((M, M)))
                        obj = (_shift(gt, tuple(rng.uniform(-0.8, 0.8, 2))) * np.exp(1j * rng.uniform(-3, 3))
                               + noise).astype(np.complex64)
                    objects[(replicate, dose, view, split)] = obj
                    epochs = np.arange(1, 5, dtype=np.int64)
                    np.savez(folder / "reconstruction.npz", object=obj, probe=_probe(),
                             positions_x_px=_positions(split, layout)[0], positions_y_px=_positions(split, layout)[1],
                             loss_epochs=epochs, loss_values=(1.0 / epochs).astype(np.float64),
                             _metadata=np.array(json.dumps({"job_id": jid, "input_sha256": job["input_sha256"],
                                                            "options_hash": options_hash(job)})))
    _write_manifest(root, jobs, executions, design, design_path, c_root, d_root)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, smoke_design_path) -> Path:
    return build_sweep(tmp_path_factory.mktemp("sweep"), smoke_design_path)


@pytest.fixture(scope="module")
def summarized(sweep):
    """One summarize run over the shared sweep (written to its default folder)."""
    return summarize(sweep)


def _job(summary: dict, jid: str) -> dict:
    return next(j for j in summary["jobs"] if j["job_id"] == jid)


def test_summary_reports_scored_failed_and_skipped_jobs(summarized, sweep):
    """7 scored, the failed job with its error line, 4 skipped sparse jobs with their reasons."""
    s = summarized.summary
    assert s["counts"] == {"design_jobs": 12, "planned": 8, "scored": 7, "failed": 1, "not_run": 0, "skipped": 4}
    assert s["failures"] == [{"job_id": FAILED_JOB, "status": "failed", "returncode": 1, "error": FAILED_ERROR,
                              "log_path": f"{FAILED_JOB}/ptychi.log"}]
    assert _job(s, FAILED_JOB)["metrics"] is None
    assert [(k["dose"], k["view"], k["split"]) for k in s["skips"]] == [
        (1000, "sparse", "train"), (1000, "sparse", "test"), (100000, "sparse", "train"), (100000, "sparse", "test")]
    assert all(k["reason"].startswith("Phase D NPZ not found: ") and k["source"] == "skip_summary" for k in s["skips"])
    assert [j["job_id"] for j in s["jobs"]][:4] == ["dose_1000/baseline/train", "dose_1000/baseline/test",
                                                    "dose_1000/dense/train", "dose_1000/dense/test"]


def test_summary_json_validates_and_round_trips(summarized):
    """summary.json is schema-valid and equals the returned document."""
    assert read_json(summarized.summary_path, "summary") == json.loads(json.dumps(summarized.summary))
    assert summarized.summary_path == summarized.out_dir / "summary.json"
    assert summarized.out_dir.name == "summary"


def test_metrics_follow_the_built_in_noise_order(summarized):
    """Lower dose and the sparser view (more noise in the fixture) score worse on every headline metric."""
    s = summarized.summary
    for view in ("baseline", "dense"):
        low, high = _job(s, f"dose_1000/{view}/train")["flat"], _job(s, f"dose_100000/{view}/train")["flat"]
        assert low["phase_rmse"] > high["phase_rmse"]
        assert low["phase_ssim"] < high["phase_ssim"]
        assert low["complex_correlation"] < high["complex_correlation"]
    base, dense = _job(s, "dose_1000/baseline/train")["flat"], _job(s, "dose_1000/dense/train")["flat"]
    assert base["phase_rmse"] < dense["phase_rmse"]
    for j in s["jobs"]:
        if j["metrics"] is not None:
            # The fixture's shifts are below 0.8 px; registration must undo them.
            assert max(abs(v) for v in j["metrics"]["registration_shift_px"]) < 0.9


def test_aggregates_per_dose_view_split_and_per_dose_view(summarized):
    """Per (dose, view): mean/min/max over the scored splits; the failed split is left out."""
    s = summarized.summary
    groups = {(g["dose"], g["view"]): g for g in s["aggregates"]["by_dose_view"]}
    base = groups[(1000, "baseline")]
    values = [_job(s, f"dose_1000/baseline/{sp}")["flat"]["phase_rmse"] for sp in ("train", "test")]
    assert base["n_scored"] == 2 and base["splits"] == ["train", "test"]
    assert base["metrics"]["phase_rmse"] == {"mean": pytest.approx(np.mean(values)), "min": min(values), "max": max(values)}
    dense = groups[(1000, "dense")]
    assert dense["n_scored"] == 1 and dense["splits"] == ["train"]
    per_split = {(g["dose"], g["view"], g["split"]): g for g in s["aggregates"]["by_dose_view_split"]}
    assert per_split[(1000, "dense", "test")]["n_scored"] == 0
    assert all(v is None for v in per_split[(1000, "dense", "test")]["metrics"].values())


def test_summary_markdown_and_figures(summarized):
    """summary.md has the tables, the failure with its error, the skips, the figures and the commands."""
    text = summarized.markdown_path.read_text()
    for needle in ("## Per (dose, view): mean ± 95 % CI over replicates × splits", "## Per job", FAILED_ERROR,
                   "`dose_1000/sparse/train`: Phase D NPZ not found", "## Reproduce", "summarize --artifact-root",
                   "plan-jobs --design", "![metrics_vs_dose](figures/metrics_vs_dose.png)",
                   "| 1000 | dense | - | 1 | 0.2347 | 15.37 |",
                   "- dose 1000: baseline vs dense (1 pair): better on 0, worse on 0, not resolved on 10 of 10 metrics",
                   "- dose 100000: baseline vs dense (2 pairs): better on 7, worse on 0, not resolved on 3 of 10 metrics "
                   "(not resolved: phase MS-SSIM, FRC half-bit / Nyquist, FRC resolution (px))"):
        assert needle in text, needle
    expected = {"object_phase_train.png", "object_amplitude_train.png", "object_phase_test.png",
                "object_amplitude_test.png", "metrics_vs_dose.png", "frc_curves.png", "loss_curves.png"}
    assert {Path(f).name for f in summarized.summary["figures"]} == expected
    for name in expected:
        assert (summarized.out_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_the_table_and_reports_failures_on_stderr(sweep, tmp_path):
    """Exit 0; stdout is the metric table (a row per job), stderr names the failure and the summary path."""
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["--artifact-root", str(sweep), "--out", str(out)], prog_name="summarize")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["job", "status", "phase", "RMSE"]
    assert len(lines) == 1 + 8
    assert any(line.startswith(FAILED_JOB) and " failed " in line for line in lines)
    assert f"{FAILED_JOB}: failed: {FAILED_ERROR}" in result.stderr
    assert "7 scored, 1 failed, 0 not run, 4 skipped" in result.stderr
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()


def test_cli_json_prints_the_summary_document(sweep, tmp_path):
    """--json prints summary.json's document; --remove-ramp is recorded in the settings."""
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["--artifact-root", str(sweep), "--out", str(out), "--json", "--remove-ramp"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "summary.json").read_text())
    assert doc["settings"]["remove_ramp"] is True
    assert doc["reproduce"][-1].endswith("--remove-ramp")
    assert all(j["metrics"]["phase_ramp_rad_per_px"] is not None for j in doc["jobs"] if j["metrics"])


def _copy(sweep: Path, tmp_path: Path) -> Path:
    """A private copy of the sweep's artifact root (the inputs stay shared: paths are absolute)."""
    root = tmp_path / "phase_f"
    shutil.copytree(sweep, root, ignore=shutil.ignore_patterns("summary"))
    return root


def test_missing_outputs_are_reported_not_fatal(sweep, tmp_path):
    """No result.json -> not run; no reconstruction.npz -> unscored; a changed input -> unscored."""
    root = _copy(sweep, tmp_path)
    manifest = json.loads((root / "reconstruction_manifest.json").read_text())
    manifest["execution_results"] = [e for e in manifest["execution_results"] if e["job_id"] != "dose_100000/dense/test"]
    (root / "reconstruction_manifest.json").write_text(json.dumps(manifest))
    (root / "dose_100000/dense/test/result.json").unlink()
    (root / "dose_100000/dense/train/reconstruction.npz").unlink()
    s = summarize(root, out_dir=tmp_path / "out", design_path=None).summary
    assert s["not_run"] == ["dose_100000/dense/test"]
    assert _job(s, "dose_100000/dense/train")["status"] == "unscored"
    assert _job(s, "dose_100000/dense/train")["error"] == "reconstruction.npz missing in dose_100000/dense/train"
    assert s["counts"]["scored"] == 5 and s["counts"]["failed"] == 2 and s["counts"]["not_run"] == 1


def test_result_of_other_options_is_not_scored(sweep, tmp_path):
    """A result.json whose options hash differs from the planned job's (a replan) is unscored, not scored."""
    root = _copy(sweep, tmp_path)
    result_path = root / "dose_1000/baseline/train/result.json"
    doc = json.loads(result_path.read_text())
    doc["options_hash"] = "f" * 64
    result_path.write_text(json.dumps(doc))
    s = summarize(root, out_dir=tmp_path / "out", design_path=None).summary
    assert _job(s, "dose_1000/baseline/train")["status"] == "unscored"
    assert "other options" in _job(s, "dose_1000/baseline/train")["error"]


@pytest.mark.parametrize("damage, message", [
    ("bad_json", "result.json: not valid JSON"),
    ("schema", "result.json: status: 'finished' is not one of"),
    ("pickle", "reconstruction.npz: object: object array: loading it would need pickle, so it was not loaded"),
    ("missing_key", "reconstruction.npz: object: key missing"),
    ("truncated", "reconstruction.npz: (file): truncated or damaged zip archive"),
    ("wrong_shape", "reconstruction.npz: object: shape (40, 40) differs from the ground truth (80, 80)"),
    ("text", "reconstruction.npz: (file): not a zip archive (expected an NPZ, found text)"),
    ("bare_npy", "reconstruction.npz: (file): a bare .npy array, not an NPZ archive"),
    ("huge", "reconstruction.npz: object: too large to load"),
    ("bomb", "reconstruction.npz: object: compression ratio"),
    ("encrypted", "reconstruction.npz: object: encrypted zip member"),
    ("bzip2", "reconstruction.npz: object: unsupported zip compression method"),
    ("checkpoint_shape", "reconstruction.npz: checkpoint_objects: shape (2, 40, 40), expected (2, 80, 80)"),
    ("checkpoint_order", "reconstruction.npz: checkpoint_epochs: expected increasing epochs >= 1, got [4, 2]"),
    ("checkpoint_alone", "reconstruction.npz: checkpoint_objects: key missing (the file has checkpoint_epochs)"),
    ("checkpoint_many", "reconstruction.npz: checkpoint_epochs: expected 1 to 32 epochs (run-ptychi keeps at most 32), "
                        "got shape (33,)"),
])
def test_bad_files_are_one_line_errors(sweep, tmp_path, damage, message):
    """A malformed result.json or a foreign reconstruction.npz: exit 1, one line naming the file."""
    root = _copy(sweep, tmp_path)
    folder = root / "dose_1000" / "baseline" / "train"
    if damage == "bad_json":
        (folder / "result.json").write_text("{not json")
    elif damage == "schema":
        doc = json.loads((folder / "result.json").read_text())
        doc["status"] = "finished"
        (folder / "result.json").write_text(json.dumps(doc))
    elif damage == "pickle":
        np.savez(folder / "reconstruction.npz", object=np.array([{"a": 1}], dtype=object))
    elif damage == "missing_key":
        np.savez(folder / "reconstruction.npz", probe=np.zeros((N, N), np.complex64))
    elif damage == "truncated":
        data = (folder / "reconstruction.npz").read_bytes()
        (folder / "reconstruction.npz").write_bytes(data[: len(data) // 2])
    elif damage == "wrong_shape":
        with np.load(folder / "reconstruction.npz") as npz:
            arrays = dict(npz)
        arrays["object"] = arrays["object"][:40, :40]
        np.savez(folder / "reconstruction.npz", **arrays)
    elif damage.startswith("checkpoint_"):
        with np.load(folder / "reconstruction.npz") as npz:
            arrays = dict(npz)
        side = 40 if damage == "checkpoint_shape" else M
        epochs = {"checkpoint_order": [4, 2], "checkpoint_many": list(range(1, 34))}.get(damage, [2, 4])
        arrays["checkpoint_epochs"] = np.array(epochs)
        if damage != "checkpoint_alone":  # a crafted file may keep more than run-ptychi ever writes: never scored
            arrays["checkpoint_objects"] = np.ones((len(epochs), side, side), np.complex64)
        np.savez(folder / "reconstruction.npz", **arrays)
    elif damage == "text":
        (folder / "reconstruction.npz").write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif damage == "bare_npy":
        np.save(open(folder / "reconstruction.npz", "wb"), np.zeros((N, N), np.complex64))
    else:  # crafted zips: the other members as they were, `object` replaced byte by byte
        with np.load(folder / "reconstruction.npz") as npz:
            arrays = dict(npz)
        members = [builders.RawMember(f"{k}.npy", builders.member_bytes(v)) for k, v in arrays.items() if k != "object"]
        if damage == "huge":  # declares 200000 x 200000 complex64 (298 GiB) over a hole in a sparse file
            header = builders.npy_header("<c8", (200000, 200000))
            crafted = builders.RawMember("object.npy", header, zeros=200000 * 200000 * 8, crc=0)  # never read
        elif damage == "bomb":  # 256 MiB of zeros deflated to a few hundred kB
            header = builders.npy_header("<c8", (4096, 8192))
            payload, crc = builders.deflated_zeros(header, 4096 * 8192 * 8)
            crafted = builders.RawMember("object.npy", payload, zipfile.ZIP_DEFLATED,
                                         file_size=len(header) + 4096 * 8192 * 8, crc=crc)
        else:
            raw = builders.member_bytes(arrays["object"])
            method = zipfile.ZIP_BZIP2 if damage == "bzip2" else zipfile.ZIP_STORED
            crafted = builders.RawMember("object.npy", raw, method, flags=1 if damage == "encrypted" else 0)
        if damage == "huge" and not builders.sparse_files_supported(folder):
            pytest.skip("no sparse files on this filesystem")
        builders.write_raw_zip(folder / "reconstruction.npz", [crafted, *members])
    result = CliRunner().invoke(cli, ["--artifact-root", str(root)])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert message in result.output
    assert "Traceback" not in result.output


def test_not_an_artifact_root_and_missing_design(tmp_path, sweep):
    """A folder without a manifest, a missing folder, and a manifest whose design is gone: exit 1."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--artifact-root", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path}: no reconstruction_manifest.json: not an artifact root (run plan-jobs first)\n"
    result = runner.invoke(cli, ["--artifact-root", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "artifact root not found" in result.output
    root = _copy(sweep, tmp_path)
    manifest = json.loads((root / "reconstruction_manifest.json").read_text())
    manifest["provenance"]["design"] = str(tmp_path / "gone.json")
    (root / "reconstruction_manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(cli, ["--artifact-root", str(root)])
    assert result.exit_code == 1
    assert "gone.json: design file not found (the manifest's provenance/design; pass --design)" in result.output


def test_design_option_overrides_and_changed_design_is_noted(sweep, tmp_path, smoke_design_path):
    """--design supplies the metric settings; a design differing from the planned hash is noted."""
    design = json.loads(smoke_design_path.read_text())
    design["metrics"]["ms_ssim_sigma"] = 1.5
    path = tmp_path / "design.json"
    path.write_text(json.dumps(design))
    s = summarize(sweep, out_dir=tmp_path / "out", design_path=path, make_figures=False).summary
    assert s["settings"]["ms_ssim_sigma"] == 1.5
    assert any("changed since planning" in n for n in s["notes"])


def test_help_has_an_example_and_usage_errors_exit_2():
    """--help shows the example command; a missing --artifact-root is a usage error (exit 2)."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"], prog_name="summarize")
    assert result.exit_code == 0
    assert "Example:\n    summarize --artifact-root tmp/study/phase_f\n" in result.output
    result = runner.invoke(cli, [], prog_name="summarize")
    assert result.exit_code == 2 and "Missing option '--artifact-root'" in result.output


# --------------------------------------------------------------------------- convergence, end to end

TWO_RECONSTRUCTORS = [
    {"name": "lsqml", "algorithm": "LSQML", "num_epochs": 8, "options": {"chunk_epochs": 2}},
    # A threshold no run can meet (the best loss would have to fall by 100 % over 2 epochs): the
    # rule stops at the first chunk end it may, min_epochs = 4, and never before.
    {"name": "adam", "engine": "cdtools", "algorithm": "ADAM", "num_epochs": 8,
     "options": {"batch_size": 8, "chunk_epochs": 2},
     "stopping": {"rule": "loss_plateau", "window_epochs": 2, "min_relative_improvement": 1.0, "min_epochs": 4}},
]


@pytest.fixture(scope="module")
def real_sweep(smoke_data, tmp_path_factory) -> tuple[Path, dict]:
    """Two real reconstructors (pty-chi LSQML, CDTools Adam with a stopping rule) on one cell, run and summarized."""
    from ptydose.core.jobs import plan_jobs, write_plan
    from ptydose.run_ptychi import cli as run_cli

    base = tmp_path_factory.mktemp("real_sweep")
    raw = json.loads(Path(smoke_data["design"]).read_text())
    raw["reconstructors"] = TWO_RECONSTRUCTORS
    design = base / "design.json"
    design.write_text(json.dumps(raw))
    plan = write_plan(plan_jobs(design, smoke_data["phase_c_root"], smoke_data["phase_d_root"], base / "art",
                                doses=[100000], views=["dense"], splits=["train"]))
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return base / "art", summarize(base / "art").summary


@pytest.mark.slow
def test_checkpoints_rescored_independently_match_the_summary(real_sweep):
    """Each stored checkpoint, scored again with metrics.compare, gives summary.json's convergence values.

    Same code, same inputs, same settings: the values agree to float round-off (1e-9 relative
    covers the JSON round trip and nothing else; the registration is deterministic).
    """
    from ptydose.core import metrics
    from ptydose.core.summary import METRICS, flat_metrics, load_ground_truth

    root, summary = real_sweep
    design = load_design(Path(summary["provenance"]["design"]))
    settings = metrics.MetricSettings(ms_ssim_sigma=float(design.metrics["ms_ssim_sigma"]),
                                      illumination_threshold=float(design.metrics["illumination_threshold"]))
    checked = 0
    for job in summary["jobs"]:
        assert job["status"] == "scored"
        with np.load(root / job["job_id"] / "reconstruction.npz", allow_pickle=False) as rec:
            epochs, objects, seconds = rec["checkpoint_epochs"], rec["checkpoint_objects"], rec["checkpoint_seconds"]
            final = rec["object"]
        assert [e["epoch"] for e in job["convergence"]] == epochs.tolist()
        assert epochs[-1] == job["epochs"]
        np.testing.assert_array_equal(objects[-1], final)  # the last checkpoint is the final object
        # result.json rounds its seconds to 0.1 ms.
        assert np.all(np.diff(seconds) > 0) and seconds[-1] == pytest.approx(job["reconstruction_s"], abs=1e-4)
        truth = load_ground_truth(Path(next(j for j in read_json(root / "reconstruction_manifest.json",
                                                                 "reconstruction_manifest")["jobs"]
                                            if j["id"] == job["job_id"])["input_npz"]))
        for entry, obj, second in zip(job["convergence"], objects, seconds):
            again = flat_metrics(metrics.compare(obj, truth["objectGuess"], truth["probeGuess"], truth["xcoords"],
                                                 truth["ycoords"], settings).metrics)
            for name in METRICS:
                if again[name] is None:
                    assert entry[name] is None
                else:
                    assert entry[name] == pytest.approx(again[name], rel=1e-9, abs=1e-12), (job["job_id"], name)
            assert entry["seconds"] == pytest.approx(float(second), rel=1e-12)
            checked += 1
        assert job["convergence"][-1]["phase_ssim"] == job["flat"]["phase_ssim"]
        best = max(job["convergence"], key=lambda e: (e["phase_ssim"], -e["epoch"]))
        assert job["best_epoch"] == best["epoch"]
    assert checked == 4 + 2  # lsqml: epochs 2, 4, 6, 8; adam: 2, 4 (stopped)


@pytest.mark.slow
def test_stopping_rule_and_reconstructors_reach_the_summary(real_sweep):
    """The stopped job says so; rows, aggregates, tables and the convergence figure carry the reconstructor."""
    root, summary = real_sweep
    jobs = {j["reconstructor"]: j for j in summary["jobs"]}
    assert sorted(jobs) == ["adam", "lsqml"]
    adam, lsqml = jobs["adam"], jobs["lsqml"]
    assert (adam["job_id"], adam["epochs"], adam["epochs_planned"], adam["stopped_early"]) == (
        "dose_100000/dense/train/adam", 4, 8, True)
    assert adam["stop_reason"].startswith("loss_plateau: the best loss improved by ")
    assert (lsqml["epochs"], lsqml["epochs_planned"], lsqml["stopped_early"], lsqml["stop_reason"]) == (8, 8, False, None)
    assert "run-ptychi: stopped after 4 of 8 epochs: loss_plateau" in (root / adam["job_id"] / "ptychi.log").read_text()
    assert {(g["view"], g["reconstructor"]) for g in summary["aggregates"]["by_dose_view"]} == {
        ("dense", "adam"), ("dense", "lsqml")}
    assert "convergence_dose_100000.png" in {Path(f).name for f in summary["figures"]}
    figure = root / "summary" / "figures" / "convergence_dose_100000.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    markdown = (root / "summary" / "summary.md").read_text()
    assert "## Convergence" in markdown and "| dose | view | reconstructor | overlap | n |" in markdown
    # One job per reconstructor: one pair, so the reconstructor comparison resolves nothing.
    assert ("- dose 100000, dense: lsqml vs adam (1 pair): better on 0, worse on 0, not resolved on 10 of 10 metrics"
            in markdown)
    assert f"| {adam['job_id']} | adam | 4 / 8 | 2 |" in markdown


# --------------------------------------------------------------------------- convergence flags


def _trace(values: list[float], every: int = 10, headline: str = "phase_ssim") -> list[dict]:
    return [{"epoch": every * (i + 1), "seconds": float(i), headline: v} for i, v in enumerate(values)]


@pytest.mark.parametrize(("values", "best", "under", "noise"), [
    # Still rising over the last 20 % (epochs 80 -> 100: +0.02 > 0.005).
    ([0.3, 0.4, 0.5, 0.55, 0.6, 0.62, 0.64, 0.66, 0.67, 0.68], 100, True, False),
    # Flat at the end (+0.002 <= 0.005): converged.
    ([0.3, 0.5, 0.6, 0.65, 0.66, 0.665, 0.667, 0.668, 0.669, 0.670], 100, False, False),
    # Peaked at epoch 50, 0.03 worse at the end: fitting noise, and not improving.
    ([0.3, 0.5, 0.6, 0.65, 0.68, 0.67, 0.66, 0.66, 0.655, 0.65], 50, False, True),
    # Jitter within the tolerance either way: no flag; a tie for best goes to the earliest epoch.
    ([0.5, 0.6, 0.62, 0.623, 0.621, 0.623, 0.62, 0.622, 0.621, 0.619], 40, False, False),
])
def test_convergence_flags_on_constructed_traces(values, best, under, noise):
    """best_epoch, under_converged and fitting_noise by the stated rule (LAST_FRACTION 0.2, tolerance 0.005)."""
    from ptydose.core.summary import CONVERGENCE_TOLERANCE, LAST_FRACTION, convergence_flags

    assert (LAST_FRACTION, CONVERGENCE_TOLERANCE) == (0.2, 0.005)
    assert convergence_flags(_trace(values), "phase_ssim") == {
        "best_epoch": best, "under_converged": under, "fitting_noise": noise}


def test_convergence_flags_follow_the_metric_direction_and_missing_data():
    """A lower-is-better headline flips the comparisons; without a reference checkpoint or a trace, None."""
    from ptydose.core.summary import convergence_flags

    falling_rmse = _trace([0.5, 0.4, 0.3, 0.25, 0.2], headline="phase_rmse")  # still improving at the end
    assert convergence_flags(falling_rmse, "phase_rmse") == {"best_epoch": 50, "under_converged": True,
                                                             "fitting_noise": False}
    assert convergence_flags(_trace([0.6]), "phase_ssim") == {"best_epoch": 10, "under_converged": None,
                                                              "fitting_noise": False}
    assert convergence_flags(None, "phase_ssim") == {"best_epoch": None, "under_converged": None, "fitting_noise": None}
    unscored_end = _trace([0.5, 0.6]) + [{"epoch": 30, "seconds": 2.0, "phase_ssim": None}]
    assert convergence_flags(unscored_end, "phase_ssim") == {"best_epoch": 20, "under_converged": None,
                                                             "fitting_noise": None}


def test_summary_of_a_sweep_without_checkpoints_has_no_convergence_parts(summarized):
    """Reconstructions without checkpoints (older run-ptychi): null traces and flags, no convergence figure or table."""
    summary = summarized.summary
    for job in summary["jobs"]:
        assert (job["convergence"], job["best_epoch"], job["under_converged"], job["fitting_noise"]) == (
            None, None, None, None)
        assert job["reconstructor"] is None and "reconstructor" not in json.dumps(summary["aggregates"])
    assert not any("convergence" in f for f in summary["figures"])
    assert "## Convergence" not in summarized.markdown_path.read_text()
    assert summary["settings"]["convergence"] == {"headline_metric": "phase_ssim", "last_fraction": 0.2,
                                                  "tolerance": 0.005}
