"""The package installs as a wheel and works outside the source tree.

A wheel is built from the repository, installed (without dependencies: they are the venv's) into a
fresh folder, and the five tools run from there on the smoke design with the source tree off the
path and the working directory elsewhere: schemas must come from the installed package data, not
from ``schemas/`` beside the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(args, *, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, repo_root) -> dict:
    """The wheel built from the repository, installed into a folder of its own."""
    base = tmp_path_factory.mktemp("wheel")
    wheels, target = base / "wheels", base / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels,
                  repo_root], cwd=base, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("*.whl")
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
                   cwd=base, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    # The installed copy first; the source checkout nowhere on the path, the working directory elsewhere.
    run_env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    run_env.pop("PYTHONSAFEPATH", None)
    work = base / "work"
    work.mkdir()
    return {"wheel": wheel, "site": target, "env": run_env, "work": work}


def test_wheel_ships_the_schemas_and_no_tests(installed):
    """The wheel holds ptydose with its JSON schemas as package data, and neither tests nor benchmarks."""
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "ptydose/__init__.py" in names and "ptydose/core/manifests.py" in names
    schemas = {Path(n).name for n in names if n.startswith("ptydose/schemas/") and n.endswith(".schema.json")}
    assert {"study_design.schema.json", "reconstruction_manifest.schema.json", "summary.schema.json"} <= schemas
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "tools/"))]


def test_installed_package_is_the_one_imported(installed, repo_root):
    """With the installed folder on the path, `ptydose` and its schemas load from it, not from the checkout."""
    probe = ("import json, ptydose; from importlib import resources; "
             "from ptydose.core.manifests import load_schema, SCHEMA_PACKAGE; "
             "print(json.dumps([ptydose.__file__, str(resources.files(SCHEMA_PACKAGE)), "
             "load_schema('summary')['$id']]))")
    result = _run([sys.executable, "-c", probe], cwd=installed["work"], env=installed["env"])
    assert result.returncode == 0, result.stderr
    module_file, schema_dir, schema_id = json.loads(result.stdout)
    assert Path(module_file).is_relative_to(installed["site"]), module_file
    assert Path(schema_dir).is_relative_to(installed["site"]), schema_dir
    assert not Path(module_file).is_relative_to(repo_root)
    assert schema_id.endswith("/summary.schema.json")


@pytest.mark.slow
def test_installed_tools_run_the_smoke_pipeline(installed, repo_root):
    """gen-synthetic → validate-npz → plan-jobs → run-ptychi (one real 1-epoch job) → summarize, all installed."""
    work, env = installed["work"], installed["env"]
    design = work / "design.json"
    design.write_text((repo_root / "plans" / "smoke" / "design.json").read_text())
    c, d, f = work / "phase_c", work / "phase_d", work / "phase_f"

    def tool(name: str, *args) -> subprocess.CompletedProcess:
        # The console script pip wrote for the installed wheel (its entry point, not the checkout's).
        script = installed["site"] / "bin" / name
        assert script.is_file(), f"no console script {script}"
        return _run([script, *args], cwd=work, env=env)

    steps = [
        ("gen-synthetic", "--design", design, "--phase-c-root", c, "--phase-d-root", d, "--dose", "1000"),
        ("validate-npz", "-q", c / "dose_1000", d / "dose_1000"),
        ("plan-jobs", "--design", design, "--phase-c-root", c, "--phase-d-root", d, "--artifact-root", f,
         "--dose", "1000", "--view", "sparse", "--split", "train", "--num-epochs", "1"),
        ("run-ptychi", "--manifest", f / "reconstruction_manifest.json"),
        ("summarize", "--artifact-root", f),
    ]
    for name, *args in steps:
        result = tool(name, *args)
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    summary = json.loads((f / "summary" / "summary.json").read_text())
    assert [(job["job_id"], job["status"]) for job in summary["jobs"]] == [("dose_1000/sparse/train", "scored")]
