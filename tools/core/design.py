"""The study design: loading, validation and every derived value, computed in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import DesignError, ManifestError
from .fileio import sha256_file
from .manifests import parse_json, read_text, validation_errors
from .safepath import available_memory_bytes

SPLITS = ("train", "test")
BASELINE_VIEW = "baseline"
#: Design sections that do not change the generated data (see StudyDesign.data_hash).
NOT_DATA_KEYS = ("name", "description", "reconstruction", "reconstructors", "metrics", "probe_knowledge")
#: Design keys left out of both hashes: the replicate count adds files but changes none, so raising
#: it keeps replicate 0 (and every result made from it) byte for byte valid.
NOT_HASHED_KEYS = ("replicates",)
#: A view selected by a target overlap must measure within this of the target (absolute overlap
#: fraction); a target the scan cannot reach that closely is refused (see overlap.select_view_for_overlap).
TARGET_OVERLAP_TOLERANCE = 0.02
#: Bytes per object pixel that generating the data needs at its peak (the complex64 object, the
#: float64 fields and FFT buffers it is built from): a design whose object cannot fit is refused
#: up front instead of failing (or swapping) deep inside numpy.
GENERATION_BYTES_PER_OBJECT_PIXEL = 64
#: Scan positions a design may ask for (the scale benchmarks run 2e5; far beyond is a typo in step_px).
MAX_SCAN_POSITIONS = 2e7
PLANCK_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength_m = PLANCK_EV_M / energy_eV
#: The detector block's defaults (docs/physics.md, "Realistic conditions"): an ideal detector.
DETECTOR_DEFAULTS = {"readout_noise_adu": 0.0, "adu_per_photon": 1.0, "saturation_photons": None,
                     "mask_saturated": True, "beamstop_radius_px": 0.0, "bad_pixels": 0, "binning": 1}
#: Design blocks that only a simulation has: a measured design takes them from its parent NPZ.
SIMULATION_BLOCKS = ("probe", "object", "scan", "position_errors", "detector")


def spacing_threshold(overlap_fraction: float, probe_diameter_px: float) -> float:
    """Minimum centre spacing of an overlap view: ``S = (1 - f) * D`` (object pixels)."""
    if not 0.0 <= overlap_fraction < 1.0:
        raise DesignError(f"overlap fraction {overlap_fraction} is not in [0, 1)")
    if probe_diameter_px <= 0:
        raise DesignError(f"probe diameter {probe_diameter_px} must be > 0")
    return (1.0 - overlap_fraction) * probe_diameter_px


def dose_key(dose: float) -> str:
    """Folder name of a dose: ``dose_1000``."""
    return f"dose_{int(round(dose))}"


def replicate_key(replicate: int) -> str:
    """Folder (and job id level) of a replicate r >= 1: ``rep1``; replicate 0 has none."""
    if replicate < 1:
        raise ValueError(f"replicate {replicate} has no folder (replicate 0 is the dose's own)")
    return f"rep{int(replicate)}"


def data_relpath(view: str, dose: int, split: str, replicate: int = 0) -> str:
    """A data file's path inside its root: ``dose_<d>/[rep<r>/]patched_<split>.npz`` (baseline, Phase C)
    or ``dose_<d>/[rep<r>/]<view>/<view>_<split>.npz`` (an overlap view, Phase D).

    Replicate 0 has no ``rep`` level, so a design without replicates keeps its layout.
    """
    base = dose_key(dose) + (f"/{replicate_key(replicate)}" if replicate else "")
    if view == BASELINE_VIEW:
        return f"{base}/patched_{split}.npz"
    return f"{base}/{view}/{view}_{split}.npz"


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file: ``file not found: <path>`` or ``not a regular file (...)``."""
    if path.exists():
        return f"not a regular file (a folder, FIFO or device): {path}"
    return f"file not found: {path}"


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class StudyDesign:
    """A validated study design with its derived values."""

    raw: dict
    path: Path
    spacing_thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def doses(self) -> list[int]:
        return [int(round(d)) for d in self.raw["doses"]]

    @property
    def probe_size(self) -> int:
        if self.measured is not None:
            return self.measured_parent.probe_size
        return int(self.raw["probe"]["size"])

    @property
    def object_shape(self) -> tuple[int, int]:
        if self.measured is not None:
            return self.measured_parent.object_shape
        rows, cols = self.raw["object"]["shape"]
        return int(rows), int(cols)

    # --- realistic conditions (all optional; absent = today's ideal study) ----------------------
    @property
    def probe_modes(self) -> dict | None:
        """``{"count": K, "power_ratio": r}`` of a partially coherent simulated probe, else None."""
        modes = self.raw.get("probe", {}).get("modes")
        return None if modes is None else dict(modes)

    @property
    def position_errors(self) -> dict | None:
        """The simulated position errors with every key filled (0 where unset), else None."""
        errors = self.raw.get("position_errors")
        if errors is None:
            return None
        return {"random_px": float(errors.get("random_px", 0.0)), "scale": float(errors.get("scale", 0.0)),
                "rotation_deg": float(errors.get("rotation_deg", 0.0)),
                "drift_px": [float(v) for v in errors.get("drift_px", (0.0, 0.0))]}

    @property
    def detector(self) -> dict | None:
        """The detector block with :data:`DETECTOR_DEFAULTS` filled in, else None (an ideal detector)."""
        block = self.raw.get("detector")
        return None if block is None else {**DETECTOR_DEFAULTS, **block}

    @property
    def probe_knowledge(self) -> dict:
        """The probe the engines start from: ``{"start": "true"}`` unless the design says otherwise."""
        return dict(self.raw.get("probe_knowledge", {"start": "true"}))

    @property
    def measured(self) -> dict | None:
        """``{"npz": ..., "ground_truth": bool}`` of a design whose data are thinned from a measured NPZ."""
        block = self.raw.get("measured")
        return None if block is None else {"npz": block["npz"], "ground_truth": bool(block.get("ground_truth", False))}

    @property
    def measured_parent(self) -> MeasuredParent:
        """Shapes and dose of a measured design's parent NPZ (read from its headers, once)."""
        if self.measured is None:
            raise DesignError(f"{self.path}: measured: the design simulates its data")
        return read_measured_parent(self.resolve(self.measured["npz"]))

    @property
    def overlap_views(self) -> dict[str, float | dict]:
        """View name -> overlap fraction f, or ``{"target_overlap": x}`` for a view selected by overlap."""
        return dict(self.raw["overlap_views"])

    @property
    def target_overlaps(self) -> dict[str, float]:
        """The views specified by their target measured overlap: name -> target."""
        return {view: float(spec["target_overlap"]) for view, spec in self.raw["overlap_views"].items()
                if isinstance(spec, dict)}

    @property
    def replicates(self) -> int:
        """K independent Poisson draws per dose (1 when the design does not say)."""
        return int(self.raw.get("replicates", 1))

    @property
    def replicate_numbers(self) -> list[int]:
        return list(range(self.replicates))

    @property
    def quality_target(self) -> dict | None:
        """``{"metric": ..., "value": ...}``: the quality Q of the minimum-dose curve (None when unset)."""
        target = self.raw["metrics"].get("quality_target")
        return None if target is None else dict(target)

    @property
    def views(self) -> list[str]:
        """``baseline`` (every position) followed by the overlap views in file order."""
        return [BASELINE_VIEW, *self.raw["overlap_views"].keys()]

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS

    @property
    def probe_diameter_px(self) -> float:
        return float(self.raw["overlap_reference"]["probe_diameter_px"])

    @property
    def seeds(self) -> dict[str, int]:
        return dict(self.raw["seeds"])

    @property
    def reconstruction(self) -> dict:
        return dict(self.raw["reconstruction"])

    @property
    def metrics(self) -> dict:
        return dict(self.raw["metrics"])

    @property
    def instrument(self) -> dict:
        return dict(self.raw["instrument"])

    @property
    def wavelength_m(self) -> float:
        return PLANCK_EV_M / float(self.raw["instrument"]["photon_energy_eV"])

    @property
    def object_pixel_size_m(self) -> float:
        """Far-field sampling: ``lambda * z / (N * detector_pixel)``."""
        inst = self.raw["instrument"]
        return self.wavelength_m * inst["detector_distance_m"] / (self.probe_size * inst["detector_pixel_size_m"])

    @property
    def design_hash(self) -> str:
        """sha256 of the canonical JSON of the design and of the files it names (probe NPZ, image).

        Key order and whitespace do not matter; a changed measured probe or object image does. The
        replicate count does not count (NOT_HASHED_KEYS): replicate 0 stays the same data.
        """
        return self._hash({k: v for k, v in self.raw.items() if k not in NOT_HASHED_KEYS})

    @property
    def data_hash(self) -> str:
        """sha256 of what defines the *data* (probe, object, scan, doses, views, seeds, instrument and
        the files named): the design without its reconstruction, metrics, name and description.

        Reconstruction or metric settings may change between plans of the same data; this may not.
        """
        return self._hash({k: v for k, v in self.raw.items() if k not in NOT_DATA_KEYS + NOT_HASHED_KEYS})

    def _hash(self, doc: dict) -> str:
        digest = hashlib.sha256(canonical_json(doc).encode())
        for relative in self.referenced_files():
            digest.update(file_digest(self.resolve(relative)).encode())
        return digest.hexdigest()

    def referenced_files(self) -> list[str]:
        """Paths (as written in the design) of the files the design names."""
        files = []
        if self.measured is not None:
            files.append(self.measured["npz"])
            return files
        if "npz" in self.raw["probe"]:
            files.append(self.raw["probe"]["npz"])
        if self.raw["object"]["model"] == "image":
            files.append(self.raw["object"]["image"])
        return files

    def resolve(self, relative: str) -> Path:
        """A path named in the design, relative to the design file's folder."""
        p = Path(relative)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def derived(self) -> dict:
        """Derived values written into every manifest that uses them."""
        return {
            "design_name": self.name,
            "design_hash": self.design_hash,
            "probe_diameter_px": self.probe_diameter_px,
            "spacing_thresholds": dict(self.spacing_thresholds),
            "object_pixel_size_m": self.object_pixel_size_m,
            "wavelength_m": self.wavelength_m,
        }


@lru_cache(maxsize=64)
def _file_digest(path: Path, mtime_ns: int, size: int, inode: int) -> str:
    return sha256_file(path)


def file_digest(path: Path) -> str:
    """sha256 of a file the design names, computed once per version of the file (path, mtime, size,
    inode): a measured parent of many GB is hashed once per process, not at every hash access."""
    try:
        st = path.stat()
    except OSError:
        return sha256_file(path)  # raises the OS error, as before
    return _file_digest(path, st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class MeasuredParent:
    """What planning needs from a measured design's parent NPZ: its frame, object shape and dose."""

    path: Path
    probe_size: int
    object_shape: tuple[int, int]
    n_images: int
    dose: int
    metadata: dict


@lru_cache(maxsize=16)
def _read_parent(path: Path, mtime_ns: int, size: int) -> MeasuredParent:
    from .contract.io import open_zip
    from .contract.spec import FileReport
    from .contract.structure import inspect

    report = FileReport(path=path, mode="header-only")
    zf = open_zip(path, report)
    if zf is not None:
        with zf:
            insp = inspect(zf, report)
    if not report.ok:
        raise DesignError(f"measured/npz: {report.lines()[0]}")
    meta = insp.metadata or {}
    dose = meta.get("dose")
    if not isinstance(dose, (int, float)) or isinstance(dose, bool) or dose < 1:
        raise DesignError(f"{path}: _metadata/dose: the parent of a dose ladder needs its dose in photons")
    return MeasuredParent(path, int(insp.frame), tuple(int(v) for v in insp.object_shape), int(insp.n),
                          int(round(dose)), dict(meta))


def read_measured_parent(path: Path) -> MeasuredParent:
    """Header-only read of a measured parent NPZ (the contract's structural checks; no array data)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DesignError(f"measured/npz: {path}: {exc.strerror or exc}") from None
    return _read_parent(path, st.st_mtime_ns, st.st_size)


def _check_overlap_views(raw: dict, source: str) -> None:
    """Fraction in [0, 1), target overlap in [0, 1]: named precisely, before the schema's vaguer oneOf."""
    views = raw.get("overlap_views")
    if not isinstance(views, dict):
        return
    for view, spec in views.items():
        if isinstance(spec, (int, float)) and not isinstance(spec, bool) and not (0.0 <= spec < 1.0):
            raise DesignError(f"{source}: overlap_views/{view}: {spec} is not in [0, 1)")
        if isinstance(spec, dict):
            target = spec.get("target_overlap")
            if isinstance(target, (int, float)) and not isinstance(target, bool) and not (0.0 <= target <= 1.0):
                raise DesignError(f"{source}: overlap_views/{view}/target_overlap: {target} is not in [0, 1]")


def _check_measured_blocks(raw: dict, source: str) -> None:
    """A measured design takes probe, object and scan from its parent; a simulated one needs them."""
    if not isinstance(raw.get("measured"), dict):
        for block in ("probe", "object", "scan"):
            if block not in raw:
                raise DesignError(f"{source}: {block}: required (or a 'measured' block naming a parent NPZ)")
        return
    for block in SIMULATION_BLOCKS:
        if block in raw:
            raise DesignError(f"{source}: {block}: a measured design takes no '{block}' block (its data are "
                              f"thinned from measured/npz, not simulated)")


def _check_realistic(raw: dict, source: str) -> None:
    """Realistic-condition rules the schema cannot express."""
    knowledge = raw.get("probe_knowledge", {})
    start = knowledge.get("start", "true")
    for key in ("defocus_error_rad", "diameter_error"):
        if key in knowledge and start != "model":
            raise DesignError(f"{source}: probe_knowledge/{key}: only a 'model' start has model errors (start is '{start}')")
    if start == "model" and "model" not in raw.get("probe", {}):
        raise DesignError(f"{source}: probe_knowledge/start: 'model' needs a probe model in the design "
                          f"(this design's probe is {'measured' if 'measured' in raw else 'an NPZ'})")
    detector = raw.get("detector", {})
    n = raw.get("probe", {}).get("size")
    radius = detector.get("beamstop_radius_px", 0.0)
    if isinstance(n, int) and radius and radius >= n / 2:
        raise DesignError(f"{source}: detector/beamstop_radius_px: {radius} covers the whole {n}x{n} detector")
    if isinstance(n, int) and detector.get("bad_pixels", 0) > n * n // 4:
        raise DesignError(f"{source}: detector/bad_pixels: {detector['bad_pixels']} is more than a quarter of "
                          f"the {n}x{n} detector")


def _check_rules(raw: dict, source: str) -> None:
    """Rules the schema cannot express; each error names the field."""
    _check_overlap_views(raw, source)
    _check_realistic(raw, source)
    for i, dose in enumerate(raw["doses"]):
        if abs(dose - round(dose)) > 1e-9:
            raise DesignError(f"{source}: doses/{i}: {dose} is not a whole number of photons")
    keys = [int(round(d)) for d in raw["doses"]]
    if len(set(keys)) != len(keys):
        raise DesignError(f"{source}: doses: two doses share a folder name ({keys})")
    if "measured" in raw:
        return  # the parent NPZ gives probe, object and scan (parse_design checks it)
    n = raw["probe"]["size"]
    rows, cols = raw["object"]["shape"]
    margin = raw["scan"].get("margin_px", 0.0)
    if rows < n + 2 * margin + 2 or cols < n + 2 * margin + 2:
        raise DesignError(
            f"{source}: object/shape: {rows}x{cols} cannot hold a {n}x{n} probe window plus margins"
        )
    need = rows * cols * GENERATION_BYTES_PER_OBJECT_PIXEL
    available = available_memory_bytes()
    if need > available:
        raise DesignError(f"{source}: object/shape: {rows}x{cols} needs about {need / 2**30:.1f} GiB to generate, "
                          f"more than the {available / 2**30:.1f} GiB of memory available")
    step = raw["scan"]["step_px"]
    positions = (rows / step) * (cols / step)
    if positions > MAX_SCAN_POSITIONS:
        raise DesignError(f"{source}: scan/step_px: {step:g} px over a {rows}x{cols} object gives about "
                          f"{positions:.3g} positions, more than the {MAX_SCAN_POSITIONS:.0e} a study may have")
    probe = raw["probe"]
    if "model" in probe and "pupil_radius_fraction" not in probe:
        raise DesignError(f"{source}: probe/pupil_radius_fraction: required for model '{probe['model']}'")
    obj = raw["object"]
    if obj["model"] == "image" and "image" not in obj:
        raise DesignError(f"{source}: object/image: required for model 'image'")
    if obj["model"] != "image" and "feature_size_px" not in obj:
        raise DesignError(f"{source}: object/feature_size_px: required for model '{obj['model']}'")


def parse_design(raw: Any, path: str | Path = "design.json") -> StudyDesign:
    """Validate a design document (schema + rules) and compute derived values."""
    path = Path(path)
    source = str(path)
    if not isinstance(raw, dict):
        raise DesignError(f"{source}: (root): expected a JSON object")
    # Rules that name a field precisely come first where the schema's message is vaguer.
    _check_overlap_views(raw, source)
    _check_measured_blocks(raw, source)
    errors = validation_errors(raw, "study_design")
    if errors:
        json_path, message = errors[0]
        raise DesignError(f"{source}: {json_path}: {message}")
    _check_rules(raw, source)
    diameter = float(raw["overlap_reference"]["probe_diameter_px"])
    # Views given by a target overlap get their spacing per split from the scan (overlap.py).
    thresholds = {view: spacing_threshold(f, diameter) for view, f in raw["overlap_views"].items()
                  if not isinstance(f, dict)}
    design = StudyDesign(raw=raw, path=path.resolve(), spacing_thresholds=thresholds)
    if design.measured is not None:
        parent = design.resolve(design.measured["npz"])
        if not parent.is_file():
            raise DesignError(f"{source}: measured/npz: {not_a_file(parent)}")
        try:
            top = read_measured_parent(parent).dose / design.replicates  # K independent parts of the parent
        except DesignError as exc:
            raise DesignError(f"{source}: {exc}") from None
        for i, dose in enumerate(design.doses):
            if dose > top:
                raise DesignError(f"{source}: doses/{i}: {dose} photons is above what thinning the parent can give "
                                  f"({read_measured_parent(parent).dose} photons / {design.replicates} "
                                  f"replicate(s) = {top:g})")
        return design
    probe = raw["probe"]
    if "npz" in probe and not design.resolve(probe["npz"]).is_file():
        raise DesignError(f"{source}: probe/npz: {not_a_file(design.resolve(probe['npz']))}")
    if raw["object"]["model"] == "image" and not design.resolve(raw["object"]["image"]).is_file():
        raise DesignError(f"{source}: object/image: {not_a_file(design.resolve(raw['object']['image']))}")
    return design


def load_design(path: str | Path) -> StudyDesign:
    """Read, validate and derive a study design file (regular files only; strict, finite JSON)."""
    path = Path(path)
    try:
        raw = parse_json(read_text(path, "design file"), path)
    except ManifestError as exc:
        raise DesignError(str(exc)) from None
    return parse_design(raw, path)
