"""Reconstructors as a study dimension: recipes, the reconstructors list, ids, filters and refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import builders
from ptydose.core.design import load_design
from ptydose.core.errors import DesignError
from ptydose.core.jobs import options_hash, plan_jobs, write_plan
from ptydose.core.manifests import read_json
from ptydose.core.reconstructors import design_reconstructors
from ptydose.core.run.engines.registry import ENGINES
from ptydose.plan_jobs import cli as plan_cli
from ptydose.run_ptychi import cli as run_cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "external_engine" / "simple_epie.py"


def _design(smoke_data, tmp_path: Path, **changes) -> Path:
    """The smoke design with top-level keys replaced (None removes one), written beside the test."""
    return builders.design_variant(Path(smoke_data["design"]), tmp_path, **changes)


def _plan(smoke_data, design: Path, art: Path, **kwargs):
    return plan_jobs(design, smoke_data["phase_c_root"], smoke_data["phase_d_root"], art, **kwargs)


def test_a_single_reconstructor_keeps_the_layout_and_the_options_hash(smoke_data, tmp_path):
    """The smoke design (no reconstructors list): ids dose/view/split, LSQML options exactly as before recipes."""
    plan = _plan(smoke_data, Path(smoke_data["design"]), tmp_path / "art", doses=[1000], views=["dense"])
    jobs = plan.manifest["jobs"]
    assert [j["id"] for j in jobs] == ["dose_1000/dense/train", "dose_1000/dense/test"]
    design = load_design(smoke_data["design"])
    for job in jobs:
        assert job["reconstructor"] == "ptychi_lsqml" and job["engine"] == "ptychi" and "stopping" not in job
        # The design's own settings win over the recipe; no PIE-family keys appear for LSQML.
        assert job["engine_options"]["batch_size"] == design.reconstruction["batch_size"]
        assert set(job["engine_options"]) == {"noise_model", "batch_size", "optimize_probe", "probe_update_start_epoch",
                                              "seed", "chunk_epochs", "wavelength_m", "object_pixel_size_m"}
        # The reconstructor's name does not enter the hash: a renamed reconstructor resumes.
        assert options_hash(job) == options_hash({k: v for k, v in job.items() if k != "reconstructor"})


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("EPIE", {"batch_size": 32, "object_alpha": 1.0, "probe_alpha": 1.0}),
    ("RPIE", {"batch_size": 16, "object_alpha": 0.8, "probe_alpha": 0.8}),
    ("PIE", {"batch_size": 1, "object_alpha": 0.1, "probe_alpha": 0.1, "probe_step_size": 0.1}),
])
def test_algorithm_override_brings_its_recipe(smoke_data, tmp_path, algorithm, expected):
    """--algorithm X takes X's measured recipe, not the batch size the design tuned for LSQML."""
    plan = _plan(smoke_data, Path(smoke_data["design"]), tmp_path / "art", doses=[1000], views=["dense"],
                 splits=["train"], algorithm=algorithm)
    (job,) = plan.manifest["jobs"]
    assert job["algorithm"] == algorithm and job["reconstructor"] == f"ptychi_{algorithm.lower()}"
    assert {k: job["engine_options"][k] for k in expected} == expected
    # Settings that are not the algorithm's (noise model, probe refinement, chunks) stay the design's.
    design = load_design(smoke_data["design"])
    assert job["engine_options"]["chunk_epochs"] == design.reconstruction["chunk_epochs"]


def test_withdrawn_and_unknown_algorithms_are_usage_errors(smoke_data, tmp_path):
    """DM is no longer offered: plan-jobs refuses it up front (exit 2), as it refuses any unknown name."""
    args = ["--design", str(smoke_data["design"]), "--phase-c-root", str(smoke_data["phase_c_root"]),
            "--phase-d-root", str(smoke_data["phase_d_root"]), "--artifact-root", str(tmp_path / "art")]
    for name in ("DM", "SIRT"):
        result = CliRunner().invoke(plan_cli, [*args, "--algorithm", name])
        assert result.exit_code == 2, result.output
    assert not (tmp_path / "art" / "reconstruction_manifest.json").exists()


def test_pie_with_a_batch_and_a_refined_probe_is_refused(smoke_data, tmp_path):
    """pty-chi 2.2's PIE cannot refine the probe with batch_size > 1: refused at planning, naming the key."""
    rec = dict(load_design(smoke_data["design"]).reconstruction, algorithm="PIE", batch_size=8)
    design = _design(smoke_data, tmp_path, reconstruction=rec)
    with pytest.raises(DesignError, match=r"reconstruction/batch_size: pty-chi's PIE refines the probe only "
                                          r"with batch_size 1 \(got 8\)"):
        design_reconstructors(load_design(design))
    rec["optimize_probe"] = False  # a fixed probe is fine at any batch size
    design = _design(smoke_data, tmp_path, reconstruction=rec)
    (only,) = design_reconstructors(load_design(design))
    assert only.engine_options["batch_size"] == 8


LIST = [
    {"name": "lsqml", "algorithm": "LSQML", "num_epochs": 2},
    {"name": "adam", "engine": "cdtools", "algorithm": "ADAM", "num_epochs": 3, "options": {"batch_size": 8},
     "stopping": {"rule": "loss_plateau", "window_epochs": 2, "min_relative_improvement": 0.01}},
]


def test_a_reconstructors_list_is_a_dimension(smoke_data, tmp_path):
    """Two reconstructors: every cell twice, ids and folders end in the name, settings and stopping per entry."""
    design = _design(smoke_data, tmp_path, reconstructors=LIST)
    plan = _plan(smoke_data, design, tmp_path / "art", doses=[1000], views=["dense"], splits=["train"])
    jobs = {j["id"]: j for j in plan.manifest["jobs"]}
    assert list(jobs) == ["dose_1000/dense/train/lsqml", "dose_1000/dense/train/adam"]
    assert plan.manifest["total_jobs"] == 2 * 12 and plan.skip_summary["skipped_count"] == 2 * 12 - 2
    lsqml, adam = jobs.values()
    assert (lsqml["engine"], lsqml["num_epochs"], lsqml["engine_options"]["batch_size"]) == ("ptychi", 2, 48)
    assert (adam["engine"], adam["algorithm"], adam["num_epochs"]) == ("cdtools", "ADAM", 3)
    assert adam["engine_options"]["batch_size"] == 8 and adam["engine_options"]["learning_rate"] == 0.05
    assert adam["stopping"] == {"rule": "loss_plateau", "window_epochs": 2, "min_relative_improvement": 0.01,
                                "min_epochs": 0}
    assert adam["output_dir"].endswith("dose_1000/dense/train/adam")
    assert options_hash(adam) != options_hash({k: v for k, v in adam.items() if k != "stopping"})
    # --reconstructor keeps one; the other's cells are skipped with that reason.
    plan = _plan(smoke_data, design, tmp_path / "art2", doses=[1000], views=["dense"], splits=["train"],
                 reconstructors=["adam"])
    assert [j["id"] for j in plan.manifest["jobs"]] == ["dose_1000/dense/train/adam"]
    reasons = {s["reason"] for s in plan.skip_summary["skipped_jobs"] if s.get("reconstructor") == "lsqml"}
    assert reasons == {"filtered out by --reconstructor adam"}
    write_plan(plan)  # the documents pass their schemas
    read_json(plan.manifest_path, "reconstruction_manifest")


@pytest.mark.parametrize(("entries", "message"), [
    ([LIST[0], dict(LIST[0])], r"reconstructors/1/name: lsqml is also reconstructors/0"),
    ([LIST[0], {"name": "b", "engine": "cdtools", "algorithm": "ADAM", "options": {"object_alpha": 1.0}}],
     r"reconstructors/1/options/object_alpha: not a setting of the CDTools engine"),
    ([LIST[0], {"name": "b", "engine": "cdtools", "algorithm": "LSQML"}],
     r"reconstructors/1/algorithm LSQML: not one of ADAM \(engine cdtools\)"),
    ([LIST[0], {"name": "b", "engine": "command", "algorithm": "EXTERNAL", "options": {"command": ["x"]},
                "stopping": {"rule": "loss_plateau"}}],
     r"reconstructors/1/stopping: the command engine runs its program to the end"),
])
def test_bad_reconstructor_lists_name_the_entry(smoke_data, tmp_path, entries, message):
    design = _design(smoke_data, tmp_path, reconstructors=entries)
    with pytest.raises(DesignError, match=message) as caught:
        design_reconstructors(load_design(design))
    assert str(caught.value).startswith(str(design.resolve()))


def test_algorithm_override_needs_a_single_reconstructor(smoke_data, tmp_path):
    design = _design(smoke_data, tmp_path, reconstructors=LIST)
    with pytest.raises(DesignError, match=r"reconstructors: --algorithm replaces the algorithm of a study with one"):
        _plan(smoke_data, design, tmp_path / "art", algorithm="EPIE")


def test_data_hash_ignores_the_reconstructors(smoke_data, tmp_path):
    """Listing reconstructors does not change which data a design makes (its files stay valid)."""
    design = _design(smoke_data, tmp_path, reconstructors=LIST)
    assert load_design(design).data_hash == load_design(smoke_data["design"]).data_hash


def test_three_engines_side_by_side_end_to_end(smoke_data, tmp_path):
    """pty-chi, CDTools and an external program (the shipped example) on one cell: all ok, all in their folders."""
    entries = [LIST[0], dict(LIST[1], num_epochs=2),
               {"name": "external", "engine": "command", "algorithm": "EXTERNAL", "num_epochs": 2,
                "options": {"command": [sys.executable, str(EXAMPLE), "--input", "{input_npz}", "--output", "{output_npz}",
                                        "--epochs", "{num_epochs}"]}}]
    design = _design(smoke_data, tmp_path, reconstructors=entries)
    plan = write_plan(_plan(smoke_data, design, tmp_path / "art", doses=[1000], views=["dense"], splits=["train"]))
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = read_json(plan.manifest_path, "reconstruction_manifest")
    outcome = {r["job_id"]: (r["status"], r.get("reconstructor")) for r in manifest["execution_results"]}
    assert outcome == {f"dose_1000/dense/train/{n}": ("ok", n) for n in ("lsqml", "adam", "external")}
    for name, engine in (("lsqml", "ptychi"), ("adam", "cdtools"), ("external", "command")):
        result_json = read_json(tmp_path / "art" / "dose_1000" / "dense" / "train" / name / "result.json", "job_result")
        assert (result_json["engine"], result_json["reconstructor"]) == (engine, name)
        assert (tmp_path / "art" / "dose_1000" / "dense" / "train" / name / "reconstruction.npz").is_file()
    assert ENGINES["command"].uses_job_dir


def test_an_algorithm_of_another_engine_takes_that_engine(smoke_data, tmp_path):
    """--algorithm ADAM on a pty-chi design runs CDTools with the design's shared settings; EXTERNAL needs a command."""
    plan = _plan(smoke_data, Path(smoke_data["design"]), tmp_path / "art", doses=[1000], views=["dense"],
                 splits=["train"], algorithm="ADAM")
    (job,) = plan.manifest["jobs"]
    design = load_design(smoke_data["design"])
    assert (job["engine"], job["algorithm"], job["reconstructor"]) == ("cdtools", "ADAM", "cdtools_adam")
    assert job["engine_options"]["chunk_epochs"] == design.reconstruction["chunk_epochs"]
    assert job["engine_options"]["batch_size"] == ENGINES["cdtools"].recipe("ADAM")["batch_size"]
    with pytest.raises(DesignError, match=r"reconstruction/command: the command engine needs the program's argv"):
        _plan(smoke_data, Path(smoke_data["design"]), tmp_path / "art", algorithm="EXTERNAL")
    # A design naming only the algorithm gets its engine too.
    rec = {"algorithm": "ADAM", "num_epochs": 3}
    (only,) = design_reconstructors(load_design(_design(smoke_data, tmp_path, reconstruction=rec)))
    assert (only.engine, only.num_epochs) == ("cdtools", 3)


def test_option_errors_name_the_design_key(smoke_data, tmp_path):
    """An argument the command engine cannot pass (NUL) is named where the design wrote it."""
    entries = [{"name": "mine", "engine": "command", "algorithm": "EXTERNAL", "options": {"command": ["prog", "a\x00b"]}}]
    design = _design(smoke_data, tmp_path, reconstructors=entries)
    with pytest.raises(DesignError, match=r"reconstructors/0/options/command/1: contains a NUL character"):
        design_reconstructors(load_design(design))
