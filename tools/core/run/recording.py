"""Recording outcomes: the one place that writes ``result.json``, the manifest's
``execution_results`` and the runner's notes in a job's ``ptychi.log``, and that prints the
per-job lines. Everything runs in the parent process (validated, atomic JSON writes), after
every job, so a kill at any moment leaves valid files.

A job about to run is first *forgotten* (:meth:`Recorder.forget`): its ``execution_results``
entry leaves the manifest, then its ``result.json`` is removed, before anything is sent to a
worker. A kill at any later moment therefore never leaves "ok" for a job whose outputs are being
replaced: the job reads as not run, to ``summarize`` and to resume alike.

Nothing here writes through a link: the job folder is checked (no link between the artifact
root and it), ``result.json`` is replaced atomically, notes are appended with ``O_NOFOLLOW``.
A job folder that cannot take its files is noted in the job's error and the manifest, and the
run goes on.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

from ... import __version__
from ..errors import ManifestError, StudyError
from ..jobs import MANIFEST_SCHEMA, utc_now
from ..manifests import write_json
from ..safepath import PathError, check_confined, open_append_nofollow
from .backend import Progress
from .engines.registry import engine_spec
from .outputs import LOG_NAME, RESULT_NAME, job_folder
from .records import STATUSES, JobSpec, Outcome

log = logging.getLogger(__name__)

RESULT_SCHEMA = "job_result"
RESULT_KEYS = ("status", "returncode", "error", "wall_s", "reconstruction_s", "epochs", "final_loss", "device",
               "finished")

Echo = Callable[[str], None]


def installed_version(name: str) -> str | None:
    """A distribution's version without importing it (the parent never imports torch)."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def package_versions() -> dict:
    """The versions a result.json records; resume compares ``tools`` and the engine's package."""
    return {"python": platform.python_version(), "numpy": installed_version("numpy") or "?",
            "torch": installed_version("torch"), "ptychi": installed_version("ptychi"), "tools": __version__}


def engine_version(engine: str) -> str | None:
    """The installed version of an engine's package (None when it has none, or it is not installed)."""
    package = engine_spec(engine).package
    return installed_version(package) if package else None


def finite_loss(outcome: Outcome) -> Outcome:
    """An outcome whose final loss is NaN or infinite: the loss is not recorded (JSON has no NaN) and an
    ok becomes a failure (a diverged reconstruction is not a result)."""
    loss = outcome.final_loss
    if loss is None or math.isfinite(loss):
        return outcome
    if outcome.status != "ok":
        return replace(outcome, final_loss=None)
    return replace(outcome, status="failed", returncode=1, final_loss=None,
                   error=f"EngineError: the loss is {loss} after epoch {outcome.epochs} (the reconstruction diverged)")


@dataclass
class JobOutcome:
    """One row of the run report."""

    job_id: str
    status: str
    resumed: bool = False
    wall_s: float = 0.0
    reconstruction_s: float | None = None
    error: str | None = None


@dataclass
class RunReport:
    manifest: Path
    outcomes: list[JobOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    dry_run_commands: list[list[str]] = field(default_factory=list)

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    @property
    def reconstruction_s(self) -> float:
        return sum(o.reconstruction_s or 0.0 for o in self.outcomes if not o.resumed)

    def to_dict(self) -> dict:
        executed = [o for o in self.outcomes if not o.resumed]
        recon = self.reconstruction_s
        return {
            "manifest": str(self.manifest),
            "dry_run": bool(self.dry_run_commands),
            "jobs": [o.__dict__ for o in self.outcomes],
            "counts": {status: sum(1 for o in self.outcomes if o.status == status and not o.resumed)
                       for status in STATUSES} | {
                "resumed": sum(1 for o in self.outcomes if o.resumed)},
            "wall_s": self.wall_s,
            "reconstruction_s": recon,
            "overhead_ratio": (self.wall_s / recon) if executed and recon > 0 else None,
            "commands": self.dry_run_commands,
        }


def progress_line(event: Progress) -> str:
    """The parent's stderr line for a job's progress."""
    loss = "n/a" if event.loss is None else format(event.loss, ".6g")
    return f"  {event.job_id}: epoch {event.epochs}/{event.num_epochs}, loss {loss}"


class Recorder:
    """Writes result.json, the manifest's execution_results and log notes; prints the job lines."""

    def __init__(self, manifest_path: Path, manifest: dict, report: RunReport, echo: Echo):
        self.path = manifest_path
        self.manifest = manifest
        self.report = report
        self.echo = echo

    def started(self, job: JobSpec, where: str) -> None:
        self.echo(f"[start] {job.id} ({job.n_images} patterns, {job.algorithm} {job.num_epochs} epochs) on {where}")

    def progress(self, event: Progress) -> None:
        self.echo(progress_line(event))

    def forget(self, jobs: list[JobSpec]) -> list[tuple[JobSpec, str]]:
        """Before ``jobs`` run: drop their manifest entries (one atomic write), then their result.json.

        Returns the jobs whose result.json could not be removed, each with the reason (a folder in
        its place, a read-only folder): those must not run.
        """
        ids = {job.id for job in jobs}
        kept = [r for r in self.manifest["execution_results"] if r["job_id"] not in ids]
        if len(kept) != len(self.manifest["execution_results"]):
            self.manifest["execution_results"] = kept
            self._write_manifest()
        refused = []
        for job in jobs:
            path = job.output_dir / RESULT_NAME
            try:
                check_confined(job.confining_root, job.output_dir, "job folder")
                path.unlink(missing_ok=True)  # a link in its place is removed itself, never followed
            except PathError as exc:
                refused.append((job, str(exc)))
            except IsADirectoryError:
                refused.append((job, f"{path}: is a folder where the job's result.json belongs (remove it)"))
            except OSError as exc:
                refused.append((job, f"{path}: cannot remove the old result.json ({exc.strerror or exc})"))
        return refused

    def record(self, job: JobSpec, outcome: Outcome, note: str | None = None) -> None:
        """Record a job that ran (or was lost): ``note`` is first appended to its log.

        The job's files are written only into its confined folder (made here when the workers' filesystem
        is not shared); when that is refused or the writes fail, the manifest still gets the outcome, and an
        "ok" whose result.json cannot be written becomes a failure naming why.
        """
        outcome = finite_loss(outcome)
        try:
            job_folder(job)
        except (StudyError, OSError) as exc:
            log.warning("%s: not writing %s or notes there: %s", job.id, RESULT_NAME, exc)
            self._write_back(job, self._result(job, outcome), resumed=False)
            return
        if note is not None:
            try:
                with open_append_nofollow(job.output_dir / LOG_NAME) as handle:
                    handle.write(f"\nrun-ptychi: {note}\n")
            except (StudyError, OSError) as exc:  # the log is the job's problem, already in its error
                log.warning("%s: note not appended: %s", job.id, exc)
        result = self._result(job, outcome)
        try:
            write_json(job.output_dir / RESULT_NAME, result, RESULT_SCHEMA)
        except OSError as exc:
            why = f"{job.output_dir / RESULT_NAME}: not written ({exc.strerror or exc})"
            if result["status"] == "ok":
                result.update(status="failed", returncode=1, error=f"OSError: {why}")
            log.warning("%s: %s", job.id, why)
        self._write_back(job, result, resumed=False)

    def _result(self, job: JobSpec, outcome: Outcome) -> dict:
        return {
            "schema_version": "1.0", "job_id": job.id, "dose": job.dose, "view": job.view, "split": job.split,
            "replicate": job.replicate, "status": outcome.status, "returncode": outcome.returncode, "error": outcome.error,
            "device": outcome.device, "wall_s": round(outcome.wall_s, 4),
            "reconstruction_s": None if outcome.reconstruction_s is None else round(outcome.reconstruction_s, 4),
            "epochs": int(outcome.epochs), "final_loss": outcome.final_loss, "input_npz": job.input_npz,
            "input_sha256": job.input_sha256, "options_hash": job.options_hash, "engine": job.engine,
            "algorithm": job.algorithm, "num_epochs": job.num_epochs, "finished": utc_now(),
            "versions": package_versions(), "engine_version": engine_version(job.engine),
            **({"reconstructor": job.reconstructor} if job.reconstructor else {}),
        }

    def resumed(self, job: JobSpec, result: dict) -> None:
        """Record a job skipped because its ``result`` already says ok for the same input and options."""
        self._write_back(job, result, resumed=True)

    def _write_manifest(self) -> None:
        """The manifest, atomically; a folder that refuses it ends the run (exit 1), naming the manifest."""
        try:
            write_json(self.path, self.manifest, MANIFEST_SCHEMA)
        except OSError as exc:
            raise ManifestError(f"{self.path}: cannot write the manifest ({exc.strerror or exc})") from None

    def _write_back(self, job: JobSpec, result: dict, resumed: bool) -> None:
        log_path = job.output_dir / LOG_NAME
        entry = {"job_id": job.id, "dose": job.dose, "view": job.view, "split": job.split, "replicate": job.replicate,
                 **({"reconstructor": job.reconstructor} if job.reconstructor else {}),
                 **{k: result[k] for k in RESULT_KEYS}, "log_path": str(log_path),
                 "result_path": str(job.output_dir / RESULT_NAME), "resumed": resumed, "selection": job.selection}
        results = [r for r in self.manifest["execution_results"] if r["job_id"] != job.id]
        results.append(entry)
        self.manifest["execution_results"] = results
        self._write_manifest()
        self.report.outcomes.append(JobOutcome(job.id, result["status"], resumed, result["wall_s"],
                                               result["reconstruction_s"], result["error"]))
        if resumed:
            self.echo(f"[skip] {job.id}: already ok (same input, options and versions; --force redoes it)")
        elif result["status"] == "ok":
            self.echo(f"[ok] {job.id}: {result['epochs']} epochs, final loss {result['final_loss']:.6g}, "
                      f"{result['reconstruction_s']:.2f} s in task.run, {result['wall_s']:.2f} s wall")
        else:
            self.echo(f"[{result['status']}] {job.id}: {result['error']} (log: {log_path})")
