"""The engine registry is the one list: schemas, planning and the CLI follow it; pty-chi offers what it lists."""

from __future__ import annotations

import hashlib
import json

import pytest

from ptydose.core.design import canonical_json
from ptydose.core.errors import EngineError
from ptydose.core.jobs import options_hash
from ptydose.core.run.engines.registry import DEFAULT_ENGINE, ENGINES, all_algorithms, engine_spec
from ptydose.plan_jobs import cli as plan_jobs_cli


def _schema(repo_root, name: str) -> dict:
    return json.loads((repo_root / "schemas" / f"{name}.schema.json").read_text())


def test_schema_enums_are_the_registry(repo_root):
    """Every schema's engine and algorithm enums equal the registry's names and algorithms, in order."""
    manifest_job = _schema(repo_root, "reconstruction_manifest")["properties"]["jobs"]["items"]["properties"]
    result = _schema(repo_root, "job_result")["properties"]
    design = _schema(repo_root, "study_design")["properties"]["reconstruction"]["properties"]
    for where, properties in (("manifest jobs", manifest_job), ("job_result", result), ("design", design)):
        assert properties["algorithm"]["enum"] == list(all_algorithms()), where
        assert properties["engine"]["enum"] == list(ENGINES), where
    assert DEFAULT_ENGINE in ENGINES and all_algorithms() == ("LSQML", "EPIE", "RPIE", "PIE", "ADAM", "EXTERNAL")
    # DM is withdrawn (not robust to noise, docs/decisions.md): no schema may accept it.
    assert "DM" not in all_algorithms()


def test_ptychi_algorithms_are_ptychis_own():
    """Each registered pty-chi algorithm is in pty-chi's Reconstructors enum, and its options class builds that one."""
    from ptychi.api import enums
    from ptychi.api.registry import RECONSTRUCTOR_OPTIONS_MAP

    from ptydose.core.run.engines.ptychi import options_class_name, ptychi_api

    api = ptychi_api()
    for algorithm in ENGINES["ptychi"].algorithms:
        reconstructor = enums.Reconstructors[algorithm]
        options = getattr(api, options_class_name(algorithm))()
        assert options.reconstructor_options.get_reconstructor_type() == reconstructor, algorithm
        assert type(options.reconstructor_options) is RECONSTRUCTOR_OPTIONS_MAP[reconstructor]["reconstructor_options"]


def test_plan_jobs_offers_the_registry_algorithms():
    """plan-jobs --algorithm takes exactly the registry's algorithms."""
    option = next(p for p in plan_jobs_cli.params if p.name == "algorithm")
    assert tuple(option.type.choices) == all_algorithms()


def test_unknown_engine_and_algorithm_name_the_choices():
    """An unknown engine or algorithm is a one-line error listing what the registry has."""
    with pytest.raises(EngineError, match=r"^engine ptypy: not one of ptychi, cdtools, command$"):
        engine_spec("ptypy")
    with pytest.raises(EngineError, match=r"^--algorithm SIRT: not one of LSQML, EPIE, RPIE, PIE \(engine ptychi\)$"):
        ENGINES["ptychi"].check_algorithm("SIRT")


def test_options_hash_is_unchanged_for_existing_jobs():
    """The default engine leaves the options hash as it always was; another engine changes it."""
    job = {"algorithm": "LSQML", "num_epochs": 8,
           "engine_options": {"noise_model": "gaussian", "batch_size": 32, "optimize_probe": True,
                              "probe_update_start_epoch": 1, "seed": 123, "chunk_epochs": 10,
                              "wavelength_m": 1.4e-10, "object_pixel_size_m": 1.2e-7}}
    before = hashlib.sha256(canonical_json(job).encode()).hexdigest()  # the formula manifests were hashed with
    assert options_hash(job) == options_hash({**job, "engine": "ptychi"}) == before
    assert options_hash({**job, "engine": "other"}) != before


def test_design_options_fill_the_engine_defaults(smoke_design_path, tmp_path):
    """A design silent on optional settings gets the registry's defaults in its jobs' engine options."""
    from ptydose.core.design import load_design
    from ptydose.core.jobs import engine_options

    raw = json.loads(smoke_design_path.read_text())
    for key in (*ENGINES["ptychi"].defaults, "batch_size"):
        raw["reconstruction"].pop(key, None)
    design_path = tmp_path / "design.json"
    design_path.write_text(json.dumps(raw))
    design = load_design(design_path)
    options = engine_options(design)
    assert list(options) == ["noise_model", "batch_size", "optimize_probe", "probe_update_start_epoch", "seed",
                             "chunk_epochs", "wavelength_m", "object_pixel_size_m"]
    assert {k: options[k] for k in ENGINES["ptychi"].defaults} == dict(ENGINES["ptychi"].defaults)
    assert options["seed"] == raw["seeds"]["grouping"]
    assert options["batch_size"] == ENGINES["ptychi"].recipe(raw["reconstruction"]["algorithm"])["batch_size"]
