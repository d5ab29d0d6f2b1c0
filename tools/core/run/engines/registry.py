"""The one list of reconstruction engines and the algorithms each offers.

Planning (``plan-jobs --algorithm`` choices, the manifest's ``engine`` and ``algorithm``), the
runner and the tests all read this registry; the schemas' enums are checked against it by a
test, and pty-chi's algorithms against pty-chi's own ``Reconstructors`` enum. Importing it is
cheap: an engine's module (and torch) is imported only by :meth:`EngineSpec.load`, in a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ...errors import EngineError
from .base import Engine
from .options import PtychiOptions, options_record

DEFAULT_ENGINE = "ptychi"


@dataclass(frozen=True)
class EngineSpec:
    name: str  # the manifest's "engine"
    title: str  # how outputs name it ("pty-chi")
    algorithms: tuple[str, ...]  # the first is the default
    options_type: type  # frozen dataclass of the engine's options
    defaults: Mapping[str, Any]  # option values used where the design is silent
    from_design: Callable[[Any, Mapping[str, Any]], dict]  # (StudyDesign, defaults) -> engine_options
    importer: Callable[[], Engine]  # imports the engine's module; called in workers only
    # The distribution whose installed version resume compares with result.json's ``versions``
    # (an upgrade reruns); None for an engine without one.
    package: str | None = None

    def load(self) -> Engine:
        """The engine, with its heavy dependencies imported."""
        engine = self.importer()
        engine.load()
        return engine

    def design_options(self, design: Any) -> dict:
        """The ``engine_options`` a study design asks for (its settings, these defaults where it is silent)."""
        return self.from_design(design, self.defaults)

    def options(self, mapping: Mapping[str, Any]) -> Any:
        """The typed options record of a job's ``engine_options``."""
        return options_record(self.options_type, mapping)

    def check_algorithm(self, algorithm: str, flag: str = "--algorithm") -> str:
        if algorithm not in self.algorithms:
            raise EngineError(f"{flag} {algorithm}: not one of {', '.join(self.algorithms)}")
        return algorithm


def _ptychi_design_options(design: Any, defaults: Mapping[str, Any]) -> dict:
    rec = {**defaults, **design.reconstruction}
    return {
        "noise_model": rec["noise_model"],
        "batch_size": rec["batch_size"],
        "optimize_probe": rec["optimize_probe"],
        "probe_update_start_epoch": rec["probe_update_start_epoch"],
        "seed": design.seeds["grouping"],
        "chunk_epochs": rec["chunk_epochs"],
        "wavelength_m": design.wavelength_m,
        "object_pixel_size_m": design.object_pixel_size_m,
    }


def _import_ptychi() -> Engine:
    from .ptychi import PtychiEngine

    return PtychiEngine()


ENGINES: Mapping[str, EngineSpec] = MappingProxyType({
    "ptychi": EngineSpec(
        name="ptychi",
        title="pty-chi",
        algorithms=("LSQML", "PIE", "EPIE", "RPIE", "DM"),
        options_type=PtychiOptions,
        defaults=MappingProxyType({"optimize_probe": True, "probe_update_start_epoch": 1, "chunk_epochs": 10}),
        from_design=_ptychi_design_options,
        importer=_import_ptychi,
        package="ptychi",
    ),
})


def engine_spec(name: str) -> EngineSpec:
    """The registered engine ``name``; an unknown one is an EngineError naming the choices."""
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(f"engine {name}: not one of {', '.join(ENGINES)}") from None


def all_algorithms() -> tuple[str, ...]:
    """Every algorithm of every engine, in registry order, each once (the schemas' enum)."""
    return tuple(dict.fromkeys(a for spec in ENGINES.values() for a in spec.algorithms))
