"""gen-synthetic's core: one object, probe and scan per study; a Poisson draw per dose; NPZ files.

``generate_study`` builds the shared geometry (object, unit probe, scan, splits, views) once,
computes the expected intensities of the full scan once with pty-chi's forward model (unit
dose), then per dose scales them, draws Poisson counts from an independent seeded stream and
writes every split x view file of that dose plus the ``dataset_index.json`` of each root.

Files are byte-deterministic: arrays are written in a fixed order as ``.npy`` members of an
uncompressed zip with fixed timestamps (the ``np.savez`` layout), under a temporary name that is
fsync'ed and renamed, so a kill never leaves half a file under the final name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import __version__
from . import manifests, overlap, physics
from .design import BASELINE_VIEW, StudyDesign, dose_key, load_design
from .errors import DesignError, ManifestError
from .fileio import sha256_file, write_npz_atomic
from .geometry import position_origin

log = logging.getLogger(__name__)

GENERATOR = "gen-synthetic"
INDEX_NAME = "dataset_index.json"
INDEX_SCHEMA = "dataset_index"
#: Order of the arrays inside every NPZ.
NPZ_KEYS = ("diffraction", "Y", "objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index", "_metadata")
BATCH_SIZE = 256


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
    _expected_unit: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.design.probe_size

    def expected_unit(self, progress: bool | None = None) -> np.ndarray:
        """Expected intensities of the whole scan at dose 1 (float32, fft-shifted), computed once."""
        if self._expected_unit is None:
            from tqdm import tqdm

            model = physics.ForwardModel(self.probe_unit, self.obj)
            out = np.empty((len(self.coords), self.n, self.n), dtype=np.float32)
            batches = model.batches(self.coords, BATCH_SIZE)
            total = -(-len(self.coords) // BATCH_SIZE)
            for sl, intensity in tqdm(batches, total=total, desc="forward model", unit="batch",
                                      file=_stderr(), disable=_tqdm_disable(progress), leave=False):
                out[sl] = intensity
            self._expected_unit = out
        return self._expected_unit

    def file_plans(self, dose: int) -> list[FilePlan]:
        plans = []
        for view in self.design.views:
            for split in self.design.splits:
                if view == BASELINE_VIEW:
                    root, rel = "phase_c", f"{dose_key(dose)}/patched_{split}.npz"
                else:
                    root, rel = "phase_d", f"{dose_key(dose)}/{view}/{view}_{split}.npz"
                plans.append(FilePlan(root, rel, dose, view, split, self.selections[(view, split)]))
        return plans


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
    splits = overlap.split_indices(coords, design.object_shape)
    for split, idx in splits.items():
        if len(idx) == 0:
            raise DesignError(f"{design.path}: scan: the {split} split has no positions")
    neighbours = int(raw["overlap_reference"]["neighbours"])
    diameter = design.probe_diameter_px
    selections: dict[tuple[str, str], overlap.Selection] = {}
    for view_index, view in enumerate(design.views):
        threshold = 0.0 if view == BASELINE_VIEW else design.spacing_thresholds[view]
        for split in design.splits:
            rng = overlap.subsampling_rng(seeds["subsampling"], split, view_index)
            selections[(view, split)] = overlap.select_view(coords, splits[split], threshold, diameter, neighbours, rng)
    return StudyGeometry(design, probe_unit, probe_meta, obj, object_meta, coords, scan_meta, splits, selections)


# ----------------------------------------------------------------------------------------------
# One dose
# ----------------------------------------------------------------------------------------------
def noise_seed(simulation_seed: int, dose: int) -> int:
    """The 32-bit seed of a dose's Poisson stream: first word of SeedSequence([sim, 3, dose])."""
    return int(np.random.SeedSequence([int(simulation_seed), 3, int(dose)]).generate_state(1)[0])


@dataclass
class DoseData:
    dose: int
    amplitude_scale: float
    noise_seed: int
    diffraction: np.ndarray  # float32 (n, N, N)
    counts_total: np.ndarray  # int64 (n,) measured total counts per pattern
    expected_total: np.ndarray  # float64 (n,) expected total counts per pattern


def simulate_dose(geometry: StudyGeometry, dose: int, progress: bool | None = None) -> DoseData:
    """Poisson counts of the whole scan at ``dose``, stored as sqrt(counts) / amplitude_scale."""
    from tqdm import tqdm

    expected_unit = geometry.expected_unit(progress)
    n_pos, n = len(geometry.coords), geometry.n
    scale = physics.amplitude_scale(dose, n)
    seed = noise_seed(geometry.design.seeds["simulation"], dose)
    rng = np.random.default_rng(seed)
    diffraction = np.empty_like(expected_unit)
    counts_total = np.empty(n_pos, dtype=np.int64)
    expected_total = np.empty(n_pos, dtype=np.float64)
    for start in tqdm(range(0, n_pos, BATCH_SIZE), desc=f"{dose_key(dose)} Poisson", unit="batch",
                      file=_stderr(), disable=_tqdm_disable(progress), leave=False):
        sl = slice(start, min(start + BATCH_SIZE, n_pos))
        expected = expected_unit[sl].astype(np.float64) * dose
        counts = rng.poisson(expected)
        counts_total[sl] = counts.sum(axis=(1, 2))
        expected_total[sl] = expected.sum(axis=(1, 2))
        diffraction[sl] = (np.sqrt(counts) / scale).astype(np.float32)
    return DoseData(dose, scale, seed, diffraction, counts_total, expected_total)


def file_metadata(geometry: StudyGeometry, plan: FilePlan, data: DoseData, idx: np.ndarray) -> dict:
    design = geometry.design
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
        "expected_mean_counts": round(float(data.expected_total[idx].mean()), 6),
        "measured_mean_counts": round(float(data.counts_total[idx].mean()), 6),
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
    }


def file_arrays(geometry: StudyGeometry, plan: FilePlan, data: DoseData, windows: np.ndarray) -> tuple[dict, dict]:
    idx = plan.selection.indices
    meta = file_metadata(geometry, plan, data, idx)
    probe = (geometry.probe_unit * np.sqrt(float(data.dose))).astype(np.complex64)
    arrays = {
        "diffraction": np.ascontiguousarray(data.diffraction[idx]),
        "Y": np.ascontiguousarray(windows[idx]),
        "objectGuess": geometry.obj,
        "probeGuess": probe,
        "xcoords": geometry.coords[idx, 1].astype(np.float64),
        "ycoords": geometry.coords[idx, 0].astype(np.float64),
        "scan_index": idx.astype(np.int64),
        "_metadata": np.array(json.dumps(meta, sort_keys=True)),
    }
    assert tuple(arrays) == NPZ_KEYS
    return arrays, meta


# ----------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------
def index_entry(plan: FilePlan, meta: dict, sha256: str, size: int) -> dict:
    return {
        "path": plan.relpath,
        "dose": plan.dose,
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


def _same_generation(index: dict | None, design: StudyDesign) -> bool:
    return bool(index) and index["design_hash"] == design.design_hash and index["generator_version"] == __version__


def dose_up_to_date(geometry: StudyGeometry, dose: int, roots: dict[str, Path], indexes: dict[str, dict | None]) -> bool:
    """True when both indexes come from this design and tool version and every file of ``dose``
    is on disk with the sha256 the index records."""
    for plan in geometry.file_plans(dose):
        index = indexes[plan.root]
        if not _same_generation(index, geometry.design):
            return False
        entry = next((e for e in index["files"] if e["path"] == plan.relpath), None)
        path = roots[plan.root] / plan.relpath
        if entry is None or not path.is_file() or sha256_file(path) != entry["sha256"]:
            return False
    return True


def build_index(geometry: StudyGeometry, root_kind: str, root: Path, previous: dict | None,
                new_entries: list[dict], regenerated: set[int]) -> dict:
    """Merge: entries of doses not regenerated now are kept when the design is unchanged."""
    design = geometry.design
    kept: list[dict] = []
    if _same_generation(previous, design):
        kept = [e for e in previous["files"] if e["dose"] not in regenerated]
    elif previous and previous["files"]:
        stale = sorted({e["dose"] for e in previous["files"]} - regenerated)
        if stale:
            log.warning("%s: dropped index entries of doses %s (made from another design or version); "
                        "regenerate them", root / INDEX_NAME, stale)
    order = {v: i for i, v in enumerate(design.views)}
    files = sorted(kept + new_entries, key=lambda e: (e["dose"], order.get(e["view"], 99), e["view"], e["split"] != "train"))
    return {
        "schema_version": "1.0",
        "generator": GENERATOR,
        "generator_version": __version__,
        "root_kind": root_kind,
        "design_name": design.name,
        "design_hash": design.design_hash,
        "design_path": str(design.path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probe": {
            "nominal_diameter_px": geometry.probe_meta["nominal_diameter_px"],
            "measured_diameter_px": geometry.probe_meta["measured_diameter_px"],
            "diameter_definition": geometry.probe_meta["diameter_definition"],
        },
        "probe_diameter_px": design.probe_diameter_px,
        "spacing_thresholds": dict(design.spacing_thresholds),
        "n_positions": {"scan": int(len(geometry.coords)),
                        **{s: int(len(i)) for s, i in geometry.splits.items()}},
        "files": files,
    }


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


def generate_study(design_path: str | Path, phase_c_root: str | Path, phase_d_root: str | Path,
                   doses: Iterable[float] | None = None, force: bool = False,
                   progress: bool | None = None) -> GenerationResult:
    """Generate (or confirm up to date) every file of the requested doses of a design."""
    design = load_design(design_path)
    chosen = resolve_doses(design, doses)
    roots = {"phase_c": Path(phase_c_root).resolve(), "phase_d": Path(phase_d_root).resolve()}
    for kind, root in roots.items():
        if root.exists() and not root.is_dir():
            raise DesignError(f"{root}: --{kind.replace('_', '-')}-root is a file, expected a folder")
    if roots["phase_c"] == roots["phase_d"]:
        # Each root holds its own dataset_index.json: one folder for both would overwrite it.
        raise DesignError(f"{roots['phase_c']}: --phase-c-root and --phase-d-root must be different folders")
    geometry = build_geometry(design)
    indexes = {kind: read_index(root / INDEX_NAME) for kind, root in roots.items()}

    generated: list[int] = []
    up_to_date: list[int] = []
    new_entries: dict[str, list[dict]] = {"phase_c": [], "phase_d": []}
    windows: np.ndarray | None = None
    for dose in chosen:
        if not force and dose_up_to_date(geometry, dose, roots, indexes):
            log.info("%s: up to date, nothing regenerated", dose_key(dose))
            up_to_date.append(dose)
            continue
        if windows is None:
            windows = physics.object_windows(geometry.obj, geometry.coords, geometry.n)
        data = simulate_dose(geometry, dose, progress)
        for plan in geometry.file_plans(dose):
            arrays, meta = file_arrays(geometry, plan, data, windows)
            path = roots[plan.root] / plan.relpath
            digest = write_npz_atomic(path, arrays)
            new_entries[plan.root].append(index_entry(plan, meta, digest, path.stat().st_size))
            log.info("wrote %s (%d patterns)", path, meta["n_images"])
        generated.append(dose)

    if generated:
        for kind, root in roots.items():
            doc = build_index(geometry, kind, root, indexes[kind], new_entries[kind], set(generated))
            manifests.write_json(root / INDEX_NAME, doc, INDEX_SCHEMA)
            indexes[kind] = doc

    files = []
    for kind in ("phase_c", "phase_d"):
        for entry in indexes[kind]["files"] if indexes[kind] else []:
            if entry["dose"] in chosen:
                files.append({"root": kind, **entry})
    order = {v: i for i, v in enumerate(design.views)}
    files.sort(key=lambda e: (e["dose"], order.get(e["view"], 99), e["split"] != "train"))
    n_positions = {"scan": int(len(geometry.coords)), **{s: int(len(i)) for s, i in geometry.splits.items()}}
    return GenerationResult(design, roots, generated, up_to_date, files, geometry.probe_meta, n_positions)
