"""The study design: loading, validation and every derived value, computed in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DesignError, ManifestError
from .fileio import sha256_file
from .manifests import parse_json, read_text, validation_errors
from .safepath import available_memory_bytes

SPLITS = ("train", "test")
BASELINE_VIEW = "baseline"
#: Design sections that do not change the generated data (see StudyDesign.data_hash).
NOT_DATA_KEYS = ("name", "description", "reconstruction", "reconstructors", "metrics")
#: Bytes per object pixel that generating the data needs at its peak (the complex64 object, the
#: float64 fields and FFT buffers it is built from): a design whose object cannot fit is refused
#: up front instead of failing (or swapping) deep inside numpy.
GENERATION_BYTES_PER_OBJECT_PIXEL = 64
#: Scan positions a design may ask for (the scale benchmarks run 2e5; far beyond is a typo in step_px).
MAX_SCAN_POSITIONS = 2e7
PLANCK_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength_m = PLANCK_EV_M / energy_eV


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
        return int(self.raw["probe"]["size"])

    @property
    def object_shape(self) -> tuple[int, int]:
        rows, cols = self.raw["object"]["shape"]
        return int(rows), int(cols)

    @property
    def overlap_views(self) -> dict[str, float]:
        return dict(self.raw["overlap_views"])

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

        Key order and whitespace do not matter; a changed measured probe or object image does.
        """
        return self._hash(self.raw)

    @property
    def data_hash(self) -> str:
        """sha256 of what defines the *data* (probe, object, scan, doses, views, seeds, instrument and
        the files named): the design without its reconstruction, metrics, name and description.

        Reconstruction or metric settings may change between plans of the same data; this may not.
        """
        return self._hash({k: v for k, v in self.raw.items() if k not in NOT_DATA_KEYS})

    def _hash(self, doc: dict) -> str:
        digest = hashlib.sha256(canonical_json(doc).encode())
        for relative in self.referenced_files():
            digest.update(sha256_file(self.resolve(relative)).encode())
        return digest.hexdigest()

    def referenced_files(self) -> list[str]:
        """Paths (as written in the design) of the files the design names."""
        files = []
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


def _check_rules(raw: dict, source: str) -> None:
    """Rules the schema cannot express; each error names the field."""
    for view, f in raw["overlap_views"].items():
        if not (0.0 <= f < 1.0):
            raise DesignError(f"{source}: overlap_views/{view}: {f} is not in [0, 1)")
    for i, dose in enumerate(raw["doses"]):
        if abs(dose - round(dose)) > 1e-9:
            raise DesignError(f"{source}: doses/{i}: {dose} is not a whole number of photons")
    keys = [int(round(d)) for d in raw["doses"]]
    if len(set(keys)) != len(keys):
        raise DesignError(f"{source}: doses: two doses share a folder name ({keys})")
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
    if isinstance(raw.get("overlap_views"), dict):
        for view, f in raw["overlap_views"].items():
            if isinstance(f, (int, float)) and not isinstance(f, bool) and not (0.0 <= f < 1.0):
                raise DesignError(f"{source}: overlap_views/{view}: {f} is not in [0, 1)")
    errors = validation_errors(raw, "study_design")
    if errors:
        json_path, message = errors[0]
        raise DesignError(f"{source}: {json_path}: {message}")
    _check_rules(raw, source)
    diameter = float(raw["overlap_reference"]["probe_diameter_px"])
    thresholds = {view: spacing_threshold(f, diameter) for view, f in raw["overlap_views"].items()}
    design = StudyDesign(raw=raw, path=path.resolve(), spacing_thresholds=thresholds)
    probe = raw["probe"]
    if "npz" in probe and not design.resolve(probe["npz"]).is_file():
        raise DesignError(f"{source}: probe/npz: file not found: {design.resolve(probe['npz'])}")
    if raw["object"]["model"] == "image" and not design.resolve(raw["object"]["image"]).is_file():
        raise DesignError(f"{source}: object/image: file not found: {design.resolve(raw['object']['image'])}")
    return design


def load_design(path: str | Path) -> StudyDesign:
    """Read, validate and derive a study design file (regular files only; strict, finite JSON)."""
    path = Path(path)
    try:
        raw = parse_json(read_text(path, "design file"), path)
    except ManifestError as exc:
        raise DesignError(str(exc)) from None
    return parse_design(raw, path)
