"""The Dask backend: jobs on a Dask distributed cluster (``run-ptychi --scheduler tcp://host:port``).

The parent connects a :class:`distributed.Client` and submits one task per job. Each task runs
:meth:`.worker.WorkerSession.run`, as a local worker does, with one session per Dask worker
process (engines imported once; GPU ``i mod count`` where ``i`` is the number the worker's name
ends with, as LocalCluster and dask-jobqueue name them). The task reports ``Started``,
``Progress`` and ``Finished`` through the scheduler's event log, so the parent hears of a job's
start (its ``--timeout`` counts from there) and its outcome even if the worker dies before the
parent fetched the task's result.

A task that raises outside the job (the session could not start) is ``Lost`` as ``failed``; a
worker that dies while running the job (``KilledWorker`` once the scheduler gives up, or a closed
connection) or a task the scheduler cancels is ``Lost`` as ``crashed``, return code unknown.
:meth:`DaskBackend.stop` cancels a job past its timeout and restarts its worker through its
nanny (a cancelled task keeps running in its thread otherwise).

Requirements on the cluster: the artifact root, the manifest's input roots and the project's
environment at the same paths on the workers as here (a shared filesystem). Since fds 1 and 2
are per process, a Dask worker runs one job at a time (start workers with ``--nthreads 1``; more
threads only queue behind a lock).
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StudyError
from .backend import Event, Finished, Lost, Started, Stopped, event_from_message, event_message
from .records import WorkItem, one_line

CONNECT_TIMEOUT_S = 10
RESTART_TIMEOUT_S = 60  # waiting for a timed-out job's worker to restart
POLL_S = 0.2  # how often the parent looks at finished futures
TOPIC_PREFIX = "run-ptychi"

# Worker side: one job at a time per process (fds 1 and 2 are process-wide), one session per device request.
_JOB_LOCK = threading.Lock()
_SESSIONS: dict[str, Any] = {}


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A client of the scheduler at ``address``; an unreachable one is bad input (StudyError)."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:
        raise StudyError(f"--scheduler {address}: cannot connect to the Dask scheduler ({one_line(exc)})") from None


def task_key(job_id: str, token: str) -> str:
    """A Dask key naming the job; the run token keeps two studies' same-named jobs apart on one cluster."""
    return f"run-ptychi-{re.sub(r'[^A-Za-z0-9_.-]+', '-', job_id)}-{token}"


def slot_of_worker(name: Any) -> int:
    """The worker's index for GPU assignment: its name if an integer, else the number it ends with, else 0."""
    if isinstance(name, int):
        return name
    match = re.search(r"(\d+)$", str(name))
    return int(match.group(1)) if match else 0


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------
def _session(device_request: str, slot: int) -> Any:
    """This Dask worker process's session (engines imported once per process and device request)."""
    from .worker import WorkerSession, configure_worker_logging

    if device_request not in _SESSIONS:
        configure_worker_logging()  # pty-chi's INFO logging goes to fd 2, i.e. the job's log
        _SESSIONS[device_request] = WorkerSession(device_request, slot)
    return _SESSIONS[device_request]


class _EventSender:
    """Forwards a job's events to the parent through the scheduler's event log."""

    def __init__(self, worker: Any, topic: str):
        self.worker = worker
        self.topic = topic

    def send(self, message: dict) -> None:
        # The event log takes msgpack-able values only; numpy scalars become plain floats.
        self.worker.log_event(self.topic, json.loads(json.dumps(message, default=float)))

    def __call__(self, event: Event) -> None:
        self.send(event_message(event))


def run_on_dask_worker(item: WorkItem, device_request: str, topic: str) -> Any:
    """Dask task: run one job exactly as a local worker does; returns its outcome."""
    from distributed import get_worker

    worker = get_worker()
    with _JOB_LOCK:
        session = _session(device_request, slot_of_worker(worker.name))
        session.prepare((item.job.engine,))
        sender = _EventSender(worker, topic)
        sender.send({"kind": "Started", "job_id": item.job.id, "worker": worker.address, "pid": os.getpid()})
        outcome = session.run(item, emit=sender)
        # Also as an event: it reaches the parent before the task's completion does, and survives this
        # worker dying before the parent fetched the task's result (the scheduler would recompute it).
        sender(Finished(item.job.id, outcome))
        return outcome


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
@dataclass
class _Submitted:
    job_id: str
    future: Any
    worker: str | None = None


class DaskBackend:
    """Jobs as tasks on a Dask cluster; events through the scheduler's event log."""

    def __init__(self, address: str, device: str, echo: Callable[[str], None]):
        self.address = address
        self.device = device
        self.echo = echo
        self.client = connect(address)
        self.token = uuid.uuid4().hex[:12]
        self.topic = f"{TOPIC_PREFIX}-{self.token}"
        self.messages: queue.Queue = queue.Queue()
        self.running: dict[str, _Submitted] = {}  # by task key
        self.by_job: dict[str, _Submitted] = {}
        self.arrivals: Any = None
        self.subscribed = False

    def describe(self, n_jobs: int) -> str:
        return f"Dask scheduler {self.address}"

    def submit(self, items: Sequence[WorkItem]) -> None:
        from distributed import as_completed

        self.client.subscribe_topic(self.topic, lambda event: self.messages.put(event[1]))  # (timestamp, message)
        self.subscribed = True
        if not self.client.scheduler_info().get("workers"):
            self.echo("run-ptychi: the Dask cluster has no workers yet; jobs wait until some join")
        for item in items:
            key = task_key(item.job.id, self.token)
            future = self.client.submit(run_on_dask_worker, item, self.device, self.topic, key=key, pure=False)
            self.running[key] = self.by_job[item.job.id] = _Submitted(item.job.id, future)
        self.arrivals = as_completed([sub.future for sub in self.running.values()], loop=self.client.loop)

    def _drain(self, wait_s: float) -> list[dict]:
        """The messages waiting, after waiting up to ``wait_s`` for the first one."""
        try:
            messages = [self.messages.get(timeout=wait_s)]
        except queue.Empty:
            return []
        while True:
            try:
                messages.append(self.messages.get_nowait())
            except queue.Empty:
                return messages

    def _release(self, sub: _Submitted) -> None:
        """Forget a job's task and release it, so the scheduler never reruns it."""
        self.running.pop(sub.future.key, None)
        self.client.cancel([sub.future])

    def _event(self, message: dict) -> Event | None:
        sub = self.by_job.get(message.get("job_id"))
        if sub is None or sub.future.key not in self.running:  # a late message of a job already ended
            return None
        if message["kind"] == "Started":
            sub.worker = message["worker"]
            return Started(sub.job_id, f"Dask worker {sub.worker}")
        event = event_from_message(message)
        if isinstance(event, Finished):
            self._release(sub)
        return event

    def _ended(self, sub: _Submitted) -> Event | None:
        """The job's task ended without its Finished event having been seen."""
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        status = sub.future.status
        if status == "finished":
            self._release(sub)
            return Finished(sub.job_id, sub.future.result())
        if status not in ("cancelled", "error"):  # its result was lost with its worker: computed again
            self.arrivals.add(sub.future)
            return None
        self.running.pop(sub.future.key)
        if status == "cancelled":  # not by us: the scheduler restarted or forgot the task
            return Lost(sub.job_id, "crashed", None,
                        "the Dask scheduler cancelled the task (restarted, or the connection was lost)")
        exc = sub.future.exception()
        if isinstance(exc, (KilledWorker, CommClosedError)):
            last = getattr(getattr(exc, "last_worker", None), "address", None)  # KilledWorker knows it
            where = f" {last}" if last else ""
            return Lost(sub.job_id, "crashed", None,
                        f"Dask worker{where} died while running the job ({type(exc).__name__})")
        why = one_line(exc)
        return Lost(sub.job_id, "failed", 1, why, note=f"the Dask task raised: {why}")

    def wait(self, timeout_s: float | None) -> list[Event]:
        wait_s = POLL_S if timeout_s is None else min(timeout_s, POLL_S)
        events = [self._event(message) for message in self._drain(wait_s)]
        if self.arrivals.has_ready():
            finished = self.arrivals.next_batch(block=False)
            events += [self._event(message) for message in self._drain(0)]  # "Finished" precedes the completion
            for future in finished:
                if future.key in self.running:  # not ended yet (by its Finished event, or by stop)
                    events.append(self._ended(self.running[future.key]))
        return [event for event in events if event is not None]

    def stop(self, job_id: str) -> Stopped | None:
        sub = self.by_job[job_id]
        if sub.future.key not in self.running or sub.future.done():
            return None
        self.running.pop(sub.future.key)
        sub.future.cancel()
        if not sub.worker:
            return Stopped(None, "cancelled")
        try:  # a cancelled task keeps running in its thread; restarting its worker stops it
            status = self.client.restart_workers([sub.worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
            restart = status.get(sub.worker, "unknown")
        except Exception as exc:  # noqa: BLE001 - the job's outcome stands; say why its worker may live on
            restart = f"failed ({one_line(exc)})"
        return Stopped(None, "cancelled", f"its Dask worker {sub.worker}: restart {restart}")

    def close(self) -> None:
        try:
            if self.running:  # interrupted: nothing left behind on the cluster that we can still stop
                self.client.cancel([sub.future for sub in self.running.values()])
            if self.subscribed:
                self.client.unsubscribe_topic(self.topic)
        finally:
            self.client.close()
