"""Typed option records of the engines: frozen dataclasses built once from a manifest job's
``engine_options`` (after its schema check), then passed to the engine instead of a dict.

The manifest keeps its JSON format: :func:`options_record` reads it, :func:`options_mapping`
gives it back, field order included (the order of the keys plan-jobs writes).

The realistic-condition options (``probe_start``, ``probe_modes``, ``position_correction``) are
optional and omitted when unset, so every job planned before them keeps its options hash.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ...errors import EngineError

NOISE_MODELS = ("gaussian", "poisson")
#: Where a start probe other than probeGuess comes from (the design's ``probe_knowledge/start``).
PROBE_START_SOURCES = ("model", "estimated")
#: The probe models a ``model`` start can rebuild (tools/core/physics.py).
PROBE_START_MODELS = ("defocused_pupil",)
#: Most probe modes an engine reconstructs (the design schema's bound).
MAX_PROBE_MODES = 8


@dataclass(frozen=True)
class ProbeStart:
    """The probe an engine starts from instead of probeGuess, resolved at planning from the design.

    ``model``: the design's probe model with its stated errors already applied (the pupil radius
    divided by ``1 + diameter_error``, ``defocus_error_rad`` added to the defocus); the errors are
    kept for the record. ``estimated``: from the data alone (no other field).
    """

    source: str
    model: str | None = None
    pupil_radius_fraction: float | None = None
    defocus_phase_rad: float | None = None
    defocus_error_rad: float | None = None
    diameter_error: float | None = None

    def __post_init__(self) -> None:
        where = "engine_options/probe_start"
        if self.source not in PROBE_START_SOURCES:
            raise EngineError(f"{where}/source: {self.source!r} is not one of {', '.join(PROBE_START_SOURCES)}")
        given = [f.name for f in dataclasses.fields(self) if f.name != "source" and getattr(self, f.name) is not None]
        if self.source == "estimated":
            if given:
                raise EngineError(f"{where}/{given[0]}: an estimated start probe takes no model parameter")
            return
        if self.model not in PROBE_START_MODELS:
            raise EngineError(f"{where}/model: {self.model!r} is not one of {', '.join(PROBE_START_MODELS)}")
        radius = self.pupil_radius_fraction
        if radius is None or not (math.isfinite(radius) and 0 < radius <= 0.5):
            raise EngineError(f"{where}/pupil_radius_fraction: must be in (0, 0.5] (0.5 = Nyquist), got {radius}")
        for name in ("defocus_phase_rad", "defocus_error_rad", "diameter_error"):
            value = getattr(self, name)
            if (value is None and name == "defocus_phase_rad") or (value is not None and not math.isfinite(value)):
                raise EngineError(f"{where}/{name}: must be a finite number, got {value}")

    @classmethod
    def from_mapping(cls, mapping: Any) -> ProbeStart:
        if isinstance(mapping, ProbeStart):
            return mapping
        if not isinstance(mapping, Mapping):
            raise EngineError(f"engine_options/probe_start: expected an object, found {type(mapping).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise EngineError(f"engine_options/probe_start/{unknown[0]}: not a field of a start probe "
                              f"({', '.join(names)})")
        if "source" not in mapping:
            raise EngineError("engine_options/probe_start/source: missing")
        values = {k: (v if k in ("source", "model") or v is None else float(v)) for k, v in mapping.items()}
        return cls(**values)

    def mapping(self) -> dict:
        """The manifest's JSON object (fields left at None omitted)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class PtychiOptions:
    """What determines a pty-chi reconstruction besides the input, the algorithm and the epochs."""

    noise_model: str  # LSQML only: "gaussian" (pty-chi's amplitude-based one) or "poisson"
    batch_size: int
    optimize_probe: bool
    probe_update_start_epoch: int
    seed: int  # pty-chi random_seed (the design's seeds.grouping)
    chunk_epochs: int  # epochs per task.run call: one progress report each
    wavelength_m: float
    object_pixel_size_m: float
    # The PIE family's update weights and step sizes (pty-chi's object_options / probe_options
    # ``alpha`` and ``step_size``). None = pty-chi's own default; an absent value keeps the
    # manifest (and the options hash) of jobs planned before recipes existed.
    object_alpha: float | None = None
    probe_alpha: float | None = None
    object_step_size: float | None = None
    probe_step_size: float | None = None
    # Realistic conditions (omitted when unset): the start probe (None: probeGuess), the probe modes
    # to reconstruct (None: one; else 2 to MAX_PROBE_MODES) and position refinement (None: off).
    probe_start: ProbeStart | None = None
    probe_modes: int | None = None
    position_correction: bool | None = None

    def __post_init__(self) -> None:
        _check_shared(self)
        for name in ("object_alpha", "probe_alpha", "object_step_size", "probe_step_size"):
            _check_positive(name, getattr(self, name), optional=True)


@dataclass(frozen=True)
class CdtoolsOptions:
    """What determines a CDTools reconstruction besides the input, the algorithm and the epochs."""

    noise_model: str  # "gaussian" (amplitude MSE) or "poisson" (Poisson NLL)
    learning_rate: float  # Adam's step size in the first epoch (object and normalised probe alike)
    learning_rate_final: float  # ... in the last epoch, geometrically in between (= learning_rate: constant)
    batch_size: int  # patterns per Adam step
    optimize_probe: bool
    probe_update_start_epoch: int  # first (0-based) epoch in which the probe is refined
    seed: int  # minibatch order (the design's seeds.grouping)
    chunk_epochs: int  # epochs per progress report
    wavelength_m: float
    object_pixel_size_m: float
    # Realistic conditions (omitted when unset): the start probe (None: probeGuess), the probe modes
    # to reconstruct (None: one; else 2 to MAX_PROBE_MODES) and position refinement (None: off).
    probe_start: ProbeStart | None = None
    probe_modes: int | None = None
    position_correction: bool | None = None

    def __post_init__(self) -> None:
        _check_shared(self)
        for name in ("learning_rate", "learning_rate_final"):
            _check_positive(name, getattr(self, name))


def _check_shared(record: PtychiOptions | CdtoolsOptions) -> None:
    """The checks of the settings both engines share (noise model, batches, probe start, geometry)."""
    if record.noise_model not in NOISE_MODELS:
        raise EngineError(f"engine_options/noise_model: {record.noise_model!r} is not one of {', '.join(NOISE_MODELS)}")
    for name in ("batch_size", "chunk_epochs"):
        if getattr(record, name) < 1:
            raise EngineError(f"engine_options/{name}: must be >= 1, got {getattr(record, name)}")
    if record.probe_update_start_epoch < 0:
        raise EngineError(f"engine_options/probe_update_start_epoch: must be >= 0, got {record.probe_update_start_epoch}")
    for name in ("wavelength_m", "object_pixel_size_m"):
        _check_positive(name, getattr(record, name))
    modes = record.probe_modes
    if modes is not None and not (isinstance(modes, int) and 2 <= modes <= MAX_PROBE_MODES):
        raise EngineError(f"engine_options/probe_modes: must be an integer from 2 to {MAX_PROBE_MODES} "
                          f"(omit it for one mode), got {modes!r}")
    if record.position_correction is not None and record.position_correction is not True:
        raise EngineError(f"engine_options/position_correction: must be true (omit it to keep the positions), "
                          f"got {record.position_correction!r}")


def _check_positive(name: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not (math.isfinite(value) and value > 0):
        raise EngineError(f"engine_options/{name}: must be a finite number > 0, got {value}")


Record = TypeVar("Record")


def options_record(record_type: type[Record], mapping: Mapping[str, Any]) -> Record:
    """The record of ``record_type`` holding ``mapping``; a missing or unknown key is an EngineError.

    Values are converted to the field types (JSON gives ints where a float is meant, e.g. 1 for 1.0).
    """
    fields = {f.name: f for f in dataclasses.fields(record_type)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise EngineError(f"engine_options/{unknown[0]}: not an option of this engine (options: {', '.join(fields)})")
    missing = [name for name, f in fields.items() if name not in mapping and not _optional(f)]
    if missing:
        raise EngineError(f"engine_options/{missing[0]}: missing")
    values = {}
    for name, field in fields.items():
        if name not in mapping:
            continue
        value = mapping[name]
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        kind = kind.removesuffix(" | None")
        convert = CONVERTERS.get(kind)
        values[name] = convert(value) if convert and value is not None else value
    return record_type(**values)


CONVERTERS = {"int": int, "float": float, "bool": bool, "str": str, "ProbeStart": ProbeStart.from_mapping}


def _optional(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING


def options_mapping(record: Any) -> dict:
    """The ``engine_options`` JSON object of a record (field order = the manifest's key order).

    An optional field left at None is omitted, so that adding one keeps older manifests' options
    (and their hash, which resume compares) unchanged.
    """
    mapping = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if _optional(f) and value is None:
            continue
        if isinstance(value, ProbeStart):
            value = value.mapping()
        mapping[f.name] = list(value) if isinstance(value, tuple) else value  # JSON arrays are lists
    return mapping
