"""Replicates: K independent seeded Poisson draws per dose, their layout, seeds, index, jobs and ids.

Replicate 0 is the one-draw data byte for byte; replicate r >= 1 differs only in its Poisson noise
and lives in ``dose_<d>/rep<r>/``; plan-jobs plans every replicate and run-ptychi runs and resumes
them like any job.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ptydose.core import manifests, synthetic
from ptydose.core.design import load_design, parse_design
from ptydose.core.errors import DesignError, ManifestError, StudyError
from ptydose.core.jobs import check_manifest_paths, job_id, plan_jobs, write_plan
from ptydose.core.synthetic import INDEX_NAME, generate_study, noise_seed
from ptydose.plan_jobs import cli as plan_cli

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_sha256.json"
ARRAYS_SHARED = ("Y", "objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index")


def _k_design(smoke_design_path: Path, folder: Path, k: int) -> Path:
    raw = json.loads(smoke_design_path.read_text())
    raw["replicates"] = k
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "design.json"
    path.write_text(json.dumps(raw))
    return path


def _sha256s(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(base.rglob("*.npz"))}


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = json.loads(str(arrays.pop("_metadata")))
    return arrays


@pytest.fixture(scope="module")
def k2_data(tmp_path_factory, smoke_design_path) -> dict:
    """The smoke design with ``replicates: 2``, generated once (read-only for the tests)."""
    base = tmp_path_factory.mktemp("k2")
    design = _k_design(smoke_design_path, base, 2)
    generate_study(design, base / "phase_c", base / "phase_d", progress=False)
    return {"design": design, "base": base, "phase_c_root": base / "phase_c", "phase_d_root": base / "phase_d"}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def test_replicate_zero_is_byte_identical_to_the_one_draw_files(k2_data):
    """Replicate 0 of a K = 2 design: exactly the golden smoke files at their usual paths; replicate
    1: the same file names one ``rep1`` level down, nothing else."""
    shas = _sha256s(k2_data["base"])
    golden = json.loads(GOLDEN.read_text())["designs"]["smoke"]
    assert {k: v for k, v in shas.items() if "/rep" not in k} == golden
    rep1 = {k for k in shas if "/rep" in k}
    assert rep1 == {k.replace("/dose_1000/", "/dose_1000/rep1/").replace("/dose_100000/", "/dose_100000/rep1/")
                    for k in golden}
    assert len({shas[k] for k in rep1} & set(golden.values())) == 0  # every replicate-1 file is new data


def test_replicates_do_not_change_the_design_hashes(smoke_design_path):
    """The replicate count is left out of design_hash and data_hash (it adds files, changes none)."""
    raw = json.loads(smoke_design_path.read_text())
    one = parse_design(copy.deepcopy(raw), smoke_design_path)
    raw["replicates"] = 3
    three = parse_design(raw, smoke_design_path)
    assert (three.replicates, one.replicates) == (3, 1)
    assert three.design_hash == one.design_hash and three.data_hash == one.data_hash


def test_replicates_differ_only_in_their_poisson_noise(k2_data):
    """Each replicate-1 file holds the same object, probe, positions and windows as its replicate-0
    twin and different counts; its metadata says replicate 1 and its own noise seed; it passes the
    full data contract."""
    from ptydose.core.contract import check_npz

    checked = 0
    for kind in ("phase_c", "phase_d"):
        root = k2_data[f"{kind}_root"]
        index = manifests.read_json(root / INDEX_NAME, "dataset_index")
        for entry in (e for e in index["files"] if e["replicate"] == 1):
            path, twin = root / entry["path"], root / entry["path"].replace("/rep1/", "/")
            checked += 1
            a, b = _load(twin), _load(path)
            for key in ARRAYS_SHARED:
                assert np.array_equal(a[key], b[key]), (path, key)
            assert a["diffraction"].shape == b["diffraction"].shape
            assert not np.array_equal(a["diffraction"], b["diffraction"])
            assert "replicate" not in a["meta"] and b["meta"]["replicate"] == 1
            assert b["meta"]["noise_seed"] == noise_seed(42, b["meta"]["dose"], 1) != a["meta"]["noise_seed"]
            differing = {k for k in a["meta"] if a["meta"][k] != b["meta"].get(k)}
            assert differing <= {"noise_seed", "measured_mean_counts"}, differing
            report = check_npz(path)
            assert report.ok, report.lines()
    assert checked == 12  # 2 doses x (baseline + 2 views) x 2 splits


def test_counts_are_independent_poisson_draws_at_the_stated_dose(k2_data):
    """Replicates 0 and 1 of dose 1e5 against the expected counts of the forward model, over pixels
    with at least 5 expected photons (55 945 of them): each replicate's standardised residual
    (c - lambda) / sqrt(lambda) has mean 0 and variance 1, and the two replicates' residuals are
    uncorrelated. Tolerances: 0.02 on the mean and the correlation (standard error 1/sqrt(n) = 0.004),
    0.05 on the variance (standard error sqrt(2/n) = 0.006 plus the 1/lambda excess kurtosis of Poisson
    counts); a shared draw would give correlation 1, counts at another dose a variance far from 1
    (measured: means 0.004 and 0.005, variances 1.004 and 0.995, correlation -0.003)."""
    from ptydose.core.physics import ForwardModel

    design = load_design(k2_data["design"])
    geometry = synthetic.build_geometry(design)
    dose = 100000
    rel = "dose_100000/patched_train.npz"
    reps = [_load(k2_data["phase_c_root"] / rel), _load(k2_data["phase_c_root"] / rel.replace("/", "/rep1/", 1))]
    idx = reps[0]["scan_index"]
    expected = ForwardModel(geometry.probe_unit, geometry.obj).intensities(geometry.coords[idx]).astype(np.float64) * dose
    residuals = []
    for rep in reps:
        scale = rep["meta"]["amplitude_scale"]
        counts = np.round((rep["diffraction"].astype(np.float64) * scale) ** 2)
        mask = expected >= 5
        assert mask.sum() > 50_000, mask.sum()
        z = (counts[mask] - expected[mask]) / np.sqrt(expected[mask])
        assert abs(z.mean()) < 0.02 and abs(z.var() - 1.0) < 0.05, (z.mean(), z.var())
        residuals.append(z)
    assert abs(np.corrcoef(residuals[0], residuals[1])[0, 1]) < 0.02


def test_noise_seed_rule():
    """Replicate 0 keeps the one-draw seed, SeedSequence([sim, 3, dose]); replicate r >= 1 takes
    SeedSequence([sim, 3, dose, r]): different for every (dose, replicate)."""
    assert noise_seed(42, 1000) == noise_seed(42, 1000, 0) == int(
        np.random.SeedSequence([42, 3, 1000]).generate_state(1)[0])
    assert noise_seed(42, 1000, 2) == int(np.random.SeedSequence([42, 3, 1000, 2]).generate_state(1)[0])
    seeds = {noise_seed(42, d, r) for d in (1000, 10000, 100000) for r in range(4)}
    assert len(seeds) == 12


def test_the_index_lists_every_replicate(k2_data):
    """Each root's index: every file of every replicate with its replicate number, in dose, replicate,
    view, split order; the replicate count at the top."""
    index = manifests.read_json(k2_data["phase_c_root"] / INDEX_NAME, "dataset_index")
    assert index["replicates"] == 2
    assert [(e["dose"], e["replicate"], e["split"], e["path"]) for e in index["files"]] == [
        (d, r, s, f"dose_{d}/{'rep1/' if r else ''}patched_{s}.npz")
        for d in (1000, 100000) for r in (0, 1) for s in ("train", "test")]
    for entry in index["files"]:
        path = k2_data["phase_c_root"] / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert entry["noise_seed"] == noise_seed(42, entry["dose"], entry["replicate"])


def test_raising_k_keeps_replicate_zero_and_writes_only_the_new_draws(smoke_design_path, tmp_path):
    """K = 1 first, then the same design with K = 2 in the same roots: replicate 0's files are
    neither rewritten nor re-indexed away; only the replicate-1 files are written."""
    one = _k_design(smoke_design_path, tmp_path / "one", 1)
    two = _k_design(smoke_design_path, tmp_path / "two", 2)
    c, d = tmp_path / "phase_c", tmp_path / "phase_d"
    generate_study(one, c, d, doses=[1000], progress=False)
    kept = c / "dose_1000" / "patched_train.npz"
    inode, mtime = kept.stat().st_ino, kept.stat().st_mtime_ns
    result = generate_study(two, c, d, doses=[1000], progress=False)
    assert result.generated_doses == [1000]
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (inode, mtime)
    assert {e["replicate"] for e in result.files} == {0, 1} and len(result.files) == 12
    again = generate_study(two, c, d, doses=[1000], progress=False)
    assert again.up_to_date_doses == [1000] and again.generated_doses == []


def test_a_failure_in_a_later_replicate_keeps_the_finished_ones(smoke_design_path, tmp_path, monkeypatch):
    """Each (dose, replicate) is indexed when its files are in place: after a failure while writing
    replicate 1 of the second dose, a rerun writes only that one."""
    design = _k_design(smoke_design_path, tmp_path / "k2", 2)
    original = synthetic.write_dose
    calls: list[tuple[int, int]] = []
    fail = [(100000, 1)]

    def failing(geometry, dose, *args, replicate=0, **kwargs):
        calls.append((dose, replicate))
        if (dose, replicate) in fail:
            raise RuntimeError("killed")
        return original(geometry, dose, *args, replicate=replicate, **kwargs)

    monkeypatch.setattr(synthetic, "write_dose", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_study(design, tmp_path / "c", tmp_path / "d", progress=False)
    assert calls == [(1000, 0), (1000, 1), (100000, 0), (100000, 1)]
    index = manifests.read_json(tmp_path / "d" / INDEX_NAME, "dataset_index")
    assert sorted({(e["dose"], e["replicate"]) for e in index["files"]}) == [(1000, 0), (1000, 1), (100000, 0)]
    calls.clear()
    fail.clear()
    generate_study(design, tmp_path / "c", tmp_path / "d", progress=False)
    assert calls == [(100000, 1)]


@pytest.mark.parametrize("where", ["view", "reconstruction", "reconstructors"])
def test_names_that_look_like_replicate_folders_are_refused(smoke_design_path, where):
    """A view or reconstructor called rep<number> would collide with the replicate level of folders
    and ids: the schema refuses it, naming the field."""
    raw = json.loads(smoke_design_path.read_text())
    if where == "view":
        raw["overlap_views"]["rep2"] = 0.5
        field = "overlap_views"
    elif where == "reconstruction":
        raw["reconstruction"]["name"] = "rep1"
        field = "reconstruction/name"
    else:
        raw["reconstructors"] = [{"name": "rep3", "algorithm": "LSQML"}]
        field = "reconstructors/0/name"
    with pytest.raises(DesignError, match=f"design.json: {field}: "):
        parse_design(raw, smoke_design_path)


# ----------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------
def _plan(data: dict, art: Path, **kwargs):
    return plan_jobs(data["design"], data["phase_c_root"], data["phase_d_root"], art, **kwargs)


def test_plan_covers_every_dose_view_split_replicate(k2_data, tmp_path):
    """24 jobs on the K = 2 smoke design: replicate 0 with today's ids and inputs, replicate 1 with
    /rep1 in the id, the job folder and the input path; every job says its replicate."""
    plan = _plan(k2_data, tmp_path / "art")
    jobs = plan.manifest["jobs"]
    assert plan.manifest["total_jobs"] == len(jobs) == 24
    assert plan.manifest["provenance"]["replicates"] == 2
    expected_ids = [job_id(d, v, s, None, r) for r in (0, 1) for d in (1000, 100000)
                    for v in ("baseline", "dense", "sparse") for s in ("train", "test")]
    assert [j["id"] for j in jobs] == expected_ids
    for job in jobs:
        r = job["replicate"]
        assert job["id"].endswith("/rep1") == (r == 1)
        assert job["output_dir"] == str((tmp_path / "art").resolve() / job["id"])
        folder = f"dose_{job['dose']}/" + ("rep1/" if r else "")
        name = f"patched_{job['split']}.npz" if job["view"] == "baseline" else f"{job['view']}/{job['view']}_{job['split']}.npz"
        root = k2_data["phase_c_root"] if job["view"] == "baseline" else k2_data["phase_d_root"]
        assert job["input_npz"] == str(root.resolve() / folder / name)
        assert job["input_sha256"] == hashlib.sha256(Path(job["input_npz"]).read_bytes()).hexdigest()
    check_manifest_paths(plan.manifest, plan.manifest_path)


def test_one_draw_plans_keep_their_ids_and_skip_entries(smoke_data, tmp_path):
    """K = 1: ids, folders and inputs exactly as before; every job says replicate 0; skip entries and
    filters have no replicate field."""
    plan = _plan(smoke_data, tmp_path / "art", views=["dense"])
    assert [j["id"] for j in plan.manifest["jobs"]] == [
        f"dose_{d}/dense/{s}" for d in (1000, 100000) for s in ("train", "test")]
    assert {j["replicate"] for j in plan.manifest["jobs"]} == {0}
    assert all("replicate" not in s for s in plan.skip_summary["skipped_jobs"])
    assert "replicates" not in plan.manifest["provenance"]["filters"]
    assert "replicates" not in plan.manifest["provenance"]


def test_replicate_filter(k2_data, tmp_path):
    """--replicate 1 plans replicate 1 only; the others are skipped with the reason and their
    replicate; a replicate the design lacks is an error naming the flag."""
    result = CliRunner().invoke(plan_cli, [
        "--design", str(k2_data["design"]), "--phase-c-root", str(k2_data["phase_c_root"]),
        "--phase-d-root", str(k2_data["phase_d_root"]), "--artifact-root", str(tmp_path / "art"),
        "--replicate", "1", "--dose", "1000", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["jobs"] == [f"dose_1000/{v}/{s}/rep1" for v in ("baseline", "dense", "sparse") for s in ("train", "test")]
    skips = manifests.read_json(tmp_path / "art" / "skip_summary.json", "skip_summary")
    assert skips["skipped_count"] == 18
    assert {(s["replicate"], s["reason"]) for s in skips["skipped_jobs"] if s["dose"] == 1000} == {
        (0, "filtered out by --replicate 1")}
    with pytest.raises(StudyError, match=r"^--replicate 2: not a replicate of the design \(choose from 0, 1\)$"):
        _plan(k2_data, tmp_path / "art2", replicates=[2])


def test_a_file_in_another_replicate_folder_is_refused(k2_data, tmp_path):
    """Replicate 0's file copied into a rep1 folder: plan-jobs names the file and _metadata/replicate."""
    c = tmp_path / "c"
    shutil.copytree(k2_data["phase_c_root"], c)
    target = c / "dose_1000" / "rep1" / "patched_train.npz"
    shutil.copyfile(c / "dose_1000" / "patched_train.npz", target)
    data = {**k2_data, "phase_c_root": c}
    with pytest.raises(StudyError, match=r"_metadata/replicate: the file is replicate 0, its folder says 1"):
        _plan(data, tmp_path / "art")


@pytest.mark.parametrize("tamper, message", [
    (lambda job: job.__setitem__("replicate", 0), "does not match dose/view/split/replicate/reconstructor"),
    (lambda job: job.__setitem__("id", job["id"].replace("/rep1", "/rep2")), "does not match"),
    (lambda job: job.__setitem__("input_npz", job["input_npz"].replace("/rep1/", "/")), "is not the job's input"),
])
def test_manifest_checks_hold_the_replicate_layout(k2_data, tmp_path, tamper, message):
    """A replicate-1 job whose replicate, id or input disagrees with the layout is refused."""
    plan = _plan(k2_data, tmp_path / "art")
    manifest = copy.deepcopy(plan.manifest)
    i = next(i for i, j in enumerate(manifest["jobs"]) if j["replicate"] == 1)
    tamper(manifest["jobs"][i])
    manifest["jobs"][i]["command"] = ["run-ptychi", "--manifest", str(plan.manifest_path), "--only",
                                      manifest["jobs"][i]["id"]]
    manifest["jobs"][i]["output_dir"] = str(plan.manifest_path.parent / manifest["jobs"][i]["id"])
    with pytest.raises(ManifestError, match=message):
        check_manifest_paths(manifest, plan.manifest_path)


def test_the_id_schema_refuses_a_rep0_level_and_a_rep_reconstructor(k2_data, tmp_path):
    """Ids never carry /rep0 (replicate 0 has no level) nor a reconstructor named rep<number>."""
    plan = _plan(k2_data, tmp_path / "art")
    for bad in ("dose_1000/dense/train/rep0", "dose_1000/dense/train/rep1/rep2", "dose_1000/dense/train/rep01"):
        manifest = copy.deepcopy(plan.manifest)
        manifest["jobs"][0]["id"] = bad
        assert any(path.startswith("jobs/0/id") for path, _ in manifests.validation_errors(manifest,
                                                                                          "reconstruction_manifest"))
    ok = copy.deepcopy(plan.manifest)
    ok["jobs"][0]["id"] = "dose_1000/dense/train/rep12/lsqml"
    assert manifests.validation_errors(ok, "reconstruction_manifest") == []


def test_an_older_manifest_without_replicates_still_loads(smoke_data, tmp_path):
    """Jobs without a replicate field are replicate 0: the path checks pass as before."""
    plan = write_plan(_plan(smoke_data, tmp_path / "art"))
    manifest = manifests.read_json(plan.manifest_path, "reconstruction_manifest")
    for job in manifest["jobs"]:
        del job["replicate"]
    check_manifest_paths(manifest, plan.manifest_path)


def test_run_ptychi_runs_and_resumes_replicates(k2_data, tmp_path):
    """A real run (pty-chi LSQML, 2 epochs) of one cell's two replicates: replicate 1 runs in the
    /rep1 folder inside replicate 0's, result.json and execution_results carry the replicate, and a
    rerun finds both done."""
    from ptydose.run_ptychi import cli as run_cli

    art = tmp_path / "art"
    plan = write_plan(_plan(k2_data, art, doses=[1000], views=["sparse"], splits=["test"], num_epochs=2))
    assert [j["id"] for j in plan.manifest["jobs"]] == ["dose_1000/sparse/test", "dose_1000/sparse/test/rep1"]
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    for r, folder in ((0, art / "dose_1000" / "sparse" / "test"), (1, art / "dose_1000" / "sparse" / "test" / "rep1")):
        doc = manifests.read_json(folder / "result.json", "job_result")
        assert (doc["status"], doc["replicate"], doc["epochs"]) == ("ok", r, 2)
        with np.load(folder / "reconstruction.npz", allow_pickle=False) as rec:
            assert json.loads(str(rec["_metadata"]))["replicate"] == r
    manifest = manifests.read_json(plan.manifest_path, "reconstruction_manifest")
    assert sorted((e["job_id"], e["replicate"], e["status"]) for e in manifest["execution_results"]) == [
        ("dose_1000/sparse/test", 0, "ok"), ("dose_1000/sparse/test/rep1", 1, "ok")]
    again = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--only", "dose_1000/sparse/test/rep1"])
    assert again.exit_code == 0 and "[skip] dose_1000/sparse/test/rep1: already ok" in again.output
