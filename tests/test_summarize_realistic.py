"""summarize under realistic conditions: no ground truth, position and probe errors, another study beside.

The sweeps are built here in the artifact layout run-ptychi writes (as tests/test_summarize.py
does), with the realistic members of spec §2/§3 written by hand: nominal positions, true probe
modes and ``ground_truth: false`` in the inputs; final and start positions, start probe and probe
modes in ``reconstruction.npz``. Every expected number is built into the data in closed form
(errors on a circle of known radius, probe perturbations orthogonal to the true probe), so the
assertions do not repeat the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats
from test_summarize import (
    M,
    N,
    _band_limited_object,
    _engine_options,
    _positions,
    _probe,
    _result,
    _selection,
    _sha,
    _shift,
    _write_manifest,
    build_crafted_sweep,
)

import builders
from ptydose.core import metrics, statistics
from ptydose.core.design import load_design
from ptydose.core.geometry import position_origin
from ptydose.core.jobs import input_path, job_id, options_hash, run_command
from ptydose.core.manifests import read_json, write_json
from ptydose.core.summary import NO_TRUTH_LINE, REALISTIC_METRICS, fmt, summarize
from ptydose.summarize import cli

# Closed-form position errors: e_i = offset + r (cos t_i, sin t_i), t_i = 2 pi i / n, so mean(e) = offset
# exactly, |e_i - mean(e)| = r for every i: rms = max = r, raw rms = sqrt(r^2 + |offset|^2).
BEFORE_OFFSET, BEFORE_RADIUS = (0.5, -0.3), 0.8
AFTER_OFFSET = (1.0, 0.4)
FRAME_OFFSET = (3.0, -2.0)  # the engine's frame: start and final positions both shifted by it
START_EPSILON, FINAL_DELTA = 0.5, 0.1  # probe perturbations orthogonal to the true probe
SECOND_MODE_AMPLITUDE = 0.3


def _after_radius(replicate: int, split: str) -> float:
    """A different final error per unit, so the cell interval is a real one."""
    return 0.2 + 0.05 * replicate + (0.02 if split == "test" else 0.0)


def _circle(n: int, offset: tuple[float, float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    t = 2 * np.pi * np.arange(n) / n + 0.3
    return offset[0] + radius * np.cos(t), offset[1] + radius * np.sin(t)


def _orthogonal_modes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true probe P and two perturbations Qx, Qy with <P, Q> = 0 and ||Q|| = ||P|| (odd ramps of an even P)."""
    p = _probe().astype(np.complex128)
    yy, xx = np.indices((N, N)) - (N - 1) / 2
    qx, qy = xx * p, 1j * yy * p
    qx *= np.linalg.norm(p) / np.linalg.norm(qx)
    qy *= np.linalg.norm(p) / np.linalg.norm(qy)
    return p, qx, qy


def _write_input(path: Path, gt: np.ndarray, dose: int, split: str, members: dict, meta_extra: dict) -> int:
    """A contract input (the dense layout) with optional realistic members after the eight of today."""
    xs, ys = _positions(split, "dense")
    n = xs.size
    meta = builders.example_arrays()[1]
    meta.update(dose=dose, view="dense", split=split, n_images=n, amplitude_scale=math.sqrt(dose) / N,
                position_origin=position_origin(gt.shape).tolist(),
                selection={**meta["selection"], "n_accepted": n}, **meta_extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"diffraction": np.zeros((n, N, N), np.float32), "Y": np.zeros((n, N, N), np.complex64),
              "objectGuess": gt.astype(np.complex64), "probeGuess": _probe(), "xcoords": xs, "ycoords": ys,
              "scan_index": np.arange(n, dtype=np.int64), "_metadata": np.array(json.dumps(meta))}
    np.savez(path, **arrays, **members)
    return n


def build_realistic_sweep(base: Path, design_path: Path, doses: tuple[int, ...], replicates: int, job_files,
                          meta_extra: dict | None = None, failed: tuple[str, ...] = ()) -> Path:
    """A one-view (dense) sweep; ``job_files(dose, split, replicate, n, rng)`` -> (input members, object, recon members);
    a recon member set to None is left out of reconstruction.npz."""
    design = load_design(design_path)
    gt = _band_limited_object(seed=11)
    c_root, d_root, root = base / "phase_c", base / "phase_d", base / "phase_f"
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    jobs, executions = [], []
    for replicate in range(replicates):
        for dose in doses:
            for split in ("train", "test"):
                jid = job_id(dose, "dense", split, None, replicate)
                path = input_path("dense", dose, split, c_root, d_root, replicate)
                n = _positions(split, "dense")[0].size
                members, obj, recon_members = job_files(dose, split, replicate, n, rng)
                _write_input(path, gt, dose, split, members, meta_extra or {})
                job = {"id": jid, "dose": dose, "view": "dense", "split": split, "input_npz": str(path),
                       "input_sha256": _sha(path), "n_images": n, "output_dir": str(root / jid), "algorithm": "LSQML",
                       "num_epochs": 4, "engine_options": _engine_options(),
                       "selection": {**_selection("dense", n), "measured_overlap": 0.5},
                       "command": run_command(root / "reconstruction_manifest.json", jid)}
                if replicates > 1:
                    job["replicate"] = replicate
                jobs.append(job)
                folder = root / jid
                folder.mkdir(parents=True)
                (folder / "ptychi.log").write_text("log\n")
                status = "failed" if jid in failed else "ok"
                result = _result(job, status, "EngineError: diverged" if status == "failed" else None)
                write_json(folder / "result.json", result, "job_result")
                executions.append({"job_id": jid, "dose": dose, "view": "dense", "split": split, "status": status,
                                   "returncode": result["returncode"], "error": result["error"],
                                   "log_path": str(folder / "ptychi.log"), "result_path": str(folder / "result.json"),
                                   "wall_s": 1.5, "reconstruction_s": result["reconstruction_s"],
                                   "epochs": result["epochs"], "final_loss": result["final_loss"], "device": "cpu",
                                   "finished": result["finished"], "resumed": False, "selection": job["selection"]})
                if status == "failed":
                    continue
                epochs = np.arange(1, 5, dtype=np.int64)
                xs, ys = _positions(split, "dense")
                arrays = {"object": obj.astype(np.complex64), "probe": _probe(), "positions_x_px": xs,
                          "positions_y_px": ys, "loss_epochs": epochs, "loss_values": (1.0 / epochs).astype(np.float64),
                          "_metadata": np.array(json.dumps({"job_id": jid, "input_sha256": job["input_sha256"],
                                                            "options_hash": options_hash(job)}))}
                for key, value in recon_members.items():  # None: leave the member out
                    if value is None:
                        arrays.pop(key)
                    else:
                        arrays[key] = value
                np.savez(folder / "reconstruction.npz", **arrays)
    _write_manifest(root, jobs, executions, design, design_path, c_root, d_root)
    return root


def _noisy(gt: np.ndarray, sigma: float, rng) -> np.ndarray:
    noise = sigma * (rng.standard_normal((M, M)) + 1j * rng.standard_normal((M, M)))
    return _shift(gt, tuple(rng.uniform(-0.8, 0.8, 2))) * np.exp(1j * rng.uniform(-3, 3)) + noise


# --------------------------------------------------------------------------- positions and probe


def _realistic_files(dose, split, replicate, n, rng):
    p, qx, qy = _orthogonal_modes()
    true_x, true_y = _positions(split, "dense")
    bx, by = _circle(n, BEFORE_OFFSET, BEFORE_RADIUS)
    ax, ay = _circle(n, AFTER_OFFSET, _after_radius(replicate, split))
    true_modes = np.stack([p, SECOND_MODE_AMPLITUDE * qy]).astype(np.complex64)
    members = {"probe_modes": true_modes, "nominal_xcoords": true_x + bx, "nominal_ycoords": true_y + by}
    # The start probe and the final first mode: the truth plus an orthogonal part, times an arbitrary complex
    # scale (which the error must ignore); the final second mode is the true one, scaled alike.
    start = (2.5 * np.exp(0.7j) * (p + START_EPSILON * qx)).astype(np.complex64)
    scale = 0.4 * np.exp(-1.1j)
    final_modes = np.stack([scale * (p + FINAL_DELTA * qx), scale * SECOND_MODE_AMPLITUDE * qy]).astype(np.complex64)
    recon = {"initial_probe": start, "probe_modes": final_modes, "probe": final_modes[0],
             "positions_x_px": true_x + ax + FRAME_OFFSET[0], "positions_y_px": true_y + ay + FRAME_OFFSET[1],
             "initial_positions_x_px": true_x + bx + FRAME_OFFSET[0],
             "initial_positions_y_px": true_y + by + FRAME_OFFSET[1]}
    return members, _noisy(_band_limited_object(seed=11), 0.1 / math.sqrt(dose / 1000), rng), recon


@pytest.fixture(scope="module")
def realistic(tmp_path_factory, smoke_design_path):
    root = build_realistic_sweep(tmp_path_factory.mktemp("realistic"), smoke_design_path, (1000, 100000), 2,
                                 _realistic_files)
    return root, summarize(root)


def _rows(summary: dict) -> list[dict]:
    return [j for j in summary["jobs"] if j["status"] == "scored"]


def test_position_error_before_and_after_match_the_built_in_errors(realistic):
    """rms = max = the circle's radius (offset removed), raw rms adds the offset; the engine's frame is removed."""
    _, outcome = realistic
    rows = _rows(outcome.summary)
    assert len(rows) == 8
    for row in rows:
        pos = row["positions"]
        radius = _after_radius(row["replicate"], row["split"])
        assert pos["n_positions"] == row["n_images"] and pos["corrected"] is False
        assert pos["frame_offset_px"] == pytest.approx(list(FRAME_OFFSET), abs=1e-9)
        # float64 positions: only rounding separates the closed form from the computed value.
        for side, offset, r in (("before", BEFORE_OFFSET, BEFORE_RADIUS), ("after", AFTER_OFFSET, radius)):
            assert pos[side]["rms_px"] == pytest.approx(r, abs=1e-9)
            assert pos[side]["max_px"] == pytest.approx(r, abs=1e-9)
            assert pos[side]["raw_rms_px"] == pytest.approx(math.hypot(r, math.hypot(*offset)), abs=1e-9)
            assert pos[side]["mean_offset_px"] == pytest.approx(list(offset), abs=1e-9)


def test_probe_error_of_start_and_final_probe(realistic):
    """min_c ||cP - P_true|| / ||P_true|| of P_true + e Q (Q orthogonal, ||Q|| = ||P_true||) is e / sqrt(1 + e^2)."""
    root, outcome = realistic
    p, qx, qy = _orthogonal_modes()
    truth_intensity = np.abs(p) ** 2 + np.abs(SECOND_MODE_AMPLITUDE * qy) ** 2
    for row in _rows(outcome.summary):
        probe = row["probe"]
        assert (probe["start"], probe["modes"], probe["true_modes"]) == ("initial_probe", 2, 2)
        # complex64 storage: relative rounding ~1e-7, so 1e-5 is ample and far below the errors' size.
        assert probe["start_error"] == pytest.approx(START_EPSILON / math.sqrt(1 + START_EPSILON**2), abs=1e-5)
        assert probe["final_error"] == pytest.approx(FINAL_DELTA / math.sqrt(1 + FINAL_DELTA**2), abs=1e-5)
        # The intensity error by an independent least squares (numpy lstsq for the scale) on the stored files.
        with np.load(root / row["job_id"] / "reconstruction.npz", allow_pickle=False) as rec:
            for key, stored in (("final_intensity_error", np.sum(np.abs(rec["probe_modes"].astype(complex)) ** 2, axis=0)),
                                ("start_intensity_error", np.abs(rec["initial_probe"].astype(complex)) ** 2)):
                a = np.linalg.lstsq(stored.reshape(-1, 1), truth_intensity.ravel(), rcond=None)[0][0]
                expected = np.linalg.norm(a * stored - truth_intensity) / np.linalg.norm(truth_intensity)
                assert probe[key] == pytest.approx(expected, rel=1e-4)
        assert 0 < probe["final_intensity_error"] < probe["start_intensity_error"]
        # Registration can only lower the error (it falls back to no shift otherwise).
        assert probe["final_error_registered"] <= probe["final_error"] + 1e-12
        assert len(probe["final_shift_px"]) == 2


def test_registered_probe_error_removes_a_shift_of_the_probe():
    """A probe shifted by (1.3, -2.6) px (periodic Fourier shift, as pty-chi shifts probes) scores a large
    plain error but ~0 once registered, and the recovered shift is the opposite of the one applied.
    Tolerances: the sub-pixel optimiser stops at 1e-6 px; 1e-3 px and 1e-4 in error leave room for it."""
    p, _, _ = _orthogonal_modes()
    shifted = metrics.fourier_shift_image(p, (1.3, -2.6))
    plain = metrics.probe_error(shifted, p)
    registered, shift = metrics.registered_probe_error(shifted, p)
    assert plain > 0.3
    assert registered < 1e-4
    assert shift == pytest.approx((-1.3, 2.6), abs=1e-3)
    # An unshifted probe is left alone: no shift, the plain error.
    same, none = metrics.registered_probe_error(p * (0.5 - 0.5j), p)
    assert same < 1e-6 and np.hypot(*none) < 1e-3


def test_realistic_measures_get_cell_intervals_tables_and_figures(realistic):
    """Per cell: the t interval over replicates x splits of each measure; the markdown tables; the figures."""
    _, outcome = realistic
    s = outcome.summary
    stats = s["statistics"]
    assert [n for n in stats["metric_names"] if n in REALISTIC_METRICS] == list(REALISTIC_METRICS)
    for cell in stats["cells"]:
        values = sorted(_after_radius(r, sp) for r in (0, 1) for sp in ("train", "test"))
        expected = statistics.interval(values)
        got = cell["metrics"]["position_rms_after_px"]
        assert got["n"] == 4
        assert got["mean"] == pytest.approx(expected["mean"], abs=1e-9)
        assert got["half_width"] == pytest.approx(scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2, rel=1e-6)
    assert s["conditions"] == {"probe_start": ["true"], "probe_modes": 1, "position_correction": False,
                               "nominal_positions": True}
    text = outcome.markdown_path.read_text()
    assert "## Positions" in text and "## Probe" in text and "Realistic conditions:" in text
    after = statistics.interval(sorted(_after_radius(r, sp) for r in (0, 1) for sp in ("train", "test")))
    row = next(line for line in text.splitlines() if line.startswith("| 1000 | dense | 4 | 0.8"))
    assert row.split(" | ")[4] == f"{fmt(after['mean'])} ± {fmt(after['half_width'])}"
    for name in ("position_error_vs_dose.png", "probe_error_vs_dose.png"):
        assert f"figures/{name}" in s["figures"] and (outcome.out_dir / "figures" / name).stat().st_size > 1000
    assert read_json(outcome.summary_path, "summary") == json.loads(json.dumps(s))


def test_positions_without_initial_positions_are_taken_in_the_input_frame(tmp_path, smoke_design_path):
    """No start positions in reconstruction.npz: no frame offset is removed (frame_offset_px null, raw rms shows it)."""
    def files(dose, split, replicate, n, rng):
        members, obj, recon = _realistic_files(dose, split, replicate, n, rng)
        del recon["initial_positions_x_px"], recon["initial_positions_y_px"]
        return members, obj, recon

    root = build_realistic_sweep(tmp_path, smoke_design_path, (1000,), 1, files)
    row = _rows(summarize(root, make_figures=False).summary)[0]
    assert row["positions"]["frame_offset_px"] is None
    offset = (AFTER_OFFSET[0] + FRAME_OFFSET[0], AFTER_OFFSET[1] + FRAME_OFFSET[1])
    assert row["positions"]["after"]["mean_offset_px"] == pytest.approx(list(offset), abs=1e-9)
    assert row["positions"]["after"]["rms_px"] == pytest.approx(_after_radius(0, row["split"]), abs=1e-9)


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.update(positions_y_px=None), "positions_y_px: key missing (the file has positions_x_px)"),
    (lambda r: r.update(probe_modes=r["probe_modes"][:, :8, :8]), "probe_modes: shape (2, 8, 8), expected (K, 16, 16)"),
    (lambda r: r.update(initial_positions_x_px=r["initial_positions_x_px"][:-1]),
     "initial_positions_x_px: shape (41,), expected (42,) (one per input position)"),
])
def test_malformed_realistic_members_are_one_line_errors(tmp_path, smoke_design_path, damage, message):
    def files(dose, split, replicate, n, rng):
        members, obj, recon = _realistic_files(dose, split, replicate, n, rng)
        damage(recon)
        return members, obj, recon

    root = build_realistic_sweep(tmp_path, smoke_design_path, (1000,), 1, files)
    result = CliRunner().invoke(cli, ["--artifact-root", str(root)], prog_name="summarize")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line == f"Error: {root}/dose_1000/dense/train/reconstruction.npz: {message}"


def test_an_ideal_sweep_gains_no_realistic_keys(tmp_path, smoke_design_path):
    """Today's data: no scoring, conditions or beside blocks, no per-job extras, no realistic statistics or sections."""
    root = build_crafted_sweep(tmp_path, smoke_design_path, (1000, 10000), {"dense": (0.2, 0.5)}, replicates=2)
    outcome = summarize(root, make_figures=False)
    s = outcome.summary
    assert not {"scoring", "conditions", "beside"} & set(s)
    assert "references" not in s["counts"]
    assert all(not {"reference", "positions", "probe"} & set(j) for j in s["jobs"])
    assert not set(REALISTIC_METRICS) & set(s["statistics"]["metric_names"])
    text = outcome.markdown_path.read_text()
    assert "the true probe (`probeGuess`, refined when the design says so) at the exact scan positions" in text
    for needle in ("## Positions", "## Probe", "## Beside", NO_TRUTH_LINE, "Realistic conditions"):
        assert needle not in text


# --------------------------------------------------------------------------- no ground truth

NO_TRUTH_DOSES = (1000, 10000, 100000)


def _measured_files(dose, split, replicate, n, rng):
    # Noise falls with dose, so each dose is closer to the highest-dose reference than the one below it.
    return {}, _noisy(_band_limited_object(seed=11), 0.3 / math.sqrt(dose / 1000), rng), {}


@pytest.fixture(scope="module")
def no_truth(tmp_path_factory, smoke_design_path):
    root = build_realistic_sweep(tmp_path_factory.mktemp("no_truth"), smoke_design_path, NO_TRUTH_DOSES, 2,
                                 _measured_files, meta_extra={"ground_truth": False})
    return root, summarize(root)


def test_without_ground_truth_each_job_is_scored_against_the_highest_dose(no_truth):
    """The highest dose of each (view, split, replicate) is the reference (not scored); the others are compared with
    it by the same comparison, reproduced here with metrics.compare on the reference's stored object."""
    root, outcome = no_truth
    s = outcome.summary
    assert s["counts"]["scored"] == 8 and s["counts"]["references"] == 4
    refs = {(r["split"], r["replicate"]): r["job_id"] for r in s["scoring"]["references"]}
    assert refs == {(sp, r): job_id(100000, "dense", sp, None, r) for sp in ("train", "test") for r in (0, 1)}
    settings = metrics.MetricSettings(s["settings"]["ms_ssim_sigma"], s["settings"]["illumination_threshold"])
    for row in s["jobs"]:
        ref_id = refs[(row["split"], row["replicate"])]
        if row["dose"] == 100000:
            assert (row["status"], row["flat"], row["reference"]) == ("reference", None, {"job_id": ref_id, "dose": 100000})
            continue
        assert row["status"] == "scored" and row["reference"] == {"job_id": ref_id, "dose": 100000}
        with np.load(root / row["job_id"] / "reconstruction.npz", allow_pickle=False) as rec, \
                np.load(root / ref_id / "reconstruction.npz", allow_pickle=False) as ref, \
                np.load(row_input(root, row), allow_pickle=False) as data:
            mask = metrics.illuminated_mask(data["probeGuess"], data["xcoords"], data["ycoords"], ref["object"].shape,
                                            settings.illumination_threshold)
            # The reference normalised: global phase off, mean amplitude over the mask 1.
            values = ref["object"].astype(complex)[mask]
            reference = ref["object"] * np.exp(-1j * np.angle(values.sum())) / np.abs(values).mean()
            again = metrics.compare(rec["object"], reference, data["probeGuess"], data["xcoords"], data["ycoords"],
                                    settings)
        assert row["flat"]["phase_ssim"] == again.metrics["phase"]["ssim"]
        assert row["flat"]["phase_rmse"] == again.metrics["phase"]["rmse"]
    by = {(j["dose"], j["split"], j["replicate"]): j["flat"] for j in s["jobs"]}
    for sp in ("train", "test"):
        for r in (0, 1):
            assert by[(1000, sp, r)]["phase_ssim"] < by[(10000, sp, r)]["phase_ssim"]


def row_input(root: Path, row: dict) -> Path:
    manifest = read_json(root / "reconstruction_manifest.json", "reconstruction_manifest")
    return Path(next(j["input_npz"] for j in manifest["jobs"] if j["id"] == row["job_id"]))


def test_pair_frc_covers_the_reference_dose_too(no_truth):
    """The two-reconstruction FRC needs no truth: every dose has it; the reference dose has no truth-FRC."""
    _, outcome = no_truth
    pairs = {(e["dose"], e["split"]): e for e in outcome.summary["pair_frc"]}
    assert sorted(pairs) == sorted((d, sp) for d in NO_TRUTH_DOSES for sp in ("train", "test"))
    assert all(pairs[(100000, sp)]["truth_frc"] is None for sp in ("train", "test"))
    assert all(pairs[(1000, sp)]["truth_frc"] is not None for sp in ("train", "test"))
    assert pairs[(1000, "train")]["integral"] < pairs[(100000, "train")]["integral"]


def _tables(text: str) -> list[int]:
    """Line numbers where a markdown table starts."""
    lines = text.splitlines()
    return [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]


def test_every_table_and_the_results_page_say_what_the_reference_is(no_truth, repo_root):
    from ptydose.doc_sync import render_results

    _, outcome = no_truth
    s = outcome.summary
    assert s["scoring"]["line"] == NO_TRUTH_LINE
    for text in (outcome.markdown_path.read_text(), render_results(s, repo_root)):
        lines = text.splitlines()
        starts = _tables(text)
        assert len(starts) == 4  # cells, dose comparisons (one view: no view comparison), pair FRC, per job
        for i in starts:
            assert lines[i - 2] == f"*{NO_TRUTH_LINE}*", lines[i - 3:i + 1]
        assert f"**{NO_TRUTH_LINE}**" in text
    assert "| dose_100000/dense/train | reference |" in outcome.markdown_path.read_text()


def test_the_cli_counts_the_references(no_truth, tmp_path):
    root, _ = no_truth
    result = CliRunner().invoke(cli, ["--artifact-root", str(root), "--out", str(tmp_path / "s")], prog_name="summarize")
    assert result.exit_code == 0, result.output
    assert "8 scored, 4 references (no ground truth), 0 failed, 0 not run, 0 skipped" in result.stderr
    assert sum(" reference " in line for line in result.stdout.splitlines()) == 4


def test_a_failed_highest_dose_falls_back_to_the_next_and_is_noted(tmp_path, smoke_design_path):
    failed = job_id(100000, "dense", "test", None, 1)
    root = build_realistic_sweep(tmp_path, smoke_design_path, NO_TRUTH_DOSES, 2, _measured_files,
                                 meta_extra={"ground_truth": False}, failed=(failed,))
    s = summarize(root, make_figures=False).summary
    fallback = job_id(10000, "dense", "test", None, 1)
    assert {"view": "dense", "split": "test", "replicate": 1, "reconstructor": None, "job_id": fallback,
            "dose": 10000} in s["scoring"]["references"]
    row = next(j for j in s["jobs"] if j["job_id"] == job_id(1000, "dense", "test", None, 1))
    assert row["reference"] == {"job_id": fallback, "dose": 10000}
    assert any(n.startswith(f"no ground truth: {fallback} is the reference") and "dose 100000 was planned" in n
               for n in s["notes"])
    assert s["counts"]["references"] == 4 and s["counts"]["failed"] == 1


# --------------------------------------------------------------------------- beside another study


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, smoke_design_path):
    base = tmp_path_factory.mktemp("beside")
    views = {"dense": (0.1, 0.6), "sparse": (0.25, 0.3)}
    ideal = build_crafted_sweep(base / "ideal", smoke_design_path, (1000, 10000), views, replicates=2, seed=1)
    worse = build_crafted_sweep(base / "worse", smoke_design_path, (1000, 10000), {v: (2 * s, o) for v, (s, o) in
                                                                                    views.items()}, replicates=2, seed=2)
    first = summarize(ideal, make_figures=False)
    return ideal, worse, first


def test_beside_puts_both_studies_cells_side_by_side_with_welch_intervals(two_studies):
    ideal, worse, first = two_studies
    result = CliRunner().invoke(cli, ["--artifact-root", str(worse), "--beside", f"{ideal}:ideal"], prog_name="summarize")
    assert result.exit_code == 0, result.output
    s = read_json(worse / "summary" / "summary.json", "summary")
    (doc,) = s["beside"]
    assert (doc["label"], doc["this_label"], doc["summary"]) == ("ideal", s["design_name"],
                                                                 str(ideal / "summary" / "summary.json"))
    assert doc["metrics"] == ["phase_ssim", "phase_ms_ssim", "phase_rmse", "complex_correlation",
                              "frc_fraction_of_nyquist", "pair_frc_fraction_of_nyquist", "pair_frc_integral"]
    assert [(r["dose"], r["view"]) for r in doc["rows"]] == [(1000, "dense"), (1000, "sparse"), (10000, "dense"),
                                                              (10000, "sparse")]
    units = {}
    for study, summary in (("this", s), ("other", first.summary)):
        for j in summary["jobs"]:
            units.setdefault((study, j["dose"], j["view"]), []).append(j["flat"]["phase_ssim"])
    for row in doc["rows"]:
        m = row["metrics"]["phase_ssim"]
        a, b = units[("this", row["dose"], row["view"])], units[("other", row["dose"], row["view"])]
        assert m["this"]["n"] == m["other"]["n"] == 4
        assert m["this"]["mean"] == pytest.approx(np.mean(a), abs=1e-12)
        assert m["other"]["mean"] == pytest.approx(np.mean(b), abs=1e-12)
        # scipy's Welch test gives the same interval independently.
        ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        d = m["difference"]
        assert (d["ci_low"], d["ci_high"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
        assert d["ratio"] == pytest.approx(np.mean(a) / np.mean(b), rel=1e-12)
        assert d["verdict"] == "worse"  # twice the noise, four units each: resolved
    text = (worse / "summary" / "summary.md").read_text()
    assert "## Beside ideal" in text
    assert f"| 1000 | dense | phase SSIM | {_pm(doc['rows'][0]['metrics']['phase_ssim']['this'])} |" in text
    assert s["reproduce"][-1].endswith(f"--beside {ideal}:ideal")
    assert "figures/beside_1.png" in s["figures"]


def _pm(side: dict) -> str:
    return f"{fmt(side['mean'])} ± {fmt(side['half_width'])}"


def test_beside_accepts_a_summary_folder_or_file_and_defaults_the_label(two_studies, tmp_path):
    ideal, worse, first = two_studies
    for given in (ideal / "summary", ideal / "summary" / "summary.json"):
        s = summarize(worse, out_dir=tmp_path / given.name, make_figures=False, beside=[str(given)]).summary
        assert s["beside"][0]["label"] == first.summary["design_name"]
        assert s["beside"][0]["summary"] == str(ideal / "summary" / "summary.json")


def test_beside_is_repeatable(two_studies, tmp_path):
    """Two other studies: one beside entry and one table each, in the order given."""
    ideal, worse, first = two_studies
    s = summarize(worse, out_dir=tmp_path / "s", make_figures=False,
                  beside=[f"{ideal}:first", f"{ideal / 'summary'}:again"]).summary
    assert [b["label"] for b in s["beside"]] == ["first", "again"]
    assert s["beside"][0]["rows"] == s["beside"][1]["rows"]
    text = (tmp_path / "s" / "summary.md").read_text()
    assert text.index("## Beside first") < text.index("## Beside again")


def test_beside_a_missing_or_invalid_summary_is_a_one_line_error(two_studies, tmp_path):
    ideal, worse, _ = two_studies
    runner = CliRunner()
    result = runner.invoke(cli, ["--artifact-root", str(worse), "--out", str(tmp_path / "s"), "--beside",
                                 str(tmp_path / "nowhere")], prog_name="summarize")
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path}/nowhere/summary/summary.json: summary.json not found (--beside "
                             f"{tmp_path}/nowhere: summarize that study first, or name its summary folder or file)\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((ideal / "summary" / "summary.json").read_text())
    del doc["counts"]
    (bad / "summary.json").write_text(json.dumps(doc))
    result = runner.invoke(cli, ["--artifact-root", str(worse), "--out", str(tmp_path / "s"), "--beside", f"{bad}:x"],
                           prog_name="summarize")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {bad}/summary.json: ") and "counts" in result.output
    assert not (tmp_path / "s").exists()  # refused before anything was scored or written


# --------------------------------------------------------------------------- the measures themselves


def test_probe_and_intensity_errors_in_closed_form():
    """A complex scale costs nothing; an orthogonal part e costs e / sqrt(1 + e^2); a zero probe costs 1."""
    p, qx, _ = _orthogonal_modes()
    assert metrics.probe_error(3.0 * np.exp(2j) * p, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.probe_error(p + 0.75 * qx, p) == pytest.approx(0.75 / math.sqrt(1 + 0.75**2), abs=1e-12)
    assert metrics.probe_error(np.zeros_like(p), p) == 1.0
    intensity = np.abs(p) ** 2
    assert metrics.intensity_error(5.0 * intensity, intensity) == pytest.approx(0.0, abs=1e-12)
    u = np.abs(qx) ** 2 - np.vdot(np.abs(qx) ** 2, intensity).real / np.vdot(intensity, intensity).real * intensity
    u *= np.linalg.norm(intensity) / np.linalg.norm(u)  # orthogonal to the truth, same norm
    assert metrics.intensity_error(intensity + 0.5 * u, intensity) == pytest.approx(0.5 / math.sqrt(1.25), abs=1e-12)
    with pytest.raises(ValueError, match="differs from the true probe"):
        metrics.probe_error(p[:4, :4], p)


def test_position_error_in_closed_form():
    x, y = _circle(12, (2.0, -1.0), 0.6)
    e = metrics.position_error(x + 10.0, y + 20.0, np.full(12, 10.0), np.full(12, 20.0))
    assert e["rms_px"] == pytest.approx(0.6, abs=1e-12) and e["max_px"] == pytest.approx(0.6, abs=1e-12)
    assert e["raw_rms_px"] == pytest.approx(math.hypot(0.6, math.hypot(2.0, -1.0)), abs=1e-12)
    assert e["mean_offset_px"] == pytest.approx([2.0, -1.0], abs=1e-12)


def test_unpaired_difference_matches_scipy_welch_and_refuses_small_cells():
    a, b = [0.91, 0.88, 0.93], [0.80, 0.86, 0.79, 0.84]
    d = statistics.unpaired_difference(statistics.interval(a), statistics.interval(b), higher_is_better=True)
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["mean"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-15)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    assert d["verdict"] == "better" and d["ratio"] == pytest.approx(np.mean(a) / np.mean(b))
    single = statistics.unpaired_difference(statistics.interval([0.9]), statistics.interval(b), True)
    assert single["ci_low"] is None and single["verdict"] == "not resolved" and single["mean"] is not None
    assert statistics.unpaired_difference({}, statistics.interval(b), True)["mean"] is None


# --------------------------------------------------------------------------- a real run under realistic conditions

REALISTIC_BLOCKS = {
    "probe_modes": {"count": 2, "power_ratio": 0.1},
    "position_errors": {"random_px": 0.5, "scale": 0.005, "rotation_deg": 0.3, "drift_px": [1.0, -1.0]},
    "detector": {"readout_noise_adu": 3.0, "adu_per_photon": 10.0, "saturation_photons": 3000, "mask_saturated": True,
                 "beamstop_radius_px": 2.0, "bad_pixels": 4},
    "probe_knowledge": {"start": "model", "defocus_error_rad": 1.0, "diameter_error": 0.1},
}


@pytest.mark.slow
def test_a_real_realistic_run_is_scored_from_its_own_files(smoke_design_path, tmp_path):
    """gen-synthetic with every realistic block, pty-chi from a model probe with 2 modes and position correction,
    then summarize: the measures agree with a direct computation on the input and reconstruction files."""
    from ptydose.core.jobs import plan_jobs, write_plan
    from ptydose.core.synthetic import generate_study
    from ptydose.run_ptychi import cli as run_cli

    raw = json.loads(smoke_design_path.read_text())
    raw.update(name="smoke_realistic", doses=[100000], position_errors=REALISTIC_BLOCKS["position_errors"],
               detector=REALISTIC_BLOCKS["detector"], probe_knowledge=REALISTIC_BLOCKS["probe_knowledge"])
    raw["probe"]["modes"] = REALISTIC_BLOCKS["probe_modes"]
    raw["reconstruction"].update(num_epochs=8, probe_modes=2, position_correction=True)
    design = tmp_path / "design.json"
    design.write_text(json.dumps(raw))
    generate_study(design, tmp_path / "pc", tmp_path / "pd", progress=False)
    plan = write_plan(plan_jobs(design, tmp_path / "pc", tmp_path / "pd", tmp_path / "art", views=["dense"],
                                splits=["train"]))
    result = CliRunner().invoke(run_cli, ["--manifest", str(plan.manifest_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    s = summarize(tmp_path / "art", make_figures=False).summary
    assert s["conditions"] == {"probe_start": ["model"], "probe_modes": 2, "position_correction": True,
                               "nominal_positions": True}
    (row,) = s["jobs"]
    with np.load(row_input(tmp_path / "art", row), allow_pickle=False) as data, \
            np.load(tmp_path / "art" / row["job_id"] / "reconstruction.npz", allow_pickle=False) as rec:
        true = np.column_stack([data["xcoords"], data["ycoords"]])
        for side, given in (("before", np.column_stack([data["nominal_xcoords"], data["nominal_ycoords"]])),
                            ("after", np.column_stack([rec["positions_x_px"], rec["positions_y_px"]]))):
            e = given - true
            assert row["positions"][side]["rms_px"] == pytest.approx(
                math.sqrt(np.mean(np.sum((e - e.mean(axis=0)) ** 2, axis=1))), rel=1e-12)
        # The engine records the nominal positions it was given, in the input's frame.
        np.testing.assert_array_equal(rec["initial_positions_x_px"], data["nominal_xcoords"])
        truth, start = data["probeGuess"].astype(complex).ravel(), rec["initial_probe"].astype(complex).ravel()
        corr = abs(np.vdot(start, truth)) / (np.linalg.norm(start) * np.linalg.norm(truth))
        # 1 - |corr|^2 loses digits where the error is small; here it is ~0.5, so 1e-6 holds.
        assert row["probe"]["start_error"] == pytest.approx(math.sqrt(1 - corr**2), abs=1e-6)
        assert (row["probe"]["modes"], row["probe"]["true_modes"]) == (rec["probe_modes"].shape[0], 2)
    assert row["positions"]["corrected"] is True and row["positions"]["frame_offset_px"] == [0.0, 0.0]
    assert row["positions"]["after"]["rms_px"] != row["positions"]["before"]["rms_px"]
    assert row["probe"]["start"] == "initial_probe" and 0 < row["probe"]["start_error"] < 1
