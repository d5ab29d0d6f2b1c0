"""What the runner needs from a backend, and the events a backend reports.

A backend runs :class:`~.records.WorkItem` s somewhere (local worker processes, a Dask cluster)
through :func:`.worker.WorkerSession.run` and reports, per job: :class:`Started` (it began on a
worker; the runner's ``--timeout`` counts from here), :class:`Progress`, then either
:class:`Finished` (the worker's own :class:`~.records.Outcome`) or :class:`Lost` (the job's
worker died, or the task was lost). The runner alone decides deadlines: it calls
:meth:`Backend.stop` on a job past its ``--timeout``. Backends write nothing into job folders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .records import Outcome, WorkItem


@dataclass(frozen=True)
class Started:
    job_id: str
    where: str  # "worker 0", "Dask worker tcp://host:port"


@dataclass(frozen=True)
class Progress:
    job_id: str
    epochs: int
    num_epochs: int
    loss: float | None
    run_s: float


@dataclass(frozen=True)
class Finished:
    job_id: str
    outcome: Outcome


@dataclass(frozen=True)
class Lost:
    """The job ended without its worker's outcome: recorded as ``status`` with ``error``."""

    job_id: str
    status: str  # "crashed" (its worker died) or "failed" (the task itself raised)
    returncode: int | None
    error: str
    note: str | None = None  # the line appended to the job's log, when it differs from ``error``


@dataclass(frozen=True)
class Stopped:
    """How :meth:`Backend.stop` ended a job: ``<verb> after the --timeout of T s[; detail]``."""

    returncode: int | None
    verb: str
    detail: str | None = None


Event = Started | Progress | Finished | Lost
EVENT_TYPES = {cls.__name__: cls for cls in (Started, Progress, Finished, Lost)}


def event_message(event: Event) -> dict:
    """A plain-JSON form of an event (Dask's event log carries msgpack-able values only)."""
    return {"kind": type(event).__name__, **dataclasses.asdict(event)}


def event_from_message(message: dict) -> Event:
    """The event of :func:`event_message`'s form; keys the transport added (Dask adds ``worker``) are dropped."""
    cls = EVENT_TYPES[message["kind"]]
    fields = {f.name: message[f.name] for f in dataclasses.fields(cls)}
    if message["kind"] == "Finished":
        fields["outcome"] = Outcome(**fields["outcome"])
    return cls(**fields)


class Backend(Protocol):
    def describe(self, n_jobs: int) -> str:
        """How the jobs will run, for the runner's first line ("2 worker(s)")."""

    def submit(self, items: Sequence[WorkItem]) -> None:
        """Start running ``items`` (all at once; the backend queues what it cannot start yet)."""

    def wait(self, timeout_s: float | None) -> list[Event]:
        """Events that happened, after waiting up to ``timeout_s`` (None: until one does) for the first.

        May return early with none. Raises EngineError when the backend itself cannot go on.
        """

    def stop(self, job_id: str) -> Stopped | None:
        """End a running job (its ``--timeout`` passed); None when it already ended (its event follows)."""

    def close(self) -> None:
        """Stop everything still running and release the workers."""
