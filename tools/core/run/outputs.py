"""The files of a job folder and the writers of the reconstruction's own outputs.

``reconstruction.npz`` (object, probe, positions, losses, ``_metadata`` JSON string; optional
checkpoints: ``checkpoint_epochs``, ``checkpoint_objects``, ``checkpoint_seconds``, at most
:data:`.engines.control.MAX_CHECKPOINTS`; optional, only when used: ``probe_modes``,
``initial_probe``, ``initial_positions_x_px``/``_y_px``; docs/manifests.md), ``losses.csv`` and ``product.h5``
(Ptychodus) are written by the worker, each atomically; ``result.json`` only by :mod:`.recording`;
``ptychi.log`` holds everything the job printed plus the runner's notes.

Atomic writes create a fresh temporary file in the job folder and rename it over the target, so
a link in a file's place is replaced, never written through; the folder itself is checked first
(:func:`job_folder`: no link between the artifact root and it). An OS error while writing an
output (a full disk, a folder made read-only) names that output: ``<path>: No space left on device``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ... import __version__
from ..errors import EngineError
from ..fileio import atomic_output
from ..product import ProductMetadata, write_product
from ..safepath import make_confined_dirs
from .engines.base import EngineInputs, EngineResult
from .engines.control import MAX_CHECKPOINTS
from .engines.registry import engine_spec
from .records import JobSpec, WorkItem

LOG_NAME = "ptychi.log"
RESULT_NAME = "result.json"
OUTPUT_FILES = ("reconstruction.npz", "losses.csv", "product.h5")
#: Files written by atomic replacement: a kill can leave ``.<name>.<random>.tmp`` beside them.
ATOMIC_FILES = (RESULT_NAME, *OUTPUT_FILES)


class OutputError(EngineError):
    """An output file could not be written (the message starts with its path)."""


def job_folder(job: JobSpec) -> Path:
    """The job's folder, created as real folders below its artifact root; a link on the way is a PathError."""
    return make_confined_dirs(job.confining_root, job.output_dir, "job folder")


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` into ``<path>: <reason>`` (write errors carry no file name)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OutputError(f"{path}: {reason}") from None


def write_reconstruction_npz(path: str | os.PathLike, result: EngineResult, metadata: dict,
                             initial_positions: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """``reconstruction.npz``: object, probe, positions, losses and a JSON ``_metadata`` string.

    Realistic conditions add, each only when used (so an ideal run's file keeps its members):
    ``probe_modes`` (K, N, N) with several modes, ``initial_probe`` (N, N) when the start probe was
    not probeGuess, and ``initial_positions_x_px``/``_y_px``, the positions the engine was given
    (``initial_positions``, or the result's own when it refined them); ``positions_*`` are the final ones.
    """
    arrays = {
        "object": result.object.astype(np.complex64),
        "probe": result.probe.astype(np.complex64),
        "positions_x_px": result.positions_x_px.astype(np.float64),
        "positions_y_px": result.positions_y_px.astype(np.float64),
        "loss_epochs": result.loss_epochs.astype(np.int64),
        "loss_values": result.loss_values.astype(np.float64),
        "_metadata": np.array(json.dumps(metadata, sort_keys=True)),
    }
    if result.checkpoints:
        epochs = sorted(result.checkpoints)
        if len(epochs) > MAX_CHECKPOINTS:
            raise EngineError(f"the engine kept {len(epochs)} checkpoints, more than {MAX_CHECKPOINTS}")
        arrays["checkpoint_epochs"] = np.asarray(epochs, dtype=np.int64)
        arrays["checkpoint_objects"] = np.stack([result.checkpoints[e] for e in epochs]).astype(np.complex64)
        # Engine seconds at each checkpoint; NaN where an engine kept an object but no time.
        arrays["checkpoint_seconds"] = np.asarray([result.checkpoint_seconds.get(e, np.nan) for e in epochs],
                                                  dtype=np.float64)
    if result.probe_modes is not None:
        arrays["probe_modes"] = np.asarray(result.probe_modes, dtype=np.complex64)
    if result.initial_probe is not None:
        arrays["initial_probe"] = np.asarray(result.initial_probe, dtype=np.complex64)
    if result.initial_positions_x_px is not None:
        initial_positions = (result.initial_positions_x_px, result.initial_positions_y_px)
    if initial_positions is not None:
        arrays["initial_positions_x_px"] = np.asarray(initial_positions[0], dtype=np.float64)
        arrays["initial_positions_y_px"] = np.asarray(initial_positions[1], dtype=np.float64)
    with atomic_output(path) as handle:
        np.savez(handle, **arrays)
    return Path(path)


def write_losses_csv(path: str | os.PathLike, epochs: np.ndarray, values: np.ndarray) -> Path:
    buffer = io.StringIO()
    buffer.write("epoch,loss\n")
    for epoch, value in zip(epochs, values):
        buffer.write(f"{int(epoch)},{float(value)!r}\n")
    with atomic_output(path, "w") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def write_job_outputs(item: WorkItem, inputs: EngineInputs, result: EngineResult) -> None:
    """The three output files of one finished reconstruction, in the job's folder."""
    job = item.job
    out = job.output_dir
    stop = getattr(job, "stopping", None)
    meta = {"job_id": job.id, "dose": job.dose, "view": job.view, "split": job.split,
            "replicate": getattr(job, "replicate", 0),
            "input_npz": job.input_npz, "input_sha256": job.input_sha256, "engine": job.engine,
            "algorithm": job.algorithm, "num_epochs": job.num_epochs, "options_hash": job.options_hash,
            "reconstructor": getattr(job, "reconstructor", None),
            "epochs_run": int(len(result.loss_values)), "stop_reason": result.stop_reason,
            "stopping": None if stop is None else stop.mapping()}
    # Nominal positions (an experiment's) are recorded as given even when the engine kept them.
    given = (inputs.xcoords, inputs.ycoords) if inputs.positions_source == "nominal" else None
    with naming(out / "reconstruction.npz"):
        write_reconstruction_npz(out / "reconstruction.npz", result, meta, given)
    with naming(out / "losses.csv"):
        write_losses_csv(out / "losses.csv", result.loss_epochs, result.loss_values)
    title = engine_spec(job.engine).title
    with naming(out / "product.h5"):
        _write_product(item, inputs, result, title)


def _write_product(item: WorkItem, inputs: EngineInputs, result: EngineResult, title: str) -> None:
    job, inst = item.job, item.instrument
    out = job.output_dir
    write_product(
        out / "product.h5",
        ProductMetadata(
            name=f"{item.design_name} {job.id}",
            comments=f"{title} {job.algorithm} {job.num_epochs} epochs from {job.input_npz}"
                     f" (sha256 {job.input_sha256}); written by run-ptychi {__version__}",
            detector_object_distance_m=inst.detector_distance_m,
            photon_energy_eV=inst.photon_energy_eV,
            probe_photon_count=float(job.dose),
            exposure_time_s=inst.exposure_time_s,
            pixel_size_m=inst.object_pixel_size_m,
        ),
        # Ptychodus reads a probe with a leading mode axis as incoherent modes.
        result.object, result.probe if result.probe_modes is None else result.probe_modes,
        result.positions_x_px, result.positions_y_px,
        inputs.scan_index, result.loss_epochs, result.loss_values,
    )
