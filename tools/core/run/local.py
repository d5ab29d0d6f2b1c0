"""The local backend: ``spawn``-ed worker processes on this machine (``run-ptychi --workers N``).

Each worker imports torch and the jobs' engines once, owns GPU ``slot mod count`` when the device
is CUDA, then runs the jobs it is sent over a pipe through :class:`.worker.WorkerSession`. A
worker that dies (segfault, ``os._exit``, OOM kill) is reported as :class:`.backend.Lost`, and a
fresh worker takes its slot; :meth:`LocalBackend.stop` kills the worker of a job past its
``--timeout``. Workers die with the parent (``PR_SET_PDEATHSIG``), so killing ``run-ptychi``
leaves no stray reconstructions.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait

from ..errors import EngineError
from .backend import Event, Finished, Lost, Started, Stopped
from .records import WorkItem, one_line

WORKER_START_FAILURES = 3  # workers dying before their first job: then give up (exit 1)
SHUTDOWN_JOIN_S = 10


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (no orphaned reconstructions)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int | None:
    """torch threads per worker: the cores shared out, unless the user set OMP_NUM_THREADS.

    This is each worker's ceiling; before every chunk of epochs :func:`.threads.adapt_threads`
    lowers it to the cores other processes leave free (benchmarks/bench_contention.py).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() // workers)


def configure_threads(threads: int | None) -> None:
    """After torch is imported: the worker's thread count and the ceiling adapt_threads keeps under.

    OpenMP keeps its default wait policy (idle threads spin briefly, then sleep): alone it is the
    fastest (``OMP_WAIT_POLICY=PASSIVE`` was 1.3x slower), and the harm spinning does beside a
    competitor is avoided by running fewer threads instead (benchmarks/bench_contention.py).
    """
    import torch

    from .threads import set_thread_ceiling

    if threads:
        torch.set_num_threads(threads)
    set_thread_ceiling(threads)


def worker_main(conn: Connection, slot: int, device_request: str, threads: int | None,
                engines: tuple[str, ...]) -> None:
    """Worker process: import the engines once, then run jobs until told to stop."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    from .worker import WorkerSession, configure_worker_logging

    try:
        configure_threads(threads)
        session = WorkerSession(device_request, slot)
        label = session.prepare(engines)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a start failure
        conn.send(("fatal", one_line(exc)))
        return
    configure_worker_logging()
    conn.send(("ready", {"pid": os.getpid(), "device": label}))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        outcome = session.run(item, emit=lambda event: conn.send(("event", event)))
        conn.send(("event", Finished(item.job.id, outcome)))


class _Worker:
    def __init__(self, ctx, slot: int, device: str, threads: int | None, engines: tuple[str, ...]):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, slot, device, threads, engines),
                                   name=f"run-ptychi-worker-{slot}", daemon=True)
        self.process.start()
        child.close()
        self.slot = slot
        self.job_id: str | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class LocalBackend:
    """Up to ``workers`` worker processes, each running one job at a time."""

    def __init__(self, device: str, workers: int):
        if workers < 1:
            raise EngineError(f"--workers {workers}: must be >= 1")
        self.device = device
        self.workers = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.queue: list[WorkItem] = []
        self.pool: list[_Worker] = []
        self.engines: tuple[str, ...] = ()
        self.threads: int | None = None
        self.start_failures = 0

    def describe(self, n_jobs: int) -> str:
        return f"{min(self.workers, n_jobs)} worker(s)"

    def submit(self, items: Sequence[WorkItem]) -> None:
        self.queue.extend(items)
        self.engines = tuple(sorted({item.job.engine for item in self.queue}))
        self.threads = threads_per_worker(self.workers)
        while len(self.pool) < min(self.workers, len(self.queue)):
            self._spawn()

    def _spawn(self) -> None:
        taken = {worker.slot for worker in self.pool}
        slot = min(i for i in range(self.workers) if i not in taken)  # a replacement takes the free slot
        self.pool.append(_Worker(self.ctx, slot, self.device, self.threads, self.engines))

    def _dispatch(self, worker: _Worker, events: list[Event]) -> None:
        item = self.queue.pop(0)
        try:
            worker.conn.send(item)
        except (BrokenPipeError, OSError):  # the worker died meanwhile: its sentinel reports it
            self.queue.insert(0, item)
            return
        worker.job_id = item.job.id
        events.append(Started(item.job.id, f"worker {worker.slot}"))

    def _retire(self, worker: _Worker) -> None:
        """Remove a worker from the pool; start another while jobs wait."""
        self.pool.remove(worker)
        if self.queue and len(self.pool) < self.workers:
            self._spawn()

    def wait(self, timeout_s: float | None) -> list[Event]:
        if not self.pool:
            raise EngineError("no worker left while jobs are outstanding")
        wait([w.conn for w in self.pool] + [w.process.sentinel for w in self.pool], timeout=timeout_s)
        events: list[Event] = []
        for worker in list(self.pool):
            message = None
            try:
                if worker.conn.poll():
                    message = worker.conn.recv()
            except (EOFError, OSError):
                message = None
            if message is not None:
                kind, body = message
                if kind == "fatal":
                    raise EngineError(f"worker could not start: {body}")
                if kind == "event":
                    events.append(body)
                    if not isinstance(body, Finished):
                        continue
                    worker.job_id = None
                if self.queue:  # ready, or done with its job
                    self._dispatch(worker, events)
                else:
                    worker.conn.send(None)
                    worker.process.join(SHUTDOWN_JOIN_S)
                    worker.kill()
                    self.pool.remove(worker)
                continue
            if not worker.process.is_alive():
                worker.process.join()
                code = worker.process.exitcode
                worker.conn.close()
                if worker.job_id is not None:
                    events.append(Lost(worker.job_id, "crashed", code,
                                       f"worker process died (exit code {code}) while running the job"))
                else:
                    self.start_failures += 1
                    if self.start_failures >= WORKER_START_FAILURES:
                        raise EngineError(f"worker processes keep dying before any job (exit code {code})")
                self._retire(worker)
        return events

    def stop(self, job_id: str) -> Stopped | None:
        worker = next((w for w in self.pool if w.job_id == job_id), None)
        if worker is None:
            return None
        worker.kill()
        self._retire(worker)
        return Stopped(worker.process.exitcode, "killed")

    def close(self) -> None:
        for worker in self.pool:
            worker.kill()
        self.pool.clear()
