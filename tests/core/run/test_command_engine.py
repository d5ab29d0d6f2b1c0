"""The command engine: an external program run per job on measured data only, its output checked
against the reconstruction contract, its whole process group killed with its worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ptychi_checks import illuminated, phase_rmse

from ptydose.core.errors import ContractError, DesignError, EngineError
from ptydose.core.fileio import sha256_file
from ptydose.core.geometry import window_starts
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.command import (
    INPUT_NAME,
    MEASUREMENT_METADATA,
    OUTPUT_NAME,
    PLACEHOLDERS,
    WORK_DIR_NAME,
    CommandEngine,
    CommandOptions,
    ProgramGroup,
    command_design_options,
    fill_template,
    kill_process_group,
    run_program,
    write_engine_input,
)
from ptydose.core.run.engines.options import options_mapping, options_record

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "external_engine" / "simple_epie.py"
PYTHON = sys.executable
INPUT_KEYS = {"counts", "probeGuess", "xcoords", "ycoords", "scan_index", "object_shape", "_metadata"}
# Liveness bounds only (never asserted as a speed): how long to wait for a process to appear or go.
APPEAR_S, VANISH_S = 120.0, 30.0

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# What every fake program starts with: write a contract-valid reconstruction, optionally altered.
PRELUDE = '''\
import json, os, signal, subprocess, sys, time
import numpy as np

def write_output(input_npz, output_npz, **arrays):
    with np.load(input_npz, allow_pickle=False) as npz:
        shape = tuple(int(s) for s in npz["object_shape"])
    members = {"object": np.ones(shape, np.complex64)}
    members.update(arrays)
    with open(output_npz, "wb") as handle:
        np.savez(handle, **members)
'''


def program(folder: Path, body: str, name: str = "program.py") -> Path:
    """A fake external method: ``PRELUDE`` + ``body`` as a script (run with ``{python}``)."""
    path = folder / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def options(*argv: str, keep: bool = False) -> CommandOptions:
    return CommandOptions(argv=tuple(argv), seed=123, keep_work_dir=keep)


@pytest.fixture(scope="module")
def sparse_npz(smoke_data) -> Path:
    return smoke_data["phase_d_root"] / "dose_1000" / "sparse" / "sparse_test.npz"


@pytest.fixture(scope="module")
def inputs(sparse_npz):
    return load_inputs(sparse_npz)


def reconstruct(inputs, opts: CommandOptions, job_dir: Path, num_epochs: int = 3, **kwargs):
    return CommandEngine().reconstruct(inputs, "EXTERNAL", num_epochs, opts, device="cpu", job_dir=job_dir, **kwargs)


@contextmanager
def job_log(path: Path):
    """fds 1 and 2 on ``path`` for the block, as a worker sets them up for a job."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for each in (*saved, fd):
            os.close(each)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has already died)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(condition, limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def force_kill(pids) -> None:
    """Test cleanup: never leave a test's process running, whatever the assertions said."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- the example program, end to end ---------------------------------------------------------------


def test_example_epie_reconstructs_in_the_object_frame(smoke_data, tmp_path):
    """simple_epie.py through the engine: 8 epochs at 1e5 photons halve the flat start's phase error."""
    path = smoke_data["phase_c_root"] / "dose_100000" / "patched_train.npz"
    inputs = load_inputs(path)
    with np.load(path, allow_pickle=False) as npz:
        truth = npz["objectGuess"]
    opts = options("{python}", str(EXAMPLE), "--input", "{input_npz}", "--output", "{output_npz}",
                   "--epochs", "{num_epochs}", "--seed", "{seed}")
    reports = []
    result = reconstruct(inputs, opts, tmp_path / "job", num_epochs=8,
                         progress=lambda done, total, loss, s: reports.append((done, total, loss)))
    assert result.object.shape == truth.shape and result.object.dtype == np.complex64
    np.testing.assert_array_equal(result.loss_epochs, np.arange(8))
    assert result.loss_values[-1] < result.loss_values[0]
    assert reports == [(8, 8, result.loss_values[-1])]
    # Not refined by the example: the probe and positions come back as given.
    np.testing.assert_allclose(result.probe, inputs.probe, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.positions_x_px, inputs.xcoords)
    mask = illuminated(inputs.probe, inputs.xcoords, inputs.ycoords, inputs.object_shape)
    flat_error = phase_rmse(np.ones_like(truth), truth, mask)
    error = phase_rmse(result.object, truth, mask)
    # Tolerance as for LSQML (test_engines): the flat start's error is the object's phase spread
    # (~0.48 rad); 8 ePIE epochs at 1e5 photons reach ~0.15 rad. Half the flat error fails for a
    # wrong frame (window starts, sub-pixel shift sign, fftshift) yet leaves room for platforms.
    assert error < 0.5 * flat_error, (error, flat_error)
    assert 0 < result.reconstruction_s
    assert os.listdir(tmp_path / "job") == []  # the work folder is removed after a success


def test_example_runs_standalone_and_writes_a_valid_reconstruction(inputs, tmp_path):
    """The example needs nothing but numpy: run directly on an engine input, its output passes the contract."""
    from ptydose.core.run.engines.reconstruction_contract import (
        ReconstructionFrame,
        read_reconstruction_npz,
    )

    write_engine_input(tmp_path / "in.npz", inputs)
    done = subprocess.run([PYTHON, "-I", str(EXAMPLE), "--input", str(tmp_path / "in.npz"), "--output",
                           str(tmp_path / "out.npz"), "--epochs", "2", "--probe-step", "0.5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("simple_epie: epoch 2/2 loss ")
    frame = ReconstructionFrame(inputs.object_shape, inputs.probe.shape[0], len(inputs.xcoords), 2)
    rec = read_reconstruction_npz(tmp_path / "out.npz", frame)
    assert rec.metadata["method"] == "simple_epie" and rec.metadata["parameters"]["probe_step"] == 0.5
    assert not np.allclose(rec.probe, inputs.probe)  # a probe step > 0 refines the probe
    assert rec.warnings == []


# --- what the program receives ------------------------------------------------------------------


def _with_other_truth(source: Path, target: Path) -> None:
    """A contract-valid copy of ``source`` with another objectGuess (and Y from it): the same measurement."""
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    rng = np.random.default_rng(5)
    shape = arrays["objectGuess"].shape
    other = (rng.uniform(0.2, 1.0, shape) * np.exp(1j * rng.uniform(-3, 3, shape))).astype(np.complex64)
    n = arrays["probeGuess"].shape[0]
    starts = window_starts(np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1), shape, n)
    arrays["objectGuess"] = other
    arrays["Y"] = np.stack([other[sy:sy + n, sx:sx + n] for sy, sx in starts]).astype(np.complex64)
    np.savez(target, **arrays)


def test_program_input_holds_no_ground_truth(inputs, sparse_npz, tmp_path):
    """input.npz has the measured keys only, measurement metadata only, and no bit of it depends on the truth."""
    reconstruct(inputs, options("{python}", str(program(tmp_path, "write_output(sys.argv[1], sys.argv[2])")),
                                "{input_npz}", "{output_npz}", keep=True), tmp_path / "job")
    given = tmp_path / "job" / WORK_DIR_NAME / INPUT_NAME
    with np.load(given, allow_pickle=False) as npz:
        assert set(npz.files) == INPUT_KEYS
        np.testing.assert_array_equal(npz["counts"], inputs.counts)
        np.testing.assert_array_equal(npz["probeGuess"], inputs.probe)
        np.testing.assert_array_equal(npz["xcoords"], inputs.xcoords)
        np.testing.assert_array_equal(npz["object_shape"], inputs.object_shape)
        meta = json.loads(str(npz["_metadata"]))
    assert set(meta) == {*MEASUREMENT_METADATA, "object_shape", "input_version"}
    assert meta["amplitude_scale"] == inputs.metadata["amplitude_scale"]
    # Behaviourally: another truth behind the same measurement gives the same input, byte for byte.
    twin = tmp_path / "twin.npz"
    _with_other_truth(sparse_npz, twin)
    write_engine_input(tmp_path / "a.npz", load_inputs(sparse_npz))
    write_engine_input(tmp_path / "b.npz", load_inputs(twin))
    assert sha256_file(tmp_path / "a.npz") == sha256_file(tmp_path / "b.npz") == sha256_file(given)


def test_shell_metacharacters_are_passed_literally(inputs, tmp_path):
    """Paths full of shell syntax reach the program as-is, one argv element per template element."""
    job_dir = tmp_path / "job $(touch PWNED); `touch PWNED2` & 'q' \"dq\" * | > x"
    script = program(tmp_path, """
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, open(sys.argv[1], "w"))
        write_output(sys.argv[2], sys.argv[3].removeprefix("--out="))
    """)
    opts = options("{python}", str(script), "{job_dir}/argv.json", "{input_npz}", "--out={output_npz}",
                   "{num_epochs}", "{algorithm}", "{device}", "{seed}", "{work_dir}", "x{{literal}}y", "", "a b")
    reconstruct(inputs, opts, job_dir, num_epochs=4)
    seen = json.loads((job_dir / "argv.json").read_text())
    work = job_dir / WORK_DIR_NAME
    assert seen == {"argv": [str(job_dir / "argv.json"), str(work / INPUT_NAME), f"--out={work / OUTPUT_NAME}", "4",
                             "EXTERNAL", "cpu", "123", str(work), "x{literal}y", "", "a b"],
                    "cwd": str(work)}
    assert not list(tmp_path.rglob("PWNED*")) and not (Path.cwd() / "PWNED").exists()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
def test_device_names_the_workers_gpu(inputs, tmp_path):
    """On CUDA, {device} is cuda:<index> of the calling thread's current GPU (the one the worker owns)."""
    import torch

    script = program(tmp_path, """
        open(sys.argv[3], "w").write(sys.argv[4])
        write_output(sys.argv[1], sys.argv[2])
    """)
    index = torch.cuda.device_count() - 1
    torch.cuda.set_device(index)
    CommandEngine().reconstruct(inputs, "EXTERNAL", 1, options("{python}", str(script), "{input_npz}", "{output_npz}",
                                                               "{job_dir}/device.txt", "{device}"),
                                device="cuda", job_dir=tmp_path / "job")
    assert (tmp_path / "job" / "device.txt").read_text() == f"cuda:{index}"


def test_placeholder_inside_an_element_stays_one_element():
    """``--out={output_npz}`` becomes one argument, whatever the path holds (spaces, quotes, '=')."""
    argv = fill_template(("prog", "--out={output_npz}", "{seed}"), {"output_npz": "/a b/'c\"=d", "seed": "7"})
    assert argv == ["prog", "--out=/a b/'c\"=d", "7"]


# --- failures are the job's, named in one line --------------------------------------------------------


def test_nonzero_exit_names_the_status_and_the_log(inputs, tmp_path):
    """A program exiting 3 fails the job: the error names the status and the log its output went to."""
    script = program(tmp_path, 'print("partial results"); print("boom", file=sys.stderr); sys.exit(3)')
    log = tmp_path / "ptychi.log"
    with job_log(log), pytest.raises(EngineError) as caught:
        reconstruct(inputs, options("{python}", str(script)), tmp_path / "job")
    assert str(caught.value) == f"{PYTHON}: exited with status 3 (its output is in {log})"
    text = log.read_text()
    assert "partial results" in text and "boom" in text  # the program's stdout and stderr, in the job's log
    assert (tmp_path / "job" / WORK_DIR_NAME / INPUT_NAME).is_file()  # kept after a failure


def test_killed_program_names_the_signal(inputs, tmp_path):
    """A program killed by a signal fails the job naming the signal."""
    script = program(tmp_path, "os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)")
    with pytest.raises(EngineError, match=r": was killed by signal SIGTERM \(its output "):
        reconstruct(inputs, options("{python}", str(script)), tmp_path / "job")


def test_missing_output_is_an_error(inputs, tmp_path):
    """Exit 0 without writing the output NPZ fails the job naming the expected file."""
    script = program(tmp_path, 'print("done, I think")')
    with pytest.raises(EngineError) as caught:
        reconstruct(inputs, options("{python}", str(script)), tmp_path / "job")
    output = tmp_path / "job" / WORK_DIR_NAME / OUTPUT_NAME
    assert str(caught.value) == (f"{output}: not written (the program exited with status 0 but wrote no reconstruction;"
                                 f" expected an NPZ there, see docs/reconstruction_contract.md)")


def test_missing_program_is_an_error(inputs, tmp_path):
    """A program that does not exist fails the job in one line, and leaves no watchdog behind."""
    with pytest.raises(EngineError, match=r"^/no/such/program: cannot run \(No such file or directory; "):
        reconstruct(inputs, options("/no/such/program"), tmp_path / "job")


def test_output_violating_the_contract_names_the_key(inputs, tmp_path):
    """An output with a wrong object shape fails with the contract's line naming path and key."""
    script = program(tmp_path, "write_output(sys.argv[1], sys.argv[2], object=np.ones((10, 12), np.complex64))")
    with pytest.raises(ContractError) as caught:
        reconstruct(inputs, options("{python}", str(script), "{input_npz}", "{output_npz}"), tmp_path / "job")
    output = tmp_path / "job" / WORK_DIR_NAME / OUTPUT_NAME
    assert str(caught.value) == f"{output}: object: wrong shape (expected (M, M') = (96, 96), found (10, 12))"


def test_optional_parts_and_warnings(inputs, tmp_path, capfd):
    """Probe, positions and losses come from the output when given; an unexpected key is a warning in the log."""
    n = len(inputs.xcoords)
    script = program(tmp_path, f"""
        write_output(sys.argv[1], sys.argv[2], probe=np.full((32, 32), 2j, np.complex64),
                     positions_x_px=np.arange({n}, dtype=np.float32), positions_y_px=np.zeros({n}),
                     loss_epochs=np.array([1, 3], np.int32), loss_values=np.array([2.0, 1.0]), extra=np.zeros(3))
    """)
    result = reconstruct(inputs, options("{python}", str(script), "{input_npz}", "{output_npz}"), tmp_path / "job")
    np.testing.assert_array_equal(result.probe, np.full((32, 32), 2j, np.complex64))
    np.testing.assert_array_equal(result.positions_x_px, np.arange(n, dtype=np.float64))
    assert result.loss_epochs.dtype == np.int64 and result.loss_epochs.tolist() == [1, 3]
    assert result.loss_values.tolist() == [2.0, 1.0]
    output = tmp_path / "job" / WORK_DIR_NAME / OUTPUT_NAME
    assert f"{output}: extra: warning: unexpected key (ignored)" in capfd.readouterr().err.splitlines()


def test_rerun_replaces_a_stale_work_folder(inputs, tmp_path):
    """A work folder left by a killed run (even a link in its place) is replaced, never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    job = tmp_path / "job"
    job.mkdir()
    (job / WORK_DIR_NAME).symlink_to(outside)
    script = program(tmp_path, "write_output(sys.argv[1], sys.argv[2])")
    reconstruct(inputs, options("{python}", str(script), "{input_npz}", "{output_npz}"), job)
    assert (outside / "keep.txt").read_text() == "not ours"
    assert not (job / WORK_DIR_NAME).exists()


# --- the program's process group dies with its caller ----------------------------------------------

HANG = """
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    tmp = os.path.join(sys.argv[1], "pids.json.tmp")
    json.dump({"program": os.getpid(), "grandchild": child.pid, "program_pgid": os.getpgid(0),
               "grandchild_pgid": os.getpgid(child.pid)}, open(tmp, "w"))
    os.replace(tmp, os.path.join(sys.argv[1], "pids.json"))
    time.sleep(1000)
"""

# The worker: the engine in a process of its own, so that the test can SIGKILL it as a --timeout does.
WORKER = """
import sys
from pathlib import Path
from ptydose.core.run.engines.base import load_inputs
from ptydose.core.run.engines.command import CommandEngine, CommandOptions
options = CommandOptions(argv=tuple(sys.argv[3:]), seed=0, keep_work_dir=False)
CommandEngine().reconstruct(load_inputs(sys.argv[1]), "EXTERNAL", 1, options, device="cpu", job_dir=Path(sys.argv[2]))
"""


def _wait_for_pids(path: Path, owner: subprocess.Popen, log: Path) -> dict:
    appeared = wait_until(lambda: path.exists() or owner.poll() is not None, APPEAR_S)
    assert appeared and path.exists(), f"the program never started: {log.read_text() if log.exists() else ''}"
    return json.loads(path.read_text())


@linux_only
def test_a_killed_worker_takes_the_whole_program_group_with_it(sparse_npz, tmp_path):
    """SIGKILL on the worker (what a --timeout does) kills the program and its grandchild: no orphans."""
    job = tmp_path / "job"
    script = program(tmp_path, HANG)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([PYTHON, "-c", WORKER, str(sparse_npz), str(job), PYTHON, str(script), "{job_dir}"],
                                  stdout=out, stderr=subprocess.STDOUT)
    pids = {}
    try:
        pids = _wait_for_pids(job / "pids.json", worker, log)
        # The program leads its own group (the worker's group is not its), the grandchild is in it.
        assert pids["program_pgid"] == pids["program"] != os.getpgid(worker.pid)
        assert pids["grandchild_pgid"] == pids["program"]
        worker.kill()  # no cleanup code of the worker can run
        worker.wait()
        gone = wait_until(lambda: not running(pids["program"]) and not running(pids["grandchild"]), VANISH_S)
        assert gone, {name: running(pid) for name, pid in pids.items() if name in ("program", "grandchild")}
    finally:
        worker.kill()
        force_kill([pids[k] for k in ("program", "grandchild") if k in pids])


@linux_only
def test_an_exception_in_the_caller_kills_the_group(tmp_path):
    """Leaving the ProgramGroup block by an exception (an interrupted wait) kills the group at once."""
    script = program(tmp_path, HANG)
    pids: dict = {}
    rescued = []

    def rescue() -> None:  # only if the block failed to kill: the test then fails instead of hanging
        rescued.append(True)
        force_kill([pids[k] for k in ("program", "grandchild") if k in pids])

    timer = threading.Timer(VANISH_S, rescue)
    try:
        with pytest.raises(KeyboardInterrupt), ProgramGroup([PYTHON, str(script), str(tmp_path)], tmp_path) as group:
            assert wait_until(lambda: (tmp_path / "pids.json").exists(), APPEAR_S), "the program never started"
            pids.update(json.loads((tmp_path / "pids.json").read_text()))
            timer.start()
            raise KeyboardInterrupt
        timer.cancel()
        assert not rescued, "the program was still running after the block"
        assert group.returncode == -signal.SIGKILL
        assert not running(pids["program"])  # reaped by the block
        assert wait_until(lambda: not running(pids["grandchild"]), VANISH_S)
    finally:
        timer.cancel()
        force_kill([pids[k] for k in ("program", "grandchild") if k in pids])


@linux_only
def test_a_program_that_exits_leaves_nothing_running(tmp_path):
    """Whatever a program leaves in its group when it exits is killed; its own status is kept."""
    script = program(tmp_path, """
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
        open(sys.argv[1], "w").write(str(child.pid))
        sys.exit(0)
    """)
    pid_file = tmp_path / "straggler.pid"
    pid = None
    try:
        assert run_program([PYTHON, str(script), str(pid_file)], tmp_path) == 0
        pid = int(pid_file.read_text())
        assert wait_until(lambda: not running(pid), VANISH_S)
    finally:
        if pid is not None:
            force_kill([pid])


@linux_only
def test_kill_process_group_helper(tmp_path):
    """kill_process_group SIGKILLs every member of a group, and says when there is no such group."""
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)']); time.sleep(1000)")
    leader = subprocess.Popen([PYTHON, "-c", code], start_new_session=True)
    try:
        assert kill_process_group(leader.pid) is True
        assert leader.wait(timeout=VANISH_S) == -signal.SIGKILL
        # The grandchild may still be dying; once the group is empty the helper reports it gone.
        assert wait_until(lambda: kill_process_group(leader.pid) is False, VANISH_S)
    finally:
        leader.kill()


# --- the options record and the design --------------------------------------------------------------


def test_options_round_trip_through_the_manifest_mapping():
    """engine_options JSON (a list) -> CommandOptions (a tuple, hashable) -> the same JSON object."""
    mapping = {"argv": ["{python}", "/x/prog.py", "--in", "{input_npz}"], "seed": 3, "keep_work_dir": False}
    record = options_record(CommandOptions, mapping)
    assert record.argv == ("{python}", "/x/prog.py", "--in", "{input_npz}")
    hash(record)
    assert json.loads(json.dumps(options_mapping(record))) == mapping


@pytest.mark.parametrize(("argv", "message"), [
    ([], "engine_options/argv: empty (expected the program, then its arguments)"),
    ("prog {input_npz}", "engine_options/argv: expected a list of strings (program, arguments...), found str"),
    (["prog", 3], "engine_options/argv/1: expected a string, found int"),
    (["", "x"], "engine_options/argv/0: empty program name"),
    (["prog", "a\0b"], "engine_options/argv/1: contains a NUL character (an argument cannot hold one)"),
    (["prog", "{input}"], "engine_options/argv/1: unknown placeholder {input} in '{input}' (expected one of "
                          + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")"),
    (["prog", "{input_npz.__class__}"], "engine_options/argv/1: unknown placeholder {input_npz.__class__}"),
    (["prog", "{seed:>10}"], "engine_options/argv/1: unknown placeholder {seed:>10}"),
    (["prog", "{seed!r}"], "engine_options/argv/1: unknown placeholder {seed!r}"),
    (["prog", "{0}"], "engine_options/argv/1: unknown placeholder {0}"),
    (["prog", "{}"], "engine_options/argv/1: unknown placeholder {}"),
    (["prog", "{design_dir}/x"], "engine_options/argv/1: unknown placeholder {design_dir}"),
    (["prog", "a{b"], ("engine_options/argv/1: unbalanced brace in 'a{b' (expected {placeholder}, or {{ and }} "
                       "for a literal brace)")),
    (["prog", "a}b"], "engine_options/argv/1: unbalanced brace in 'a}b' "),
])
def test_bad_argv_templates_are_refused(argv, message):
    """A template that is not a list of strings with known placeholders is an EngineError naming the element."""
    with pytest.raises(EngineError) as caught:
        CommandOptions(argv=argv, seed=0, keep_work_dir=False)
    assert str(caught.value).startswith(message)


def test_design_options_resolve_the_design_folder_only(tmp_path):
    """From a design: {design_dir} becomes the absolute folder, run-time placeholders and {{ }} stay."""
    design = SimpleNamespace(path=tmp_path / "plans" / "x" / "design.json", seeds={"grouping": 9})
    settings = {"keep_work_dir": False,
                "command": ["{python}", "{design_dir}/../prog.py", "{{lit}}", "--out={output_npz}"]}
    got = command_design_options(design, settings)
    folder = str((tmp_path / "plans" / "x").resolve())
    assert got == {"argv": ["{python}", f"{folder}/../prog.py", "{{lit}}", "--out={output_npz}"], "seed": 9,
                   "keep_work_dir": False}
    filled = CommandOptions(**got).command_line({**{p: p for p in PLACEHOLDERS}, "output_npz": "/o.npz"})
    assert filled == ["python", f"{folder}/../prog.py", "{lit}", "--out=/o.npz"]


@pytest.mark.parametrize(("command", "message"), [
    (None, "reconstruction/command: the command engine needs the program's argv template"),
    (["prog", "{nope}"], "reconstruction/command/1: unknown placeholder {nope}"),
])
def test_design_without_a_usable_command_is_refused(tmp_path, command, message):
    """A design selecting the command engine without a valid argv template is a DesignError naming the field."""
    settings = {"keep_work_dir": False} if command is None else {"keep_work_dir": False, "command": command}
    design = SimpleNamespace(path=tmp_path / "design.json", seeds={"grouping": 1})
    with pytest.raises(DesignError) as caught:
        command_design_options(design, settings)
    assert str(caught.value).startswith(f"{tmp_path / 'design.json'}: {message}")
