"""Family 7: one line — a user's problem with the run path is one ``Error:`` line naming the file, never a
traceback, and never the name of a temporary file the user has never seen."""

from __future__ import annotations

import json

import pytest
from test_faults import read_only

from conftest import assert_one_line_error, copy_sweep, run_tool, snapshot

TRAIN, TEST = "dose_1000/sparse/train", "dose_1000/sparse/test"


def test_run_into_an_unwritable_artifact_root(real_sweep, tmp_path):
    """The manifest's folder refuses writes: exit 1 naming the manifest before any job starts; no result.json
    is removed (the manifest entry goes first, so nothing was forgotten)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    manifest = root / "reconstruction_manifest.json"
    with read_only(root):
        result = run_tool("run-ptychi", "--manifest", manifest, "--force", "--device", "cpu")
    assert_one_line_error(result, f"{manifest}: cannot write the manifest (")
    assert ".tmp" not in result.stderr and result.stdout == ""
    for job in (TRAIN, TEST):
        assert json.loads((root / job / "result.json").read_text())["status"] == "ok"
    statuses = {e["job_id"]: e["status"] for e in json.loads(manifest.read_text())["execution_results"]}
    assert statuses == {TRAIN: "ok", TEST: "ok"}


def test_plan_into_an_unwritable_artifact_root(real_sweep, tmp_path):
    """plan-jobs into a folder that refuses writes: exit 1 naming the manifest (not its temporary file)."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    prov = json.loads((root / "reconstruction_manifest.json").read_text())["provenance"]
    before = snapshot(root)
    with read_only(root):
        result = run_tool("plan-jobs", "--design", prov["design"], "--phase-c-root", prov["phase_c_root"],
                          "--phase-d-root", prov["phase_d_root"], "--artifact-root", root, "--dose", "1000")
    assert_one_line_error(result, f"{root / 'reconstruction_manifest.json'}: cannot write it (")
    assert ".tmp" not in result.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize("field, value, message", [
    ("output_dir", "{root}/dose_1000/sparse/../../../elsewhere", "jobs/1/output_dir: {value} is not {root}/" + TEST),
    ("output_dir", "dose_1000/sparse/test", "jobs/1/output_dir: {value} is not {root}/" + TEST),
    ("input_npz", "{d}/dose_1000/sparse/../sparse/sparse_test.npz", "jobs/1/input_npz: {value} is not the job's input"),
    ("input_npz", "{d}/dose_1000/sparse/sparse_train.npz", "jobs/1/input_npz: {value} is not the job's input"),
])
def test_a_manifest_pointing_elsewhere_is_one_line(real_sweep, tmp_path, field, value, message):
    """Hand-edited job paths (another job's input, '..' detours, a relative folder): exit 1, the JSON path named."""
    root = copy_sweep(real_sweep, tmp_path / "phase_f")
    manifest_path = root / "reconstruction_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    value = value.format(root=root, d=manifest["provenance"]["phase_d_root"])
    manifest["jobs"][1][field] = value
    manifest_path.write_text(json.dumps(manifest))
    before = snapshot(root)
    result = run_tool("run-ptychi", "--manifest", manifest_path, "--force")
    assert_one_line_error(result, str(manifest_path), message.format(value=value, root=root))
    assert snapshot(root) == before
