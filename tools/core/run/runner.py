"""Running a manifest: select the jobs, lock the artifact root, resume, enforce deadlines, record.

:func:`run_manifest` is the whole run path of ``run-ptychi``. It reads the manifest (schema,
roots, commands and job folders checked), builds a typed :class:`~.records.JobSpec` per selected
job, takes the artifact root's lock (a replan cannot interleave with the write-backs; the manifest
is read again under it), removes the temporary files of writes a kill interrupted, skips jobs
already done (:func:`already_done`: result.json says ok for this job id, input sha256, options
hash, engine, tool version and engine package version, and the outputs are in place) unless
``force``, and hands the rest to a backend: local worker processes (:mod:`.local`) or a Dask
cluster (:mod:`.dask_backend`).

Before submitting, the parent prepares each job (:func:`prepare_jobs`): its folder must be
reachable from the artifact root without a symbolic link, its ``ptychi.log`` must not be a link,
FIFO or folder, its input must still be a regular file; then the job is forgotten (manifest entry
dropped, result.json removed) so that a kill during compute never leaves "ok" behind. A job that
fails preparation fails alone (exit status 3); the sha256 and data-contract checks happen in the
worker, on both backends. The runner alone enforces ``--timeout`` (from the moment a job starts on
a worker) and passes every outcome to the :class:`~.recording.Recorder`. A job's exception, crash
or timeout fails that job only; the caller turns :attr:`RunReport.failed` into exit status 3.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ..errors import ManifestError, StudyError
from ..fileio import remove_stale_temporaries, sha256_file
from ..jobs import MANIFEST_NAME, SKIP_SUMMARY_NAME, load_manifest, lock_artifact_root
from ..manifests import read_json
from ..safepath import PathError, check_confined, entry_problem, is_regular_file
from .backend import Backend, Finished, Lost, Progress, Started
from .dask_backend import DaskBackend
from .engines.registry import DEFAULT_ENGINE, engine_spec
from .local import LocalBackend
from .outputs import ATOMIC_FILES, LOG_NAME, OUTPUT_FILES, RESULT_NAME, job_folder
from .recording import RESULT_SCHEMA, Echo, Recorder, RunReport, installed_version
from .records import Instrument, JobSpec, Outcome, WorkItem, one_line

log = logging.getLogger(__name__)


def select_jobs(manifest: dict, only: Iterable[str] | None, source: Path) -> list[dict]:
    """The manifest's jobs, or those named by ``--only`` (in manifest order); an unknown id is bad input."""
    jobs = manifest["jobs"]
    if not only:
        return list(jobs)
    by_id = {job["id"]: job for job in jobs}
    unknown = [j for j in only if j not in by_id]
    if unknown:
        raise StudyError(f"{source}: --only {unknown[0]}: no such job in the manifest")
    wanted = set(only)
    return [job for job in jobs if job["id"] in wanted]


#: Longest single wait on the backend: deadlines are rechecked at least this often, and no
#: operating-system wait is handed a timeout too large for it (a --timeout of 1e300 s is finite).
MAX_WAIT_S = 60.0


def check_timeout(timeout: float | None) -> None:
    """``--timeout`` must be a finite number of seconds > 0 (None: no limit); NaN and infinity are refused."""
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise StudyError(f"--timeout {timeout}: expected a finite number of seconds > 0 (omit it for no limit)")


def resume_mismatch(job: JobSpec, result: dict) -> str | None:
    """Why a schema-valid result.json does not make ``job`` done (None: it does).

    The resume key: this job's id, status ok, the planned input sha256 and options hash, the same
    engine, this tool's version and the installed version of the engine's package; an upgrade of
    either reruns the job.
    """
    package = engine_spec(job.engine).package
    versions = result["versions"]
    if "engine_version" in result:
        recorded = result["engine_version"]
    else:  # results written before engine_version: the versions record has the engine's package
        recorded = versions.get(package) if package else None
    installed = installed_version(package) if package else None
    checks = (
        (result["job_id"] == job.id, f"result.json is job {result['job_id']}'s"),
        (result["status"] == "ok", f"last run ended {result['status']}"),
        (result["input_sha256"] == job.input_sha256, "another input"),
        (result["options_hash"] == job.options_hash, "other options"),
        (result.get("engine", DEFAULT_ENGINE) == job.engine, "another engine"),
        (versions["tools"] == __version__, f"made by tools {versions['tools']}, this is {__version__}"),
        (recorded == installed, f"made with {package} {recorded}, installed is {installed}"),
    )
    return next((why for ok, why in checks if not ok), None)


def already_done(job: JobSpec) -> dict | None:
    """The job's result.json if it makes the job done (:func:`resume_mismatch`) and its outputs are in place.

    Files count only as regular files in a folder reached from the artifact root without a link; a
    result.json that is a FIFO, a folder or unreadable means "not done" (the job reruns), never a hang.
    """
    try:
        check_confined(job.confining_root, job.output_dir, "job folder")
    except PathError:
        return None  # refused when the job is prepared, with its reason
    path = job.output_dir / RESULT_NAME
    if not is_regular_file(path):
        return None
    try:
        result = read_json(path, RESULT_SCHEMA)
    except ManifestError as exc:
        log.warning("ignoring %s", exc)
        return None
    why = resume_mismatch(job, result)
    if why is not None:
        log.info("%s: rerun (%s)", job.id, why)
        return None
    if not Path(job.input_npz).is_file():
        return None
    if any(not is_regular_file(job.output_dir / name) for name in OUTPUT_FILES):
        return None
    if sha256_file(job.input_npz) != job.input_sha256:  # the input changed since the run
        return None
    return result


def submission_error(job: JobSpec) -> str | None:
    """The cheap check before a job is sent anywhere (load_manifest already kept it inside its root)."""
    if not Path(job.input_npz).is_file():
        return f"StudyError: {job.input_npz}: not a regular file (moved or deleted since planning?)"
    return None


def folder_error(job: JobSpec) -> str | None:
    """Why the job's folder cannot take its files: a link on the way, a log that is not a regular file."""
    try:
        out = job_folder(job)
    except (StudyError, OSError) as exc:
        return one_line(exc)
    problem = entry_problem(out / LOG_NAME, "job log (ptychi.log)")
    return None if problem is None else f"PathError: {problem}"


def prepare_jobs(items: list[WorkItem], recorder: Recorder) -> list[WorkItem]:
    """The items that may run; every other one is recorded as failed with its reason.

    A job that passes is forgotten (:meth:`.recording.Recorder.forget`) before it is returned.
    """
    ready: list[WorkItem] = []
    for item in items:
        job = item.job
        error = folder_error(job)
        if error is not None:
            recorder.record(job, Outcome("failed", 1, error, 0.0), note=f"job folder refused: {error}")
            continue
        error = submission_error(job)
        if error is not None:  # never sent: recorded as the failure a worker would report
            recorder.record(job, Outcome("failed", 1, error, 0.0), note=f"input check before submission failed: {error}")
            continue
        ready.append(item)
    refused = {job.id: why for job, why in recorder.forget([item.job for item in ready])}
    for item in ready:
        if item.job.id in refused:
            error = f"PathError: {refused[item.job.id]}"
            recorder.record(item.job, Outcome("failed", 1, error, 0.0), note=f"job folder refused: {error}")
    return [item for item in ready if item.job.id not in refused]


def clean_stale_temporaries(root: Path, jobs: list[JobSpec]) -> None:
    """Remove what killed atomic writes left (``.<name>.<random>.tmp``) in the artifact root and the
    selected jobs' folders; folders reached through a link are left alone (the job fails on them)."""
    for name in (MANIFEST_NAME, SKIP_SUMMARY_NAME):
        remove_stale_temporaries(root / name)
    for job in jobs:
        try:
            folder = check_confined(job.confining_root, job.output_dir, "job folder")
        except PathError:
            continue
        if folder.is_dir():  # a real folder: check_confined refused any link on the way
            for name in ATOMIC_FILES:
                remove_stale_temporaries(folder / name)


def missing_outputs(job: JobSpec, outcome: Outcome) -> Outcome:
    """An ok outcome whose outputs this process cannot see (workers on another filesystem) is a failure."""
    missing = [name for name in OUTPUT_FILES if not (job.output_dir / name).is_file()]
    if outcome.status != "ok" or not missing:
        return outcome
    return Outcome("failed", 1, f"{', '.join(missing)} not visible in {job.output_dir} here: the artifact root must "
                   "be on a filesystem the workers share", outcome.wall_s, outcome.device)


@dataclass
class _Tracked:
    job: JobSpec
    submitted: float
    started: float | None = None
    deadline: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - (self.started if self.started is not None else self.submitted)


def run_manifest(
    manifest_path: str | os.PathLike,
    *,
    only: Iterable[str] | None = None,
    device: str = "auto",
    workers: int = 1,
    timeout: float | None = None,
    force: bool = False,
    dry_run: bool = False,
    scheduler: str | None = None,
    echo: Echo = lambda line: print(line, file=sys.stderr, flush=True),
) -> RunReport:
    """Run (or, with ``dry_run``, list) the selected jobs of a manifest; see the module docstring.

    With ``scheduler`` (``tcp://host:port``) the jobs run on that Dask cluster instead of local
    worker processes; recording, resume, timeouts and exit codes are the same.
    """
    wall_start = time.perf_counter()
    manifest_path = Path(manifest_path).resolve()
    root = manifest_path.parent
    manifest = load_manifest(manifest_path)
    selected = select_jobs(manifest, only, manifest_path)
    report = RunReport(manifest_path)
    if dry_run:
        report.dry_run_commands = [list(job["command"]) for job in selected]
        return report
    for job in selected:
        JobSpec.from_manifest(job, root)  # an unknown engine or algorithm is bad input, before the lock
    if workers < 1:
        raise StudyError(f"--workers {workers}: must be >= 1")
    check_timeout(timeout)
    if scheduler and workers > 1:
        raise StudyError(f"--scheduler {scheduler} and --workers {workers} exclude each other "
                         "(the Dask cluster's workers run the jobs)")
    lock = lock_artifact_root(root, "another run-ptychi is running on this artifact root")
    backend: Backend | None = None
    try:
        # What a replan wrote between the first read and the lock is what this run records into.
        manifest = load_manifest(manifest_path)
        jobs = [JobSpec.from_manifest(job, root) for job in select_jobs(manifest, only, manifest_path)]
        clean_stale_temporaries(root, jobs)
        # Before anything is written: an unreachable scheduler is bad input.
        backend = DaskBackend(scheduler, device, echo) if scheduler else LocalBackend(device, workers)
        recorder = Recorder(manifest_path, manifest, report, echo)
        pending: list[JobSpec] = []
        for job in jobs:
            done = None if force else already_done(job)
            if done is not None:
                recorder.resumed(job, done)
            else:
                pending.append(job)
        if pending:
            echo(f"run-ptychi: {len(pending)} job(s) to run, {len(jobs) - len(pending)} already done; "
                 f"{backend.describe(len(pending))}, device {device}")
            items = [WorkItem(job, Instrument.from_manifest(manifest), manifest["provenance"]["design_name"])
                     for job in pending]
            _drive(backend, prepare_jobs(items, recorder), recorder, timeout)
    finally:
        if backend is not None:
            backend.close()
        lock.close()
    report.wall_s = time.perf_counter() - wall_start
    return report


def _drive(backend: Backend, items: list[WorkItem], recorder: Recorder, timeout: float | None) -> None:
    """Submit the items, then record each job's outcome as it arrives; time out jobs past ``timeout``."""
    tracked = {item.job.id: _Tracked(item.job, time.monotonic()) for item in items}
    if items:
        backend.submit(items)
    while tracked:
        deadlines = [t.deadline for t in tracked.values() if t.deadline is not None]
        wait_s = min(MAX_WAIT_S, max(0.0, min(deadlines) - time.monotonic())) if deadlines else None
        for event in backend.wait(wait_s):
            run = tracked.get(event.job_id)
            if run is None:  # a late event of a job already recorded (timed out)
                continue
            if isinstance(event, Started):
                run.started = time.monotonic()
                run.deadline = run.started + timeout if timeout else None
                recorder.started(run.job, event.where)
            elif isinstance(event, Progress):
                recorder.progress(event)
            elif isinstance(event, Finished):
                del tracked[event.job_id]
                recorder.record(run.job, missing_outputs(run.job, event.outcome))
            elif isinstance(event, Lost):
                del tracked[event.job_id]
                outcome = Outcome(event.status, event.returncode, event.error, run.elapsed())
                recorder.record(run.job, outcome, note=event.note or event.error)
        now = time.monotonic()
        for run in list(tracked.values()):
            if run.deadline is None or now < run.deadline:
                continue
            wall_s = run.elapsed()  # before the backend's stop, which may restart a worker
            stopped = backend.stop(run.job.id)
            if stopped is None:  # it ended meanwhile: its outcome is on its way
                run.deadline = None
                continue
            del tracked[run.job.id]
            why = f"{stopped.verb} after the --timeout of {timeout:g} s"
            if stopped.detail:
                why += f"; {stopped.detail}"
            recorder.record(run.job, Outcome("timeout", stopped.returncode, why, wall_s), note=why)
