"""Planning reconstruction jobs: every dose x view x split x replicate of a design, filtered, with inputs hashed.

``plan_jobs`` turns a design and the two data roots into the ``reconstruction_manifest`` and the
``skip_summary`` documents (schemas in ``schemas/``); ``write_plan`` writes them into the
artifact root, keeping the ``execution_results`` of jobs that are still planned so that a replan
does not forget what already ran. Engines, their algorithms and option defaults come from the
engine registry (:mod:`ptydose.core.run.engines.registry`, pure data). Nothing here imports torch
or pty-chi.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from .. import __version__
from .contract import read_contract_npz
from .design import BASELINE_VIEW, StudyDesign, canonical_json, data_relpath, dose_key, load_design, replicate_key
from .errors import ContractError, ManifestError, StudyError
from .fileio import remove_stale_temporaries, sha256_file
from .manifests import read_json, write_json
from .reconstructors import design_reconstructors, has_reconstructor_level
from .run.engines.options import options_mapping
from .run.engines.registry import DEFAULT_ENGINE, EngineSpec, engine_spec
from .safepath import open_lock_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "reconstruction_manifest.json"
LOCK_NAME = ".run-ptychi.lock"
SKIP_SUMMARY_NAME = "skip_summary.json"
MANIFEST_SCHEMA = "reconstruction_manifest"
SKIP_SUMMARY_SCHEMA = "skip_summary"
RUN_TOOL = "run-ptychi"
#: The design schema's bound on reconstruction/num_epochs; --num-epochs obeys the same one.
MAX_EPOCHS = 1_000_000
SELECTION_KEYS = ("selection_strategy", "spacing_threshold", "n_accepted", "n_rejected", "acceptance_rate")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def job_id(dose: int, view: str, split: str, reconstructor: str | None = None, replicate: int = 0) -> str:
    """``dose_1000/dense/train``, then ``/rep<r>`` for replicate r >= 1, then ``/<reconstructor>`` in a
    study of several: also the job folder. Replicate 0 has no level, so a one-draw study keeps its ids."""
    base = f"{dose_key(dose)}/{view}/{split}"
    if replicate:
        base = f"{base}/{replicate_key(replicate)}"
    return f"{base}/{reconstructor}" if reconstructor else base


def input_path(view: str, dose: int, split: str, phase_c_root: Path, phase_d_root: Path, replicate: int = 0) -> Path:
    """Where a job's input lives: baseline in Phase C, overlap views in Phase D (replicate r >= 1 in
    the dose's ``rep<r>`` folder)."""
    root = phase_c_root if view == BASELINE_VIEW else phase_d_root
    return root / data_relpath(view, dose, split, replicate)


def options_hash(job: dict) -> str:
    """sha256 of what determines a reconstruction besides its input: resume compares it.

    The engine enters only when it is not the default one, so that jobs planned before engines
    were named keep their hash (and resume).
    """
    keyed = {"algorithm": job["algorithm"], "num_epochs": job["num_epochs"], "engine_options": job["engine_options"]}
    if job.get("engine", DEFAULT_ENGINE) != DEFAULT_ENGINE:
        keyed["engine"] = job["engine"]
    if job.get("stopping") is not None:  # a stopping rule changes what runs; its absence keeps older hashes
        keyed["stopping"] = job["stopping"]
    return hashlib.sha256(canonical_json(keyed).encode()).hexdigest()


def read_npz_metadata(path: str | os.PathLike) -> dict:
    """The ``_metadata`` of a contract NPZ after its header-only contract check (no array data read)."""
    return read_contract_npz(path, check_values=False, keys=()).metadata


def selection_figures(meta: dict, path: str | os.PathLike) -> dict:
    """The view's selection figures from ``_metadata['selection']`` (the manifest copies them)."""
    selection = meta.get("selection")
    if not isinstance(selection, dict):
        raise ContractError(f"{path}: _metadata/selection: missing")
    missing = [k for k in SELECTION_KEYS if k not in selection]
    if missing:
        raise ContractError(f"{path}: _metadata/selection/{missing[0]}: missing")
    figures = {k: selection[k] for k in SELECTION_KEYS}
    figures["measured_overlap"] = selection.get("measured_overlap")
    if "target_overlap" in selection:  # a view selected by its target overlap: the map's axis is what it reached
        figures["target_overlap"] = selection["target_overlap"]
    return figures


def design_engine(design: StudyDesign) -> EngineSpec:
    """The engine of the design's first reconstructor."""
    return engine_spec(design_reconstructors(design)[0].engine)


def engine_options(design: StudyDesign) -> dict:
    """The ``engine_options`` of the design's first reconstructor (checked by building the engine's record)."""
    rec = design_reconstructors(design)[0]
    spec = engine_spec(rec.engine)
    return options_mapping(spec.options(rec.engine_options))


def instrument(design: StudyDesign) -> dict:
    inst = design.instrument
    return {
        "photon_energy_eV": float(inst["photon_energy_eV"]),
        "detector_distance_m": float(inst["detector_distance_m"]),
        "detector_pixel_size_m": float(inst["detector_pixel_size_m"]),
        "exposure_time_s": float(inst["exposure_time_s"]),
        "wavelength_m": design.wavelength_m,
        "object_pixel_size_m": design.object_pixel_size_m,
    }


def run_command(manifest_path: Path, the_job_id: str) -> list[str]:
    """The argv that runs exactly one job of a manifest."""
    return [RUN_TOOL, "--manifest", str(manifest_path), "--only", the_job_id]


def _check_filter(name: str, given: Sequence | None, allowed: Sequence, flag: str) -> None:
    for value in given or ():
        if value not in allowed:
            raise StudyError(f"{flag} {value}: not a {name} of the design (choose from {', '.join(map(str, allowed))})")


def _filter_reason(dose: int, view: str, split: str, doses, views, splits, replicate: int = 0,
                   replicates=None) -> str | None:
    if doses and dose not in doses:
        return "filtered out by --dose " + " ".join(str(d) for d in doses)
    if views and view not in views:
        return "filtered out by --view " + " ".join(views)
    if splits and split not in splits:
        return "filtered out by --split " + " ".join(splits)
    if replicates and replicate not in replicates:
        return "filtered out by --replicate " + " ".join(str(r) for r in replicates)
    return None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@dataclass
class Plan:
    manifest: dict
    skip_summary: dict
    manifest_path: Path
    skip_summary_path: Path


def plan_jobs(
    design_path: str | os.PathLike,
    phase_c_root: str | os.PathLike,
    phase_d_root: str | os.PathLike,
    artifact_root: str | os.PathLike,
    *,
    doses: Iterable[int] | None = None,
    views: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    allow_missing_phase_d: bool = False,
    algorithm: str | None = None,
    num_epochs: int | None = None,
    reconstructors: Iterable[str] | None = None,
    replicates: Iterable[int] | None = None,
) -> Plan:
    """Build (not write) the manifest and skip summary for every dose x view x split x replicate
    (x reconstructor) of a design.

    Jobs are ordered replicate first (all of replicate 0, then replicate 1, ...), so a run stopped
    midway has finished whole draws of the study, then dose, view, split and reconstructor.

    A selected job whose Phase C (baseline) file is missing is always an error; a missing Phase D
    (view) file is an error listing every missing file unless ``allow_missing_phase_d``, in which
    case the job is skipped with reason ``Phase D NPZ not found: <path>``.
    """
    design = load_design(design_path)
    phase_c = Path(phase_c_root).resolve()
    phase_d = Path(phase_d_root).resolve()
    artifacts = Path(artifact_root).resolve()
    doses = sorted({int(d) for d in doses}) if doses else None
    views = list(dict.fromkeys(views)) if views else None
    splits = list(dict.fromkeys(splits)) if splits else None
    _check_filter("dose", doses, design.doses, "--dose")
    _check_filter("view", views, design.views, "--view")
    _check_filter("split", splits, design.splits, "--split")
    replicates = sorted({int(r) for r in replicates}) if replicates else None
    _check_filter("replicate", replicates, design.replicate_numbers, "--replicate")
    several = design.replicates > 1  # skip entries name their replicate only then (like reconstructors)
    all_recs = design_reconstructors(design, algorithm)
    names = [r.name for r in all_recs]
    reconstructors = list(dict.fromkeys(reconstructors)) if reconstructors else None
    _check_filter("reconstructor", reconstructors, names, "--reconstructor")
    recs = [r for r in all_recs if not reconstructors or r.name in reconstructors]
    level = has_reconstructor_level(design)
    if num_epochs is not None and not 1 <= int(num_epochs) <= MAX_EPOCHS:
        raise StudyError(f"--num-epochs {num_epochs}: must be between 1 and {MAX_EPOCHS}")
    manifest_path = artifacts / MANIFEST_NAME
    hashes: dict[Path, str] = {}

    jobs: list[dict] = []
    skipped: list[dict] = []
    missing: list[dict] = []
    missing_phase_c: list[Path] = []
    cells = [(dose, view, split, r) for r in design.replicate_numbers for dose in design.doses
             for view in design.views for split in design.splits]
    total = len(cells) * len(all_recs)

    def cell_entry(dose: int, view: str, split: str, r: int) -> dict:
        return {"dose": dose, "view": view, "split": split, **({"replicate": r} if several else {})}

    for rec in all_recs:
        if rec not in recs:
            skipped.extend({**cell_entry(*cell), "reconstructor": rec.name,
                            "reason": "filtered out by --reconstructor " + " ".join(reconstructors)} for cell in cells)
    for dose, view, split, r in cells:
        entry = cell_entry(dose, view, split, r)
        reason = _filter_reason(dose, view, split, doses, views, splits, r, replicates)
        if reason:
            skipped.extend({**entry, **({"reconstructor": rec.name} if level else {}), "reason": reason}
                           for rec in recs)
            continue
        path = input_path(view, dose, split, phase_c, phase_d, r)
        if not path.is_file():
            if view == BASELINE_VIEW:
                missing_phase_c.append(path)
            else:
                missing.extend({**entry, **({"reconstructor": r.name} if level else {}),
                                "reason": f"Phase D NPZ not found: {path}"} for r in recs)
            continue
        root = phase_c if view == BASELINE_VIEW else phase_d
        if not _inside(path, root):
            raise StudyError(f"{path}: resolves outside its root {root} (symbolic link?)")
        meta = read_npz_metadata(path)
        if meta.get("data_hash", design.data_hash) != design.data_hash:
            raise StudyError(
                f"{path}: _metadata/data_hash: made from other data settings than {design.path.name} "
                f"(expected {design.data_hash[:12]}, found {meta['data_hash'][:12]}): regenerate it with "
                f"gen-synthetic, or plan with the design that made it")
        if meta.get("replicate", 0) != r:
            raise StudyError(f"{path}: _metadata/replicate: the file is replicate {meta.get('replicate', 0)}, "
                             f"its folder says {r} (regenerate it with gen-synthetic)")
        n_images = meta.get("n_images")
        if not isinstance(n_images, int) or n_images < 1:
            raise ContractError(f"{path}: _metadata/n_images: expected a positive integer, got {n_images!r}")
        if path not in hashes:
            hashes[path] = sha256_file(path)
        for rec in recs:
            the_id = job_id(dose, view, split, rec.name if level else None, r)
            job = {
                "id": the_id,
                "dose": dose, "view": view, "split": split, "replicate": r,
                "input_npz": str(path),
                "input_sha256": hashes[path],
                "n_images": n_images,
                "output_dir": str(artifacts / the_id),
                "reconstructor": rec.name,
                "engine": rec.engine,
                "algorithm": rec.algorithm,
                "num_epochs": int(num_epochs) if num_epochs is not None else rec.num_epochs,
                "engine_options": dict(rec.engine_options),
                "selection": selection_figures(meta, path),
                "command": run_command(manifest_path, the_id),
            }
            if rec.stopping is not None:
                job["stopping"] = dict(rec.stopping)
            jobs.append(job)
    if missing_phase_c:
        raise StudyError(
            f"Phase C NPZ not found ({len(missing_phase_c)}): " + "; ".join(map(str, missing_phase_c))
            + " (run gen-synthetic first)"
        )
    if missing and not allow_missing_phase_d:
        raise StudyError(
            f"Phase D NPZ not found ({len(missing)}): " + "; ".join(m["reason"].split(": ", 1)[1] for m in missing)
            + " (generate them, or pass --allow-missing-phase-d to skip these jobs)"
        )
    now = utc_now()
    manifest = {
        "schema_version": "1.0",
        "jobs": jobs,
        "total_jobs": total,
        "filtered_jobs": len(jobs),
        "missing_jobs": missing,
        "execution_results": [],
        "instrument": instrument(design),
        "provenance": {
            "design": str(design.path),
            "design_name": design.name,
            "design_hash": design.design_hash,
            "phase_c_root": str(phase_c),
            "phase_d_root": str(phase_d),
            "artifact_root": str(artifacts),
            "filters": {"doses": doses, "views": views, "splits": splits, "reconstructors": reconstructors,
                        **({"replicates": replicates} if several else {})},
            "allow_missing_phase_d": bool(allow_missing_phase_d),
            "spacing_thresholds": dict(design.spacing_thresholds),
            **({"replicates": design.replicates} if several else {}),
            **({"target_overlaps": design.target_overlaps} if design.target_overlaps else {}),
            "created": now,
            "tool": "plan-jobs",
            "tool_version": __version__,
        },
    }
    skip_summary = {
        "schema_version": "1.0",
        "timestamp": now,
        "skipped_count": len(skipped) + len(missing),
        "skipped_jobs": skipped + missing,
        "missing_phase_d_count": len(missing),
    }
    return Plan(manifest, skip_summary, manifest_path, artifacts / SKIP_SUMMARY_NAME)


def _same_work(old_job: dict | None, new_job: dict) -> bool:
    """Whether a previously planned job would reconstruct exactly what the new one does."""
    return (old_job is not None and old_job["input_sha256"] == new_job["input_sha256"]
            and options_hash(old_job) == options_hash(new_job))


def lock_artifact_root(artifact_root: Path, busy: str) -> IO:
    """Hold the artifact root's lock (released when the handle closes or the process dies).

    run-ptychi holds it for a whole run and plan-jobs while it rewrites the manifest, so a replan
    can never interleave with a run's write-backs. ``busy`` is the message when it is taken.
    The lock file is opened read-only without following a link and never truncated: a link,
    FIFO, device or folder in its place is a PathError (no write through it, no hang).
    """
    artifact_root.mkdir(parents=True, exist_ok=True)
    handle = open_lock_file(artifact_root / LOCK_NAME)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StudyError(f"{artifact_root}: {busy}") from None
    return handle


def write_plan(plan: Plan) -> Plan:
    """Write both documents (validated, atomic).

    execution_results are kept only for jobs still planned with the same input and options: a
    result of another algorithm, epoch count or input file must not pass for the new job's.
    """
    with lock_artifact_root(plan.manifest_path.parent, "run-ptychi is running on this artifact root; "
                            "plan again when it has finished (or plan into another --artifact-root)"):
        _write_plan_locked(plan)
    return plan


def _write_plan_locked(plan: Plan) -> None:
    # Leftovers of a write killed midway; the lock keeps every other writer out.
    for path in (plan.manifest_path, plan.skip_summary_path):
        remove_stale_temporaries(path)
    if plan.manifest_path.exists():
        try:
            old = read_json(plan.manifest_path, MANIFEST_SCHEMA)
        except ManifestError as exc:
            log.warning("replacing an unreadable manifest: %s", exc)
        else:
            old_jobs = {job["id"]: job for job in old["jobs"]}
            planned = {job["id"]: job for job in plan.manifest["jobs"]}
            plan.manifest["execution_results"] = [
                r for r in old["execution_results"]
                if r["job_id"] in planned and _same_work(old_jobs.get(r["job_id"]), planned[r["job_id"]])]
    for path, doc, schema in ((plan.manifest_path, plan.manifest, MANIFEST_SCHEMA),
                              (plan.skip_summary_path, plan.skip_summary, SKIP_SUMMARY_SCHEMA)):
        try:
            write_json(path, doc, schema)
        except OSError as exc:  # the temporary file's name would say less than the file's
            raise ManifestError(f"{path}: cannot write it ({exc.strerror or exc})") from None


def check_manifest_paths(manifest: dict, path: Path, *, at_its_artifact_root: bool = True) -> dict:
    """Check that job ids match their fields, each input is exactly its job's layout path inside its
    phase root (:func:`input_path`) and each job's command is exactly the ``run-ptychi`` call
    plan-jobs writes (a manifest can only point inside its own roots, at its own jobs' files, and
    can make run-ptychi print nothing but its own command).

    The layout rule matters because the roots are the manifest's own claim: a manifest saying
    ``phase_c_root: "/"`` must still not make a job read ``/etc/passwd``; it may name only
    ``/dose_<d>/patched_<split>.npz`` (``/dose_<d>/rep<r>/patched_<split>.npz`` for its replicate r >= 1).

    ``at_its_artifact_root`` also requires the manifest to sit in its planned artifact root with
    the job folders under it (run-ptychi writes there); summarize, which may read a copied sweep,
    skips that part.
    """
    prov = manifest["provenance"]
    artifacts = Path(prov["artifact_root"])
    if at_its_artifact_root and path.parent != artifacts.resolve():
        raise ManifestError(f"{path}: provenance/artifact_root: {artifacts} is not the manifest's folder {path.parent}")
    roots = {BASELINE_VIEW: Path(prov["phase_c_root"]), "view": Path(prov["phase_d_root"])}
    seen: set[str] = set()
    for i, job in enumerate(manifest["jobs"]):
        if job["id"] in seen:
            raise ManifestError(f"{path}: jobs/{i}/id: duplicate job {job['id']}")
        seen.add(job["id"])
        replicate = job.get("replicate", 0)  # a job of an older manifest is replicate 0
        if job["id"] not in (job_id(job["dose"], job["view"], job["split"], None, replicate),
                             job_id(job["dose"], job["view"], job["split"], job.get("reconstructor"), replicate)):
            raise ManifestError(f"{path}: jobs/{i}/id: {job['id']} does not match dose/view/split/replicate/reconstructor")
        root = roots[BASELINE_VIEW] if job["view"] == BASELINE_VIEW else roots["view"]
        if not Path(job["input_npz"]).is_absolute() or not _inside(Path(job["input_npz"]), root):
            raise ManifestError(f"{path}: jobs/{i}/input_npz: {job['input_npz']} is outside {root}")
        layout = input_path(job["view"], job["dose"], job["split"], roots[BASELINE_VIEW], roots["view"], replicate)
        if job["input_npz"] != str(layout):
            raise ManifestError(f"{path}: jobs/{i}/input_npz: {job['input_npz']} is not the job's input "
                                f"{layout} (inputs follow the data layout of their root)")
        expected_command = run_command(artifacts / MANIFEST_NAME, job["id"])
        if job["command"] != expected_command:
            raise ManifestError(f"{path}: jobs/{i}/command: not the run-ptychi call of this job "
                                f"(expected {' '.join(expected_command)})")
        if not at_its_artifact_root:
            continue
        # Compared as written, never resolved: a link on the way is the runner's to refuse, not to follow.
        if job["output_dir"] != str(artifacts / job["id"]):
            raise ManifestError(f"{path}: jobs/{i}/output_dir: {job['output_dir']} is not {artifacts / job['id']}")
    return manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest run-ptychi may execute: schema, ids, roots, commands and job folders checked."""
    path = Path(path).resolve()
    return check_manifest_paths(read_json(path, MANIFEST_SCHEMA), path)
