"""Typed records of a run: a manifest job (:class:`JobSpec`), what a worker is sent
(:class:`WorkItem`) and what it reports back (:class:`Outcome`).

A :class:`JobSpec` is built once per job after the manifest's schema and path checks, with the
engine's options as a frozen record; from then on nothing looks up string keys of the job. All
records pickle (local worker pipes, Dask tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs import options_hash
from .engines.control import StopRule
from .engines.registry import DEFAULT_ENGINE, engine_spec

STATUSES = ("ok", "failed", "timeout", "crashed")


@dataclass(frozen=True)
class JobSpec:
    """One planned job of a manifest."""

    id: str
    dose: int
    view: str
    split: str
    input_npz: str
    input_sha256: str
    n_images: int
    output_dir: Path
    engine: str
    algorithm: str
    num_epochs: int
    options: Any  # the engine's options record (e.g. PtychiOptions)
    options_hash: str
    selection: dict
    # The folder the job's writes must stay inside (no link on the way from it to output_dir);
    # None: output_dir itself (its own files are still never followed through links).
    artifact_root: Path | None = None
    reconstructor: str | None = None  # the design's reconstructor name (absent in older manifests)
    stopping: StopRule | None = None  # None: every planned epoch runs
    replicate: int = 0  # which independent Poisson draw of the dose (absent in older manifests: 0)

    @property
    def confining_root(self) -> Path:
        return self.artifact_root if self.artifact_root is not None else self.output_dir

    @classmethod
    def from_manifest(cls, job: dict, artifact_root: Path | None = None) -> JobSpec:
        """The record of a schema-checked manifest job; an unknown engine or algorithm is an EngineError."""
        spec = engine_spec(job.get("engine", DEFAULT_ENGINE))
        spec.check_algorithm(job["algorithm"], flag=f"jobs/{job['id']}/algorithm")
        return cls(
            id=job["id"], dose=int(job["dose"]), view=job["view"], split=job["split"],
            input_npz=job["input_npz"], input_sha256=job["input_sha256"], n_images=int(job["n_images"]),
            output_dir=Path(job["output_dir"]), engine=spec.name, algorithm=job["algorithm"],
            num_epochs=int(job["num_epochs"]), options=spec.options(job["engine_options"]),
            options_hash=options_hash(job), selection=dict(job["selection"]),
            artifact_root=None if artifact_root is None else Path(artifact_root),
            reconstructor=job.get("reconstructor"), stopping=StopRule.from_mapping(job.get("stopping")),
            replicate=int(job.get("replicate", 0)),
        )


@dataclass(frozen=True)
class Instrument:
    """The manifest's physical values (for product files)."""

    photon_energy_eV: float
    detector_distance_m: float
    detector_pixel_size_m: float
    exposure_time_s: float
    wavelength_m: float
    object_pixel_size_m: float

    @classmethod
    def from_manifest(cls, manifest: dict) -> Instrument:
        return cls(**{name: float(value) for name, value in manifest["instrument"].items()})


@dataclass(frozen=True)
class WorkItem:
    """Everything a worker needs to run one job."""

    job: JobSpec
    instrument: Instrument
    design_name: str


@dataclass(frozen=True)
class Outcome:
    """What became of one job, as its worker (or the runner, for a lost job) reports it."""

    status: str  # one of STATUSES
    returncode: int | None  # 0 ok, 1 raised, else the worker's exit code (None: unknown)
    error: str | None  # one line; None when ok
    wall_s: float
    device: str | None = None
    reconstruction_s: float | None = None
    epochs: int = 0
    final_loss: float | None = None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a job's error is recorded.

    An OS error names its path: ``PermissionError: /x/ptychi.log: Permission denied``.
    """
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{type(exc).__name__}: {exc.filename}{target}: {exc.strerror}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
