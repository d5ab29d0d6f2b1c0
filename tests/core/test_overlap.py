"""Splits, greedy minimum-spacing views and the disc-overlap measure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ptydose.core import overlap
from ptydose.core.design import load_design
from ptydose.core.synthetic import build_geometry


def test_disc_overlap_fraction_known_values():
    """Disc overlap: 1 at distance 0, 0 beyond D, the analytic lens area at D/2."""
    assert overlap.disc_overlap_fraction(0.0, 10.0) == pytest.approx(1.0, abs=1e-12)
    assert overlap.disc_overlap_fraction(10.0, 10.0) == 0.0
    assert overlap.disc_overlap_fraction(25.0, 10.0) == 0.0
    # d = D/2: (2/pi) (acos(1/2) - (1/2) sqrt(1 - 1/4))
    analytic = 2 / math.pi * (math.acos(0.5) - 0.5 * math.sqrt(0.75))
    assert overlap.disc_overlap_fraction(5.0, 10.0) == pytest.approx(analytic, rel=1e-12)


def test_measured_overlap_on_a_square_grid():
    """Interior points of a grid of pitch a have 4 neighbours at a: the mean is that overlap."""
    ys, xs = np.meshgrid(np.arange(7) * 4.0, np.arange(7) * 4.0, indexing="ij")
    grid = np.stack([ys.ravel(), xs.ravel()], axis=1)
    value = overlap.measured_overlap(grid, 10.0, 4)
    # Edge points also find 4 neighbours, some at 4*sqrt(2) or 8 px, so the mean is a bit lower.
    assert value < overlap.disc_overlap_fraction(4.0, 10.0)
    single = overlap.measured_overlap(grid[24:25].repeat(1, axis=0), 10.0, 4)
    assert single is None  # no neighbour: undefined, recorded as null
    pair = overlap.measured_overlap(np.array([[0.0, 0.0], [0.0, 4.0]]), 10.0, 4)
    assert pair == pytest.approx(float(overlap.disc_overlap_fraction(4.0, 10.0)), rel=1e-12)


def test_greedy_selection_is_spaced_maximal_and_seeded():
    """Greedy: accepted >= S apart, every rejected point within S of one accepted, same seed same view."""
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 60, size=(300, 2))
    split = np.arange(300)
    a = overlap.select_view(coords, split, 6.0, 12.0, 4, np.random.default_rng(9))
    b = overlap.select_view(coords, split, 6.0, 12.0, 4, np.random.default_rng(9))
    c = overlap.select_view(coords, split, 6.0, 12.0, 4, np.random.default_rng(10))
    assert a.selection_strategy == "greedy"
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)
    kept = coords[a.indices]
    assert overlap.min_spacing(kept) >= 6.0
    rejected = np.setdiff1d(split, a.indices)
    d = np.linalg.norm(coords[rejected][:, None, :] - kept[None, :, :], axis=-1)
    assert np.all(d.min(axis=1) < 6.0)  # maximal: nothing rejected could have been added
    assert a.n_accepted + a.n_rejected == 300 and a.acceptance_rate == pytest.approx(a.n_accepted / 300)
    assert a.measured_overlap == pytest.approx(overlap.measured_overlap(kept, 12.0, 4), abs=1e-6)


def test_direct_selection_when_already_spaced():
    """A split whose positions are all >= S apart is taken whole (direct)."""
    coords = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    sel = overlap.select_view(coords, np.arange(3), 9.9, 12.0, 2, None)
    assert sel.selection_strategy == "direct" and sel.n_rejected == 0 and sel.acceptance_rate == 1.0


def test_splits_are_disjoint_complete_and_along_y():
    """train = y below the object's centre row, test = the rest: disjoint, complete."""
    rng = np.random.default_rng(1)
    coords = rng.uniform(20, 80, size=(200, 2))
    splits = overlap.split_indices(coords, (100, 100))
    assert np.intersect1d(splits["train"], splits["test"]).size == 0
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(200))
    assert coords[splits["train"], 0].max() < 49.5 <= coords[splits["test"], 0].min()


@pytest.fixture(scope="module")
def study_geometry(study_design_path):
    return build_geometry(load_design(study_design_path))


def test_shipped_design_views_are_genuine_subsets(study_geometry):
    """Shipped design: dense >= 50 and sparse >= 10 per split, spacing >= S, greedy, overlaps ordered."""
    g = study_geometry
    for split in ("train", "test"):
        base = g.selections[("baseline", split)]
        dense = g.selections[("dense", split)]
        sparse = g.selections[("sparse", split)]
        assert base.n_accepted == len(g.splits[split]) and base.selection_strategy == "direct"
        assert dense.n_accepted >= 50 and sparse.n_accepted >= 10
        assert dense.selection_strategy == sparse.selection_strategy == "greedy"
        for view, sel in (("dense", dense), ("sparse", sparse)):
            assert set(sel.indices) <= set(g.splits[split])
            assert overlap.min_spacing(g.coords[sel.indices]) >= g.design.spacing_thresholds[view]
        assert base.measured_overlap > dense.measured_overlap > sparse.measured_overlap
        assert sparse.measured_overlap < 0.1  # sparse views barely overlap ...
        assert dense.measured_overlap > 0.4  # ... dense ones overlap well


def test_view_files_obey_geometry(smoke_data):
    """Every view file: subset of its split (scan_index), spacing >= S, recorded figures recomputed."""
    design = load_design(smoke_data["design"])
    for split in ("train", "test"):
        base_path = smoke_data["phase_c_root"] / "dose_1000" / f"patched_{split}.npz"
        with np.load(base_path, allow_pickle=False) as base:
            base_index = set(base["scan_index"].tolist())
        for view, threshold in design.spacing_thresholds.items():
            with np.load(smoke_data["phase_d_root"] / "dose_1000" / view / f"{view}_{split}.npz",
                         allow_pickle=False) as d:
                meta = json.loads(str(d["_metadata"]))
                coords = np.stack([d["ycoords"], d["xcoords"]], axis=1)
                index = d["scan_index"]
            sel = meta["selection"]
            assert set(index.tolist()) <= base_index
            assert overlap.min_spacing(coords) >= threshold == sel["spacing_threshold"]
            assert sel["n_accepted"] == len(index) == meta["n_images"]
            assert sel["n_accepted"] + sel["n_rejected"] == len(base_index)
            assert sel["measured_overlap"] == pytest.approx(
                overlap.measured_overlap(coords, design.probe_diameter_px, sel["neighbours"]), abs=1e-6)
