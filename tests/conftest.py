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
