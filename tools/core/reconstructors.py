"""The reconstructors of a study design: engine, algorithm, epochs, engine options, stopping rule.

A design names its reconstructors in one of two ways:

* the ``reconstruction`` block alone: one reconstructor (named by ``reconstruction.name``, else
  ``<engine>_<algorithm>`` in lower case); its jobs keep the layout ``dose_<d>/<view>/<split>``;
* a ``reconstructors`` list: each entry ``{name, engine, algorithm, num_epochs, options,
  stopping}`` is a study dimension; jobs are ``dose_<d>/<view>/<split>/<name>`` when the list
  has more than one entry. ``reconstruction.num_epochs`` is the entries' default epoch count.

Engine options are the engine's defaults, then the algorithm's measured recipe (the engine
registry), then what the design sets. ``plan-jobs --algorithm`` replaces the algorithm of a
one-reconstructor study; the settings the design tuned for its own algorithm (those a recipe
sets, such as ``batch_size``) then give way to the new algorithm's recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .design import StudyDesign
from .errors import DesignError, EngineError
from .run.engines.control import StopRule
from .run.engines.registry import DEFAULT_ENGINE, ENGINES, all_algorithms, engine_spec

#: Keys of the ``reconstruction`` block that are not engine settings.
BLOCK_KEYS = ("name", "engine", "algorithm", "num_epochs", "stopping")


@dataclass(frozen=True)
class Reconstructor:
    """One reconstructor of a study, resolved to what its jobs record."""

    name: str
    engine: str
    algorithm: str
    num_epochs: int
    engine_options: Mapping[str, Any]
    stopping: Mapping[str, Any] | None  # the job's ``stopping`` object; None: every epoch runs

    @property
    def title(self) -> str:
        """``pty-chi LSQML``: how tables and figures name it."""
        return f"{engine_spec(self.engine).title} {self.algorithm}"


def engine_for(algorithm: str, preferred: str = DEFAULT_ENGINE) -> str:
    """The engine of ``algorithm`` when a design does not name one: ``preferred`` if it offers it,
    else the one engine that does (the algorithm names of the engines differ)."""
    if preferred in ENGINES and algorithm in ENGINES[preferred].algorithms:
        return preferred
    offering = [name for name, spec in ENGINES.items() if algorithm in spec.algorithms]
    return offering[0] if len(offering) == 1 else preferred


def default_name(engine: str, algorithm: str) -> str:
    return f"{engine}_{algorithm}".lower()


def _stopping(design: StudyDesign, mapping: Mapping[str, Any] | None, where: str) -> dict | None:
    if mapping is None:
        return None
    try:
        rule = StopRule.from_mapping(mapping)
    except EngineError as exc:
        raise DesignError(f"{design.path}: {where}/{exc}") from None
    return rule.mapping()


def _resolve(design: StudyDesign, name: str, engine: str, algorithm: str, num_epochs: int,
             given: Mapping[str, Any], stopping: Mapping[str, Any] | None, where: str,
             settings_where: str) -> Reconstructor:
    try:
        spec = engine_spec(engine)
        spec.check_algorithm(algorithm, flag=f"{where}/algorithm")
        options = spec.design_options(design, algorithm, given, settings_where)
    except EngineError as exc:
        raise DesignError(f"{design.path}: {exc}") from None
    if stopping is not None and engine == "command":
        raise DesignError(f"{design.path}: {where}/stopping: the command engine runs its program to the end "
                          f"(a stopping rule needs the engine's epochs)")
    return Reconstructor(name, engine, algorithm, int(num_epochs), options, _stopping(design, stopping, where))


def design_reconstructors(design: StudyDesign, algorithm: str | None = None) -> list[Reconstructor]:
    """Every reconstructor of ``design`` in file order; ``algorithm`` replaces a single one's algorithm.

    Errors are DesignErrors naming the design file and the key.
    """
    block = design.reconstruction
    entries = design.raw.get("reconstructors")
    if algorithm is not None and algorithm not in all_algorithms():
        raise EngineError(f"--algorithm {algorithm}: not one of {', '.join(all_algorithms())}")
    if entries is None:
        own_algorithm = block["algorithm"]
        engine = block.get("engine") or engine_for(own_algorithm)
        given = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
        if algorithm is not None and algorithm != own_algorithm:
            # The design's algorithm-tuned settings were tuned for its own algorithm, not this one;
            # an algorithm of another engine takes that engine with the settings it understands.
            tuned = ENGINES[engine].tuned_keys() if engine in ENGINES else frozenset()
            given = {k: v for k, v in given.items() if k not in tuned}
            if engine in ENGINES and algorithm not in ENGINES[engine].algorithms:
                engine = engine_for(algorithm, engine)
                given = {k: v for k, v in given.items() if k in ENGINES[engine].settings_keys}
        chosen = algorithm or own_algorithm
        name = block.get("name") or default_name(engine, chosen)
        return [_resolve(design, name, engine, chosen, block["num_epochs"], given, block.get("stopping"),
                         "reconstruction", "reconstruction")]
    if algorithm is not None:
        raise DesignError(f"{design.path}: reconstructors: --algorithm replaces the algorithm of a study with one "
                          f"reconstructor; this one lists {len(entries)} (choose them with --reconstructor)")
    seen: dict[str, int] = {}
    out = []
    for i, entry in enumerate(entries):
        where = f"reconstructors/{i}"
        if entry["name"] in seen:
            raise DesignError(f"{design.path}: {where}/name: {entry['name']} is also reconstructors/{seen[entry['name']]}")
        seen[entry["name"]] = i
        out.append(_resolve(design, entry["name"], entry.get("engine") or engine_for(entry["algorithm"]), entry["algorithm"],
                            entry.get("num_epochs", block["num_epochs"]), entry.get("options", {}),
                            entry.get("stopping"), where, f"{where}/options"))
    return out


def has_reconstructor_level(design: StudyDesign) -> bool:
    """Whether job ids and folders carry the reconstructor (a ``reconstructors`` list of two or more)."""
    entries = design.raw.get("reconstructors")
    return entries is not None and len(entries) > 1
