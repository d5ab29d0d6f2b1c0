"""Typed option records of the engines: frozen dataclasses built once from a manifest job's
``engine_options`` (after its schema check), then passed to the engine instead of a dict.

The manifest keeps its JSON format: :func:`options_record` reads it, :func:`options_mapping`
gives it back, field order included (the order of the keys plan-jobs writes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ...errors import EngineError

NOISE_MODELS = ("gaussian", "poisson")


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

    def __post_init__(self) -> None:
        if self.noise_model not in NOISE_MODELS:
            raise EngineError(f"engine_options/noise_model: {self.noise_model!r} is not one of "
                              f"{', '.join(NOISE_MODELS)}")
        for name in ("batch_size", "chunk_epochs"):
            if getattr(self, name) < 1:
                raise EngineError(f"engine_options/{name}: must be >= 1, got {getattr(self, name)}")


Record = TypeVar("Record")


def options_record(record_type: type[Record], mapping: Mapping[str, Any]) -> Record:
    """The record of ``record_type`` holding ``mapping``; a missing or unknown key is an EngineError.

    Values are converted to the field types (JSON gives ints where a float is meant, e.g. 1 for 1.0).
    """
    fields = {f.name: f for f in dataclasses.fields(record_type)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise EngineError(f"engine_options/{unknown[0]}: not an option of this engine (options: {', '.join(fields)})")
    missing = [name for name in fields if name not in mapping]
    if missing:
        raise EngineError(f"engine_options/{missing[0]}: missing")
    converters = {"int": int, "float": float, "bool": bool, "str": str}
    values = {}
    for name, field in fields.items():
        convert = converters.get(field.type if isinstance(field.type, str) else field.type.__name__)
        values[name] = convert(mapping[name]) if convert else mapping[name]
    return record_type(**values)


def options_mapping(record: Any) -> dict:
    """The ``engine_options`` JSON object of a record (field order = the manifest's key order)."""
    return dataclasses.asdict(record)
