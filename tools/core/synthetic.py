"""gen-synthetic's core: one object, probe and scan per study; a Poisson draw per dose; NPZ files.

``generate_study`` builds the shared geometry (object, unit probe, scan, splits, views) once,
then generates the requested doses one after another, and each dose's replicates (independent
Poisson draws of the same expected intensities, ``replicates`` in the design) one after
another. A dose (one replicate of it) is streamed in batches of scan
positions: the expected intensities at unit dose (pty-chi's forward model), scaled, Poisson-drawn
from the dose's own seeded stream and written as rows of every split x view file of that dose at
once (each file's rows are an ascending subset of the scan); then the ``Y`` windows the same way,
then the small members. Memory stays at a few batches whatever the scan size. The forward model
runs once per study: its unit-dose batches are kept in an unlinked temporary file beside the
outputs for the following doses and replicates. Each (dose, replicate)'s entries are merged into
both ``dataset_index.json`` files as soon as its files are renamed into place, so a run killed
later keeps what it finished.

Layout: replicate 0 is where a design without replicates puts its files, byte for byte;
replicate r >= 1 of a dose lives in a ``rep<r>`` folder inside ``dose_<d>`` of each root.

Files are byte-deterministic: arrays are written in a fixed order as ``.npy`` members of an
uncompressed zip with fixed timestamps (the ``np.savez`` layout), under a temporary name that is
fsync'ed and renamed, so a kill never leaves half a file under the final name; the temporary
files such a kill leaves are removed by the next run (which holds both roots' lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO

import numpy as np

from .. import __version__
from . import manifests, overlap, physics
from .design import BASELINE_VIEW, TARGET_OVERLAP_TOLERANCE, StudyDesign, data_relpath, dose_key, load_design
from .errors import DesignError, ManifestError
from .fileio import NpzWriter, exclusive_lock, remove_stale_temporaries, sha256_file, streamed_npz
from .geometry import position_origin

log = logging.getLogger(__name__)

GENERATOR = "gen-synthetic"
INDEX_NAME = "dataset_index.json"
INDEX_SCHEMA = "dataset_index"
#: Order of the arrays inside every NPZ.
NPZ_KEYS = ("diffraction", "Y", "objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index", "_metadata")
#: The optional members of a design with realistic conditions, after NPZ_KEYS in this order (each
#: only when its design block asks for it, so an ideal design's files keep today's members).
OPTIONAL_NPZ_KEYS = ("probe_modes", "nominal_xcoords", "nominal_ycoords", "valid_pixels")
#: Scan positions per batch. The Poisson draws of a dose are taken batch by batch in scan order,
#: so this number is part of what defines the files' bytes.
BATCH_SIZE = 256
#: Held in each root while gen-synthetic writes there: runs on the same roots take turns.
LOCK_NAME = ".gen-synthetic.lock"


# ----------------------------------------------------------------------------------------------
# The shared geometry of a study
# ----------------------------------------------------------------------------------------------
@dataclass
class FilePlan:
    """One output file: where it goes and which scan positions it holds."""

    root: str  # "phase_c" | "phase_d"
    relpath: str
    dose: int
    view: str
    split: str
    selection: overlap.Selection
    replicate: int = 0


@dataclass
class StudyGeometry:
    """Everything the doses share: object, unit probe, positions, splits and views."""

    design: StudyDesign
    probe_unit: np.ndarray  # complex128, N^2 sum|P|^2 = 1
    probe_meta: dict
    obj: np.ndarray  # complex64 (M, M')
    object_meta: dict
    coords: np.ndarray  # float64 (n, 2) probe centres (y, x)
    scan_meta: dict
    splits: dict[str, np.ndarray]
    selections: dict[tuple[str, str], overlap.Selection]  # (view, split) -> selection
    # Realistic conditions (None: the ideal study of a design without the block).
    probe_modes_unit: np.ndarray | None = None  # complex128 (K, N, N), [0] is probe_unit; N^2 sum = 1 in all
    nominal: np.ndarray | None = None  # float64 (n, 2): the (y, x) positions an experiment reports
    detector: physics.Detector | None = None
    beamstop: np.ndarray | None = None  # bool (N, N), DC-centred: no photons arrive
    bad_pixels: np.ndarray | None = None  # bool (N, N), DC-centred: dead pixels

    @property
    def n(self) -> int:
        return self.design.probe_size

    def file_plans(self, dose: int, replicate: int = 0) -> list[FilePlan]:
        plans = []
        for view in self.design.views:
            for split in self.design.splits:
                root = "phase_c" if view == BASELINE_VIEW else "phase_d"
                rel = data_relpath(view, dose, split, replicate)
                plans.append(FilePlan(root, rel, dose, view, split, self.selections[(view, split)], replicate))
        return plans

    def units(self, doses: Iterable[int]) -> list[tuple[int, int]]:
        """(dose, replicate) pairs in generation order: a dose's replicates one after another."""
        return [(dose, r) for dose in doses for r in self.design.replicate_numbers]


def _stderr():
    import sys

    return sys.stderr


def _tqdm_disable(progress: bool | None) -> bool | None:
    # None: tqdm's own rule (a bar only when stderr is a terminal); False: never.
    return None if progress is None else not progress


def build_geometry(design: StudyDesign) -> StudyGeometry:
    """Object, probe, scan, splits and view selections of a design (no forward model yet)."""
    raw = design.raw
    seeds = design.seeds
    n = design.probe_size
    probe_unit, probe_meta = physics.build_probe(raw["probe"], design.resolve)
    obj, object_meta = physics.build_object(raw["object"], design.resolve, seeds["simulation"])
    coords, scan_meta = physics.build_scan(raw["scan"], design.object_shape, n, seeds["simulation"])
    realistic = realistic_conditions(design, probe_unit, coords)
    if realistic["probe_modes_unit"] is not None:
        probe_unit = realistic["probe_modes_unit"][0]  # mode 0 carries its share of the power only
    # Splits and views are chosen on the positions an experiment knows (the nominal ones under
    # position errors), as a dose ladder thinned from such data chooses them.
    known = coords if realistic.get("nominal") is None else realistic["nominal"]
    splits, selections = select_views(design, known, design.object_shape, "scan")
    return StudyGeometry(design, probe_unit, probe_meta, obj, object_meta, coords, scan_meta, splits, selections,
                         **realistic)


def select_views(design: StudyDesign, coords: np.ndarray, object_shape: tuple[int, int], where: str,
                 hint: str = "") -> tuple[dict[str, np.ndarray], dict[tuple[str, str], overlap.Selection]]:
    """The train/test splits of ``coords`` and each (view, split)'s selection, seeded by the design.

    ``where`` names the design key a split without positions is blamed on (``scan``, ``measured/npz``).
    """
    splits = overlap.split_indices(coords, object_shape)
    for split, idx in splits.items():
        if len(idx) == 0:
            raise DesignError(f"{design.path}: {where}: the {split} split has no positions{hint}")
    seeds = design.seeds
    neighbours = int(design.raw["overlap_reference"]["neighbours"])
    diameter = design.probe_diameter_px
    targets = design.target_overlaps
    selections: dict[tuple[str, str], overlap.Selection] = {}
    for view_index, view in enumerate(design.views):
        for split in design.splits:
            rng = overlap.subsampling_rng(seeds["subsampling"], split, view_index)
            if view in targets:
                selection = overlap.select_view_for_overlap(coords, splits[split], targets[view], diameter,
                                                            neighbours, rng)
                check_target_reached(design, view, split, selection)
            else:
                threshold = 0.0 if view == BASELINE_VIEW else design.spacing_thresholds[view]
                selection = overlap.select_view(coords, splits[split], threshold, diameter, neighbours, rng)
            selections[(view, split)] = selection
    return splits, selections


def realistic_conditions(design: StudyDesign, probe_unit: np.ndarray, coords: np.ndarray) -> dict:
    """The probe modes, nominal positions and detector of a design's optional blocks (None where absent)."""
    seed = design.seeds["simulation"]
    n = design.probe_size
    modes = design.probe_modes
    probe_modes_unit = None if modes is None else physics.probe_modes(probe_unit, modes["count"], modes["power_ratio"])
    errors = design.position_errors
    nominal = None
    if errors is not None:
        nominal = physics.nominal_positions(coords, errors, seed)
        # The engine places its windows at the nominal positions: each must stay inside the object.
        outside = ~physics.windows_inside(nominal, design.object_shape, n)
        if outside.any():
            raise DesignError(f"{design.path}: position_errors: {int(outside.sum())} nominal positions put the probe "
                              f"window outside the object (raise scan/margin_px or lower the errors)")
    block = design.detector
    detector = beamstop = bad = None
    if block is not None:
        detector = physics.Detector.from_design(block)
        beamstop = physics.beamstop_mask(n, detector.beamstop_radius_px)
        bad = physics.bad_pixel_mask(n, detector.bad_pixels, beamstop, seed)
    return {"probe_modes_unit": probe_modes_unit, "nominal": nominal, "detector": detector, "beamstop": beamstop,
            "bad_pixels": bad}


def check_target_reached(design: StudyDesign, view: str, split: str, selection: overlap.Selection) -> None:
    """A target-overlap view whose closest selection misses by more than the tolerance is refused."""
    target = selection.target_overlap
    reached = selection.measured_overlap
    if reached is not None and abs(reached - target) <= TARGET_OVERLAP_TOLERANCE:
        return
    if reached is None:
        why = "the closest selection keeps fewer than two positions"
    elif reached < target and selection.n_rejected == 0:
        why = f"the whole split measures only {reached:.3f}, the most a view of it can have"
    else:
        why = f"the closest selection measures {reached:.3f}"
    raise DesignError(f"{design.path}: overlap_views/{view}: target overlap {target:g} cannot be reached in the "
                      f"{split} split within {TARGET_OVERLAP_TOLERANCE:g} ({why}; change the target, or the scan "
                      f"step or probe diameter)")


# ----------------------------------------------------------------------------------------------
# One dose (one replicate of it), streamed
# ----------------------------------------------------------------------------------------------
def noise_seed(simulation_seed: int, dose: int, replicate: int = 0) -> int:
    """The 32-bit seed of a dose's Poisson stream: first word of SeedSequence([sim, 3, dose]) for
    replicate 0 (the seed of a design without replicates), of SeedSequence([sim, 3, dose, r]) for
    replicate r >= 1 (another entropy pool, so another, independent stream)."""
    entropy = [int(simulation_seed), 3, int(dose)] + ([int(replicate)] if replicate else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def readout_seed(simulation_seed: int, dose: int, replicate: int = 0) -> int:
    """The 32-bit seed of a (dose, replicate)'s readout-noise stream: first word of
    SeedSequence([sim, 5, dose, replicate]), apart from the Poisson stream, which stays as it is."""
    entropy = [int(simulation_seed), 5, int(dose), int(replicate)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _batches(n_positions: int) -> Iterator[slice]:
    for start in range(0, n_positions, BATCH_SIZE):
        yield slice(start, min(start + BATCH_SIZE, n_positions))


class ExpectedIntensities:
    """Expected intensities of the whole scan at dose 1 (float32, fft-shifted), batch by batch in
    scan order.

    The first pass runs pty-chi's forward model. With a ``spill_dir``, that pass also appends its
    batches to an unlinked temporary file there (nothing to clean up, even after a kill), and
    later passes read them back: the forward model, the costly part, then runs once for all doses.
    """

    def __init__(self, geometry: StudyGeometry, spill_dir: Path | None = None):
        self.geometry = geometry
        self._spill: IO[bytes] | None = None
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
            self._spill = tempfile.TemporaryFile(dir=spill_dir, prefix=".expected_intensities.")
        self._spilled = False

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()

    def batches(self) -> Iterator[tuple[slice, np.ndarray]]:
        g = self.geometry
        if self._spilled:
            yield from self._read_back()
            return
        probe = g.probe_unit if g.probe_modes_unit is None else g.probe_modes_unit
        model = physics.ForwardModel(probe, g.obj, binning=1 if g.detector is None else g.detector.binning)
        if self._spill is not None:
            self._spill.seek(0)
        for sl in _batches(len(g.coords)):
            intensity = model.intensities(g.coords[sl])
            if self._spill is not None:
                self._spill.write(memoryview(intensity).cast("B"))
            yield sl, intensity
        self._spilled = self._spill is not None  # only a complete pass can be read back

    def _read_back(self) -> Iterator[tuple[slice, np.ndarray]]:
        n = self.geometry.n
        self._spill.flush()
        self._spill.seek(0)
        for sl in _batches(len(self.geometry.coords)):
            batch = np.empty((sl.stop - sl.start, n, n), dtype=np.float32)
            if self._spill.readinto(memoryview(batch).cast("B")) != batch.nbytes:
                raise OSError(f"{self._spill.name}: the kept forward-model batches are truncated")
            yield sl, batch


@dataclass
class DoseCounts:
    """Per-pattern totals of one dose (small: two numbers per scan position), filled while streaming."""

    dose: int
    amplitude_scale: float
    noise_seed: int
    counts_total: np.ndarray  # int64 (n,) measured total counts per pattern (float64: continuous counts)
    expected_total: np.ndarray  # float64 (n,) expected total counts per pattern
    replicate: int = 0
    # With a detector block: its readout stream, where the ceiling was reached, and the mask.
    readout_seed: int | None = None
    saturated_any: np.ndarray | None = None  # bool (N, N): reached the ceiling in a pattern of the scan
    saturated_values: np.ndarray | None = None  # int64 (n,): values at the ceiling per pattern
    valid_pixels: np.ndarray | None = None  # bool (N, N), set once the whole scan is drawn
    # With a mask, a file's mean counts are over its valid pixels, and the mask is known only once
    # the whole scan is drawn: per-pixel sums over each file's patterns are kept instead.
    file_rows: dict[tuple[str, str], np.ndarray] | None = None  # (view, split) -> ascending scan indices
    measured_pixel_sums: dict[tuple[str, str], np.ndarray] | None = None  # float64 (N, N) each
    expected_pixel_sums: dict[tuple[str, str], np.ndarray] | None = None

    def mean_counts(self, plan: FilePlan, idx: np.ndarray) -> tuple[float, float]:
        """Expected and measured counts per pattern of a file (over its valid pixels when masked)."""
        if self.valid_pixels is None or self.measured_pixel_sums is None:
            return float(self.expected_total[idx].mean()), float(self.counts_total[idx].mean())
        key = (plan.view, plan.split)
        return (float(self.expected_pixel_sums[key][self.valid_pixels].sum()) / len(idx),
                float(self.measured_pixel_sums[key][self.valid_pixels].sum()) / len(idx))

    def add_pixel_sums(self, sl: slice, expected: np.ndarray, measured: np.ndarray) -> None:
        for key, indices in self.file_rows.items():
            rows = rows_in_batch(indices, sl)
            self.expected_pixel_sums[key] += expected[rows].sum(axis=0)
            self.measured_pixel_sums[key] += measured[rows].sum(axis=0)

    @classmethod
    def start(cls, geometry: StudyGeometry, dose: int, replicate: int = 0) -> DoseCounts:
        n_pos = len(geometry.coords)
        sim = geometry.design.seeds["simulation"]
        detector = geometry.detector
        if detector is None:
            return cls(dose, physics.amplitude_scale(dose, geometry.n), noise_seed(sim, dose, replicate),
                       np.zeros(n_pos, dtype=np.int64), np.zeros(n_pos, dtype=np.float64), replicate)
        counts = cls(dose, physics.amplitude_scale(dose, geometry.n), noise_seed(sim, dose, replicate),
                     np.zeros(n_pos, dtype=np.float64 if detector.continuous else np.int64),
                     np.zeros(n_pos, dtype=np.float64), replicate,
                     readout_seed=readout_seed(sim, dose, replicate) if detector.continuous else None,
                     saturated_any=np.zeros((geometry.n, geometry.n), dtype=bool),
                     saturated_values=np.zeros(n_pos, dtype=np.int64))
        if detector.has_mask:
            counts.file_rows = {(p.view, p.split): p.selection.indices for p in geometry.file_plans(dose, replicate)}
            counts.measured_pixel_sums = {k: np.zeros((geometry.n, geometry.n)) for k in counts.file_rows}
            counts.expected_pixel_sums = {k: np.zeros((geometry.n, geometry.n)) for k in counts.file_rows}
        return counts


def unit_label(dose: int, replicate: int = 0) -> str:
    """``dose_1000`` or ``dose_1000/rep1``: how logs and progress bars name a (dose, replicate)."""
    return dose_key(dose) + (f"/rep{replicate}" if replicate else "")


def diffraction_batches(expected: ExpectedIntensities, counts: DoseCounts,
                        progress: bool | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Poisson counts of the whole scan at ``counts.dose``, batch by batch in scan order, as
    float32 ``sqrt(counts) / amplitude_scale``; fills ``counts``' totals on the way.

    With a detector block the counts go through :func:`physics.detect`; once the whole scan is
    drawn, ``counts.valid_pixels`` holds the mask (None when the detector masks nothing).
    """
    from tqdm import tqdm

    geometry = expected.geometry
    detector = geometry.detector
    dose, scale = counts.dose, counts.amplitude_scale
    rng = np.random.default_rng(counts.noise_seed)
    readout_rng = None if counts.readout_seed is None else np.random.default_rng(counts.readout_seed)
    n_pos = len(geometry.coords)
    for sl, unit in tqdm(expected.batches(), total=-(-n_pos // BATCH_SIZE),
                         desc=f"{unit_label(dose, counts.replicate)} diffraction",
                         unit="batch", file=_stderr(), disable=_tqdm_disable(progress), leave=False):
        intensity = unit.astype(np.float64) * dose
        if detector is None:  # the ideal photon counter
            drawn = rng.poisson(intensity)
            counts.counts_total[sl] = drawn.sum(axis=(1, 2))
            counts.expected_total[sl] = intensity.sum(axis=(1, 2))
            yield sl, (np.sqrt(drawn) / scale).astype(np.float32)
            continue
        intensity, drawn, saturated = physics.detect(intensity, detector, geometry.beamstop, geometry.bad_pixels,
                                                     rng, readout_rng)
        counts.expected_total[sl] = intensity.sum(axis=(1, 2))
        counts.saturated_any |= saturated.any(axis=0)
        counts.saturated_values[sl] = saturated.sum(axis=(1, 2))
        amplitude = (np.sqrt(drawn) / scale).astype(np.float32)
        if detector.continuous:
            # The counts a reader recovers from the stored amplitudes, (d * scale)^2, unrounded.
            drawn = np.square(amplitude.astype(np.float64) * scale)
        counts.counts_total[sl] = drawn.sum(axis=(1, 2))
        if counts.file_rows is not None:
            counts.add_pixel_sums(sl, intensity, drawn)
        yield sl, amplitude
    if detector is not None and detector.has_mask:
        counts.valid_pixels = physics.valid_pixel_mask(detector, geometry.beamstop, geometry.bad_pixels,
                                                       counts.saturated_any)


def window_batches(geometry: StudyGeometry, desc: str, progress: bool | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """The ``Y`` object windows of the whole scan, batch by batch in scan order (complex64)."""
    from tqdm import tqdm

    n_pos = len(geometry.coords)
    for sl in tqdm(_batches(n_pos), total=-(-n_pos // BATCH_SIZE), desc=desc, unit="batch",
                   file=_stderr(), disable=_tqdm_disable(progress), leave=False):
        yield sl, physics.object_windows(geometry.obj, geometry.coords[sl], geometry.n)


def rows_in_batch(indices: np.ndarray, sl: slice) -> slice | np.ndarray:
    """Where the ascending scan ``indices`` that fall in the batch ``sl`` sit inside that batch
    (a slice when they are a run, so the rows are a view)."""
    lo, hi = np.searchsorted(indices, [sl.start, sl.stop])
    local = indices[lo:hi] - sl.start
    if len(local) == 0:
        return slice(0, 0)
    if local[-1] - local[0] + 1 == len(local):
        return slice(int(local[0]), int(local[-1]) + 1)
    return local


def stream_member(outputs: list[NpzWriter], plans: list[FilePlan], key: str, dtype, n: int,
                  batches: Iterable[tuple[slice, np.ndarray]]) -> None:
    """One per-position member of every file of a dose: each batch's rows go to the files that
    hold those positions, appended in scan order."""
    members = [npz.begin(key, dtype, (len(plan.selection.indices), n, n)) for npz, plan in zip(outputs, plans, strict=True)]
    for sl, rows in batches:
        for member, plan in zip(members, plans, strict=True):
            member.write(rows[rows_in_batch(plan.selection.indices, sl)])
    for member in members:
        member.close()


def file_metadata(geometry: StudyGeometry, plan: FilePlan, data: DoseCounts, idx: np.ndarray) -> dict:
    design = geometry.design
    expected_mean, measured_mean = data.mean_counts(plan, idx)
    return {
        "schema_version": "1.0",
        "generator": GENERATOR,
        "generator_version": __version__,
        "design_name": design.name,
        "design_hash": design.design_hash,
        "data_hash": design.data_hash,
        "dose": int(data.dose),
        "split": plan.split,
        "view": plan.view,
        "n_images": int(len(idx)),
        "amplitude_scale": data.amplitude_scale,
        "expected_mean_counts": round(expected_mean, 6),
        "measured_mean_counts": round(measured_mean, 6),
        "seeds": {k: int(v) for k, v in design.seeds.items()},
        "noise_seed": int(data.noise_seed),
        "probe": geometry.probe_meta,
        "object": geometry.object_meta,
        "scan": geometry.scan_meta,
        "selection": plan.selection.figures(),
        "object_pixel_size_m": design.object_pixel_size_m,
        "wavelength_m": design.wavelength_m,
        "probe_diameter_px": design.probe_diameter_px,
        "position_origin": [float(v) for v in position_origin(design.object_shape)],
        # Replicate 0 carries no key, so its bytes stay those of a design without replicates.
        **({"replicate": int(plan.replicate)} if plan.replicate else {}),
        **realistic_metadata(geometry, data, idx),
    }


def realistic_metadata(geometry: StudyGeometry, data: DoseCounts, idx: np.ndarray) -> dict:
    """The ``probe_modes``, ``position_errors`` and ``detector`` metadata of a file (only the design's blocks)."""
    design = geometry.design
    meta: dict = {}
    modes = design.probe_modes
    if modes is not None:
        meta["probe_modes"] = {
            "count": int(modes["count"]), "power_ratio": float(modes["power_ratio"]),
            "power_fractions": [round(f, 9) for f in physics.mode_power_fractions(modes["count"], modes["power_ratio"])],
        }
    errors = design.position_errors
    if errors is not None:
        meta["position_errors"] = {
            "random_px": errors["random_px"], "scale": errors["scale"], "rotation_deg": errors["rotation_deg"],
            "drift_px": list(errors["drift_px"]),
            **physics.position_error_figures(geometry.coords[idx], geometry.nominal[idx]),
        }
    detector = geometry.detector
    if detector is not None:
        masked = 0 if data.valid_pixels is None else int((~data.valid_pixels).sum())
        meta["detector"] = {
            "readout_noise_adu": detector.readout_noise_adu, "adu_per_photon": detector.adu_per_photon,
            **({"saturation_photons": detector.saturation_photons} if detector.saturation_photons is not None else {}),
            "mask_saturated": detector.mask_saturated, "beamstop_radius_px": detector.beamstop_radius_px,
            "bad_pixels": detector.bad_pixels, "binning": detector.binning,
            "counts": "continuous" if detector.continuous else "integer",
            "n_masked_pixels": masked,
            "n_saturated_values": int(data.saturated_values[idx].sum()),
            **({"readout_seed": int(data.readout_seed)} if data.readout_seed is not None else {}),
        }
    return meta


def small_arrays(geometry: StudyGeometry, plan: FilePlan, dose: int, meta: dict,
                 valid_pixels: np.ndarray | None = None) -> dict:
    """The members after the per-position images, in file order (the optional ones of
    OPTIONAL_NPZ_KEYS only where the design has them)."""
    idx = plan.selection.indices
    arrays = {
        "objectGuess": geometry.obj,
        "probeGuess": (geometry.probe_unit * np.sqrt(float(dose))).astype(np.complex64),
        "xcoords": geometry.coords[idx, 1].astype(np.float64),
        "ycoords": geometry.coords[idx, 0].astype(np.float64),
        "scan_index": idx.astype(np.int64),
        "_metadata": np.array(json.dumps(meta, sort_keys=True)),
    }
    if geometry.probe_modes_unit is not None:  # [0] is probe_unit: the same bytes as probeGuess
        arrays["probe_modes"] = (geometry.probe_modes_unit * np.sqrt(float(dose))).astype(np.complex64)
    if geometry.nominal is not None:
        arrays["nominal_xcoords"] = geometry.nominal[idx, 1].astype(np.float64)
        arrays["nominal_ycoords"] = geometry.nominal[idx, 0].astype(np.float64)
    if valid_pixels is not None:
        arrays["valid_pixels"] = np.ascontiguousarray(valid_pixels, dtype=bool)
    return arrays


def write_dose(geometry: StudyGeometry, dose: int, roots: dict[str, Path], expected: ExpectedIntensities,
               progress: bool | None = None, replicate: int = 0) -> dict[str, list[dict]]:
    """Write every split x view file of one replicate of ``dose`` side by side; return their index
    entries per root.

    The files are renamed into place together at the end; an exception before leaves none of them.
    """
    plans = geometry.file_plans(dose, replicate)
    counts = DoseCounts.start(geometry, dose, replicate)
    metas = []
    with ExitStack() as files:
        outputs = [files.enter_context(streamed_npz(roots[p.root] / p.relpath)) for p in plans]
        stream_member(outputs, plans, "diffraction", np.float32, geometry.n,
                      diffraction_batches(expected, counts, progress))
        stream_member(outputs, plans, "Y", np.complex64, geometry.n,
                      window_batches(geometry, f"{unit_label(dose, replicate)} Y", progress))
        for plan, npz in zip(plans, outputs, strict=True):
            meta = file_metadata(geometry, plan, counts, plan.selection.indices)
            rest = small_arrays(geometry, plan, dose, meta, counts.valid_pixels)
            keys = ("diffraction", "Y", *rest)
            assert keys[:len(NPZ_KEYS)] == NPZ_KEYS and keys[len(NPZ_KEYS):] == tuple(
                k for k in OPTIONAL_NPZ_KEYS if k in rest)
            for key, value in rest.items():
                npz.add(key, value)
            metas.append(meta)
    entries: dict[str, list[dict]] = {"phase_c": [], "phase_d": []}
    for plan, npz, meta in zip(plans, outputs, metas, strict=True):
        path = roots[plan.root] / plan.relpath
        entries[plan.root].append(index_entry(plan, meta, npz.sha256, path.stat().st_size))
        log.info("wrote %s (%d patterns)", path, meta["n_images"])
    return entries


# ----------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------
def index_entry(plan: FilePlan, meta: dict, sha256: str, size: int) -> dict:
    return {
        "path": plan.relpath,
        "dose": plan.dose,
        "replicate": plan.replicate,
        "view": plan.view,
        "split": plan.split,
        "n_images": meta["n_images"],
        "sha256": sha256,
        "size_bytes": size,
        "amplitude_scale": meta["amplitude_scale"],
        "expected_mean_counts": meta["expected_mean_counts"],
        "measured_mean_counts": meta["measured_mean_counts"],
        "noise_seed": meta["noise_seed"],
        "selection": meta["selection"],
    }


def read_index(path: Path) -> dict | None:
    """The index at ``path``, or None when missing or unreadable (then it is rewritten)."""
    if not path.is_file():
        return None
    try:
        return manifests.read_json(path, INDEX_SCHEMA)
    except ManifestError as exc:
        log.warning("ignoring an unreadable index (it will be rewritten): %s", exc)
        return None


#: The modules whose code decides the bytes gen-synthetic writes: a change to any of them (not only
#: a version bump) makes existing files stale, so data freshness follows the generator's code.
GENERATOR_MODULES = ("synthetic", "physics", "overlap", "geometry", "fileio", "design", "thinning")


@lru_cache(maxsize=1)
def generator_code_hash() -> str:
    """sha256 over the source of GENERATOR_MODULES (as installed: a wheel hashes its own copies)."""
    digest = hashlib.sha256()
    for name in GENERATOR_MODULES:
        source = resources.files(__package__).joinpath(f"{name}.py").read_bytes()
        digest.update(name.encode() + b"\0" + hashlib.sha256(source).digest())
    return digest.hexdigest()


def _same_generation(index: dict | None, design: StudyDesign) -> bool:
    return (bool(index) and index["design_hash"] == design.design_hash and index["generator_version"] == __version__
            and index.get("generator_code_hash") == generator_code_hash())


def dose_up_to_date(geometry: StudyGeometry, dose: int, roots: dict[str, Path], indexes: dict[str, dict | None],
                    replicate: int = 0) -> bool:
    """True when both indexes come from this design and generator code and every file of ``dose``
    (its replicate ``replicate``) is on disk with the sha256 the index records."""
    for plan in geometry.file_plans(dose, replicate):
        index = indexes[plan.root]
        if not _same_generation(index, geometry.design):
            return False
        entry = next((e for e in index["files"] if e["path"] == plan.relpath), None)
        path = roots[plan.root] / plan.relpath
        if entry is None or not path.is_file() or sha256_file(path) != entry["sha256"]:
            return False
    return True


def _unit(entry: dict) -> tuple[int, int]:
    return entry["dose"], entry.get("replicate", 0)


def build_index(geometry: StudyGeometry, root_kind: str, root: Path, previous: dict | None,
                new_entries: list[dict], regenerated: set[tuple[int, int]],
                pending: Iterable[tuple[int, int]] = ()) -> dict:
    """Merge: entries of (dose, replicate)s not regenerated now are kept when the design is unchanged
    (those of a replicate the design no longer has are dropped).

    ``pending``: (dose, replicate)s this run will still write (not worth a warning when their old entries go).
    """
    design = geometry.design
    kept: list[dict] = []
    if _same_generation(previous, design):
        kept = [e for e in previous["files"] if _unit(e) not in regenerated and _unit(e)[1] < design.replicates]
    elif previous and previous["files"]:
        stale = sorted({e["dose"] for e in previous["files"]} - {d for d, _ in regenerated} - {d for d, _ in pending})
        if stale:
            log.warning("%s: dropped index entries of doses %s (made from another design or version); "
                        "regenerate them", root / INDEX_NAME, stale)
    files = sorted(kept + new_entries, key=lambda e: file_order(design, e))
    return {
        "schema_version": "1.0",
        "generator": GENERATOR,
        "generator_version": __version__,
        "generator_code_hash": generator_code_hash(),
        "replicates": design.replicates,
        "root_kind": root_kind,
        "design_name": design.name,
        "design_hash": design.design_hash,
        "design_path": str(design.path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "probe": {
            "nominal_diameter_px": geometry.probe_meta["nominal_diameter_px"],
            "measured_diameter_px": geometry.probe_meta["measured_diameter_px"],
            "diameter_definition": geometry.probe_meta["diameter_definition"],
        },
        "probe_diameter_px": design.probe_diameter_px,
        "spacing_thresholds": dict(design.spacing_thresholds),
        **({"target_overlaps": design.target_overlaps} if design.target_overlaps else {}),
        "n_positions": {"scan": int(len(geometry.coords)),
                        **{s: int(len(i)) for s, i in geometry.splits.items()}},
        "files": files,
    }


def file_order(design: StudyDesign, entry: dict) -> tuple:
    """Index and listing order: dose, replicate, the design's view order, train before test."""
    order = {v: i for i, v in enumerate(design.views)}
    return (entry["dose"], entry.get("replicate", 0), order.get(entry["view"], 99), entry["view"],
            entry["split"] != "train")


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    design: StudyDesign
    roots: dict[str, Path]
    generated_doses: list[int]
    up_to_date_doses: list[int]
    files: list[dict]  # index entries (with "root") of the requested doses
    probe: dict
    n_positions: dict

    def to_json(self) -> dict:
        return {
            "design": str(self.design.path),
            "design_hash": self.design.design_hash,
            "phase_c_root": str(self.roots["phase_c"]),
            "phase_d_root": str(self.roots["phase_d"]),
            "replicates": self.design.replicates,
            "generated_doses": self.generated_doses,
            "up_to_date_doses": self.up_to_date_doses,
            "probe": {k: self.probe[k] for k in ("nominal_diameter_px", "measured_diameter_px", "edge_energy_fraction")},
            "n_positions": self.n_positions,
            "files": self.files,
        }


def resolve_doses(design: StudyDesign, doses: Iterable[float] | None) -> list[int]:
    """The requested doses (all of the design when none), each checked to be in the design."""
    if not doses:
        return design.doses
    chosen: list[int] = []
    for d in doses:
        key = int(round(d))
        if abs(d - key) > 1e-9 or key not in design.doses:
            raise DesignError(f"{design.path}: doses: {d:g} is not a dose of the design "
                              f"(doses: {', '.join(str(x) for x in design.doses)})")
        if key not in chosen:
            chosen.append(key)
    return chosen


@contextmanager
def _roots_locked(roots: dict[str, Path]) -> Iterator[None]:
    """Both roots' locks, taken in path order (so two runs can never hold one each)."""
    with ExitStack() as locks:
        for root in sorted(set(roots.values())):
            def waiting(root=root):
                log.warning("%s: another gen-synthetic is writing here; waiting for it to finish", root)
            locks.enter_context(exclusive_lock(root / LOCK_NAME, on_wait=waiting))
        yield


def remove_stale_files(geometry: StudyGeometry, roots: dict[str, Path]) -> list[Path]:
    """Temporary files a killed run left beside any file of the design (call with the roots locked)."""
    targets = [roots[kind] / INDEX_NAME for kind in roots]
    targets += [roots[p.root] / p.relpath for dose, r in geometry.units(geometry.design.doses)
                for p in geometry.file_plans(dose, r)]
    removed = [stale for target in targets for stale in remove_stale_temporaries(target)]
    for stale in removed:
        log.warning("removed %s (left by an interrupted run)", stale)
    return removed


def output_roots(phase_c_root: str | Path, phase_d_root: str | Path) -> dict[str, Path]:
    """Both output roots, resolved; refused when one is a file or both are the same folder."""
    roots = {"phase_c": Path(phase_c_root).resolve(), "phase_d": Path(phase_d_root).resolve()}
    for kind, root in roots.items():
        if root.exists() and not root.is_dir():
            raise DesignError(f"{root}: --{kind.replace('_', '-')}-root is a file, expected a folder")
    if roots["phase_c"] == roots["phase_d"]:
        # Each root holds its own dataset_index.json: one folder for both would overwrite it.
        raise DesignError(f"{roots['phase_c']}: --phase-c-root and --phase-d-root must be different folders")
    return roots


def generate_study(design_path: str | Path, phase_c_root: str | Path, phase_d_root: str | Path,
                   doses: Iterable[float] | None = None, force: bool = False,
                   progress: bool | None = None) -> GenerationResult:
    """Generate (or confirm up to date) every file of the requested doses of a design."""
    design = load_design(design_path)
    chosen = resolve_doses(design, doses)
    roots = output_roots(phase_c_root, phase_d_root)
    geometry = build_geometry(design)

    with _roots_locked(roots):
        remove_stale_files(geometry, roots)
        indexes = {kind: read_index(root / INDEX_NAME) for kind, root in roots.items()}
        pending = [(d, r) for d, r in geometry.units(chosen)
                   if force or not dose_up_to_date(geometry, d, roots, indexes, r)]
        generated = list(dict.fromkeys(d for d, _ in pending))
        up_to_date = [d for d in chosen if d not in generated]
        for dose in up_to_date:
            log.info("%s: up to date, nothing regenerated", dose_key(dose))
        # Keep the forward model's batches only when another (dose, replicate) will read them back.
        expected = ExpectedIntensities(geometry, roots["phase_c"] if len(pending) > 1 else None)
        try:
            for dose, replicate in pending:
                entries = write_dose(geometry, dose, roots, expected, progress, replicate=replicate)
                # Indexed as soon as its files are in place: a later kill keeps this replicate of this dose.
                for kind, root in roots.items():
                    doc = build_index(geometry, kind, root, indexes[kind], entries[kind], {(dose, replicate)},
                                      pending)
                    manifests.write_json(root / INDEX_NAME, doc, INDEX_SCHEMA)
                    indexes[kind] = doc
        finally:
            expected.close()

    files = []
    for kind in ("phase_c", "phase_d"):
        for entry in indexes[kind]["files"] if indexes[kind] else []:
            if entry["dose"] in chosen:
                files.append({"root": kind, **entry})
    files.sort(key=lambda e: file_order(design, e))
    n_positions = {"scan": int(len(geometry.coords)), **{s: int(len(i)) for s, i in geometry.splits.items()}}
    return GenerationResult(design, roots, generated, up_to_date, files, geometry.probe_meta, n_positions)
