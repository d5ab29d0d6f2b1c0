"""Running a manifest: select the jobs, lock the artifact root, resume, enforce deadlines, record.

:func:`run_manifest` is the whole run path of ``run-ptychi``. It reads the manifest (schema,
roots, commands and job folders checked), builds a typed :class:`~.records.JobSpec` per selected
job, takes the artifact root's lock (a replan cannot interleave with the write-backs), skips jobs
whose ``result.json`` says ok for the same input sha256 and options hash (unless ``force``), and
hands the rest to a backend: local worker processes (:mod:`.local`) or a Dask cluster
(:mod:`.dask_backend`). Before submitting, the parent only checks that each input is still a
regular file (cheap); the sha256 and data-contract checks happen in the worker, on both backends.
The runner alone enforces ``--timeout`` (from the moment a job starts on a worker) and passes every
outcome to the :class:`~.recording.Recorder`. A job's exception, crash or timeout fails that job
only; the caller turns :attr:`RunReport.failed` into exit status 3.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ManifestError, StudyError
from ..fileio import sha256_file
from ..jobs import load_manifest, lock_artifact_root
from ..manifests import read_json
from .backend import Backend, Finished, Lost, Progress, Started
from .dask_backend import DaskBackend
from .local import LocalBackend
from .outputs import OUTPUT_FILES, RESULT_NAME
from .recording import RESULT_SCHEMA, Echo, Recorder, RunReport
from .records import Instrument, JobSpec, Outcome, WorkItem

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


def already_done(job: JobSpec) -> dict | None:
    """The job's result.json if it says ok for the same input and options and the outputs exist."""
    path = job.output_dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = read_json(path, RESULT_SCHEMA)
    except ManifestError as exc:
        log.warning("ignoring %s", exc)
        return None
    if result["status"] != "ok" or result["options_hash"] != job.options_hash:
        return None
    if result["input_sha256"] != job.input_sha256 or not Path(job.input_npz).is_file():
        return None
    if any(not (job.output_dir / name).is_file() for name in OUTPUT_FILES):
        return None
    if sha256_file(job.input_npz) != job.input_sha256:  # the input changed since the run
        return None
    return result


def submission_error(job: JobSpec) -> str | None:
    """The cheap check before a job is sent anywhere (load_manifest already kept it inside its root)."""
    if not Path(job.input_npz).is_file():
        return f"StudyError: {job.input_npz}: not a regular file (moved or deleted since planning?)"
    return None


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
    manifest = load_manifest(manifest_path)
    selected = select_jobs(manifest, only, manifest_path)
    report = RunReport(manifest_path)
    if dry_run:
        report.dry_run_commands = [list(job["command"]) for job in selected]
        return report
    jobs = [JobSpec.from_manifest(job) for job in selected]
    if workers < 1:
        raise StudyError(f"--workers {workers}: must be >= 1")
    if scheduler and workers > 1:
        raise StudyError(f"--scheduler {scheduler} and --workers {workers} exclude each other "
                         "(the Dask cluster's workers run the jobs)")
    lock = lock_artifact_root(manifest_path.parent, "another run-ptychi is running on this artifact root")
    backend: Backend | None = None
    try:
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
            _drive(backend, items, recorder, timeout)
    finally:
        if backend is not None:
            backend.close()
        lock.close()
    report.wall_s = time.perf_counter() - wall_start
    return report


def _drive(backend: Backend, items: list[WorkItem], recorder: Recorder, timeout: float | None) -> None:
    """Submit the items, then record each job's outcome as it arrives; time out jobs past ``timeout``."""
    tracked: dict[str, _Tracked] = {}
    submit: list[WorkItem] = []
    for item in items:
        job = item.job
        error = submission_error(job)
        if error is not None:  # never sent: recorded as the failure a worker would report
            recorder.record(job, Outcome("failed", 1, error, 0.0),
                            note=f"input check before submission failed: {error}")
            continue
        submit.append(item)
        tracked[job.id] = _Tracked(job, time.monotonic())
    if submit:
        backend.submit(submit)
    while tracked:
        deadlines = [t.deadline for t in tracked.values() if t.deadline is not None]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
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
