"""Dose ladders from measured data: binomial thinning of a contract NPZ's photon counts.

A design with ``"measured": {"npz": "parent.npz"}`` makes its doses from the parent's counts
instead of a simulation (docs/dose_ladders.md). The parent holds integer counts at dose ``D``
(its metadata dose); ``K`` replicates need every ladder dose ``d <= D / K``.

* ``K > 1``: each pixel's count is split by a seeded multinomial into ``K`` equal-probability
  parts (stream ``SeedSequence([simulation, 7, 0])``; no ladder dose is 0); replicate ``r`` starts
  from part ``r`` at dose ``D / K``. ``K = 1``: replicate 0 starts from the parent at ``D``.
* Down each replicate's chain, doses in descending order: ``k_next ~ Binomial(k_prev, d_next /
  d_prev)``, drawn from the stream of ``SeedSequence([simulation, 7, dose, r])``. Every dose's
  counts are then marginally ``Binomial(k_parent, d / D)`` and a lower dose never exceeds a higher
  one of the same chain, pixel by pixel.

The parent is read in batches of patterns (the contract reader's streaming), each batch split and
thinned through the whole chain before the next, so memory stays at a few batches whatever the
parent's size; the draws are taken batch by batch in parent order, so the batch size is part of
what defines the files' bytes. Views and splits select parent positions exactly as for simulated
data (the parent's positions are the full scan; the nominal ones when the parent has them, as an
experiment knows only those). Children are written as gen-synthetic writes its files (same
layout, indexes, atomic byte-deterministic NPZs), one replicate's doses side by side.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from . import manifests, physics, synthetic
from .contract import OPTIONAL_KEYS as CONTRACT_OPTIONAL_KEYS
from .contract import read_contract_npz, read_npz_arrays, require_valid
from .contract.reading import open_zip
from .contract.spec import FileReport, counts_from_diffraction
from .contract.structure import inspect
from .contract.values import ZipSource
from .design import StudyDesign, dose_key, file_digest, load_design, not_a_file
from .errors import ContractError, DesignError
from .fileio import NpzMember, NpzWriter, streamed_npz
from .synthetic import FilePlan, StudyGeometry

log = logging.getLogger(__name__)

#: Seed-sequence word of the thinning streams (3: simulated Poisson draws, 4-6: realistic detector
#: and positions): chains ``[simulation, 7, dose, r]``, the replicate split ``[simulation, 7, 0]``.
THINNING_STREAM = 7
SPLIT_WORD = 0
#: Parent patterns per batch (the draws are taken batch by batch: part of the files' definition).
BATCH_SIZE = synthetic.BATCH_SIZE
#: The optional contract members a child keeps from its parent, in file order after the eight.
OPTIONAL_KEYS = CONTRACT_OPTIONAL_KEYS
PER_POSITION_OPTIONAL = ("nominal_xcoords", "nominal_ycoords")


# ----------------------------------------------------------------------------------------------
# The draws
# ----------------------------------------------------------------------------------------------
def chain_seed(simulation_seed: int, dose: int, replicate: int) -> int:
    """The 32-bit seed of one (dose, replicate) thinning draw: first word of
    ``SeedSequence([simulation, 7, dose, replicate])``."""
    entropy = [int(simulation_seed), THINNING_STREAM, int(dose), int(replicate)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def split_seed(simulation_seed: int) -> int:
    """The 32-bit seed of the multinomial replicate split: ``SeedSequence([simulation, 7, 0])``."""
    return int(np.random.SeedSequence([int(simulation_seed), THINNING_STREAM, SPLIT_WORD]).generate_state(1)[0])


def split_parts(counts: np.ndarray, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A multinomial split of every count into ``parts`` equal-probability parts (int64 arrays
    that sum to ``counts``), drawn as the equivalent chain of conditional binomials: part j takes
    ``Binomial(remaining, 1 / (parts - j))`` of what the parts before it left."""
    remaining = np.asarray(counts, dtype=np.int64)
    out = []
    for j in range(parts - 1):
        part = rng.binomial(remaining, 1.0 / (parts - j))
        out.append(part)
        remaining = remaining - part
    out.append(remaining)
    return out


def thin(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``Binomial(counts, fraction)`` per element (int64): each photon kept with probability ``fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"thinning fraction {fraction} is not in [0, 1]")
    return rng.binomial(np.asarray(counts, dtype=np.int64), fraction).astype(np.int64, copy=False)


@dataclass(frozen=True)
class Ladder:
    """The doses of a dose ladder and the seeds of its draws."""

    parent_dose: int
    doses: tuple[int, ...]  # descending
    replicates: int
    simulation_seed: int

    @property
    def start_dose(self) -> float:
        """Dose of a chain's first counts: the parent's, or its share ``D / K`` of it."""
        return self.parent_dose / self.replicates

    def fraction(self, dose: int) -> float:
        """The marginal thinning fraction ``d / D`` of a dose."""
        return dose / self.parent_dose

    def step_fraction(self, index: int) -> float:
        """Binomial probability of the step into ``doses[index]`` from the dose above it in the chain."""
        if index == 0:
            # d * K / D, exact in integers: a dose of exactly D / K keeps every count of its part.
            return (self.doses[0] * self.replicates) / self.parent_dose
        return self.doses[index] / self.doses[index - 1]

    def chains(self, counts_batches: Iterable[tuple[slice, np.ndarray]], replicate: int,
               down_to: int | None = None) -> Iterator[tuple[slice, dict[int, np.ndarray]]]:
        """Per batch of parent counts: the counts of ``replicate``'s chain at every dose down to
        ``down_to`` (default: all), ``{dose: int64 array}``.

        The streams are consumed batch by batch in parent order: the same batches give the same
        draws. The split draws all ``K`` parts every batch, whichever replicate is asked for, so
        a replicate's counts do not depend on which other replicates are made.
        """
        if not 0 <= replicate < self.replicates:
            raise ValueError(f"replicate {replicate} is not one of the {self.replicates}")
        doses = self.doses if down_to is None else tuple(d for d in self.doses if d >= down_to)
        split_rng = np.random.default_rng(split_seed(self.simulation_seed)) if self.replicates > 1 else None
        rngs = [np.random.default_rng(chain_seed(self.simulation_seed, d, replicate)) for d in doses]
        for sl, counts in counts_batches:
            current = counts if split_rng is None else split_parts(counts, self.replicates, split_rng)[replicate]
            out = {}
            for i, (dose, rng) in enumerate(zip(doses, rngs, strict=True)):
                current = thin(current, self.step_fraction(i), rng)
                out[dose] = current
            yield sl, out


def make_ladder(design: StudyDesign, parent_dose: int) -> Ladder:
    """The design's ladder on a parent of ``parent_dose``; a dose above ``D / K`` is refused,
    naming it (``doses/<i>``)."""
    k = design.replicates
    for i, dose in enumerate(design.doses):
        if dose * k > parent_dose:
            share = f"the parent's dose {parent_dose}" if k == 1 else \
                f"the parent's dose {parent_dose} / {k} replicates = {parent_dose / k:g}"
            raise DesignError(f"{design.path}: doses/{i}: {dose} is above {share} (binomial thinning can only "
                              f"lower a dose; measured/npz: {design.measured['npz']})")
    return Ladder(int(parent_dose), tuple(sorted(design.doses, reverse=True)), k, int(design.seeds["simulation"]))


# ----------------------------------------------------------------------------------------------
# The parent
# ----------------------------------------------------------------------------------------------
@dataclass
class Parent:
    """A checked parent NPZ: its small members in memory, its patterns read in batches on demand."""

    path: Path
    given: str  # the path as the design names it (recorded in the children)
    sha256: str
    metadata: dict
    arrays: dict[str, np.ndarray]  # objectGuess, probeGuess, coords, scan_index, optional members present

    @property
    def dose(self) -> int:
        return int(round(self.metadata["dose"]))

    @property
    def n(self) -> int:
        return int(self.arrays["probeGuess"].shape[0])

    @property
    def n_images(self) -> int:
        return int(len(self.arrays["scan_index"]))

    @property
    def amplitude_scale(self) -> float:
        return float(self.metadata["amplitude_scale"])

    @property
    def valid_pixels(self) -> np.ndarray | None:
        return self.arrays.get("valid_pixels")

    def known_positions(self) -> np.ndarray:
        """``(n, 2)`` (y, x): the positions an experiment reports (nominal when present), which
        select the splits and views."""
        if "nominal_ycoords" in self.arrays:
            return np.stack([self.arrays["nominal_ycoords"], self.arrays["nominal_xcoords"]], axis=1)
        return np.stack([self.arrays["ycoords"], self.arrays["xcoords"]], axis=1)

    @contextmanager
    def member_batches(self, key: str) -> Iterator[Iterator[tuple[slice, np.ndarray]]]:
        """``(rows, array)`` batches of a per-pattern member, in order (CRC checked at the end)."""
        report = FileReport(path=self.path)
        zf = open_zip(self.path, report)
        if zf is None:
            raise ContractError(report.lines()[0])
        with zf:
            insp = inspect(zf, report)
            if report.errors or key not in insp.headers:
                raise ContractError(report.lines()[0] if report.errors else f"{self.path}: {key}: key missing")
            source = ZipSource(zf, self.path, insp.headers)

            def batches():
                for start, rows in source.chunks(key, BATCH_SIZE):
                    yield slice(start, start + len(rows)), rows
            yield batches()

    def count_batches(self, diffraction: Iterable[tuple[slice, np.ndarray]]) -> Iterator[tuple[slice, np.ndarray]]:
        """Integer counts (int64) of diffraction batches; masked pixels carry no measurement: 0."""
        invalid = None if self.valid_pixels is None else ~self.valid_pixels
        for sl, amplitudes in diffraction:
            counts = counts_from_diffraction(amplitudes, self.amplitude_scale)
            if invalid is not None:
                counts[:, invalid] = 0
            yield sl, counts


def read_parent(design: StudyDesign) -> Parent:
    """The design's parent NPZ after the full contract check, with integer counts and a dose."""
    given = design.measured["npz"]
    path = design.resolve(given)
    if not path.is_file():
        raise DesignError(f"{design.path}: measured/npz: {not_a_file(path)}")
    for line in require_valid(path):
        log.warning("parent: %s", line)
    metadata = read_contract_npz(path, check_values=False, keys=()).metadata
    dose = metadata.get("dose")
    if isinstance(dose, bool) or not isinstance(dose, (int, float)) or dose < 1:
        raise ContractError(f"{path}: _metadata/dose: a dose-ladder parent needs its dose in photons "
                            f"(found {dose!r})")
    counts_kind = (metadata.get("detector") or {}).get("counts", "integer")
    if counts_kind != "integer":
        raise ContractError(f"{path}: _metadata/detector/counts: {counts_kind} counts (readout noise) cannot be "
                            f"thinned (expected integer photon counts: binomial thinning keeps or drops photons)")
    required = {"objectGuess": "c", "probeGuess": "c", "xcoords": "f", "ycoords": "f", "scan_index": "iu"}
    optional = {"probe_modes": "c", "nominal_xcoords": "f", "nominal_ycoords": "f", "valid_pixels": "b"}
    arrays = read_npz_arrays(path, required, optional)
    for key in ("xcoords", "ycoords", *PER_POSITION_OPTIONAL):
        if key in arrays:
            arrays[key] = arrays[key].astype(np.float64, copy=False)
    return Parent(path, given, file_digest(path), metadata, arrays)  # hashed once, with the design's hashes


# ----------------------------------------------------------------------------------------------
# Geometry: the parent's positions as the full scan
# ----------------------------------------------------------------------------------------------
def build_geometry(design: StudyDesign, parent: Parent) -> StudyGeometry:
    """Splits and view selections of the parent's positions, as build_geometry makes them for a scan."""
    coords = parent.known_positions()
    obj = parent.arrays["objectGuess"]
    splits, selections = synthetic.select_views(design, coords, obj.shape, "measured/npz",
                                                " (a dose ladder's parent is a whole scan: both halves of the object "
                                                "along y)")
    probe_meta = dict(parent.metadata.get("probe", {}))
    probe_meta.setdefault("diameter_definition", "as recorded by the parent")
    probe_unit = parent.arrays["probeGuess"].astype(np.complex128) / math.sqrt(parent.dose)
    return StudyGeometry(design, probe_unit, probe_meta, obj, dict(parent.metadata.get("object", {})), coords,
                         dict(parent.metadata.get("scan", {})), splits, selections)


# ----------------------------------------------------------------------------------------------
# Writing one replicate's doses
# ----------------------------------------------------------------------------------------------
@dataclass
class ChildTotals:
    """Per-parent-pattern totals of one (dose, replicate): measured counts and their expectation
    given the parent (``d / D`` times the parent's counts)."""

    counts_total: np.ndarray  # int64 (n_parent,)
    expected_total: np.ndarray  # float64 (n_parent,)


@dataclass(frozen=True)
class Hashes:
    """The design's hashes, computed once (each one reads the parent file)."""

    design_hash: str
    data_hash: str


def child_metadata(geometry: StudyGeometry, parent: Parent, ladder: Ladder, plan: FilePlan, totals: ChildTotals,
                   hashes: Hashes) -> dict:
    """The parent's metadata with what changes for one child: dose, file figures, seeds, provenance."""
    design = geometry.design
    idx = plan.selection.indices
    meta = {k: v for k, v in parent.metadata.items() if k not in ("replicate", "thinning", "ground_truth")}
    seed = chain_seed(ladder.simulation_seed, plan.dose, plan.replicate)
    meta.update({
        "schema_version": "1.0",
        "generator": synthetic.GENERATOR,
        "generator_version": __version__,
        "design_name": design.name,
        "design_hash": hashes.design_hash,
        "data_hash": hashes.data_hash,
        "dose": int(plan.dose),
        "split": plan.split,
        "view": plan.view,
        "n_images": int(len(idx)),
        "amplitude_scale": physics.amplitude_scale(plan.dose, geometry.n),
        "expected_mean_counts": round(float(totals.expected_total[idx].mean()), 6),
        "measured_mean_counts": round(float(totals.counts_total[idx].mean()), 6),
        "seeds": {k: int(v) for k, v in design.seeds.items()},
        "noise_seed": seed,
        "selection": plan.selection.figures(),
        "probe_diameter_px": design.probe_diameter_px,
        "thinning": {"parent": parent.given, "parent_sha256": parent.sha256, "parent_dose": parent.dose,
                     "fraction": ladder.fraction(plan.dose), "replicate": int(plan.replicate), "seed": seed},
    })
    if plan.replicate:
        meta["replicate"] = int(plan.replicate)
    if not design.measured["ground_truth"]:
        meta["ground_truth"] = False
    return meta


def child_small_arrays(parent: Parent, plan: FilePlan, meta: dict) -> dict[str, np.ndarray]:
    """The members after the per-position images, in file order (the optional ones the parent has)."""
    idx = plan.selection.indices
    scale = math.sqrt(plan.dose / parent.dose)
    a = parent.arrays
    members = {
        "objectGuess": a["objectGuess"],
        "probeGuess": (a["probeGuess"].astype(np.complex128) * scale).astype(np.complex64),
        "xcoords": a["xcoords"][idx],
        "ycoords": a["ycoords"][idx],
        "scan_index": a["scan_index"][idx].astype(np.int64),
        "_metadata": np.array(json.dumps(meta, sort_keys=True)),
    }
    if "probe_modes" in a:
        members["probe_modes"] = (a["probe_modes"].astype(np.complex128) * scale).astype(np.complex64)
    for key in PER_POSITION_OPTIONAL:
        if key in a:
            members[key] = a[key][idx]
    if "valid_pixels" in a:
        members["valid_pixels"] = a["valid_pixels"].astype(np.bool_)
    return members


def write_replicate(geometry: StudyGeometry, parent: Parent, ladder: Ladder, doses: list[int], replicate: int,
                    roots: dict[str, Path], hashes: Hashes, progress: bool | None = None) -> dict[str, list[dict]]:
    """Write every split x view file of ``doses`` of one replicate side by side; return their index
    entries per root. The files are renamed into place together; an exception leaves none of them."""
    from tqdm import tqdm

    n = geometry.n
    n_parent = parent.n_images
    plans = [p for dose in doses for p in geometry.file_plans(dose, replicate)]
    totals = {d: ChildTotals(np.zeros(n_parent, np.int64), np.zeros(n_parent, np.float64)) for d in doses}
    parent_totals = np.zeros(n_parent, np.float64)
    metas = []
    with ExitStack() as files:
        outputs: list[NpzWriter] = [files.enter_context(streamed_npz(roots[p.root] / p.relpath)) for p in plans]
        members: list[NpzMember] = [npz.begin("diffraction", np.float32, (len(p.selection.indices), n, n))
                                    for npz, p in zip(outputs, plans, strict=True)]
        scales = {d: physics.amplitude_scale(d, n) for d in doses}
        label = synthetic.unit_label(doses[0], replicate).split("/")[0]
        with parent.member_batches("diffraction") as batches:
            counted = _keep_totals(parent.count_batches(batches), parent_totals)
            bar = tqdm(ladder.chains(counted, replicate, down_to=min(doses)), total=-(-n_parent // BATCH_SIZE),
                       desc=f"thinning rep{replicate} from {label}", unit="batch", file=synthetic._stderr(),
                       disable=synthetic._tqdm_disable(progress), leave=False)
            for sl, by_dose in bar:
                for dose in doses:
                    drawn = by_dose[dose]
                    totals[dose].counts_total[sl] = drawn.sum(axis=(1, 2))
                    rows = (np.sqrt(drawn) / scales[dose]).astype(np.float32)
                    for member, plan in zip(members, plans, strict=True):
                        if plan.dose == dose:
                            member.write(rows[synthetic.rows_in_batch(plan.selection.indices, sl)])
        for member in members:
            member.close()
        for dose in doses:
            totals[dose].expected_total[:] = parent_totals * ladder.fraction(dose)
        with parent.member_batches("Y") as batches:
            synthetic.stream_member(outputs, plans, "Y", np.complex64, n, batches)
        for plan, npz in zip(plans, outputs, strict=True):
            meta = child_metadata(geometry, parent, ladder, plan, totals[plan.dose], hashes)
            for key, value in child_small_arrays(parent, plan, meta).items():
                npz.add(key, value)
            metas.append(meta)
    entries: dict[str, list[dict]] = {"phase_c": [], "phase_d": []}
    for plan, npz, meta in zip(plans, outputs, metas, strict=True):
        path = roots[plan.root] / plan.relpath
        entries[plan.root].append(synthetic.index_entry(plan, meta, npz.sha256, path.stat().st_size))
        log.info("wrote %s (%d patterns)", path, meta["n_images"])
    return entries


def _keep_totals(batches: Iterable[tuple[slice, np.ndarray]], totals: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Pass count batches through, recording each pattern's total in ``totals`` on the way."""
    for sl, counts in batches:
        totals[sl] = counts.sum(axis=(1, 2))
        yield sl, counts


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------
def generate_ladder(design: StudyDesign, phase_c_root: str | Path, phase_d_root: str | Path,
                    doses: Iterable[float] | None = None, force: bool = False,
                    progress: bool | None = None) -> synthetic.GenerationResult:
    """Thin a measured design's parent into every file of the requested doses (or confirm them up to date).

    A dose is the same draw whichever doses are requested: a chain is always drawn from the top,
    through every design dose above the lowest one written.
    """
    if design.measured is None:
        raise DesignError(f"{design.path}: measured: the design simulates its data (use generate_study)")
    chosen = synthetic.resolve_doses(design, doses)
    roots = synthetic.output_roots(phase_c_root, phase_d_root)
    parent = read_parent(design)
    ladder = make_ladder(design, parent.dose)
    geometry = build_geometry(design, parent)
    hashes = Hashes(design.design_hash, design.data_hash)

    with synthetic._roots_locked(roots):
        synthetic.remove_stale_files(geometry, roots)
        indexes = {kind: synthetic.read_index(root / synthetic.INDEX_NAME) for kind, root in roots.items()}
        pending = [(d, r) for d, r in geometry.units(chosen)
                   if force or not synthetic.dose_up_to_date(geometry, d, roots, indexes, r)]
        generated = list(dict.fromkeys(d for d, _ in pending))
        for dose in (d for d in chosen if d not in generated):
            log.info("%s: up to date, nothing regenerated", dose_key(dose))
        for replicate in design.replicate_numbers:
            rep_doses = sorted({d for d, r in pending if r == replicate}, reverse=True)
            if not rep_doses:
                continue
            entries = write_replicate(geometry, parent, ladder, rep_doses, replicate, roots, hashes, progress)
            # Indexed as soon as its files are in place: a later kill keeps this replicate.
            for kind, root in roots.items():
                doc = synthetic.build_index(geometry, kind, root, indexes[kind], entries[kind],
                                            {(d, replicate) for d in rep_doses}, pending)
                manifests.write_json(root / synthetic.INDEX_NAME, doc, synthetic.INDEX_SCHEMA)
                indexes[kind] = doc

    files = []
    for kind in ("phase_c", "phase_d"):
        for entry in indexes[kind]["files"] if indexes[kind] else []:
            if entry["dose"] in chosen:
                files.append({"root": kind, **entry})
    files.sort(key=lambda e: synthetic.file_order(design, e))
    n_positions = {"scan": int(len(geometry.coords)), **{s: int(len(i)) for s, i in geometry.splits.items()}}
    probe = {"nominal_diameter_px": None, "measured_diameter_px": None, "edge_energy_fraction": None,
             **geometry.probe_meta}
    return synthetic.GenerationResult(design, roots, generated, [d for d in chosen if d not in generated], files,
                                      probe, n_positions)


def generate_data(design_path: str | Path, phase_c_root: str | Path, phase_d_root: str | Path,
                  doses: Iterable[float] | None = None, force: bool = False,
                  progress: bool | None = None) -> synthetic.GenerationResult:
    """gen-synthetic's one entry point: a measured design is thinned, any other simulated."""
    design = load_design(design_path)
    if design.measured is not None:
        return generate_ladder(design, phase_c_root, phase_d_root, doses, force, progress)
    return synthetic.generate_study(design_path, phase_c_root, phase_d_root, doses=doses, force=force,
                                    progress=progress)
