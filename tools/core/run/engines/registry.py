"""The one list of reconstruction engines and the algorithms each offers.

Planning (``plan-jobs --algorithm`` choices, the manifest's ``engine`` and ``algorithm``), the
runner and the tests all read this registry; the schemas' enums are checked against it by a
test, and pty-chi's algorithms against pty-chi's own ``Reconstructors`` enum. Importing it is
cheap: an engine's module (and torch) is imported only by :meth:`EngineSpec.load`, in a worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...errors import EngineError
from .base import Engine
from .command import CommandOptions, command_design_options
from .options import CdtoolsOptions, ProbeStart, PtychiOptions, options_record

DEFAULT_ENGINE = "ptychi"


@dataclass(frozen=True)
class EngineSpec:
    name: str  # the manifest's "engine"
    title: str  # how outputs name it ("pty-chi")
    algorithms: tuple[str, ...]  # the first is the default
    options_type: type  # frozen dataclass of the engine's options
    defaults: Mapping[str, Any]  # setting values used where the design is silent
    # (design, settings, where) -> engine_options; ``settings`` are the merged settings of one
    # reconstructor, ``where`` the design path that names it in errors ("reconstruction").
    from_settings: Callable[[Any, Mapping[str, Any], str], dict]
    importer: Callable[[], Engine]  # imports the engine's module; called in workers only
    # The distribution whose installed version resume compares with result.json's ``versions``
    # (an upgrade reruns); None for an engine without one.
    package: str | None = None
    # Per algorithm, the settings measured to work for it (docs/decisions.md): they apply where the
    # reconstructor does not set a value itself.
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Settings a design may give for this engine (beyond engine/algorithm/num_epochs/stopping).
    settings_keys: tuple[str, ...] = ()
    # The engine works in a folder of the job (reconstruct() takes ``job_dir``): the command engine.
    uses_job_dir: bool = False
    # The engine runs its epochs through the shared chunk loop (reconstruct() takes ``control``:
    # checkpoints and a stopping rule); the command engine runs its program to the end.
    runs_chunk_loop: bool = True
    # Option fields whose design setting has another name (the command engine's argv is ``command``).
    design_keys: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> Engine:
        """The engine, with its heavy dependencies imported."""
        engine = self.importer()
        engine.load()
        return engine

    def recipe(self, algorithm: str) -> Mapping[str, Any]:
        return self.recipes.get(algorithm, MappingProxyType({}))

    def tuned_keys(self) -> frozenset[str]:
        """Settings that some algorithm's recipe sets (they belong to one algorithm, not the engine)."""
        return frozenset(k for recipe in self.recipes.values() for k in recipe)

    def settings(self, algorithm: str, given: Mapping[str, Any], where: str = "reconstruction") -> dict:
        """Engine defaults, then ``algorithm``'s recipe, then what the design ``given`` (an unknown key is an EngineError)."""
        unknown = [k for k in given if k not in self.settings_keys]
        if unknown:
            raise EngineError(f"{where}/{unknown[0]}: not a setting of the {self.title} engine "
                              f"(settings: {', '.join(self.settings_keys)})")
        return {**self.defaults, **self.recipe(algorithm), **given}

    def design_options(self, design: Any, algorithm: str, given: Mapping[str, Any],
                       where: str = "reconstruction") -> dict:
        """The ``engine_options`` of one reconstructor of ``design`` (checked by building the record)."""
        self.check_algorithm(algorithm, f"{where}/algorithm")
        mapping = self.from_settings(design, self.settings(algorithm, given, where), where)
        try:
            record = self.options(mapping)
        except EngineError as exc:  # name the design's key, not the manifest's (argv is the design's command)
            text = str(exc).removeprefix("engine_options/")
            name = text.split("/", 1)[0].split(":", 1)[0]
            raise EngineError(f"{where}/{self.design_keys.get(name, name)}{text[len(name):]}") from None
        check = CHECKS.get(self.name)
        if check is not None:
            check(algorithm, record, where)
        return mapping

    def options(self, mapping: Mapping[str, Any]) -> Any:
        """The typed options record of a job's ``engine_options``."""
        return options_record(self.options_type, mapping)

    def check_algorithm(self, algorithm: str, flag: str = "--algorithm") -> str:
        if algorithm not in self.algorithms:
            raise EngineError(f"{flag} {algorithm}: not one of {', '.join(self.algorithms)} (engine {self.name})")
        return algorithm


#: Settings of the realistic conditions (probe modes, position refinement) pty-chi and CDTools share.
REALISTIC_SETTINGS = ("probe_modes", "position_correction")
PTYCHI_SETTINGS = ("noise_model", "batch_size", "optimize_probe", "probe_update_start_epoch", "chunk_epochs",
                   "object_alpha", "probe_alpha", "object_step_size", "probe_step_size", *REALISTIC_SETTINGS)
CDTOOLS_SETTINGS = ("noise_model", "learning_rate", "learning_rate_final", "batch_size", "optimize_probe",
                    "probe_update_start_epoch", "chunk_epochs", *REALISTIC_SETTINGS)
# The command engine refuses the realistic settings with a message of its own (command_design_options).
COMMAND_SETTINGS = ("command", "keep_work_dir", *REALISTIC_SETTINGS)


def _design_values(design: Any) -> dict:
    return {"seed": design.seeds["grouping"], "wavelength_m": design.wavelength_m,
            "object_pixel_size_m": design.object_pixel_size_m}


def probe_start_options(design: Any) -> dict | None:
    """The ``probe_start`` engine option of the design's ``probe_knowledge`` (None: start from probeGuess).

    ``model`` rebuilds the design's probe model with the stated errors: the pupil radius divided by
    ``1 + diameter_error`` (the probe scaled by ``1 + diameter_error`` in real space), the defocus
    plus ``defocus_error_rad``. It needs a probe model: a design whose probe is an NPZ (or a
    measured design, which has no probe block) is refused, naming ``probe_knowledge/start``.
    """
    knowledge = design.probe_knowledge
    start = knowledge.get("start", "true")
    if start == "true":
        return None
    if start == "estimated":
        return {"source": "estimated"}
    if start != "model":
        raise EngineError(f"probe_knowledge/start: {start!r} is not one of true, model, estimated")
    probe = design.raw.get("probe")
    if probe is None or "model" not in probe:
        what = "a measured design has no probe block" if probe is None else "its probe is an NPZ (probe/npz)"
        raise EngineError(f"probe_knowledge/start: model needs the design's probe model, but {what}; "
                          f"use estimated (from the data) or true (probeGuess)")
    defocus_error = float(knowledge.get("defocus_error_rad", 0.0))
    diameter_error = float(knowledge.get("diameter_error", 0.0))
    return ProbeStart(source="model", model=probe["model"],
                      pupil_radius_fraction=float(probe["pupil_radius_fraction"]) / (1.0 + diameter_error),
                      defocus_phase_rad=float(probe.get("defocus_phase_rad", 0.0)) + defocus_error,
                      defocus_error_rad=defocus_error, diameter_error=diameter_error).mapping()


def _realistic_values(design: Any, settings: Mapping[str, Any]) -> dict:
    """The realistic-condition options, each only when it changes the run (one mode and fixed
    positions are today's runs: left out, so their options hash stays)."""
    values = {}
    start = probe_start_options(design)
    if start is not None:
        values["probe_start"] = start
    if settings.get("probe_modes") is not None and int(settings["probe_modes"]) != 1:
        values["probe_modes"] = settings["probe_modes"]
    if settings.get("position_correction"):
        values["position_correction"] = settings["position_correction"]
    return values


def _record_options(design: Any, settings: Mapping[str, Any], options_type: type) -> dict:
    """``engine_options`` in the record's field order: the design's seed and geometry, the merged
    settings for the rest; an optional field the settings leave unset (or None) is left out."""
    values = {**_design_values(design), **_realistic_values(design, settings)}
    settings = {k: v for k, v in settings.items() if k not in REALISTIC_SETTINGS}
    mapping = {}
    for f in dataclasses.fields(options_type):
        if f.name in values:
            mapping[f.name] = values[f.name]
        elif f.name in ("probe_start", *REALISTIC_SETTINGS):
            continue
        elif settings.get(f.name) is not None or f.default is dataclasses.MISSING:
            mapping[f.name] = settings[f.name]
    return mapping


def _ptychi_options(design: Any, settings: Mapping[str, Any], where: str) -> dict:
    return _record_options(design, settings, PtychiOptions)


def _check_ptychi(algorithm: str, options: PtychiOptions, where: str) -> None:
    """Settings pty-chi 2.2 accepts but cannot run: refused at planning, before any compute."""
    if algorithm == "PIE" and options.optimize_probe and options.batch_size > 1:
        # PIEReconstructor.calculate_probe_step_weight returns (B, h, w) where ePIE/rPIE return
        # (B, 1, h, w); with a batch > 1 the probe update broadcasts to (B, B, h, w) and fails.
        raise EngineError(f"{where}/batch_size: pty-chi's PIE refines the probe only with batch_size 1 "
                          f"(got {options.batch_size}); use batch_size 1, or optimize_probe false")


def _cdtools_options(design: Any, settings: Mapping[str, Any], where: str) -> dict:
    return _record_options(design, settings, CdtoolsOptions)


def _import_ptychi() -> Engine:
    from .ptychi import PtychiEngine

    return PtychiEngine()


def _import_cdtools() -> Engine:
    from .cdtools import CdtoolsEngine

    return CdtoolsEngine()


def _import_command() -> Engine:
    from .command import CommandEngine

    return CommandEngine()


CHECKS: Mapping[str, Callable[[str, Any, str], None]] = MappingProxyType({"ptychi": _check_ptychi})

_COMMON = {"noise_model": "gaussian", "optimize_probe": True, "probe_update_start_epoch": 1, "chunk_epochs": 10}

ENGINES: Mapping[str, EngineSpec] = MappingProxyType({
    "ptychi": EngineSpec(
        name="ptychi",
        title="pty-chi",
        # DM is not offered: pty-chi's DM is not robust to Poisson noise (docs/decisions.md).
        algorithms=("LSQML", "EPIE", "RPIE", "PIE"),
        options_type=PtychiOptions,
        defaults=MappingProxyType(dict(_COMMON)),
        from_settings=_ptychi_options,
        importer=_import_ptychi,
        package="ptychi",
        # Measured on the shipped design (docs/decisions.md, "pty-chi recipes").
        recipes=MappingProxyType({
            "LSQML": MappingProxyType({"batch_size": 48}),
            "EPIE": MappingProxyType({"batch_size": 32, "object_alpha": 1.0, "probe_alpha": 1.0}),
            "RPIE": MappingProxyType({"batch_size": 16, "object_alpha": 0.8, "probe_alpha": 0.8}),
            "PIE": MappingProxyType({"batch_size": 1, "object_alpha": 0.1, "probe_alpha": 0.1, "probe_step_size": 0.1}),
        }),
        settings_keys=PTYCHI_SETTINGS,
    ),
    "cdtools": EngineSpec(
        name="cdtools",
        title="CDTools",
        algorithms=("ADAM",),
        options_type=CdtoolsOptions,
        defaults=MappingProxyType(dict(_COMMON)),
        from_settings=_cdtools_options,
        importer=_import_cdtools,
        package="cdtools-py",
        recipes=MappingProxyType({
            "ADAM": MappingProxyType({"learning_rate": 0.05, "learning_rate_final": 0.01, "batch_size": 16}),
        }),
        settings_keys=CDTOOLS_SETTINGS,
    ),
    "command": EngineSpec(
        name="command",
        title="command",
        algorithms=("EXTERNAL",),
        options_type=CommandOptions,
        defaults=MappingProxyType({"keep_work_dir": False}),
        from_settings=command_design_options,
        importer=_import_command,
        package=None,
        settings_keys=COMMAND_SETTINGS,
        uses_job_dir=True,
        runs_chunk_loop=False,
        design_keys=MappingProxyType({"argv": "command"}),
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
