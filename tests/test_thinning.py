"""Dose ladders by binomial thinning of a measured contract NPZ (tools/core/thinning.py, gen-synthetic).

Statistical checks use enough pixels that a 5-sigma band is tight; each states the standard error
it is built on. A failing seed would need a > 5-sigma fluctuation (p < 6e-7 per check).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ptydose.core.contract import check_npz, read_contract_npz
from ptydose.core.design import load_design
from ptydose.core.errors import ContractError, DesignError
from ptydose.core.fileio import sha256_file, write_npz_atomic
from ptydose.core.jobs import plan_jobs, write_plan
from ptydose.core.manifests import read_json
from ptydose.core.scan_join import join_scan
from ptydose.core.thinning import Ladder, chain_seed, generate_ladder, split_parts, thin
from ptydose.gen_synthetic import cli as gen_cli

SIGMAS = 5.0


def _batches(counts: np.ndarray, rows: int = 64):
    for start in range(0, len(counts), rows):
        yield slice(start, min(start + rows, len(counts))), counts[start:start + rows]


def _chain(counts: np.ndarray, ladder: Ladder, replicate: int) -> dict[int, np.ndarray]:
    out: dict[int, list[np.ndarray]] = {d: [] for d in ladder.doses}
    for _, by_dose in ladder.chains(_batches(counts), replicate):
        for dose, drawn in by_dose.items():
            out[dose].append(drawn)
    return {d: np.concatenate(v) for d, v in out.items()}


def _assert_mean_var(sample: np.ndarray, mean: float, var: float, fourth_moment_ratio: float = 3.0) -> None:
    """Sample mean within 5 standard errors (sqrt(var / n)); sample variance within 5 standard
    errors of a variance estimate, sqrt((mu4/var^2 - 1) / n) relative (3 for near-normal counts)."""
    n = sample.size
    assert abs(sample.mean() - mean) < SIGMAS * math.sqrt(var / n), (sample.mean(), mean)
    rel = SIGMAS * math.sqrt((fourth_moment_ratio - 1.0) / n)
    assert abs(sample.var() / var - 1.0) < rel, (sample.var(), var, rel)


# ----------------------------------------------------------------------------------------------
# The draws, independently of any file
# ----------------------------------------------------------------------------------------------
def test_thinned_counts_are_binomial_draws_of_the_parent():
    """A uniform parent k: every rung of a chain has per-pixel mean p k and variance p (1 - p) k,
    p = d / D (the rung's marginal fraction), not the Poisson variance p k."""
    k = 1000
    parent = np.full((100, 32, 32), k, dtype=np.int64)  # 102400 pixels
    ladder = Ladder(parent_dose=100000, doses=(50000, 10000, 1000), replicates=1, simulation_seed=42)
    chain = _chain(parent, ladder, 0)
    for dose, drawn in chain.items():
        p = dose / 100000
        _assert_mean_var(drawn, p * k, p * (1 - p) * k)
    # The binomial variance is far from the Poisson one at p = 0.5: 250 vs 500, which the band separates.
    assert chain[50000].var() < 0.6 * 0.5 * k


def test_thinning_a_poisson_parent_gives_poisson_counts():
    """Poisson(lam) thinned to fraction p is Poisson(p lam): mean = variance = p lam (fourth moment
    ratio 3 + 1 / (p lam), about 3 here)."""
    rng = np.random.default_rng(7)
    lam = 40.0
    parent = rng.poisson(lam, size=(100, 32, 32))
    ladder = Ladder(parent_dose=1000, doses=(250, 100), replicates=1, simulation_seed=3)
    for dose, drawn in _chain(parent, ladder, 0).items():
        mu = lam * dose / 1000
        _assert_mean_var(drawn, mu, mu, 3.0 + 1.0 / mu)


def test_replicate_parts_sum_to_the_parent_and_are_uncorrelated():
    """K = 3 parts of a Poisson parent: they sum to the parent exactly; each is Poisson(lam / K);
    two parts are uncorrelated (|r| < 5 / sqrt(n), the null standard error of a correlation)."""
    rng = np.random.default_rng(11)
    lam = 30.0
    parent = rng.poisson(lam, size=(100, 32, 32))
    parts = split_parts(parent, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(sum(parts), parent)
    for part in parts:
        assert part.dtype == np.int64 and part.min() >= 0
        _assert_mean_var(part, lam / 3, lam / 3, 3.0 + 3 / lam)
    n = parent.size
    for a, b in ((0, 1), (0, 2), (1, 2)):
        r = np.corrcoef(parts[a].ravel(), parts[b].ravel())[0, 1]
        assert abs(r) < SIGMAS / math.sqrt(n), r
    # The conditional split of a fixed k is Binomial(k, 1/K) per part (anti-correlated given k).
    uniform = split_parts(np.full((100, 32, 32), 900, np.int64), 3, np.random.default_rng(6))
    _assert_mean_var(uniform[0], 300.0, 900 * (1 / 3) * (2 / 3))


def test_replicate_chains_start_from_their_part_at_d_over_k():
    """With K = 2 and a top rung of exactly D / K, each replicate's top rung is its whole part, so
    the replicates' top rungs sum to the parent; lower rungs are Binomial(k, d / D) marginally."""
    k = 800
    parent = np.full((100, 32, 32), k, dtype=np.int64)
    ladder = Ladder(parent_dose=10000, doses=(5000, 1000), replicates=2, simulation_seed=42)
    chains = [_chain(parent, ladder, r) for r in (0, 1)]
    np.testing.assert_array_equal(chains[0][5000] + chains[1][5000], parent)
    for chain in chains:
        _assert_mean_var(chain[1000], 0.1 * k, 0.1 * 0.9 * k)
    assert not np.array_equal(chains[0][1000], chains[1][1000])


def test_chains_are_nested_pixel_by_pixel():
    """Down a chain no pixel ever gains a count (k_next is a binomial of k_prev)."""
    rng = np.random.default_rng(1)
    parent = rng.poisson(20.0, size=(50, 16, 16))
    ladder = Ladder(parent_dose=1000, doses=(500, 200, 50, 10), replicates=2, simulation_seed=9)
    for r in (0, 1):
        chain = _chain(parent, ladder, r)
        rungs = [chain[d] for d in ladder.doses]
        assert np.all(rungs[0] <= parent)
        for upper, lower in zip(rungs, rungs[1:], strict=False):
            assert np.all(lower <= upper)
        assert rungs[-1].sum() < rungs[0].sum()


def test_draws_are_seeded_and_do_not_depend_on_the_rungs_asked_for():
    """Same seed, same counts; another simulation seed, other counts; stopping the chain early
    leaves the rungs above it unchanged; the seed is SeedSequence([sim, 7, dose, r])'s first word."""
    parent = np.random.default_rng(2).poisson(50.0, size=(40, 16, 16))
    ladder = Ladder(parent_dose=1000, doses=(400, 100), replicates=1, simulation_seed=42)
    first, again = _chain(parent, ladder, 0), _chain(parent, ladder, 0)
    for dose in ladder.doses:
        np.testing.assert_array_equal(first[dose], again[dose])
    top_only = [d[400] for _, d in ladder.chains(_batches(parent), 0, down_to=400)]
    np.testing.assert_array_equal(np.concatenate(top_only), first[400])
    other = _chain(parent, Ladder(1000, (400, 100), 1, 43), 0)
    assert not np.array_equal(other[400], first[400])
    assert chain_seed(42, 400, 0) == int(np.random.SeedSequence([42, 7, 400, 0]).generate_state(1)[0])


def test_thin_refuses_a_fraction_outside_0_1():
    """A thinning probability outside [0, 1] is a programming error, refused."""
    with pytest.raises(ValueError, match="not in"):
        thin(np.ones(3, np.int64), 1.5, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------
# Files: a parent made from the smoke study's high dose
# ----------------------------------------------------------------------------------------------
def whole_scan_parent(phase_c_root: Path, dose: int, out: Path, metadata_update: dict | None = None) -> Path:
    """One contract NPZ holding the whole scan of a generated dose, as a measured scan would be: the
    parent of a ladder, joined from its train and test files by gen-synthetic's --join-scan core."""
    folder = phase_c_root / f"dose_{dose}"
    join_scan(out, [folder / "patched_train.npz", folder / "patched_test.npz"])
    if metadata_update:
        with np.load(out, allow_pickle=False) as npz:
            members = {key: npz[key] for key in npz.files}
        meta = json.loads(str(members["_metadata"]))
        meta.update(metadata_update)
        members["_metadata"] = np.array(json.dumps(meta, sort_keys=True))
        write_npz_atomic(out, members)
    return out


def measured_design(smoke_design_path: Path, folder: Path, parent: str, doses: list[int], replicates: int = 1,
                    **extra) -> Path:
    raw = json.loads(smoke_design_path.read_text())
    for key in ("probe", "object", "scan"):
        raw.pop(key)
    raw.update(name="smoke_ladder", doses=doses, measured={"npz": parent}, **extra)
    if replicates > 1:
        raw["replicates"] = replicates
    path = folder / "design.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


@pytest.fixture(scope="module")
def parent_file(smoke_data, tmp_path_factory) -> Path:
    return whole_scan_parent(smoke_data["phase_c_root"], 100000, tmp_path_factory.mktemp("parent") / "parent.npz")


@pytest.fixture(scope="module")
def ladder_data(parent_file, smoke_design_path, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ladder")
    (folder / "parent.npz").write_bytes(parent_file.read_bytes())
    design = measured_design(smoke_design_path, folder, "parent.npz", [1000, 10000, 50000], replicates=2)
    result = generate_ladder(load_design(design), folder / "phase_c", folder / "phase_d", progress=False)
    return {"design": design, "phase_c_root": folder / "phase_c", "phase_d_root": folder / "phase_d",
            "parent": folder / "parent.npz", "result": result}


def test_children_pass_the_contract_and_record_their_thinning(ladder_data):
    """Every child validates (full check); metadata names the parent, its sha256 and dose, the
    fraction d / D, the replicate and the chain seed; ground_truth is false; probeGuess is the
    parent's scaled by sqrt(d / D); objectGuess is the parent's."""
    parent = read_contract_npz(ladder_data["parent"])
    files = ladder_data["result"].files
    assert len(files) == 3 * 2 * 3 * 2  # doses x replicates x views x splits
    for entry in files:
        root = ladder_data["phase_c_root"] if entry["root"] == "phase_c" else ladder_data["phase_d_root"]
        path = root / entry["path"]
        report = check_npz(path, full=True)
        assert report.ok, report.lines()
        child = read_contract_npz(path)
        meta = child.metadata
        dose, replicate = entry["dose"], entry.get("replicate", 0)
        assert meta["dose"] == dose and meta.get("replicate", 0) == replicate
        assert meta["ground_truth"] is False
        assert meta["thinning"] == {"parent": "parent.npz", "parent_sha256": sha256_file(ladder_data["parent"]),
                                    "parent_dose": 100000, "fraction": dose / 100000, "replicate": replicate,
                                    "seed": chain_seed(42, dose, replicate)}
        assert meta["noise_seed"] == meta["thinning"]["seed"] == entry["noise_seed"]
        np.testing.assert_array_equal(child["objectGuess"], parent["objectGuess"])
        np.testing.assert_allclose(child["probeGuess"], parent["probeGuess"] * math.sqrt(dose / 100000), rtol=1e-6,
                                   atol=1e-6 * np.abs(parent["probeGuess"]).max())
        rows = np.searchsorted(parent["scan_index"], child["scan_index"])
        np.testing.assert_array_equal(parent["scan_index"][rows], child["scan_index"])
        np.testing.assert_array_equal(child["Y"], parent["Y"][rows])
        np.testing.assert_array_equal(child["xcoords"], parent["xcoords"][rows])
        # Each child count is a thinning of the parent's (K = 2: of a part of it).
        assert np.all(child.counts() <= parent.counts()[rows])
        assert meta["expected_mean_counts"] == pytest.approx(
            parent.counts()[rows].sum(axis=(1, 2)).mean() * dose / 100000, rel=1e-6)


def test_views_select_the_parent_positions_as_for_simulated_data(ladder_data, smoke_data):
    """The parent is the smoke study's whole scan, so the ladder's views and splits hold exactly the
    positions (scan indices and selection figures) the simulated study's do."""
    for entry in ladder_data["result"].files:
        if entry.get("replicate", 0) or entry["dose"] != 1000:
            continue
        root = "phase_c_root" if entry["root"] == "phase_c" else "phase_d_root"
        child = read_contract_npz(ladder_data[root] / entry["path"], check_values=False, keys=("scan_index",))
        simulated = read_contract_npz(smoke_data[root] / entry["path"], check_values=False, keys=("scan_index",))
        np.testing.assert_array_equal(child["scan_index"], simulated["scan_index"])
        assert child.metadata["selection"] == simulated.metadata["selection"]


def test_doses_are_nested_within_a_replicate(ladder_data):
    """Within a replicate, a lower dose's counts never exceed a higher dose's, pixel by pixel."""
    for rep in ("", "rep1/"):
        counts = {d: read_contract_npz(ladder_data["phase_c_root"] / f"dose_{d}/{rep}patched_train.npz").counts()
                  for d in (1000, 10000, 50000)}
        assert np.all(counts[1000] <= counts[10000]) and np.all(counts[10000] <= counts[50000])
        assert counts[1000].sum() < counts[10000].sum() < counts[50000].sum()


def test_the_two_replicates_at_d_over_k_sum_to_the_parent(ladder_data):
    """Doses 50000 = D / 2 of replicates 0 and 1 are the two parts of the parent's split."""
    parent = read_contract_npz(ladder_data["parent"])
    halves = [read_contract_npz(ladder_data["phase_c_root"] / f"dose_50000/{rep}patched_test.npz")
              for rep in ("", "rep1/")]
    rows = np.searchsorted(parent["scan_index"], halves[0]["scan_index"])
    np.testing.assert_array_equal(halves[0].counts() + halves[1].counts(), parent.counts()[rows])


def test_same_design_same_bytes_and_a_dose_alone_is_the_same_draw(ladder_data, tmp_path):
    """A second generation (elsewhere) writes the same bytes, and asking for the lowest dose alone
    (through the CLI) gives the very files the whole ladder gave: the chain is drawn from its top."""
    again = generate_ladder(load_design(ladder_data["design"]), tmp_path / "c", tmp_path / "d", progress=False)
    assert [(e["path"], e["sha256"]) for e in again.files] == [(e["path"], e["sha256"]) for e in
                                                                ladder_data["result"].files]
    result = CliRunner().invoke(gen_cli, ["--design", str(ladder_data["design"]), "--phase-c-root",
                                          str(tmp_path / "c1"), "--phase-d-root", str(tmp_path / "d1"),
                                          "--dose", "1000", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    alone = json.loads(result.stdout)["files"]
    assert {(e["path"], e["sha256"]) for e in alone} == {(e["path"], e["sha256"]) for e in
                                                         ladder_data["result"].files if e["dose"] == 1000}


def test_rerun_regenerates_nothing(ladder_data):
    """An unchanged design with its files present is up to date (sha256 checked)."""
    result = generate_ladder(load_design(ladder_data["design"]), ladder_data["phase_c_root"],
                             ladder_data["phase_d_root"], progress=False)
    assert result.generated_doses == [] and result.up_to_date_doses == [1000, 10000, 50000]


def test_a_realistic_parent_passes_its_mask_nominal_positions_and_probe_modes_on(smoke_design_path, tmp_path):
    """A parent with a beamstop and dead pixels, position errors and two probe modes: children keep
    valid_pixels and the nominal positions of their rows, probe_modes scaled by sqrt(d / D), hold
    no counts at masked pixels, pass the contract, and are selected on the nominal positions."""
    from ptydose.core import overlap, physics
    from ptydose.core.synthetic import generate_study

    raw = json.loads(smoke_design_path.read_text())
    raw["probe"]["modes"] = {"count": 2, "power_ratio": 0.3}
    raw["position_errors"] = {"random_px": 0.5, "scale": 0.05, "rotation_deg": 4.0}
    raw["detector"] = {"beamstop_radius_px": 2.0, "bad_pixels": 5}
    raw["doses"] = [100000]
    (tmp_path / "sim").mkdir()
    sim_design = tmp_path / "sim" / "design.json"
    sim_design.write_text(json.dumps(raw))
    generate_study(sim_design, tmp_path / "sim" / "c", tmp_path / "sim" / "d", progress=False)
    parent_path = whole_scan_parent(tmp_path / "sim" / "c", 100000, tmp_path / "parent.npz")
    parent = read_contract_npz(parent_path)
    assert {"probe_modes", "nominal_xcoords", "valid_pixels"} <= set(parent.arrays)
    design = measured_design(smoke_design_path, tmp_path, "parent.npz", [1000, 20000])
    result = generate_ladder(load_design(design), tmp_path / "c", tmp_path / "d", progress=False)
    mask = parent.valid_pixels()
    assert not mask.all()
    nominal = np.stack([parent["nominal_ycoords"], parent["nominal_xcoords"]], axis=1)
    true = np.stack([parent["ycoords"], parent["xcoords"]], axis=1)
    # The joined parent's error figures are the whole scan's, not its first part's.
    assert parent.metadata["position_errors"] == {"random_px": 0.5, "scale": 0.05, "rotation_deg": 4.0,
                                                  "drift_px": [0.0, 0.0],
                                                  **physics.position_error_figures(true, nominal)}
    # The errors are large enough that the nominal positions split the scan differently (4 degrees
    # move positions near the cut row by over a pixel): the check below can tell which were used.
    by_true = overlap.split_indices(true, parent["objectGuess"].shape)["train"]
    assert not np.array_equal(overlap.split_indices(nominal, parent["objectGuess"].shape)["train"], by_true)
    for entry in result.files:
        path = (tmp_path / ("c" if entry["root"] == "phase_c" else "d")) / entry["path"]
        assert check_npz(path, full=True).ok, check_npz(path).lines()
        child = read_contract_npz(path)
        rows = np.searchsorted(parent["scan_index"], child["scan_index"])
        np.testing.assert_array_equal(child.valid_pixels(), mask)
        assert np.all(child.counts()[:, ~mask] == 0) and child.counts()[:, mask].sum() > 0
        np.testing.assert_array_equal(child["nominal_xcoords"], parent["nominal_xcoords"][rows])
        np.testing.assert_array_equal(child["xcoords"], parent["xcoords"][rows])
        scale = math.sqrt(entry["dose"] / 100000)
        np.testing.assert_allclose(child["probe_modes"], parent["probe_modes"] * scale, rtol=1e-6,
                                   atol=1e-6 * np.abs(parent["probe_modes"]).max())
        assert child.metadata["position_errors"] == parent.metadata["position_errors"]
        if entry["view"] == "baseline":
            split = overlap.split_indices(nominal, parent["objectGuess"].shape)[entry["split"]]
            np.testing.assert_array_equal(child["scan_index"], parent["scan_index"][split])
    with np.load(path, allow_pickle=False) as npz:
        assert list(npz.files) == ["diffraction", "Y", "objectGuess", "probeGuess", "xcoords", "ycoords",
                                   "scan_index", "_metadata", "probe_modes", "nominal_xcoords",
                                   "nominal_ycoords", "valid_pixels"]


def test_a_dose_above_d_over_k_is_refused_naming_it(parent_file, smoke_design_path, tmp_path):
    """D = 1e5 and K = 2: a dose of 60000 > D / K is a one-line error naming doses/<i>."""
    (tmp_path / "parent.npz").write_bytes(parent_file.read_bytes())
    design = measured_design(smoke_design_path, tmp_path, "parent.npz", [1000, 60000], replicates=2)
    result = CliRunner().invoke(gen_cli, ["--design", str(design), "--phase-c-root", str(tmp_path / "c"),
                                          "--phase-d-root", str(tmp_path / "d")])
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"Error: {design}: doses/1: 60000") and "50000" in line and "\n" not in line
    assert not (tmp_path / "c").exists()
    design = measured_design(smoke_design_path, tmp_path, "parent.npz", [200000])
    with pytest.raises(DesignError, match=r"doses/0: 200000"):
        generate_ladder(load_design(design), tmp_path / "c", tmp_path / "d")


def test_a_parent_with_continuous_counts_is_refused(smoke_data, smoke_design_path, tmp_path):
    """Readout-noise counts are not photon counts: thinning them is refused in one line naming the key."""
    parent = whole_scan_parent(smoke_data["phase_c_root"], 100000, tmp_path / "parent.npz", metadata_update={
        "detector": {"readout_noise_adu": 1.0, "adu_per_photon": 1.0, "saturation_photons": None,
                     "mask_saturated": True, "beamstop_radius_px": 0.0, "bad_pixels": 0, "binning": 1,
                     "counts": "continuous", "n_masked_pixels": 0, "n_saturated_values": 0, "readout_seed": 1}})
    design = measured_design(smoke_design_path, tmp_path, "parent.npz", [1000])
    with pytest.raises((ContractError, DesignError)) as caught:
        generate_ladder(load_design(design), tmp_path / "c", tmp_path / "d")
    line = str(caught.value)
    assert line.startswith(f"{parent}: _metadata/detector") and "\n" not in line


def test_a_parent_holding_half_the_scan_is_refused(smoke_data, smoke_design_path, tmp_path):
    """A ladder's splits are halves of the parent's scan: a parent of one split leaves the other empty."""
    (tmp_path / "parent.npz").write_bytes((smoke_data["phase_c_root"] / "dose_100000/patched_train.npz").read_bytes())
    design = measured_design(smoke_design_path, tmp_path, "parent.npz", [1000])
    with pytest.raises(DesignError, match="measured/npz: the test split has no positions"):
        generate_ladder(load_design(design), tmp_path / "c", tmp_path / "d")


def test_a_missing_parent_is_a_one_line_error(smoke_design_path, tmp_path):
    """A design naming a parent that does not exist: exit 1, one line naming measured/npz and the file."""
    design = measured_design(smoke_design_path, tmp_path, "nowhere.npz", [1000])
    result = CliRunner().invoke(gen_cli, ["--design", str(design), "--phase-c-root", str(tmp_path / "c"),
                                          "--phase-d-root", str(tmp_path / "d")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "measured/npz" in result.output and "nowhere.npz" in result.output


# ----------------------------------------------------------------------------------------------
# Joining the parts of a scan into a parent (gen-synthetic --join-scan)
# ----------------------------------------------------------------------------------------------
def _rewrite(source: Path, out: Path, rows: np.ndarray | None = None, metadata_update: dict | None = None,
             members_update: dict | None = None, valid: bool = True) -> Path:
    """A copy of a contract NPZ, optionally holding only ``rows`` (with the per-pattern figures its
    metadata needs to stay valid), with metadata keys or members replaced; checked to pass the
    contract (or, ``valid=False``, to fail it)."""
    with np.load(source, allow_pickle=False) as npz:
        members = {key: npz[key] for key in npz.files}
    meta = json.loads(str(members["_metadata"]))
    if rows is not None:
        for key in ("diffraction", "Y", "xcoords", "ycoords", "scan_index", "nominal_xcoords", "nominal_ycoords"):
            if key in members:
                members[key] = members[key][rows]
        counts = read_contract_npz(source).counts()[rows]
        meta.update(n_images=len(rows), measured_mean_counts=round(float(counts.sum(axis=(1, 2)).mean()), 6),
                    selection={**meta["selection"], "n_accepted": len(rows), "acceptance_rate": 1.0})
        meta["scan"].pop("joined_from", None)
    meta.update(metadata_update or {})
    members["_metadata"] = np.array(json.dumps(meta, sort_keys=True))
    members.update(members_update or {})
    write_npz_atomic(out, members)
    assert check_npz(out, full=True).ok is valid, check_npz(out).lines()
    return out


def _smoke_parts(smoke_data, dose: int = 100000) -> tuple[Path, Path]:
    folder = smoke_data["phase_c_root"] / f"dose_{dose}"
    return folder / "patched_train.npz", folder / "patched_test.npz"


def test_join_holds_every_pattern_once_in_scan_order(smoke_data, tmp_path):
    """Train and test (named in either order) make the whole scan: every per-pattern member is the
    parts' rows sorted by scan_index, the shared members are the parts', the file passes the full
    contract, its metadata is the parts' with the whole's pattern count, recovered mean counts,
    pattern-weighted expected counts, selection figures and overlap over all positions, and the
    parts (path relative to the joined file, sha256, split, view, n) under scan/joined_from."""
    from ptydose.core import overlap
    from ptydose.core.scan_join import shared_metadata

    train, test = _smoke_parts(smoke_data)
    out = tmp_path / "parent" / "whole.npz"
    result = join_scan(out, [test, train])
    assert check_npz(out, full=True).ok
    joined, a, b = read_contract_npz(out), read_contract_npz(train), read_contract_npz(test)
    order = np.argsort(np.concatenate([a["scan_index"], b["scan_index"]]))
    for key in ("diffraction", "Y", "xcoords", "ycoords", "scan_index"):
        np.testing.assert_array_equal(joined[key], np.concatenate([a[key], b[key]])[order])
    n = a.n_images + b.n_images
    np.testing.assert_array_equal(joined["scan_index"], np.arange(n))  # the smoke scan's two halves
    np.testing.assert_array_equal(joined["objectGuess"], a["objectGuess"])
    np.testing.assert_array_equal(joined["probeGuess"], a["probeGuess"])
    meta = joined.metadata
    assert meta["n_images"] == n == result.n_images and result.sha256 == sha256_file(out)
    assert meta["measured_mean_counts"] == round(float(joined.counts().sum(axis=(1, 2)).mean()), 6)
    assert meta["expected_mean_counts"] == pytest.approx(
        (a.metadata["expected_mean_counts"] * a.n_images + b.metadata["expected_mean_counts"] * b.n_images) / n,
        rel=1e-9)
    yx = np.stack([joined["ycoords"], joined["xcoords"]], axis=1)
    assert meta["selection"] == {"selection_strategy": "direct", "spacing_threshold": 0.0, "n_accepted": n,
                                 "n_rejected": 0, "acceptance_rate": 1.0, "neighbours": 4,
                                 "measured_overlap": round(overlap.measured_overlap(yx, 12.0, 4), 6)}
    first = a if a["scan_index"][0] == 0 else b
    assert meta["split"] == first.metadata["split"]  # the schema has no "whole": the first part's
    in_scan_order = sorted(((train, a), (test, b)), key=lambda part: int(part[1]["scan_index"][0]))
    assert meta["scan"]["joined_from"] == [
        {"path": os.path.relpath(path, out.parent), "sha256": sha256_file(path), "split": data.metadata["split"],
         "view": "baseline", "n_images": data.n_images} for path, data in in_scan_order]
    assert shared_metadata(meta) == shared_metadata(a.metadata)


def test_interleaved_parts_join_back_to_the_scan_in_any_order_and_band_size(smoke_data, tmp_path, monkeypatch):
    """The even and odd patterns of a whole scan, as two parts, join back to the whole's arrays;
    with bands of 3 patterns (each band interleaves the parts, many bands per part) the bytes are
    those of one band per part, and naming the parts in the other order changes no byte; the CLI
    writes the same file and prints what it joined."""
    from ptydose.core import scan_join

    whole = join_scan(tmp_path / "whole.npz", list(_smoke_parts(smoke_data))).path
    n = read_contract_npz(whole).n_images
    even = _rewrite(whole, tmp_path / "parts" / "even.npz", rows=np.arange(0, n, 2))
    odd = _rewrite(whole, tmp_path / "parts" / "odd.npz", rows=np.arange(1, n, 2))
    default = join_scan(tmp_path / "a" / "joined.npz", [even, odd])
    frame = read_contract_npz(whole)["Y"][0].nbytes
    monkeypatch.setattr(scan_join, "DEFAULT_CHUNK_BYTES", 3 * frame)
    small_bands = join_scan(tmp_path / "b" / "joined.npz", [odd, even])
    assert small_bands.sha256 == default.sha256 == sha256_file(tmp_path / "b" / "joined.npz")
    monkeypatch.undo()
    joined, original = read_contract_npz(default.path), read_contract_npz(whole)
    for key in ("diffraction", "Y", "xcoords", "ycoords", "scan_index", "objectGuess", "probeGuess"):
        np.testing.assert_array_equal(joined[key], original[key])
    assert joined.metadata["measured_mean_counts"] == original.metadata["measured_mean_counts"]
    result = CliRunner().invoke(gen_cli, ["--join-scan", str(tmp_path / "c" / "joined.npz"), str(odd), str(even)])
    assert result.exit_code == 0, result.output
    assert result.output == (f"joined {n} patterns of 2 files into {tmp_path / 'c' / 'joined.npz'} "
                             f"(sha256 {default.sha256[:12]})\n"
                             f"  {len(range(0, n, 2)):>6} baseline  train ../parts/even.npz\n"
                             f"  {len(range(1, n, 2)):>6} baseline  train ../parts/odd.npz\n")
    assert sha256_file(tmp_path / "c" / "joined.npz") == default.sha256


def test_join_refuses_parts_that_are_not_one_scan_naming_file_and_key(smoke_data, tmp_path):
    """Each refusal is one line naming the offending file and key, and writes nothing: another
    dose, another draw, another view, a member in one part only, a differing shared member, an
    exposure in two parts, a file named twice, a part out of scan order, a part that fails the
    contract, a missing part, and the output among the inputs."""
    train, test = _smoke_parts(smoke_data)
    low_train, _ = _smoke_parts(smoke_data, 1000)
    meta = read_contract_npz(test).metadata
    dense_test = smoke_data["phase_d_root"] / "dose_100000" / "dense" / "dense_test.npz"
    probe = read_contract_npz(test)["probeGuess"]
    n = meta["n_images"]
    bad = tmp_path / "bad"
    cases = [
        ([low_train, test], f"{test}: _metadata/dose: differs from {low_train} (expected 1000, found 100000"),
        ([train, _rewrite(test, bad / "seed.npz", metadata_update={"noise_seed": meta["noise_seed"] + 1})],
         f"{bad / 'seed.npz'}: _metadata/noise_seed: differs from {train}"),
        ([train, dense_test], f"{dense_test}: _metadata/view: differs from {train} (expected \"baseline\", "
                              f"found \"dense\""),
        ([train, _rewrite(test, bad / "mask.npz", members_update={"valid_pixels": np.ones(probe.shape, bool)})],
         f"{bad / 'mask.npz'}: valid_pixels: present in one part only (not in {train}"),
        ([train, _rewrite(test, bad / "probe.npz",
                          members_update={"probeGuess": (probe * np.exp(0.1j)).astype(np.complex64)})],
         f"{bad / 'probe.npz'}: probeGuess: differs from {train}"),
        ([train, _rewrite(train, bad / "copy.npz")],
         f"{bad / 'copy.npz'}: scan_index: {n} exposures also in {train}"),
        ([train, test, train], f"{train}: named twice"),
        ([train, _rewrite(test, bad / "reversed.npz", rows=np.arange(n)[::-1])],
         f"{bad / 'reversed.npz'}: scan_index: not ascending"),
        ([train, _rewrite(test, bad / "invalid.npz", metadata_update={"measured_mean_counts": 1.0},
                                   valid=False)],
         f"{bad / 'invalid.npz'}: _metadata/measured_mean_counts: does not match the data"),
        ([train, tmp_path / "nowhere.npz"], f"{tmp_path / 'nowhere.npz'}: file not found"),
    ]
    out = tmp_path / "out" / "whole.npz"
    for parts, expected in cases:
        with pytest.raises(ContractError) as caught:
            join_scan(out, parts)
        assert str(caught.value).startswith(expected), (str(caught.value), expected)
        assert "\n" not in str(caught.value)
        assert not out.exists()
    result = CliRunner().invoke(gen_cli, ["--join-scan", str(train), str(train), str(test)])
    assert result.exit_code == 1 and result.output == f"Error: {train}: the output is also an input " \
                                                      f"(expected a new file)\n"


def test_join_scan_usage_errors(smoke_design_path, smoke_data, tmp_path):
    """--join-scan takes two or more part files and no generation option; part files need
    --join-scan; generating without --design is still a usage error: exit 2 each."""
    train, test = _smoke_parts(smoke_data)
    out = str(tmp_path / "whole.npz")
    runs = {
        "at least two part files": ["--join-scan", out, str(train)],
        "not --design, which generating": ["--join-scan", out, str(train), str(test), "--design",
                                          str(smoke_design_path)],
        "not --dose, which generating": ["--join-scan", out, str(train), str(test), "--dose", "1000"],
        "unexpected file argument": ["--design", str(smoke_design_path), "--phase-c-root", str(tmp_path / "c"),
                                     "--phase-d-root", str(tmp_path / "d"), str(train)],
        "Missing option '--design'": ["--phase-c-root", str(tmp_path / "c"), "--phase-d-root", str(tmp_path / "d")],
    }
    for expected, args in runs.items():
        result = CliRunner().invoke(gen_cli, args)
        assert result.exit_code == 2 and expected in result.output, (expected, result.output)
    assert not (tmp_path / "whole.npz").exists() and not (tmp_path / "c").exists()


def test_a_joined_file_failing_the_contract_never_replaces_the_old_one(smoke_data, tmp_path, monkeypatch):
    """The joined file is checked under its temporary name: when it fails (here a metadata fault
    injected after the join's own figures), the error names the output and key, the file already
    there keeps its bytes and no temporary file is left."""
    from ptydose.core import scan_join

    out = tmp_path / "whole.npz"
    before = join_scan(out, list(_smoke_parts(smoke_data))).sha256
    real = scan_join.joined_metadata

    def wrong_count(*args, **kwargs):
        meta = real(*args, **kwargs)
        return {**meta, "n_images": meta["n_images"] + 1}

    monkeypatch.setattr(scan_join, "joined_metadata", wrong_count)
    with pytest.raises(ContractError) as caught:
        join_scan(out, list(_smoke_parts(smoke_data)))
    assert str(caught.value).startswith(f"{out}: _metadata/n_images: the joined file fails the contract")
    assert sha256_file(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["whole.npz"]


@pytest.mark.slow
def test_a_ladder_plans_and_runs_like_any_data(ladder_data, tmp_path):
    """plan-jobs and run-ptychi take the thinned files as they take simulated ones (2 epochs)."""
    from ptydose.run_ptychi import cli as run_cli

    plan = plan_jobs(ladder_data["design"], ladder_data["phase_c_root"], ladder_data["phase_d_root"],
                     tmp_path / "art", doses=[1000], views=["sparse"], splits=["train"], num_epochs=2)
    manifest = write_plan(plan).manifest_path
    jobs = read_json(manifest, "reconstruction_manifest")["jobs"]
    assert sorted(j["id"] for j in jobs) == ["dose_1000/sparse/train", "dose_1000/sparse/train/rep1"]
    result = CliRunner().invoke(run_cli, ["--manifest", str(manifest), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for job in jobs:
        job_result = read_json(Path(job["output_dir"]) / "result.json", "job_result")
        assert (job_result["status"], job_result["epochs"]) == ("ok", 2)
