"""The Make recipes users type: dry-run and real-run, end to end through the five tools."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ptydose.core.contract import read_contract_npz
from ptydose.core.manifests import read_json


def _make(repo_root, *args, env_extra=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(["make", "--no-print-directory", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_make_help_lists_every_target(repo_root):
    """`make` alone is `make help` and lists each target with its ## line."""
    result = _make(repo_root)
    assert result.returncode == 0, result.stderr
    for target in ("help", "venv", "test", "lint", "dry-run", "real-run", "realistic-run", "grid-run", "smoke-grid",
                   "ladder-run", "data", "doc-sync",
                   "doc-check", "bench", "clean"):
        assert f"  {target} " in result.stdout, target


@pytest.mark.slow
def test_make_dry_run_plans_and_prints_commands(repo_root, tmp_path):
    """`make dry-run`: smoke design generated, validated, planned; one [DRY RUN] line per job; log kept."""
    out, reports = tmp_path / "smoke", tmp_path / "reports"
    result = _make(repo_root, "dry-run", f"SMOKE_OUT={out}", f"REPORTS={reports}")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = read_json(out / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    dry_lines = [line for line in result.stdout.splitlines() if line.startswith("[DRY RUN] ")]
    assert len(dry_lines) == manifest["total_jobs"] == 12
    assert not manifest["execution_results"]
    assert not list((out / "phase_f").glob("dose_*/*/*/result.json"))
    logs = list(reports.glob("*/cli/dry_run.log"))
    assert len(logs) == 1 and "[DRY RUN]" in logs[0].read_text()


@pytest.mark.slow
def test_make_dry_run_fails_when_a_step_fails(repo_root, tmp_path):
    """A failing step (a design that does not exist) makes `make dry-run` exit non-zero, log still kept."""
    out, reports = tmp_path / "smoke", tmp_path / "reports"
    result = _make(repo_root, "dry-run", f"SMOKE_DESIGN={tmp_path / 'missing.json'}", f"SMOKE_OUT={out}",
                   f"REPORTS={reports}")
    assert result.returncode != 0
    assert f"{tmp_path / 'missing.json'}: design file not found" in result.stdout + result.stderr
    assert not (out / "phase_f").exists()
    assert len(list(reports.glob("*/cli/dry_run.log"))) == 1


@pytest.mark.slow
def test_make_dry_run_works_with_spaces_in_paths(repo_root, tmp_path):
    """Output and report folders whose names hold spaces (and a quote) are passed whole to every tool."""
    out, reports = tmp_path / "my smoke's run", tmp_path / "the reports"
    result = _make(repo_root, "dry-run", f"SMOKE_OUT={out}", f"REPORTS={reports}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "phase_f" / "reconstruction_manifest.json").is_file()
    assert len(list(reports.glob("*/cli/dry_run.log"))) == 1
    assert not (tmp_path / "my").exists()


@pytest.mark.slow
def test_make_real_run_reconstructs_and_summarizes(repo_root, tmp_path):
    """`make real-run` (smoke design, 2 epochs): data made, 6 jobs ok, summary written, log kept."""
    out, reports = tmp_path / "study", tmp_path / "reports"
    args = ["real-run", "DESIGN=plans/smoke/design.json", "DOSE=1000", "EPOCHS=2", "WORKERS=2",
            f"OUT={out}", f"REPORTS={reports}"]
    result = _make(repo_root, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = read_json(out / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    assert len(manifest["jobs"]) == 6
    assert sorted(r["status"] for r in manifest["execution_results"]) == ["ok"] * 6
    summary = json.loads((out / "phase_f" / "summary" / "summary.json").read_text())
    assert len(summary["jobs"]) == 6
    assert (out / "phase_f" / "summary" / "summary.md").is_file()
    assert list(reports.glob("*/real_run/dose_1000/run.log"))
    # The data are a file target: a second run generates nothing and redoes no job.
    outputs = sorted((out / "phase_f").glob("dose_*/*/*/reconstruction.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    again = _make(repo_root, *args)
    assert again.returncode == 0
    assert "gen-synthetic" not in again.stdout
    manifest = read_json(out / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    assert [r["resumed"] for r in manifest["execution_results"]] == [True] * 6
    assert len(outputs) == 6 and {p: p.stat().st_mtime_ns for p in outputs} == stamps


@pytest.mark.slow
def test_make_real_run_with_a_failed_job_still_summarizes_then_fails(repo_root, tmp_path):
    """A failing job: the summary is still written, then make exits non-zero."""
    out, reports = tmp_path / "study", tmp_path / "reports"
    result = _make(repo_root, "real-run", "DESIGN=plans/smoke/design.json", "DOSE=1000", "EPOCHS=1",
                   "VIEW=sparse", f"OUT={out}", f"REPORTS={reports}",
                   env_extra={"RUN_PTYCHI_FAULT_INJECTION": "dose_1000/sparse/test=raise"})
    assert result.returncode != 0
    summary = json.loads((out / "phase_f" / "summary" / "summary.json").read_text())
    failed = [f for f in summary["failures"]]
    assert len(failed) == 1 and "sparse/test" in json.dumps(failed[0])


@pytest.mark.slow
def test_make_smoke_grid_runs_the_grid_path_end_to_end(repo_root, tmp_path):
    """`make smoke-grid`: the tiny dose x overlap grid (K = 2 replicates) generated, run, summarized with its map."""
    out, reports = tmp_path / "grid", tmp_path / "reports"
    result = _make(repo_root, "smoke-grid", f"SMOKE_GRID_OUT={out}", f"REPORTS={reports}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = read_json(out / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    replicates = {job.get("replicate", 0) for job in manifest["jobs"]}
    assert replicates == {0, 1}
    assert sorted(r["status"] for r in manifest["execution_results"]) == ["ok"] * len(manifest["jobs"])
    summary = json.loads((out / "phase_f" / "summary" / "summary.json").read_text())
    grid = summary["dose_overlap_map"]
    assert grid is not None and len(grid["doses"]) >= 2 and grid["min_dose"]
    assert (out / "phase_f" / "summary" / "figures" / "min_dose_vs_overlap.png").is_file()
    assert list(reports.glob("*/grid_run/run.log"))


def test_make_ladder_run_chains_generate_join_thin_validate_plan_run_summarize(repo_root, tmp_path):
    """`make -n ladder-run` (prints, runs nothing): listed by help; the recipe generates the source
    design's dose, joins its baseline train + test into LADDER_PARENT, thins LADDER_DESIGN from it,
    then validates, plans, runs (WORKERS) and summarizes under LADDER_OUT, in that order, logged."""
    assert "  ladder-run " in _make(repo_root).stdout
    out, reports, parent = tmp_path / "lad der", tmp_path / "reports", tmp_path / "parent" / "whole.npz"
    result = _make(repo_root, "-n", "ladder-run", f"LADDER_OUT={out}", f"REPORTS={reports}",
                   f"LADDER_PARENT={parent}", "LADDER_SOURCE_DOSE=1000", "WORKERS=3")
    assert result.returncode == 0, result.stderr
    steps = [
        f"parts='{out}/source/phase_c/dose_1000'",
        f"gen-synthetic --design 'plans/fly64_dose_overlap/design.json' --phase-c-root '{out}/source/phase_c' "
        f"\\\n    --phase-d-root '{out}/source/phase_d' --dose '1000'",
        f"gen-synthetic --join-scan '{parent}' \"$parts/patched_train.npz\" \\\n    \"$parts/patched_test.npz\"",
        f"gen-synthetic --design 'plans/fly64_ladder/design.json' --phase-c-root '{out}/phase_c'",
        f"validate-npz -q '{out}/phase_c' '{out}/phase_d'",
        f"plan-jobs --design 'plans/fly64_ladder/design.json' --phase-c-root '{out}/phase_c'",
        f"run-ptychi --manifest '{out}/phase_f/reconstruction_manifest.json' --device 'auto' --workers '3'",
        f"summarize --artifact-root '{out}/phase_f'",
        "tee \"$log\"",
    ]
    text = result.stdout
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions)
    assert f"{reports}/" in text and "/ladder_run/run.log" in text
    assert not out.exists() and not reports.exists()


@pytest.mark.slow
def test_make_ladder_run_thins_a_joined_scan_end_to_end(repo_root, tmp_path):
    """`make ladder-run` on the smoke scan (sparse view, 2 epochs): the source dose generated, joined
    into the parent the ladder design names, thinned (2 doses x 2 replicates), every job ok, scored
    against its group's highest-dose reconstruction (no ground truth), log kept."""
    out, reports, parent = tmp_path / "ladder", tmp_path / "reports", tmp_path / "parent" / "whole.npz"
    raw = json.loads((repo_root / "plans" / "smoke" / "design.json").read_text())
    for block in ("probe", "object", "scan"):
        raw.pop(block)
    raw.update(name="smoke_ladder", doses=[1000, 10000], replicates=2,
               measured={"npz": str(parent), "ground_truth": False})
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    result = _make(repo_root, "ladder-run", f"LADDER_DESIGN={design}", "LADDER_SOURCE_DESIGN=plans/smoke/design.json",
                   f"LADDER_OUT={out}", f"LADDER_PARENT={parent}", f"REPORTS={reports}", "VIEW=sparse", "EPOCHS=2",
                   "WORKERS=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [part["split"] for part in read_contract_npz(parent).metadata["scan"]["joined_from"]] == ["train", "test"]
    manifest = read_json(out / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    assert len(manifest["jobs"]) == 8
    assert sorted(r["status"] for r in manifest["execution_results"]) == ["ok"] * 8
    summary = json.loads((out / "phase_f" / "summary" / "summary.json").read_text())
    assert summary["scoring"]["reference"] == "highest_dose_reconstruction"
    assert sorted(r["dose"] for r in summary["scoring"]["references"]) == [10000] * 4
    assert list(reports.glob("*/ladder_run/run.log"))


@pytest.mark.slow
def test_make_realistic_run_summarizes_beside_the_ideal_study(repo_root, tmp_path):
    """`make real-run` then `make realistic-run` (smoke designs, dose 1e5, dense view, 2 epochs): the
    realistic data carry nominal positions, a mask and probe modes; every job ok; the summary reports
    position and probe errors and puts the ideal study's cells beside its own."""
    out, real, reports = tmp_path / "ideal", tmp_path / "realistic", tmp_path / "reports"
    common = ["DOSE=100000", "VIEW=dense", "EPOCHS=2", "WORKERS=2", f"REPORTS={reports}"]
    ideal = _make(repo_root, "real-run", "DESIGN=plans/smoke/design.json", f"OUT={out}", *common)
    assert ideal.returncode == 0, ideal.stdout[-3000:] + ideal.stderr[-3000:]
    result = _make(repo_root, "realistic-run", "REALISTIC_DESIGN=plans/smoke_realistic/design.json",
                   f"REALISTIC_OUT={real}", f"ARTIFACT_ROOT={out / 'phase_f'}", *common)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = read_contract_npz(real / "phase_d" / "dose_100000" / "dense" / "dense_train.npz")
    assert data.valid_pixels() is not None and not data.valid_pixels().all()
    assert "probe_modes" in data.arrays and "nominal_xcoords" in data.arrays
    manifest = read_json(real / "phase_f" / "reconstruction_manifest.json", "reconstruction_manifest")
    assert sorted(r["status"] for r in manifest["execution_results"]) == ["ok"] * 2
    summary = json.loads((real / "phase_f" / "summary" / "summary.json").read_text())
    for job in summary["jobs"]:
        assert job["positions"]["corrected"] and job["positions"]["before"]["rms_px"] > 0
        assert job["probe"]["start"] == "initial_probe" and job["probe"]["modes"] == 2
    (beside,) = summary["beside"]
    assert beside["label"] == "ideal"
    assert {(row["dose"], row["view"]) for row in beside["rows"]} == {(100000, "dense")}
    assert list(reports.glob("*/realistic_run/dose_100000/run.log"))
