"""Recording outcomes: the one place that writes ``result.json``, the manifest's
``execution_results`` and the runner's notes in a job's ``ptychi.log``, and that prints the
per-job lines. Everything runs in the parent process (validated, atomic JSON writes), after
every job, so a kill at any moment leaves valid files.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

from ... import __version__
from ..jobs import MANIFEST_SCHEMA, utc_now
from ..manifests import write_json
from .backend import Progress
from .outputs import LOG_NAME, RESULT_NAME
from .records import STATUSES, JobSpec, Outcome

RESULT_SCHEMA = "job_result"
RESULT_KEYS = ("status", "returncode", "error", "wall_s", "reconstruction_s", "epochs", "final_loss", "device",
               "finished")

Echo = Callable[[str], None]


def package_versions() -> dict:
    """Versions without importing the packages (the parent never imports torch)."""

    def version(name: str) -> str | None:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "numpy": version("numpy") or "?",
            "torch": version("torch"), "ptychi": version("ptychi"), "tools": __version__}


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

    def record(self, job: JobSpec, outcome: Outcome, note: str | None = None) -> None:
        """Record a job that ran (or was lost): ``note`` is first appended to its log."""
        if note is not None:
            job.output_dir.mkdir(parents=True, exist_ok=True)  # absent here when the workers' filesystem is not shared
            with open(job.output_dir / LOG_NAME, "a") as handle:
                handle.write(f"\nrun-ptychi: {note}\n")
        result = {
            "schema_version": "1.0", "job_id": job.id, "dose": job.dose, "view": job.view, "split": job.split,
            "status": outcome.status, "returncode": outcome.returncode, "error": outcome.error,
            "device": outcome.device, "wall_s": round(outcome.wall_s, 4),
            "reconstruction_s": None if outcome.reconstruction_s is None else round(outcome.reconstruction_s, 4),
            "epochs": int(outcome.epochs), "final_loss": outcome.final_loss, "input_npz": job.input_npz,
            "input_sha256": job.input_sha256, "options_hash": job.options_hash, "engine": job.engine,
            "algorithm": job.algorithm, "num_epochs": job.num_epochs, "finished": utc_now(),
            "versions": package_versions(),
        }
        write_json(job.output_dir / RESULT_NAME, result, RESULT_SCHEMA)
        self._write_back(job, result, resumed=False)

    def resumed(self, job: JobSpec, result: dict) -> None:
        """Record a job skipped because its ``result`` already says ok for the same input and options."""
        self._write_back(job, result, resumed=True)

    def _write_back(self, job: JobSpec, result: dict, resumed: bool) -> None:
        log_path = job.output_dir / LOG_NAME
        entry = {"job_id": job.id, "dose": job.dose, "view": job.view, "split": job.split,
                 **{k: result[k] for k in RESULT_KEYS}, "log_path": str(log_path),
                 "result_path": str(job.output_dir / RESULT_NAME), "resumed": resumed, "selection": job.selection}
        results = [r for r in self.manifest["execution_results"] if r["job_id"] != job.id]
        results.append(entry)
        self.manifest["execution_results"] = results
        write_json(self.path, self.manifest, MANIFEST_SCHEMA)
        self.report.outcomes.append(JobOutcome(job.id, result["status"], resumed, result["wall_s"],
                                               result["reconstruction_s"], result["error"]))
        if resumed:
            self.echo(f"[skip] {job.id}: already ok (same input and options; --force redoes it)")
        elif result["status"] == "ok":
            self.echo(f"[ok] {job.id}: {result['epochs']} epochs, final loss {result['final_loss']:.6g}, "
                      f"{result['reconstruction_s']:.2f} s in task.run, {result['wall_s']:.2f} s wall")
        else:
            self.echo(f"[{result['status']}] {job.id}: {result['error']} (log: {log_path})")
