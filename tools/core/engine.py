"""The pty-chi 2.x adapter: contract NPZ in, reconstruction out.

Conventions (see ``tools/core/physics.py``): pty-chi takes photon *counts*, DC-centred
(``data_options.fft_shift=True``), positions ``p = c - O`` with ``O = round(M / 2) - 0.5``, and an
object buffer in the same frame as ``objectGuess`` so that the reconstruction compares with the
ground truth pixel for pixel. The object starts flat (ones) -- never from ``objectGuess`` -- and
the probe from ``probeGuess``. torch and ptychi are imported lazily, so that planning and the
parent process of ``run-ptychi`` never pay for them; a worker imports them once via
:func:`import_engine`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .contract import read_contract_npz
from .errors import EngineError
from .fileio import atomic_output
from .geometry import position_origin

log = logging.getLogger(__name__)

#: pty-chi options class per algorithm name (attribute of ``ptychi.api``).
OPTIONS_CLASS = {"LSQML": "LSQMLOptions", "PIE": "PIEOptions", "EPIE": "EPIEOptions",
                 "RPIE": "RPIEOptions", "DM": "DMOptions"}

#: ``progress(epochs_done, num_epochs, last_loss, seconds_in_task_run)`` after each chunk.
ProgressCallback = Callable[[int, int, float | None, float], None]


def import_engine() -> Any:
    """Import torch and ptychi (seconds); returns ``ptychi.api``. Call once per worker."""
    import ptychi.api as api  # noqa: F401  (the heavy import is the point)
    import torch  # noqa: F401

    return api


@dataclass
class ReconstructionInputs:
    """What pty-chi needs from one contract NPZ."""

    counts: np.ndarray  # float32 (n, N, N), DC-centred
    probe: np.ndarray  # complex64 (N, N)
    xcoords: np.ndarray  # float64 (n,), object pixel-index frame
    ycoords: np.ndarray
    scan_index: np.ndarray  # int64 (n,)
    object_shape: tuple[int, int]
    metadata: dict


@dataclass
class ReconstructionResult:
    object: np.ndarray  # complex64 (M, M') in the objectGuess frame
    probe: np.ndarray  # complex64 (N, N), first mode
    positions_x_px: np.ndarray  # float64, xcoords frame
    positions_y_px: np.ndarray
    loss_epochs: np.ndarray  # int64
    loss_values: np.ndarray  # float64
    reconstruction_s: float  # seconds inside task.run
    device: str


def load_inputs(path: str | os.PathLike) -> ReconstructionInputs:
    """Read a contract NPZ after checking it against the data contract (never with pickle).

    A violation raises :class:`ContractError` with the first problem line, before any compute.
    """
    data = read_contract_npz(path, check_values=True)
    # counts = round((diffraction * amplitude_scale)^2), exactly as gen-synthetic stored them.
    counts = data.counts().astype(np.float32)
    return ReconstructionInputs(
        counts=counts,
        probe=data["probeGuess"].astype(np.complex64),
        xcoords=data["xcoords"].astype(np.float64),
        ycoords=data["ycoords"].astype(np.float64),
        scan_index=data["scan_index"].astype(np.int64),
        object_shape=tuple(int(s) for s in data["objectGuess"].shape),  # the frame only; values unused
        metadata=data.metadata,
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda: torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise EngineError(f"--device {device}: expected auto, cpu or cuda")
    return device


def device_label(device: str) -> str:
    import torch

    if device == "cuda":
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def build_options(algorithm: str, num_epochs: int, engine_options: dict, device: str) -> Any:
    """pty-chi task options for one job."""
    api = import_engine()
    if algorithm not in OPTIONS_CLASS:
        raise EngineError(f"algorithm {algorithm}: not one of {', '.join(OPTIONS_CLASS)}")
    options = getattr(api, OPTIONS_CLASS[algorithm])()
    options.data_options.fft_shift = True  # our diffraction is DC-centred
    options.data_options.wavelength_m = float(engine_options["wavelength_m"])
    options.object_options.pixel_size_m = float(engine_options["object_pixel_size_m"])
    options.object_options.optimizable = True
    options.probe_options.optimizable = bool(engine_options["optimize_probe"])
    options.probe_options.optimization_plan.start = int(engine_options["probe_update_start_epoch"])
    options.probe_position_options.optimizable = False
    rec = options.reconstructor_options
    rec.num_epochs = int(num_epochs)
    rec.batch_size = int(engine_options["batch_size"])
    rec.random_seed = int(engine_options["seed"])
    rec.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    if algorithm == "LSQML":
        rec.noise_model = api.NoiseModels(engine_options["noise_model"])
    return options


def reconstruct(
    inputs: ReconstructionInputs,
    algorithm: str,
    num_epochs: int,
    engine_options: dict,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> ReconstructionResult:
    """Run pty-chi in chunks of ``chunk_epochs`` epochs, reporting progress after each chunk."""
    from ptychi.api.task import PtychographyTask

    origin_y, origin_x = position_origin(inputs.object_shape)
    options = build_options(algorithm, num_epochs, engine_options, device)
    flat_object = np.ones((1, *inputs.object_shape), dtype=np.complex64)  # never objectGuess
    task = PtychographyTask(
        options,
        diffraction_data=inputs.counts,
        object_data=flat_object,
        probe_data=inputs.probe[None, None],
        probe_position_x_px=inputs.xcoords - origin_x,
        probe_position_y_px=inputs.ycoords - origin_y,
    )
    chunk = max(1, int(engine_options["chunk_epochs"]))
    run_s = 0.0
    done = 0
    while done < num_epochs:
        n = min(chunk, num_epochs - done)
        start = time.perf_counter()
        task.run(n_epochs=n)
        run_s += time.perf_counter() - start
        done += n
        if progress is not None:
            progress(done, num_epochs, _last_loss(task), run_s)
    table = task.reconstructor.loss_tracker.table
    obj = task.get_data_to_cpu("object", as_numpy=True)
    if obj.shape[-2:] != inputs.object_shape:
        raise EngineError(f"pty-chi returned an object of shape {obj.shape}, expected {inputs.object_shape}")
    probe = task.get_data_to_cpu("probe", as_numpy=True)
    return ReconstructionResult(
        object=obj[0].astype(np.complex64),
        probe=probe.reshape(-1, *probe.shape[-2:])[0].astype(np.complex64),
        positions_x_px=task.get_probe_positions_x(as_numpy=True).astype(np.float64) + origin_x,
        positions_y_px=task.get_probe_positions_y(as_numpy=True).astype(np.float64) + origin_y,
        loss_epochs=table["epoch"].to_numpy(dtype=np.int64),
        loss_values=table["loss"].to_numpy(dtype=np.float64),
        reconstruction_s=run_s,
        device=device_label(device),
    )


def _last_loss(task: Any) -> float | None:
    table = task.reconstructor.loss_tracker.table
    return float(table["loss"].iloc[-1]) if len(table) else None


def write_reconstruction_npz(path: str | os.PathLike, result: ReconstructionResult, metadata: dict) -> Path:
    """``reconstruction.npz``: object, probe, positions, losses and a JSON ``_metadata`` string."""
    arrays = {
        "object": result.object.astype(np.complex64),
        "probe": result.probe.astype(np.complex64),
        "positions_x_px": result.positions_x_px.astype(np.float64),
        "positions_y_px": result.positions_y_px.astype(np.float64),
        "loss_epochs": result.loss_epochs.astype(np.int64),
        "loss_values": result.loss_values.astype(np.float64),
        "_metadata": np.array(json.dumps(metadata, sort_keys=True)),
    }
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
