"""Running a manifest's jobs: worker processes, isolation, timeouts, resume and write-back.

Each worker is a ``spawn``-ed process that imports torch and ptychi once, then runs jobs sent to
it over a pipe. While a job runs, the worker's file descriptors 1 and 2 point at the job's
``ptychi.log``, so everything the job prints -- Python, pty-chi's logging and tqdm, C
extensions -- lands there. The parent alone writes ``result.json`` and the manifest (validated,
atomic), after every job. A job's exception is reported by its worker; a worker that dies
(segfault, ``os._exit``, OOM kill) or outlives ``--timeout`` is that job's failure, and a fresh
worker takes its place. Workers die with the parent (``PR_SET_PDEATHSIG``), so killing
``run-ptychi`` leaves no stray reconstructions. With ``--scheduler`` the same per-job function
runs on a Dask cluster instead (:mod:`ptydose.core.dask_executor`), recorded the same way here.

Fault injection (tests only): the environment variable ``RUN_PTYCHI_FAULT_INJECTION`` holds
``<job id>=<mode>`` pairs separated by commas; a worker honours it after loading that job's
input. Modes: ``raise`` (RuntimeError), ``exit`` (``os._exit(13)``), ``segfault`` (SIGSEGV),
``hang`` (sleep until killed).
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from .. import __version__
from .errors import EngineError, ManifestError, StudyError
from .fileio import sha256_file
from .jobs import MANIFEST_SCHEMA, load_manifest, lock_artifact_root, options_hash, utc_now
from .manifests import read_json, write_json

log = logging.getLogger(__name__)

FAULT_ENV = "RUN_PTYCHI_FAULT_INJECTION"
FAULT_MODES = ("raise", "exit", "segfault", "hang")
RESULT_SCHEMA = "job_result"
OUTPUT_FILES = ("reconstruction.npz", "losses.csv", "product.h5")
WORKER_START_FAILURES = 3  # workers dying before their first job: then give up (exit 1)

Echo = Callable[[str], None]


class MessageSink(Protocol):
    """Where a running job sends ``("progress", {...})`` messages: a worker's pipe, or a Dask event sender."""

    def send(self, message: tuple[str, dict]) -> None: ...


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def package_versions() -> dict:
    """Versions without importing the packages (the parent never imports torch)."""

    def version(name: str) -> str | None:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "numpy": version("numpy") or "?",
            "torch": version("torch"), "ptychi": version("ptychi"), "tools": __version__}


def progress_line(body: dict) -> str:
    """The parent's stderr line for a job's progress message."""
    loss = "n/a" if body["loss"] is None else format(body["loss"], ".6g")
    return f"  {body['job_id']}: epoch {body['epochs']}/{body['num_epochs']}, loss {loss}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def fault_for(job_id: str) -> str | None:
    """The fault-injection mode the environment asks for this job (tests only)."""
    for pair in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        target, _, mode = pair.partition("=")
        if target.strip() == job_id:
            if mode.strip() not in FAULT_MODES:
                raise EngineError(f"{FAULT_ENV}: unknown mode {mode!r} (choose from {', '.join(FAULT_MODES)})")
            return mode.strip()
    return None


def _inject_fault(mode: str) -> None:
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


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (no orphaned reconstructions)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------
class _Capture:
    """Point fds 1 and 2 at a log file for the duration of a job (C-level output included)."""

    def __init__(self, log_path: Path):
        self.log_path = log_path

    def __enter__(self) -> "_Capture":
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def _configure_worker_logging() -> None:
    """pty-chi logs at INFO (losses, device); send it to fd 2, i.e. the job's log while it runs."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _worker_main(conn: Connection, index: int, device_request: str, threads: int | None) -> None:
    """Worker process: import the engine once, then run jobs until told to stop."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        from . import engine

        engine.import_engine()
        import torch

        if threads:
            torch.set_num_threads(threads)
        device = engine.resolve_device(device_request)
        if device == "cuda" and torch.cuda.device_count() > 1:
            torch.cuda.set_device(index % torch.cuda.device_count())  # one GPU per worker
        label = engine.device_label(device)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a start failure
        conn.send(("fatal", one_line(exc)))
        return
    _configure_worker_logging()
    conn.send(("ready", {"pid": os.getpid(), "device": label}))
    while True:
        try:
            payload = conn.recv()
        except EOFError:
            return
        if payload is None:
            return
        conn.send(("done", run_job_in_worker(payload, device, label, conn)))


def run_job_in_worker(payload: dict, device: str, label: str, conn: MessageSink | None = None) -> dict:
    """Run one job with its output captured in its log; never raises (the outcome is returned)."""
    from . import engine
    from .product import ProductMetadata, write_product

    job = payload["job"]
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outcome: dict[str, Any] = {"status": "failed", "returncode": 1, "error": None, "device": label,
                               "reconstruction_s": None, "epochs": 0, "final_loss": None}

    def progress(done: int, total: int, loss: float | None, run_s: float) -> None:
        loss_text = "n/a" if loss is None else f"{loss:.6g}"
        print(f"run-ptychi: epoch {done}/{total} loss {loss_text} ({run_s:.1f} s in task.run)", flush=True)
        outcome.update(epochs=done, final_loss=loss)
        if conn is not None:
            conn.send(("progress", {"job_id": job["id"], "epochs": done, "num_epochs": total, "loss": loss,
                                    "run_s": run_s}))

    with _Capture(out / "ptychi.log"):
        print(f"run-ptychi {__version__}: job {job['id']} on {label} (worker pid {os.getpid()})", flush=True)
        print(f"input {job['input_npz']} sha256 {job['input_sha256']}", flush=True)
        print(f"algorithm {job['algorithm']}, {job['num_epochs']} epochs, options {json.dumps(job['engine_options'])}",
              flush=True)
        try:
            check_input(job)
            inputs = engine.load_inputs(job["input_npz"])
            mode = fault_for(job["id"])
            if mode:
                _inject_fault(mode)
            result = engine.reconstruct(inputs, job["algorithm"], job["num_epochs"], job["engine_options"],
                                        device=device, progress=progress)
            meta = {"job_id": job["id"], "dose": job["dose"], "view": job["view"], "split": job["split"],
                    "input_npz": job["input_npz"], "input_sha256": job["input_sha256"],
                    "algorithm": job["algorithm"], "num_epochs": job["num_epochs"],
                    "options_hash": payload["options_hash"]}
            engine.write_reconstruction_npz(out / "reconstruction.npz", result, meta)
            engine.write_losses_csv(out / "losses.csv", result.loss_epochs, result.loss_values)
            inst = payload["instrument"]
            write_product(
                out / "product.h5",
                ProductMetadata(
                    name=f"{payload['design_name']} {job['id']}",
                    comments=f"pty-chi {job['algorithm']} {job['num_epochs']} epochs from {job['input_npz']}"
                             f" (sha256 {job['input_sha256']}); written by run-ptychi {__version__}",
                    detector_object_distance_m=inst["detector_distance_m"],
                    photon_energy_eV=inst["photon_energy_eV"],
                    probe_photon_count=float(job["dose"]),
                    exposure_time_s=inst["exposure_time_s"],
                    pixel_size_m=job["engine_options"]["object_pixel_size_m"],
                ),
                result.object, result.probe, result.positions_x_px, result.positions_y_px,
                inputs.scan_index, result.loss_epochs, result.loss_values,
            )
            final = float(result.loss_values[-1]) if len(result.loss_values) else None
            outcome.update(status="ok", returncode=0, reconstruction_s=result.reconstruction_s,
                           epochs=int(len(result.loss_values)), final_loss=final, device=result.device)
            print(f"run-ptychi: ok, {result.reconstruction_s:.2f} s in task.run", flush=True)
        except Exception as exc:  # noqa: BLE001 - a job's exception is that job's failure
            traceback.print_exc()
            outcome["error"] = one_line(exc)
    outcome["wall_s"] = time.perf_counter() - start
    return outcome


def check_input(job: dict) -> None:
    """Before any compute: the input is still the file that was planned (its sha256).

    The data-contract check itself happens in :func:`engine.load_inputs`, also before compute.
    """
    digest = sha256_file(job["input_npz"])
    if digest != job["input_sha256"]:
        raise StudyError(f"{job['input_npz']}: sha256 {digest[:12]}... differs from the plan's "
                         f"{job['input_sha256'][:12]}... (the file changed; run plan-jobs again)")


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
@dataclass
class JobOutcome:
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
                       for status in ("ok", "failed", "timeout", "crashed")} | {
                "resumed": sum(1 for o in self.outcomes if o.resumed)},
            "wall_s": self.wall_s,
            "reconstruction_s": recon,
            "overhead_ratio": (self.wall_s / recon) if executed and recon > 0 else None,
            "commands": self.dry_run_commands,
        }


class _Worker:
    def __init__(self, ctx, index: int, device: str, threads: int | None):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, index, device, threads),
                                   name=f"run-ptychi-worker-{index}", daemon=True)
        self.process.start()
        child.close()
        self.index = index
        self.ready = False
        self.job: dict | None = None
        self.deadline: float | None = None
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


def _select_jobs(manifest: dict, only: Iterable[str] | None, source: Path) -> list[dict]:
    jobs = manifest["jobs"]
    if not only:
        return list(jobs)
    by_id = {job["id"]: job for job in jobs}
    unknown = [j for j in only if j not in by_id]
    if unknown:
        raise StudyError(f"{source}: --only {unknown[0]}: no such job in the manifest")
    wanted = set(only)
    return [job for job in jobs if job["id"] in wanted]


def _already_done(job: dict, opts_hash: str) -> dict | None:
    """The job's result.json if it says ok for the same input and options and outputs exist."""
    out = Path(job["output_dir"])
    path = out / "result.json"
    if not path.is_file():
        return None
    try:
        result = read_json(path, RESULT_SCHEMA)
    except ManifestError as exc:
        log.warning("ignoring %s", exc)
        return None
    if result["status"] != "ok" or result["options_hash"] != opts_hash:
        return None
    if result["input_sha256"] != job["input_sha256"] or not Path(job["input_npz"]).is_file():
        return None
    if any(not (out / name).is_file() for name in OUTPUT_FILES):
        return None
    if sha256_file(job["input_npz"]) != job["input_sha256"]:  # the input changed since the run
        return None
    return result


def _execution_entry(job: dict, result: dict, resumed: bool) -> dict:
    out = Path(job["output_dir"])
    keys = ("status", "returncode", "error", "wall_s", "reconstruction_s", "epochs", "final_loss", "device",
            "finished")
    return {"job_id": job["id"], "dose": job["dose"], "view": job["view"], "split": job["split"],
            **{k: result[k] for k in keys}, "log_path": str(out / "ptychi.log"),
            "result_path": str(out / "result.json"), "resumed": resumed, "selection": job["selection"]}


class _Recorder:
    """Writes result.json and the manifest's execution_results after each job."""

    def __init__(self, manifest_path: Path, manifest: dict, report: RunReport, echo: Echo):
        self.path = manifest_path
        self.manifest = manifest
        self.report = report
        self.echo = echo

    def record(self, job: dict, opts_hash: str, outcome: dict, resumed: bool = False,
               result: dict | None = None) -> None:
        if result is None:
            result = {
                "schema_version": "1.0", "job_id": job["id"], "dose": job["dose"], "view": job["view"],
                "split": job["split"], "status": outcome["status"], "returncode": outcome["returncode"],
                "error": outcome["error"], "device": outcome.get("device"), "wall_s": round(outcome["wall_s"], 4),
                "reconstruction_s": (None if outcome.get("reconstruction_s") is None
                                     else round(outcome["reconstruction_s"], 4)),
                "epochs": int(outcome.get("epochs") or 0), "final_loss": outcome.get("final_loss"),
                "input_npz": job["input_npz"], "input_sha256": job["input_sha256"], "options_hash": opts_hash,
                "algorithm": job["algorithm"], "num_epochs": job["num_epochs"], "finished": utc_now(),
                "versions": package_versions(),
            }
            write_json(Path(job["output_dir"]) / "result.json", result, RESULT_SCHEMA)
        entry = _execution_entry(job, result, resumed)
        results = [r for r in self.manifest["execution_results"] if r["job_id"] != job["id"]]
        results.append(entry)
        self.manifest["execution_results"] = results
        write_json(self.path, self.manifest, MANIFEST_SCHEMA)
        self.report.outcomes.append(JobOutcome(job["id"], result["status"], resumed, result["wall_s"],
                                               result["reconstruction_s"], result["error"]))
        if resumed:
            self.echo(f"[skip] {job['id']}: already ok (same input and options; --force redoes it)")
        elif result["status"] == "ok":
            self.echo(f"[ok] {job['id']}: {result['epochs']} epochs, final loss {result['final_loss']:.6g}, "
                      f"{result['reconstruction_s']:.2f} s in task.run, {result['wall_s']:.2f} s wall")
        else:
            self.echo(f"[{result['status']}] {job['id']}: {result['error']} (log: {entry['log_path']})")


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
    worker processes (:mod:`ptydose.core.dask_executor`); recording and resume are the same.
    """
    wall_start = time.perf_counter()
    manifest_path = Path(manifest_path).resolve()
    manifest = load_manifest(manifest_path)
    jobs = _select_jobs(manifest, only, manifest_path)
    report = RunReport(manifest_path)
    if dry_run:
        report.dry_run_commands = [list(job["command"]) for job in jobs]
        return report
    if workers < 1:
        raise StudyError(f"--workers {workers}: must be >= 1")
    if scheduler and workers > 1:
        raise StudyError(f"--scheduler {scheduler} and --workers {workers} exclude each other "
                         "(the Dask cluster's workers run the jobs)")
    lock = lock_artifact_root(manifest_path.parent, "another run-ptychi is running on this artifact root")
    client = None
    try:
        if scheduler:  # before anything is written: an unreachable scheduler is bad input
            from .dask_executor import connect

            client = connect(scheduler)
        recorder = _Recorder(manifest_path, manifest, report, echo)
        pending: list[tuple[dict, str]] = []
        for job in jobs:
            opts_hash = options_hash(job)
            done = None if force else _already_done(job, opts_hash)
            if done is not None:
                recorder.record(job, opts_hash, {}, resumed=True, result=done)
            else:
                pending.append((job, opts_hash))
        if pending and client is not None:
            from .dask_executor import execute_on_scheduler

            echo(f"run-ptychi: {len(pending)} job(s) to run, {len(jobs) - len(pending)} already done; "
                 f"Dask scheduler {scheduler}, device {device}")
            execute_on_scheduler(client, pending, manifest, recorder, device, timeout, echo)
        elif pending:
            echo(f"run-ptychi: {len(pending)} job(s) to run, {len(jobs) - len(pending)} already done; "
                 f"{min(workers, len(pending))} worker(s), device {device}")
            _execute(pending, manifest, recorder, device, workers, timeout, echo)
    finally:
        if client is not None:
            client.close()
        lock.close()
    report.wall_s = time.perf_counter() - wall_start
    return report


def _threads_per_worker(workers: int) -> int | None:
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # the user chose
    return max(1, (os.cpu_count() or 1) // workers)


def _execute(pending: list[tuple[dict, str]], manifest: dict, recorder: _Recorder, device: str, workers: int,
             timeout: float | None, echo: Echo) -> None:
    ctx = multiprocessing.get_context("spawn")
    threads = _threads_per_worker(workers)
    queue = list(pending)
    pool: list[_Worker] = []
    next_index = 0
    start_failures = 0
    design_name = manifest["provenance"]["design_name"]

    def spawn() -> None:
        nonlocal next_index
        pool.append(_Worker(ctx, next_index, device, threads))
        next_index += 1

    def dispatch(worker: _Worker) -> None:
        job, opts_hash = queue.pop(0)
        out = Path(job["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        # A rerun must not leave an old "ok" beside half-replaced outputs if it is killed.
        (out / "result.json").unlink(missing_ok=True)
        worker.job = {"job": job, "options_hash": opts_hash}
        worker.started = time.monotonic()
        worker.deadline = worker.started + timeout if timeout else None
        try:
            worker.conn.send({"job": job, "options_hash": opts_hash, "instrument": manifest["instrument"],
                              "design_name": design_name})
        except (BrokenPipeError, OSError):  # the worker died meanwhile: its sentinel reports it
            queue.insert(0, (job, opts_hash))
            worker.job = None
            worker.deadline = None
            return
        echo(f"[start] {job['id']} ({job['n_images']} patterns, {job['algorithm']} {job['num_epochs']} epochs) "
             f"on worker {worker.index}")

    def lost(worker: _Worker, status: str, why: str) -> None:
        """Record the worker's current job as crashed/timed out; the worker is gone."""
        job, opts_hash = worker.job["job"], worker.job["options_hash"]
        code = worker.process.exitcode
        with open(Path(job["output_dir"]) / "ptychi.log", "a") as handle:
            handle.write(f"\nrun-ptychi: {why}\n")
        recorder.record(job, opts_hash, {"status": status, "returncode": code, "error": why,
                                         "wall_s": time.monotonic() - worker.started, "device": None})
        worker.job = None

    for _ in range(min(workers, len(queue))):
        spawn()
    try:
        while pool:
            waits = [w.conn for w in pool] + [w.process.sentinel for w in pool]
            deadlines = [w.deadline for w in pool if w.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            wait(waits, timeout=wait_s)
            for worker in list(pool):
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
                    if kind == "ready":
                        worker.ready = True
                    elif kind == "progress":
                        echo(progress_line(body))
                        continue
                    elif kind == "done":
                        job, opts_hash = worker.job["job"], worker.job["options_hash"]
                        worker.job = None
                        worker.deadline = None
                        recorder.record(job, opts_hash, body)
                    if queue:
                        dispatch(worker)
                    else:
                        worker.conn.send(None)
                        worker.process.join(10)
                        worker.kill()
                        pool.remove(worker)
                    continue
                if not worker.process.is_alive():
                    worker.process.join()
                    pool.remove(worker)
                    if worker.job is not None:
                        code = worker.process.exitcode
                        lost(worker, "crashed", f"worker process died (exit code {code}) while running the job")
                    else:
                        start_failures += 1
                        if start_failures >= WORKER_START_FAILURES:
                            raise EngineError(f"worker processes keep dying before any job "
                                              f"(exit code {worker.process.exitcode})")
                    worker.conn.close()
                    if queue and len(pool) < workers:
                        spawn()
                elif worker.deadline is not None and time.monotonic() >= worker.deadline:
                    worker.kill()
                    pool.remove(worker)
                    lost(worker, "timeout", f"killed after the --timeout of {timeout:g} s")
                    if queue and len(pool) < workers:
                        spawn()
    finally:
        for worker in pool:
            worker.kill()
