"""The ``command`` engine: any external program whose output obeys the reconstruction contract.

Per job (docs/reconstruction_contract.md is the normative description):

1. A fresh work folder ``<job_dir>/command_work/`` receives ``input.npz``: the measured data only
   (counts, probe guess, positions, scan index, the object's shape and a measurement-only
   ``_metadata``), never ``objectGuess`` or ``Y``.
2. The argv template of :class:`CommandOptions` is filled in (each placeholder inside its own
   argv element; no shell ever parses it) and the program runs with that folder as its working
   directory, its stdout and stderr on the worker's fds 1 and 2 (the job's log).
3. Exit status 0 and an ``output.npz`` that passes :mod:`.reconstruction_contract` make the
   reconstruction; anything else fails the job with one line naming the cause. The work folder is
   removed after a success (unless ``keep_work_dir``) and kept after a failure for inspection.

The program runs in its own session (so its own process group). A watchdog process holds the
read end of a pipe whose write end only the worker holds: when the worker dies -- a ``--timeout``
kills it, or it crashes -- the pipe reaches end-of-file and the watchdog SIGKILLs the whole group,
so no reconstruction outlives its job. When the program exits normally, whatever it left running
in its group is killed too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DesignError, EngineError
from ...fileio import write_npz_atomic
from .base import EngineInputs, EngineResult, ProgressCallback
from .reconstruction_contract import ReconstructionFrame, read_reconstruction_npz

WORK_DIR_NAME = "command_work"
INPUT_NAME = "input.npz"
OUTPUT_NAME = "output.npz"
INPUT_VERSION = 1  # _metadata.input_version of the engine's input.npz

#: Run-time placeholders of the argv template and what each becomes (docs/reconstruction_contract.md).
PLACEHOLDERS: Mapping[str, str] = {
    "input_npz": "absolute path of the measured-data NPZ the program reads",
    "output_npz": "absolute path where the program must write its reconstruction NPZ",
    "work_dir": "absolute path of the work folder (the program's working directory)",
    "job_dir": "absolute path of the job's folder (the work folder's parent)",
    "num_epochs": "the job's number of epochs (an integer)",
    "algorithm": "the job's algorithm name",
    "device": "cpu, or cuda:<index> of the GPU this worker owns",
    "seed": "the job's random seed (an integer)",
    "python": "the Python interpreter running the worker",
}
#: Filled in by plan-jobs from the design (the manifest then holds the resolved path).
DESIGN_PLACEHOLDERS: Mapping[str, str] = {
    "design_dir": "absolute path of the folder holding the study design file",
}

#: The fields of the input's ``_metadata`` copied from the contract NPZ: the measurement and its
#: geometry. The rest (object model, simulation seeds, design identity, noise-free counts) could
#: rebuild or betray the ground truth, so the program never gets them.
MEASUREMENT_METADATA = ("dose", "split", "view", "n_images", "amplitude_scale", "measured_mean_counts",
                        "wavelength_m", "object_pixel_size_m", "probe_diameter_px", "position_origin", "selection")

# The watchdog (run as `python -I -S -c`): reads the group id, then waits for end-of-file. It sees
# EOF when the worker closes the pipe -- after writing "done" when it cleaned up itself, or
# without "done" because it died, and then the watchdog kills the whole group.
WATCHDOG_SOURCE = """\
import os, signal
data = b""
while chunk := os.read(0, 256):
    data += chunk
words = data.split()
if words and words[-1] != b"done":
    try:
        os.killpg(int(words[0]), signal.SIGKILL)
    except (ProcessLookupError, PermissionError, ValueError):
        pass
"""


# --- the argv template ----------------------------------------------------------------------------


def _template_pieces(element: str, allowed: Mapping[str, str], where: str) -> list[tuple[str, str | None]]:
    """``(literal, placeholder or None)`` pieces of one argv element; a bad placeholder is an EngineError."""
    try:
        parsed = list(string.Formatter().parse(element))
    except ValueError:
        raise EngineError(f"{where}: unbalanced brace in {element!r} (expected {{placeholder}}, or {{{{ and }}}} "
                          f"for a literal brace)") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (name not in allowed or spec or conversion):
            raise EngineError(f"{where}: unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                              f"{':' + spec if spec else ''}}} in {element!r} (expected one of "
                              f"{', '.join('{' + p + '}' for p in allowed)})")
        pieces.append((literal, name))
    return pieces


def fill_template(argv: tuple[str, ...], values: Mapping[str, str], keep: tuple[str, ...] = ()) -> list[str]:
    """``argv`` with each placeholder replaced by ``values[name]``; one element in, one element out.

    Placeholders named in ``keep`` stay as they are (with literal braces escaped again), so a
    template can be filled in two stages (design time, run time).
    """
    allowed = {**{name: "" for name in values}, **{name: "" for name in keep}}
    filled = []
    for i, element in enumerate(argv):
        out = []
        for literal, name in _template_pieces(element, allowed, f"engine_options/argv/{i}"):
            out.append(literal.replace("{", "{{").replace("}", "}}") if keep else literal)
            if name is not None:
                out.append("{" + name + "}" if name in keep else str(values[name]))
        filled.append("".join(out))
    return filled


@dataclass(frozen=True)
class CommandOptions:
    """What determines a command-engine reconstruction besides the input, the algorithm and the epochs."""

    argv: tuple[str, ...]  # the program and its arguments, with {placeholders} (PLACEHOLDERS)
    seed: int  # the value of {seed} (the design's seeds.grouping)
    keep_work_dir: bool  # keep command_work/ after a successful run too

    def __post_init__(self) -> None:
        argv = self.argv
        if isinstance(argv, str) or not isinstance(argv, (list, tuple)):
            raise EngineError(f"engine_options/argv: expected a list of strings (program, arguments...), "
                              f"found {type(argv).__name__}")
        if not argv:
            raise EngineError("engine_options/argv: empty (expected the program, then its arguments)")
        for i, element in enumerate(argv):
            if not isinstance(element, str):
                raise EngineError(f"engine_options/argv/{i}: expected a string, found {type(element).__name__}")
            if "\0" in element:
                raise EngineError(f"engine_options/argv/{i}: contains a NUL character (an argument cannot hold one)")
            _template_pieces(element, PLACEHOLDERS, f"engine_options/argv/{i}")
        if not argv[0]:
            raise EngineError("engine_options/argv/0: empty program name")
        object.__setattr__(self, "argv", tuple(argv))  # JSON gives a list; the record stays hashable

    def command_line(self, values: Mapping[str, str]) -> list[str]:
        """The argv of one job: every run-time placeholder filled in from ``values``."""
        return fill_template(self.argv, values)


def _refuse_realistic(design: Any, settings: Mapping[str, Any], where: str) -> None:
    """The command engine's program gets probeGuess and fixed positions only: a design asking for
    another start probe, probe modes or position refinement is refused in one line naming its key."""
    # A design without the block (or a stand-in without the accessor) starts from probeGuess.
    start = getattr(design, "probe_knowledge", {}).get("start", "true")
    if start != "true":
        raise DesignError(f"{design.path}: probe_knowledge/start: the command engine hands its program probeGuess "
                          f"(a {start} start probe is not passed); use start true, or a pty-chi or CDTools reconstructor")
    modes = settings.get("probe_modes")
    if modes is not None and int(modes) != 1:
        raise DesignError(f"{design.path}: {where}/probe_modes: the command engine reconstructs what its program "
                          f"returns (one probe); remove probe_modes, or use a pty-chi or CDTools reconstructor")
    if settings.get("position_correction"):
        raise DesignError(f"{design.path}: {where}/position_correction: the command engine does not refine "
                          f"positions; remove position_correction, or use a pty-chi or CDTools reconstructor")


def command_design_options(design: Any, settings: Mapping[str, Any], where: str = "reconstruction") -> dict:
    """The command engine's ``engine_options`` of one reconstructor of a study design.

    ``settings["command"]`` is the argv template; ``{design_dir}`` is resolved here (the manifest
    records the absolute path), the run-time placeholders stay. ``where`` names the design
    block in errors (``reconstruction`` or ``reconstructors/<i>/options``).
    """
    _refuse_realistic(design, settings, where)
    command = settings.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(e, str) for e in command):
        raise DesignError(f"{design.path}: {where}/command: the command engine needs the program's argv "
                          f"template, a non-empty list of strings (found {command!r})")
    try:
        argv = fill_template(tuple(command), {"design_dir": str(Path(design.path).resolve().parent)},
                             keep=tuple(PLACEHOLDERS))
    except EngineError as exc:
        raise DesignError(f"{design.path}: {where}/command{str(exc).removeprefix('engine_options/argv')}") \
            from None
    return {"argv": argv, "seed": design.seeds["grouping"], "keep_work_dir": bool(settings.get("keep_work_dir", False))}


# --- the program's process group -----------------------------------------------------------------


def kill_process_group(pgid: int) -> bool:
    """SIGKILL every process of group ``pgid``; False when the group no longer exists."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


class ProgramGroup:
    """A program in its own session and process group, killed whole if the caller dies or leaves.

    ``with ProgramGroup(argv, cwd) as group: group.wait()``, then ``group.returncode``. On leaving
    the block -- normally or by an exception -- every process still in the group is SIGKILLed
    before the program is reaped (until then its pid keeps the group id from being reused).
    """

    def __init__(self, argv: list[str], cwd: str | os.PathLike):
        self.argv = argv
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def pgid(self) -> int:
        return self.process.pid  # a session leader's pid is its group id

    def __enter__(self) -> ProgramGroup:  # noqa: PYI034 - a final class in effect
        # The watchdog first: once the program exists, only the write of its group id is left
        # before a dying caller can no longer orphan it.
        self.watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHDOG_SOURCE],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                            start_new_session=True, close_fds=True)
        except BaseException:
            self._release_watchdog(b"done\n")
            raise
        try:
            self.watchdog.stdin.write(f"{self.pgid}\n".encode())
            self.watchdog.stdin.flush()
        except OSError:
            pass  # the watchdog died (killed from outside): cleanup on exit still kills the group
        return self

    def wait(self) -> None:
        """Block until the program exits (it is reaped on leaving the block)."""
        if hasattr(os, "waitid"):
            os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
        else:  # pragma: no cover - not Linux: reap now, and the group id may be reused before the kill
            self.process.wait()

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        try:
            kill_process_group(self.pgid)
        finally:
            self._release_watchdog(b"done\n")
            self.returncode = self.process.wait()

    def _release_watchdog(self, message: bytes) -> None:
        try:
            self.watchdog.stdin.write(message)
            self.watchdog.stdin.close()
        except OSError:
            pass
        self.watchdog.wait()


def run_program(argv: list[str], cwd: str | os.PathLike) -> int:
    """Run ``argv`` in its own process group to the end; its exit status (-signal when killed)."""
    with ProgramGroup(argv, cwd) as group:
        group.wait()
    return group.returncode


def log_destination() -> str | None:
    """The file this process's stdout goes to (the job's log inside a worker), if it is one."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return target if os.path.isabs(target) and os.path.isfile(target) else None


def exit_problem(argv: list[str], returncode: int) -> str:
    """One line: how the program ended and where its output is."""
    how = (f"was killed by signal {signal.Signals(-returncode).name}" if returncode < 0
           and -returncode in signal.valid_signals() else f"exited with status {returncode}")
    log = log_destination()
    where = f"its output is in {log}" if log else "its output went to the worker's standard output"
    return f"{argv[0]}: {how} ({where})"


# --- the engine ----------------------------------------------------------------------------------


def input_metadata(inputs: EngineInputs) -> dict:
    """The ``_metadata`` of the program's input: measurement fields only, plus the object's shape."""
    meta = {key: inputs.metadata[key] for key in MEASUREMENT_METADATA if key in inputs.metadata}
    meta["object_shape"] = list(inputs.object_shape)
    meta["input_version"] = INPUT_VERSION
    return meta


def write_engine_input(path: str | os.PathLike, inputs: EngineInputs) -> Path:
    """The program's ``input.npz``: measured data and geometry, nothing of the ground truth.

    ``xcoords``/``ycoords`` are the positions the engine was given (the nominal ones of a file that
    has them). With a detector mask, ``valid_pixels`` (bool (N, N), DC-centred like ``counts``)
    follows the other members; counts are 0 where it is False, and the program must leave those
    pixels out of its fit.
    """
    arrays = {
        "counts": np.ascontiguousarray(inputs.counts, dtype=np.float32),
        "probeGuess": np.ascontiguousarray(inputs.probe, dtype=np.complex64),
        "xcoords": np.ascontiguousarray(inputs.xcoords, dtype=np.float64),
        "ycoords": np.ascontiguousarray(inputs.ycoords, dtype=np.float64),
        "scan_index": np.ascontiguousarray(inputs.scan_index, dtype=np.int64),
        "object_shape": np.asarray(inputs.object_shape, dtype=np.int64),
        "_metadata": np.array(json.dumps(input_metadata(inputs), sort_keys=True)),
    }
    if inputs.valid_pixels is not None:
        arrays["valid_pixels"] = np.ascontiguousarray(inputs.valid_pixels, dtype=bool)
    write_npz_atomic(path, arrays)
    return Path(path)


def fresh_work_dir(job_dir: Path) -> Path:
    """``<job_dir>/command_work``, emptied: a folder left by an earlier (killed) run is removed."""
    work = job_dir / WORK_DIR_NAME
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        work.unlink()
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def device_text(device: str) -> str:
    """``cpu``, or ``cuda:<index>`` of the calling thread's current GPU (the worker's own)."""
    if device != "cuda":
        return device
    import torch

    return f"cuda:{torch.cuda.current_device()}"


class CommandEngine:
    """An external program behind the engine interface."""

    def load(self) -> None:
        """Nothing to import: the method lives in its own process."""

    def reconstruct(self, inputs: EngineInputs, algorithm: str, num_epochs: int, options: CommandOptions, *,
                    device: str, progress: ProgressCallback | None = None,
                    job_dir: str | os.PathLike | None = None) -> EngineResult:
        """Run the program on the measured data of ``inputs``; its checked output is the reconstruction.

        ``job_dir`` is the job's folder (the work folder goes inside it); without one, a fresh
        temporary folder stands in for it.
        """
        own_dir = job_dir is None
        job_dir = Path(tempfile.mkdtemp(prefix="ptydose-command-")) if own_dir else Path(job_dir)
        work = fresh_work_dir(job_dir.absolute())
        input_path, output_path = work / INPUT_NAME, work / OUTPUT_NAME
        write_engine_input(input_path, inputs)
        argv = options.command_line({
            "input_npz": str(input_path), "output_npz": str(output_path), "work_dir": str(work),
            "job_dir": str(work.parent), "num_epochs": str(int(num_epochs)), "algorithm": algorithm,
            "device": device_text(device), "seed": str(int(options.seed)), "python": sys.executable,
        })
        print(f"command engine: running {json.dumps(argv)} in {work}", flush=True)
        start = time.perf_counter()
        try:
            returncode = run_program(argv, work)
        except OSError as exc:  # no such program, not executable, ...
            raise EngineError(f"{argv[0]}: cannot run ({exc.strerror or exc}; expected an absolute path or a "
                              f"program on PATH)") from None
        wall_s = time.perf_counter() - start
        print(f"command engine: the program ended with status {returncode} after {wall_s:.2f} s", flush=True)
        if returncode != 0:
            raise EngineError(exit_problem(argv, returncode))
        if not output_path.exists() and not output_path.is_symlink():
            raise EngineError(f"{output_path}: not written (the program exited with status 0 but wrote no "
                              f"reconstruction; expected an NPZ there, see docs/reconstruction_contract.md)")
        frame = ReconstructionFrame(object_shape=inputs.object_shape, probe_size=int(inputs.probe.shape[-1]),
                                    n_positions=int(inputs.xcoords.shape[0]), num_epochs=int(num_epochs))
        rec = read_reconstruction_npz(output_path, frame)
        for line in rec.warnings:
            print(line, file=sys.stderr, flush=True)
        run_s = float(rec.metadata.get("reconstruction_s", wall_s))
        empty_epochs, empty_values = np.zeros(0, np.int64), np.zeros(0, np.float64)
        result = EngineResult(
            object=rec.object,
            probe=inputs.probe.astype(np.complex64) if rec.probe is None else rec.probe,
            positions_x_px=inputs.xcoords.astype(np.float64) if rec.positions_x_px is None else rec.positions_x_px,
            positions_y_px=inputs.ycoords.astype(np.float64) if rec.positions_y_px is None else rec.positions_y_px,
            loss_epochs=empty_epochs if rec.loss_epochs is None else rec.loss_epochs,
            loss_values=empty_values if rec.loss_values is None else rec.loss_values,
            reconstruction_s=run_s,
        )
        if not options.keep_work_dir:
            shutil.rmtree(job_dir if own_dir else work)
        if progress is not None:
            last = float(result.loss_values[-1]) if len(result.loss_values) else None
            progress(int(num_epochs), int(num_epochs), last, run_s)
        return result
