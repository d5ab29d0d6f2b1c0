"""Running a manifest's jobs on a Dask distributed cluster (``run-ptychi --scheduler tcp://host:port``).

The parent connects a :class:`distributed.Client` to the scheduler and submits one task per
pending job. Each task runs :func:`ptydose.core.executors.run_job_in_worker`, the function local
workers run, so the job's ``ptychi.log`` captures its output and its outputs are computed the same
way; torch and ptychi are imported once per Dask worker process (module-level cache below). The
parent alone writes ``result.json`` and the manifest, through the same ``_Recorder``, as results
arrive; resume, ``execution_results`` and exit codes are those of the local path.

Outcomes: a task that raises is that job's failure (``failed``); a worker that dies while running
the job (``KilledWorker`` once the scheduler gives up, or a closed connection) is ``crashed``; a
job that runs past ``--timeout`` (counted from the moment it starts on a worker, reported through
the scheduler's event log) is cancelled and its worker restarted through its nanny (``timeout``).
Return codes of crashed and timed-out jobs are unknown here (null).

Requirements on the cluster: the artifact root, the manifest's input roots and the project's
environment must be the same paths on the workers as here (a shared filesystem); the parent checks
each input's sha256 and the data contract before submitting, and each ``ok`` job's outputs being
visible to it afterwards. Since fds 1 and 2 are per process, a Dask worker runs one job at a time
(start workers with ``--nthreads 1``; more threads only queue behind a lock).
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import read_contract_npz
from .errors import StudyError
from .executors import (
    OUTPUT_FILES,
    Echo,
    _configure_worker_logging,
    _Recorder,
    check_input,
    one_line,
    progress_line,
    run_job_in_worker,
)

CONNECT_TIMEOUT_S = 10
RESTART_TIMEOUT_S = 60  # waiting for a timed-out job's worker to restart
POLL_S = 0.2  # how often the parent looks at finished futures and deadlines
TOPIC_PREFIX = "run-ptychi"

# Worker side: one job at a time per process (fds 1 and 2 are process-wide), engine imported once.
_JOB_LOCK = threading.Lock()
_DEVICES: dict[str, tuple[str, str]] = {}  # device request -> (device, label)


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


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------
def _engine_device(request: str) -> tuple[str, str]:
    """Import the engine and resolve the device once per worker process and device request."""
    if request not in _DEVICES:
        from . import engine

        engine.import_engine()
        device = engine.resolve_device(request)
        _configure_worker_logging()  # pty-chi's INFO logging goes to fd 2, i.e. the job's log
        _DEVICES[request] = (device, engine.device_label(device))
    return _DEVICES[request]


class _EventSender:
    """Forwards a job's messages to the parent through the scheduler's event log."""

    def __init__(self, worker: Any, topic: str):
        self.worker = worker
        self.topic = topic

    def send(self, message: tuple[str, dict]) -> None:
        kind, body = message
        # The event log takes msgpack-able values only; numpy scalars become plain floats.
        self.worker.log_event(self.topic, json.loads(json.dumps({"kind": kind, **body}, default=float)))


def run_job_on_dask_worker(payload: dict, device_request: str, topic: str) -> dict:
    """Dask task: run one job exactly as a local worker does; returns its outcome."""
    from distributed import get_worker

    worker = get_worker()
    with _JOB_LOCK:
        device, label = _engine_device(device_request)
        job = payload["job"]
        out = Path(job["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        # A rerun must not leave an old "ok" beside half-replaced outputs if it is killed.
        (out / "result.json").unlink(missing_ok=True)
        sender = _EventSender(worker, topic)
        sender.send(("start", {"job_id": job["id"], "worker": worker.address, "pid": os.getpid()}))
        outcome = run_job_in_worker(payload, device, label, sender)
        # Also as an event: it reaches the parent before the task's completion does, and survives this
        # worker dying before the parent fetched the task's result (the scheduler would recompute it).
        sender.send(("done", {"job_id": job["id"], "outcome": outcome}))
        return outcome


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
@dataclass
class _Submitted:
    job: dict
    options_hash: str
    future: Any
    submitted: float
    started: float | None = None
    deadline: float | None = None
    worker: str | None = None

    def elapsed(self) -> float:
        return time.monotonic() - (self.started if self.started is not None else self.submitted)


def _append_log(job: dict, line: str) -> None:
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ptychi.log", "a") as handle:
        handle.write(f"\nrun-ptychi: {line}\n")


def _precheck(job: dict) -> str | None:
    """The job's input against its planned sha256 and the data contract; the error line, or None."""
    try:
        check_input(job)
        read_contract_npz(job["input_npz"], check_values=True)
    except Exception as exc:  # noqa: BLE001 - the job's failure, as a worker would report it
        return one_line(exc)
    return None


def _drain(events: queue.Queue, wait_s: float) -> list[dict]:
    """The messages waiting in ``events``, after waiting up to ``wait_s`` for the first one."""
    try:
        messages = [events.get(timeout=wait_s)]
    except queue.Empty:
        return []
    while True:
        try:
            messages.append(events.get_nowait())
        except queue.Empty:
            return messages


def _failure(status: str, returncode: int | None, error: str, wall_s: float, device: str | None = None) -> dict:
    return {"status": status, "returncode": returncode, "error": error, "wall_s": wall_s, "device": device}


def execute_on_scheduler(client: Any, pending: list[tuple[dict, str]], manifest: dict, recorder: _Recorder,
                         device: str, timeout: float | None, echo: Echo) -> None:
    """Submit the pending jobs to the cluster and record each outcome as it arrives."""
    from distributed import as_completed
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    token = uuid.uuid4().hex[:12]
    topic = f"{TOPIC_PREFIX}-{token}"
    events: queue.Queue = queue.Queue()
    client.subscribe_topic(topic, lambda event: events.put(event[1]))  # event = (timestamp, message)
    n_workers = len(client.scheduler_info().get("workers", {}))
    if n_workers == 0:
        echo("run-ptychi: the Dask cluster has no workers yet; jobs wait until some join")
    design_name = manifest["provenance"]["design_name"]

    running: dict[str, _Submitted] = {}  # by task key
    for job, opts_hash in pending:
        check_start = time.monotonic()
        error = _precheck(job)
        if error is not None:  # never sent: the same failure a worker would record, found here
            (Path(job["output_dir"]) / "result.json").unlink(missing_ok=True)
            _append_log(job, f"input check before submission failed: {error}")
            recorder.record(job, opts_hash, _failure("failed", 1, error, time.monotonic() - check_start))
            continue
        payload = {"job": job, "options_hash": opts_hash, "instrument": manifest["instrument"],
                   "design_name": design_name}
        key = task_key(job["id"], token)
        future = client.submit(run_job_on_dask_worker, payload, device, topic, key=key, pure=False)
        running[key] = _Submitted(job, opts_hash, future, time.monotonic())
    by_job = {sub.job["id"]: sub for sub in running.values()}
    arrivals = as_completed([sub.future for sub in running.values()], loop=client.loop)  # no default client

    def settle(sub: _Submitted, outcome: dict) -> None:
        """Record the outcome the job returned; release its task so the scheduler never reruns it."""
        job = sub.job
        running.pop(sub.future.key)
        client.cancel([sub.future])
        out = Path(job["output_dir"])
        out.mkdir(parents=True, exist_ok=True)  # absent here when the workers' filesystem is not shared
        missing = [name for name in OUTPUT_FILES if not (out / name).is_file()]
        if outcome["status"] == "ok" and missing:
            outcome = _failure("failed", 1, f"{', '.join(missing)} not visible in {out} here: the artifact "
                               "root must be on a filesystem the Dask workers share", outcome["wall_s"],
                               outcome.get("device"))
        recorder.record(job, sub.options_hash, outcome)

    def finish(sub: _Submitted) -> None:
        """The task ended without its "done" event having been seen."""
        job = sub.job
        status = sub.future.status
        if status == "finished":
            settle(sub, sub.future.result())
            return
        if status not in ("cancelled", "error"):  # its result was lost with its worker: computed again
            arrivals.add(sub.future)
            return
        running.pop(sub.future.key)
        if status == "cancelled":  # not by us: the scheduler restarted or forgot the task
            why = "the Dask scheduler cancelled the task (restarted, or the connection was lost)"
            _append_log(job, why)
            recorder.record(job, sub.options_hash, _failure("crashed", None, why, sub.elapsed()))
            return
        exc = sub.future.exception()
        if isinstance(exc, (KilledWorker, CommClosedError)):
            last = getattr(getattr(exc, "last_worker", None), "address", None)  # KilledWorker knows it
            where = f" {last}" if last else ""
            why = f"Dask worker{where} died while running the job ({type(exc).__name__})"
            _append_log(job, why)
            recorder.record(job, sub.options_hash, _failure("crashed", None, why, sub.elapsed()))
        else:
            why = one_line(exc)
            _append_log(job, f"the Dask task raised: {why}")
            recorder.record(job, sub.options_hash, _failure("failed", 1, why, sub.elapsed()))

    def handle(message: dict) -> None:
        sub = by_job.get(message.get("job_id"))
        if sub is None or sub.future.key not in running:  # a late message of a job already recorded
            return
        if message["kind"] == "start":
            sub.started = time.monotonic()
            sub.deadline = sub.started + timeout if timeout else None
            sub.worker = message["worker"]
            job = sub.job
            echo(f"[start] {job['id']} ({job['n_images']} patterns, {job['algorithm']} {job['num_epochs']} "
                 f"epochs) on Dask worker {sub.worker}")
        elif message["kind"] == "progress":
            echo(progress_line(message))
        elif message["kind"] == "done":
            settle(sub, message["outcome"])

    def time_out(sub: _Submitted) -> None:
        running.pop(sub.future.key)
        sub.future.cancel()
        wall_s = sub.elapsed()
        why = f"cancelled after the --timeout of {timeout:g} s"
        if sub.worker:  # a cancelled task keeps running in its thread; restarting its worker stops it
            try:
                status = client.restart_workers([sub.worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
                restart = status.get(sub.worker, "unknown")
            except Exception as exc:  # noqa: BLE001 - the job's outcome stands; say why its worker may live on
                restart = f"failed ({one_line(exc)})"
            why += f"; its Dask worker {sub.worker}: restart {restart}"
        _append_log(sub.job, why)
        recorder.record(sub.job, sub.options_hash, _failure("timeout", None, why, wall_s))

    try:
        while running:
            for message in _drain(events, POLL_S):
                handle(message)
            if arrivals.has_ready():
                finished = arrivals.next_batch(block=False)
                for message in _drain(events, 0):  # a job's "done" event precedes its task's completion
                    handle(message)
                for future in finished:
                    if future.key in running:  # not recorded yet (from its "done" event, or as timed out)
                        finish(running[future.key])
            now = time.monotonic()
            for sub in list(running.values()):
                if sub.deadline is not None and now >= sub.deadline and not sub.future.done():
                    time_out(sub)
    finally:
        if running:  # interrupted: nothing left behind on the cluster that we can still stop
            client.cancel([sub.future for sub in running.values()])
        client.unsubscribe_topic(topic)
