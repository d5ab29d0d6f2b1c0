"""Planning: every dose x view x split job, filters, missing files, hashes and replanning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptydose.core.errors import StudyError
from ptydose.core.fileio import sha256_file
from ptydose.core.jobs import (
    MANIFEST_SCHEMA,
    SKIP_SUMMARY_SCHEMA,
    job_id,
    load_manifest,
    lock_artifact_root,
    options_hash,
    plan_jobs,
    read_npz_metadata,
    write_plan,
)
from ptydose.core.manifests import read_json, write_json


@pytest.fixture(scope="module")
def three_dose_data(tmp_path_factory, smoke_design_path):
    """The smoke design with three doses (the shipped study's 18-job shape), generated once."""
    from ptydose.core.synthetic import generate_study

    base = tmp_path_factory.mktemp("three_dose")
    raw = json.loads(smoke_design_path.read_text())
    raw["doses"] = [1000, 10000, 100000]
    design = base / "design.json"
    design.write_text(json.dumps(raw))
    generate_study(design, base / "phase_c", base / "phase_d", progress=False)
    return {"design": design, "phase_c_root": base / "phase_c", "phase_d_root": base / "phase_d"}


def _plan(data: dict, artifact_root: Path, **kwargs):
    return plan_jobs(data["design"], data["phase_c_root"], data["phase_d_root"], artifact_root, **kwargs)


def test_eighteen_jobs_for_three_doses(three_dose_data, tmp_path):
    """Three doses x (baseline, dense, sparse) x (train, test) = 18 jobs, each fully described."""
    plan = write_plan(_plan(three_dose_data, tmp_path / "art"))
    manifest = read_json(plan.manifest_path, MANIFEST_SCHEMA)
    assert manifest["total_jobs"] == 18 and manifest["filtered_jobs"] == 18
    assert len(manifest["jobs"]) == 18
    ids = [job["id"] for job in manifest["jobs"]]
    assert len(set(ids)) == 18 and "dose_10000/sparse/test" in ids
    skips = read_json(plan.skip_summary_path, SKIP_SUMMARY_SCHEMA)
    assert skips["skipped_count"] == 0 and skips["missing_phase_d_count"] == 0


def test_job_fields_come_from_the_files_and_design(smoke_data, tmp_path):
    """Input path, sha256, selection figures, output folder, options and command of each job."""
    art = tmp_path / "art"
    plan = write_plan(_plan(smoke_data, art))
    manifest = plan.manifest
    assert manifest["total_jobs"] == 12 and manifest["filtered_jobs"] == 12
    by_id = {job["id"]: job for job in manifest["jobs"]}
    base = by_id["dose_1000/baseline/train"]
    assert base["input_npz"] == str(smoke_data["phase_c_root"].resolve() / "dose_1000" / "patched_train.npz")
    dense = by_id["dose_100000/dense/test"]
    assert dense["input_npz"] == str(smoke_data["phase_d_root"].resolve() / "dose_100000" / "dense" / "dense_test.npz")
    for job in manifest["jobs"]:
        assert job["input_sha256"] == sha256_file(job["input_npz"])
        meta = read_npz_metadata(job["input_npz"])
        for key in ("selection_strategy", "spacing_threshold", "n_accepted", "n_rejected", "acceptance_rate"):
            assert job["selection"][key] == meta["selection"][key]
        assert job["n_images"] == meta["n_images"]
        assert job["output_dir"] == str(art.resolve() / job["id"])
        assert job["command"] == ["run-ptychi", "--manifest", str(plan.manifest_path), "--only", job["id"]]
        assert (job["engine"], job["algorithm"], job["num_epochs"]) == ("ptychi", "LSQML", 8)
        assert job["engine_options"]["seed"] == 123  # the design's seeds.grouping
        assert job["engine_options"]["noise_model"] == "gaussian"
    assert manifest["provenance"]["artifact_root"] == str(art.resolve())
    assert load_manifest(plan.manifest_path)["jobs"] == manifest["jobs"]


@pytest.mark.parametrize(
    "filters, n_jobs, reasons",
    [
        ({"doses": [1000], "views": ["dense"]}, 2,
         {"filtered out by --dose 1000": 12, "filtered out by --view dense": 4}),
        ({"doses": [1000], "views": ["dense"], "splits": ["train"]}, 1,
         {"filtered out by --dose 1000": 12, "filtered out by --view dense": 4, "filtered out by --split train": 1}),
    ],
)
def test_filters_keep_the_selected_jobs(three_dose_data, tmp_path, filters, n_jobs, reasons):
    """--dose 1000 --view dense gives 2 jobs and 16 skipped; adding --split train, 1 and 17."""
    plan = write_plan(_plan(three_dose_data, tmp_path / "art", **filters))
    assert plan.manifest["filtered_jobs"] == n_jobs == len(plan.manifest["jobs"])
    assert plan.manifest["total_jobs"] == 18
    skips = read_json(plan.skip_summary_path, SKIP_SUMMARY_SCHEMA)
    assert skips["skipped_count"] == 18 - n_jobs
    counted: dict[str, int] = {}
    for skip in skips["skipped_jobs"]:
        counted[skip["reason"]] = counted.get(skip["reason"], 0) + 1
    assert counted == reasons


def _without_sparse(data: dict, tmp_path: Path) -> dict:
    """A copy of the smoke roots whose sparse view files are missing."""
    copy = {"design": data["design"], "phase_c_root": tmp_path / "c", "phase_d_root": tmp_path / "d"}
    shutil.copytree(data["phase_c_root"], copy["phase_c_root"])
    shutil.copytree(data["phase_d_root"], copy["phase_d_root"])
    for folder in copy["phase_d_root"].glob("dose_*/sparse"):
        shutil.rmtree(folder)
    return copy


def test_missing_sparse_views_are_an_error_listing_every_file(smoke_data, tmp_path):
    """Without --allow-missing-phase-d, the error names all four missing sparse files."""
    data = _without_sparse(smoke_data, tmp_path)
    with pytest.raises(StudyError) as info:
        _plan(data, tmp_path / "art")
    message = str(info.value)
    assert message.startswith("Phase D NPZ not found (4): ")
    assert "\n" not in message
    for dose in (1000, 100000):
        for split in ("train", "test"):
            assert str(data["phase_d_root"].resolve() / f"dose_{dose}" / "sparse" / f"sparse_{split}.npz") in message
    assert not (tmp_path / "art").exists()


def test_missing_sparse_views_are_skipped_when_allowed(smoke_data, tmp_path):
    """With --allow-missing-phase-d they become skipped jobs with the 'Phase D NPZ not found' reason."""
    data = _without_sparse(smoke_data, tmp_path)
    plan = write_plan(_plan(data, tmp_path / "art", allow_missing_phase_d=True))
    assert plan.manifest["filtered_jobs"] == 8
    assert len(plan.manifest["missing_jobs"]) == 4
    skips = plan.skip_summary
    assert skips["missing_phase_d_count"] == 4 and skips["skipped_count"] == 4
    missing = data["phase_d_root"].resolve() / "dose_1000" / "sparse" / "sparse_test.npz"
    assert {"dose": 1000, "view": "sparse", "split": "test",
            "reason": f"Phase D NPZ not found: {missing}"} in skips["skipped_jobs"]


def test_missing_phase_c_is_always_an_error(smoke_data, tmp_path):
    """A missing baseline file fails planning even with --allow-missing-phase-d."""
    data = _without_sparse(smoke_data, tmp_path)
    (data["phase_c_root"] / "dose_1000" / "patched_test.npz").unlink()
    with pytest.raises(StudyError, match=r"^Phase C NPZ not found \(1\): .*dose_1000/patched_test.npz"):
        _plan(data, tmp_path / "art", allow_missing_phase_d=True)


def test_filtered_out_files_may_be_missing(smoke_data, tmp_path):
    """Files of jobs excluded by a filter are not required (make real-run generates one dose)."""
    data = _without_sparse(smoke_data, tmp_path)
    shutil.rmtree(data["phase_c_root"] / "dose_100000")
    plan = _plan(data, tmp_path / "art", doses=[1000], views=["baseline", "dense"])
    assert [job["id"] for job in plan.manifest["jobs"]] == [
        "dose_1000/baseline/train", "dose_1000/baseline/test", "dose_1000/dense/train", "dose_1000/dense/test"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"doses": [5]}, "--dose 5: not a dose of the design (choose from 1000, 100000)"),
        ({"views": ["medium"]}, "--view medium: not a view of the design (choose from baseline, dense, sparse)"),
        ({"algorithm": "SIRT"}, "--algorithm SIRT: not one of LSQML, EPIE, RPIE, PIE, ADAM, EXTERNAL"),
    ],
)
def test_bad_filters_name_the_flag(smoke_data, tmp_path, kwargs, message):
    """Unknown doses, views and algorithms are errors naming the flag and the choices."""
    with pytest.raises(StudyError) as info:
        _plan(smoke_data, tmp_path / "art", **kwargs)
    assert str(info.value) == message


def test_overrides_change_the_options_hash(smoke_data, tmp_path):
    """--algorithm and --num-epochs land in every job and change its options hash."""
    default = _plan(smoke_data, tmp_path / "a", doses=[1000], views=["sparse"], splits=["test"]).manifest["jobs"][0]
    changed = _plan(smoke_data, tmp_path / "b", doses=[1000], views=["sparse"], splits=["test"],
                    algorithm="EPIE", num_epochs=3).manifest["jobs"][0]
    assert (changed["algorithm"], changed["num_epochs"]) == ("EPIE", 3)
    assert options_hash(default) != options_hash(changed)
    assert options_hash(default) == options_hash(json.loads(json.dumps(default)))


def test_replan_keeps_execution_results_of_jobs_still_planned(smoke_data, tmp_path):
    """A replan keeps results of jobs still planned with the same input and options, and drops the others."""
    art = tmp_path / "art"
    plan = write_plan(_plan(smoke_data, art, doses=[1000], views=["sparse"]))
    manifest = plan.manifest
    for job in manifest["jobs"]:
        manifest["execution_results"].append({
            "job_id": job["id"], "dose": job["dose"], "view": job["view"], "split": job["split"], "status": "ok",
            "returncode": 0, "error": None, "log_path": str(Path(job["output_dir"]) / "ptychi.log"),
            "result_path": str(Path(job["output_dir"]) / "result.json"), "wall_s": 1.0, "reconstruction_s": 0.5,
            "epochs": 8, "final_loss": 0.1, "device": "cpu", "finished": "2026-01-01T00:00:00+00:00",
            "resumed": False, "selection": job["selection"]})
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    replanned = write_plan(_plan(smoke_data, art, doses=[1000], views=["sparse"], splits=["train"]))
    kept = read_json(replanned.manifest_path, MANIFEST_SCHEMA)["execution_results"]
    assert [r["job_id"] for r in kept] == [job_id(1000, "sparse", "train")]
    # Same job, other options: its old result no longer describes it and is dropped.
    changed = write_plan(_plan(smoke_data, art, doses=[1000], views=["sparse"], splits=["train"], num_epochs=200))
    assert read_json(changed.manifest_path, MANIFEST_SCHEMA)["execution_results"] == []


def test_manifest_paths_must_stay_inside_their_roots(smoke_data, tmp_path):
    """A manifest whose job points outside its roots is rejected with the JSON path of the field."""
    plan = write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"]))
    manifest = plan.manifest
    manifest["jobs"][1]["output_dir"] = str(tmp_path / "elsewhere")
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    with pytest.raises(StudyError, match=r"jobs/1/output_dir: .*elsewhere is not .*dose_1000/sparse/test"):
        load_manifest(plan.manifest_path)
    manifest["jobs"][1]["output_dir"] = str(tmp_path / "art" / "dose_1000" / "sparse" / "test")
    manifest["jobs"][0]["input_npz"] = "/etc/passwd"
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    with pytest.raises(StudyError, match=r"jobs/0/input_npz: /etc/passwd is outside "):
        load_manifest(plan.manifest_path)


def test_manifest_commands_must_be_their_own_run_ptychi_call(smoke_data, tmp_path):
    """A job whose command is not `run-ptychi --manifest <this> --only <id>` is rejected (dry runs print it)."""
    plan = write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"]))
    manifest = plan.manifest
    assert load_manifest(plan.manifest_path)["jobs"][0]["command"][-1] == manifest["jobs"][0]["id"]
    manifest["jobs"][0]["command"] = ["rm", "-rf", "/"]
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    with pytest.raises(StudyError, match=r"jobs/0/command: not the run-ptychi call of this job \(expected run-ptychi "):
        load_manifest(plan.manifest_path)


def test_replanning_waits_for_no_run(smoke_data, tmp_path):
    """While a run holds the artifact root's lock, a replan is refused and the manifest is untouched."""
    plan = write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"]))
    before = plan.manifest_path.read_bytes()
    held = lock_artifact_root(plan.manifest_path.parent, "busy")
    try:
        with pytest.raises(StudyError, match="run-ptychi is running on this artifact root"):
            write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"], splits=["train"]))
        assert plan.manifest_path.read_bytes() == before
    finally:
        held.close()
    write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"], splits=["train"]))


def test_planning_refuses_data_made_from_other_data_settings(smoke_data, smoke_design_path, tmp_path):
    """Another object model than the data were made with: refused; other epochs only: planned."""
    raw = json.loads(smoke_design_path.read_text())
    raw["reconstruction"]["num_epochs"] = 3  # reconstruction settings may differ between plans
    same_data = tmp_path / "same_data.json"
    same_data.write_text(json.dumps(raw))
    plan = plan_jobs(same_data, smoke_data["phase_c_root"], smoke_data["phase_d_root"], tmp_path / "a",
                     doses=[1000], views=["sparse"])
    assert {job["num_epochs"] for job in plan.manifest["jobs"]} == {3}
    raw["object"]["max_phase_rad"] = 0.5  # the data would be different
    other_data = tmp_path / "other_data.json"
    other_data.write_text(json.dumps(raw))
    with pytest.raises(StudyError, match=r"_metadata/data_hash: made from other data settings than other_data.json"):
        plan_jobs(other_data, smoke_data["phase_c_root"], smoke_data["phase_d_root"], tmp_path / "b",
                  doses=[1000], views=["sparse"])


def test_the_lock_file_is_never_followed_truncated_or_blocked_on(tmp_path):
    """A link, FIFO or folder in the lock's place is a StudyError naming it; a regular lock keeps its bytes."""
    import os

    art = tmp_path / "art"
    art.mkdir()
    lock = art / ".run-ptychi.lock"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    os.symlink(precious, lock)
    with pytest.raises(StudyError, match=rf"^{lock}: is a symbolic link; refusing to follow it"):
        lock_artifact_root(art, "busy")
    assert precious.read_text() == "keep me\n"
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(StudyError, match=rf"^{lock}: is a FIFO \(named pipe\), expected a lock file"):
        lock_artifact_root(art, "busy")
    lock.unlink()
    lock.mkdir()
    with pytest.raises(StudyError, match=rf"^{lock}: is a folder, expected a lock file"):
        lock_artifact_root(art, "busy")
    lock.rmdir()
    lock.write_text("not ours to empty\n")
    lock_artifact_root(art, "busy").close()
    assert lock.read_text() == "not ours to empty\n"


def test_manifest_inputs_must_be_their_jobs_layout_path(smoke_data, tmp_path):
    """A root claimed as "/" cannot make a job read any file: only dose_<d>/<view>/<view>_<split>.npz below it."""
    plan = write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"]))
    manifest = plan.manifest
    manifest["provenance"]["phase_d_root"] = "/"
    for job in manifest["jobs"]:
        job["input_npz"] = "/etc/hostname"
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    with pytest.raises(StudyError, match=r"jobs/0/input_npz: /etc/hostname is not the job's input "
                                         r"/dose_1000/sparse/sparse_train\.npz \(inputs follow the data layout"):
        load_manifest(plan.manifest_path)
    manifest = write_plan(_plan(smoke_data, tmp_path / "art", doses=[1000], views=["sparse"])).manifest
    manifest["jobs"][0]["input_npz"] = manifest["jobs"][1]["input_npz"]  # another job's input, inside the root
    write_json(plan.manifest_path, manifest, MANIFEST_SCHEMA)
    with pytest.raises(StudyError, match=r"jobs/0/input_npz: .*sparse_test\.npz is not the job's input .*sparse_train"):
        load_manifest(plan.manifest_path)
