"""Running one job inside a worker process, the same way on every backend.

A :class:`WorkerSession` lives once per worker process: it imports each engine once, resolves
the device once and owns one GPU (worker slot ``i`` -> GPU ``i mod count``). :meth:`WorkerSession.run`
runs one job with the process's file descriptors 1 and 2 pointed at the job's ``ptychi.log``, so
everything the job prints -- Python, pty-chi's logging and tqdm, C extensions -- lands there. In
order: the input's sha256 against the plan, the data-contract check (:func:`.engines.base.load_inputs`,
which hands the engine no ground truth), the engine, then ``reconstruction.npz``, ``losses.csv``
and ``product.h5``. It never raises: a job's exception is its :class:`~.records.Outcome`, and so is
a job folder it may not write (a link on the way from the artifact root, a log that is a link,
a FIFO or a folder, a read-only folder).

The runner removed the job's ``result.json`` (and its manifest entry) before sending the job, so
a kill from here on leaves the job "not done", never "ok" beside half-replaced outputs.

Fault injection (tests only): the environment variable ``RUN_PTYCHI_FAULT_INJECTION`` holds
``<job id>=<mode>`` pairs separated by commas; a worker honours it after loading that job's
input. Modes: ``raise`` (RuntimeError), ``exit`` (``os._exit(13)``), ``segfault`` (SIGSEGV),
``hang`` (sleep until killed).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ... import __version__
from ..errors import EngineError, StudyError
from ..fileio import sha256_file
from ..safepath import open_truncated_nofollow
from .backend import Event, Progress
from .engines.base import Engine, load_inputs
from .engines.control import RunControl
from .engines.registry import EngineSpec, engine_spec
from .outputs import LOG_NAME, job_folder, write_job_outputs
from .records import JobSpec, Outcome, WorkItem, one_line

FAULT_ENV = "RUN_PTYCHI_FAULT_INJECTION"
FAULT_MODES = ("raise", "exit", "segfault", "hang")
DEVICES = ("auto", "cpu", "cuda")

Emit = Callable[[Event], None]


def fault_for(job_id: str) -> str | None:
    """The fault-injection mode the environment asks for this job (tests only)."""
    for pair in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        target, _, mode = pair.partition("=")
        if target.strip() == job_id:
            if mode.strip() not in FAULT_MODES:
                raise EngineError(f"{FAULT_ENV}: unknown mode {mode!r} (choose from {', '.join(FAULT_MODES)})")
            return mode.strip()
    return None


def inject_fault(mode: str) -> None:
    print(f"fault injection: {mode}", flush=True)
    if mode == "raise":
        raise RuntimeError("injected fault")
    if mode == "exit":
        os._exit(13)
    if mode == "segfault":
        ctypes.string_at(0)
    if mode == "hang":
        while True:
            time.sleep(60)


def open_job_log(log_path: Path) -> int:
    """The job's log, emptied for this run: a link, FIFO, device or folder in its place is a PathError."""
    return open_truncated_nofollow(log_path, "job log (ptychi.log)")


class LogCapture:
    """Point fds 1 and 2 at an open log descriptor for the duration of a job (C-level output included).

    The descriptor comes from :func:`open_job_log`, so nothing is opened (or can fail) here.
    """

    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self) -> LogCapture:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in (*self.saved, self.fd):
            os.close(fd)


def configure_worker_logging() -> None:
    """pty-chi logs at INFO (losses, device); send it to fd 2, i.e. the job's log while it runs."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def resolve_device(request: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if request not in DEVICES:
        raise EngineError(f"--device {request}: expected {', '.join(DEVICES)}")
    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda: torch sees no CUDA device")
    return request


def gpu_for_slot(slot: int, gpu_count: int) -> int:
    """The GPU a worker owns: slot ``i`` of the pool (or of the Dask cluster) -> GPU ``i mod count``."""
    if gpu_count < 1:
        raise EngineError("no CUDA device to assign")
    return slot % gpu_count


def device_label(device: str) -> str:
    """``cpu`` or ``cuda:<index> (<name>)`` of the current CUDA device."""
    if device != "cuda":
        return "cpu"
    import torch

    index = torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def check_input_sha256(job: JobSpec) -> None:
    """Before any compute: the input is still the file that was planned."""
    digest = sha256_file(job.input_npz)
    if digest != job.input_sha256:
        raise StudyError(f"{job.input_npz}: sha256 {digest[:12]}... differs from the plan's "
                         f"{job.input_sha256[:12]}... (the file changed; run plan-jobs again)")


def control_argument(spec: EngineSpec, job: JobSpec) -> dict:
    """``{"control": RunControl(...)}`` for an engine that runs the shared chunk loop; ``{}`` for one
    that does not (the command engine runs its program to the end).

    Checkpoints are always asked for. A job with a stopping rule on an engine that cannot honour
    it is an EngineError, never a silently longer run.
    """
    if spec.runs_chunk_loop:
        return {"control": RunControl(stop=job.stopping)}
    if job.stopping is not None:
        raise EngineError(f"engine {job.engine}: cannot apply a stopping rule ({job.stopping.rule}); "
                          "remove the reconstructor's stopping setting")
    return {}


class WorkerSession:
    """One worker process's engines (imported once), device and GPU slot."""

    def __init__(self, device_request: str, slot: int):
        self.device_request = device_request
        self.slot = slot
        self.device: str | None = None
        self._engines: dict[str, Engine] = {}

    def prepare(self, engines: tuple[str, ...] = ()) -> str:
        """Import ``engines``, resolve the device and take this slot's GPU; returns the device label."""
        for name in engines:
            self.engine(name)
        return self.claim_device()

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = engine_spec(name).load()
        return self._engines[name]

    def claim_device(self) -> str:
        """Make this worker's GPU the calling thread's current device (CUDA's is per thread)."""
        if self.device is None:
            self.device = resolve_device(self.device_request)
        if self.device == "cuda":
            import torch

            torch.cuda.set_device(gpu_for_slot(self.slot, torch.cuda.device_count()))
        return device_label(self.device)

    def run(self, item: WorkItem, emit: Emit | None = None) -> Outcome:
        """Run one job with its output captured in its log; never raises (the outcome says how it went)."""
        job = item.job
        start = time.perf_counter()
        try:
            log_fd = open_job_log(job_folder(job) / LOG_NAME)
        except (StudyError, OSError) as exc:  # nowhere to write: that job's failure, before any compute
            return Outcome("failed", 1, one_line(exc), time.perf_counter() - start)
        done = {"epochs": 0, "final_loss": None}
        label: str | None = None
        outcome: dict = {}

        def progress(epochs: int, total: int, loss: float | None, run_s: float) -> None:
            loss_text = "n/a" if loss is None else f"{loss:.6g}"
            print(f"run-ptychi: epoch {epochs}/{total} loss {loss_text} ({run_s:.1f} s in the engine)", flush=True)
            done.update(epochs=epochs, final_loss=loss)
            if emit is not None:
                emit(Progress(job.id, epochs, total, None if loss is None else float(loss), run_s))

        with LogCapture(log_fd):
            try:
                label = self.claim_device()
                print(f"run-ptychi {__version__}: job {job.id} on {label} (worker pid {os.getpid()})", flush=True)
                print(f"input {job.input_npz} sha256 {job.input_sha256}", flush=True)
                print(f"engine {job.engine}, algorithm {job.algorithm}, {job.num_epochs} epochs, "
                      f"options {json.dumps(asdict(job.options))}", flush=True)
                check_input_sha256(job)
                inputs = load_inputs(job.input_npz)
                mode = fault_for(job.id)
                if mode:
                    inject_fault(mode)
                spec = engine_spec(job.engine)
                # An engine that works in the job's folder (the command engine) is told where it is.
                where = {"job_dir": job.output_dir} if spec.uses_job_dir else {}
                result = self.engine(job.engine).reconstruct(
                    inputs, job.algorithm, job.num_epochs, job.options, device=self.device, progress=progress,
                    **where, **control_argument(spec, job))
                if result.stop_reason is not None:
                    print(f"run-ptychi: stopped after {len(result.loss_values)} of {job.num_epochs} epochs: "
                          f"{result.stop_reason}", flush=True)
                write_job_outputs(item, inputs, result)
                final = float(result.loss_values[-1]) if len(result.loss_values) else None
                outcome = {"status": "ok", "returncode": 0, "error": None, "reconstruction_s": result.reconstruction_s,
                           "epochs": int(len(result.loss_values)), "final_loss": final}
                print(f"run-ptychi: ok, {result.reconstruction_s:.2f} s in the engine", flush=True)
            except Exception as exc:  # noqa: BLE001 - a job's exception is that job's failure
                traceback.print_exc()
                outcome = {"status": "failed", "returncode": 1, "error": one_line(exc), "reconstruction_s": None,
                           "epochs": done["epochs"], "final_loss": done["final_loss"]}
        return Outcome(wall_s=time.perf_counter() - start, device=label, **outcome)
