"""Shared fixtures: repository paths and the small built-in (smoke) study design."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch to the two cores CI has; tests must not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_DESIGN = REPO_ROOT / "plans" / "smoke" / "design.json"
STUDY_DESIGN = REPO_ROOT / "plans" / "fly64_dose_overlap" / "design.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def smoke_design_path() -> Path:
    return SMOKE_DESIGN


@pytest.fixture(scope="session")
def study_design_path() -> Path:
    return STUDY_DESIGN


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> dict:
    """The smoke design generated once per session by gen-synthetic's core (read-only for tests).

    Returns ``{"design": Path, "phase_c_root": Path, "phase_d_root": Path}``.
    """
    from ptydose.core.synthetic import generate_study

    base = tmp_path_factory.mktemp("smoke_data")
    phase_c, phase_d = base / "phase_c", base / "phase_d"
    generate_study(SMOKE_DESIGN, phase_c, phase_d, progress=False)
    return {"design": SMOKE_DESIGN, "phase_c_root": phase_c, "phase_d_root": phase_d}
