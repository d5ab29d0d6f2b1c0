"""The pty-chi 2.x engine: counts in, a reconstruction in the objectGuess frame out.

Conventions (see ``tools/core/physics.py``): pty-chi takes photon *counts*, DC-centred
(``data_options.fft_shift=True``), positions ``p = c - O`` with ``O = round(M / 2) - 0.5``, and an
object buffer in the same frame as ``objectGuess`` so that the reconstruction compares with the
ground truth pixel for pixel. The object starts flat (ones) -- the engine never gets
``objectGuess`` -- and the probe from ``probeGuess`` (or the start probe and modes of
:mod:`.probes`). torch and ptychi are imported in :meth:`PtychiEngine.load`, once per worker,
never by planning or the parent of ``run-ptychi``.

Realistic conditions: a detector mask goes in as ``valid_pixel_mask`` (pty-chi leaves masked
pixels out of every update); probe modes as ``probe_data`` (1, K, N, N), which pty-chi keeps
orthogonal; ``position_correction`` refines the positions with pty-chi's gradient position
correction from :data:`POSITION_CORRECTION_START_EPOCH` on (docs/engines.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...errors import EngineError
from ...geometry import position_origin
from .base import EngineInputs, EngineResult, ProgressCallback
from .control import ChunkLoop, RunControl
from .options import PtychiOptions
from .probes import engine_start, final_modes

#: First (0-based) epoch of position refinement: the object must first hold features the
#: positions can be registered against (a flat start has none).
POSITION_CORRECTION_START_EPOCH = 2
#: pty-chi's position step size (its default 0.3 barely moves positions in 40 epochs): measured on
#: the smoke study with 0.7 px random errors, 40 LSQML epochs, the RMS error (mean offset removed)
#: went 0.99 -> 0.77 / 0.55 / 0.33 / 0.15 px for steps 0.3 / 1 / 3 / 10 at dose 1e5, and 0.99 ->
#: 0.74 / 0.61 / 0.67 / 0.81 px at dose 1e3, where noise drives large steps astray (docs/engines.md).
POSITION_STEP_SIZE = 3.0


def options_class_name(algorithm: str) -> str:
    """The ``ptychi.api`` options class of an algorithm (``LSQML`` -> ``LSQMLOptions``)."""
    return f"{algorithm}Options"


def ptychi_api() -> Any:
    """``ptychi.api`` (imports torch and ptychi: seconds, once per process)."""
    import ptychi.api as api

    return api


def build_options(algorithm: str, num_epochs: int, options: PtychiOptions, device: str) -> Any:
    """pty-chi task options for one job (``device``: ``cpu`` or ``cuda``)."""
    api = ptychi_api()
    options_class = getattr(api, options_class_name(algorithm), None)
    if options_class is None:
        raise EngineError(f"algorithm {algorithm}: pty-chi has no {options_class_name(algorithm)}")
    task_options = options_class()
    task_options.data_options.fft_shift = True  # our diffraction is DC-centred
    task_options.data_options.wavelength_m = options.wavelength_m
    task_options.object_options.pixel_size_m = options.object_pixel_size_m
    task_options.object_options.optimizable = True
    task_options.probe_options.optimizable = options.optimize_probe
    task_options.probe_options.optimization_plan.start = options.probe_update_start_epoch
    task_options.probe_position_options.optimizable = bool(options.position_correction)
    if options.position_correction:
        task_options.probe_position_options.optimization_plan.start = POSITION_CORRECTION_START_EPOCH
        task_options.probe_position_options.step_size = POSITION_STEP_SIZE
    rec = task_options.reconstructor_options
    rec.num_epochs = int(num_epochs)
    rec.batch_size = options.batch_size
    rec.random_seed = options.seed
    rec.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    if algorithm == "LSQML":
        rec.noise_model = api.NoiseModels(options.noise_model)
    # The PIE family's recipe values (docs/decisions.md); None keeps pty-chi's default.
    for target, name, value in ((task_options.object_options, "alpha", options.object_alpha),
                                (task_options.probe_options, "alpha", options.probe_alpha),
                                (task_options.object_options, "step_size", options.object_step_size),
                                (task_options.probe_options, "step_size", options.probe_step_size)):
        if value is not None:
            if not hasattr(target, name):
                raise EngineError(f"algorithm {algorithm}: pty-chi's {type(target).__name__} has no {name}")
            setattr(target, name, float(value))
    return task_options


class PtychiEngine:
    """pty-chi's reconstructors behind the engine interface."""

    def load(self) -> None:
        ptychi_api()
        import torch  # noqa: F401  (the heavy import is the point)

    def reconstruct(self, inputs: EngineInputs, algorithm: str, num_epochs: int, options: PtychiOptions, *,
                    device: str, progress: ProgressCallback | None = None,
                    control: RunControl | None = None) -> EngineResult:
        """Run pty-chi in chunks of ``options.chunk_epochs`` epochs (:class:`.control.ChunkLoop`):
        progress after each chunk, checkpoints and the stopping rule as ``control`` asks."""
        from ptychi.api.task import PtychographyTask

        origin_y, origin_x = position_origin(inputs.object_shape)
        flat_object = np.ones((1, *inputs.object_shape), dtype=np.complex64)  # never objectGuess
        modes, initial_probe = engine_start(inputs, options.probe_start, options.probe_modes)
        # A mask only when the file has one: without it pty-chi's own default (all valid) applies, as before.
        mask = {} if inputs.valid_pixels is None else {"valid_pixel_mask": inputs.valid_pixels}
        task = PtychographyTask(
            build_options(algorithm, num_epochs, options, device),
            diffraction_data=inputs.counts,
            object_data=flat_object,
            probe_data=modes[None],
            probe_position_x_px=inputs.xcoords - origin_x,
            probe_position_y_px=inputs.ycoords - origin_y,
            **mask,
        )
        loop = ChunkLoop(num_epochs, options.chunk_epochs, control, progress)
        for n in loop:
            start = time.perf_counter()
            task.run(n_epochs=n)
            seconds = time.perf_counter() - start
            loop.chunk_done(seconds, task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64),
                            lambda: task.get_data_to_cpu("object", as_numpy=True)[0])
        table = task.reconstructor.loss_tracker.table
        obj = task.get_data_to_cpu("object", as_numpy=True)
        if obj.shape[-2:] != inputs.object_shape:
            raise EngineError(f"pty-chi returned an object of shape {obj.shape}, expected {inputs.object_shape}")
        probe = task.get_data_to_cpu("probe", as_numpy=True)  # (OPR modes, K, N, N)
        probe, probe_modes = final_modes(probe.reshape(-1, *probe.shape[-2:])[:len(modes)])
        refined = bool(options.position_correction)
        return EngineResult(
            object=obj[0].astype(np.complex64),
            probe=probe,
            positions_x_px=task.get_probe_positions_x(as_numpy=True).astype(np.float64) + origin_x,
            positions_y_px=task.get_probe_positions_y(as_numpy=True).astype(np.float64) + origin_y,
            loss_epochs=table["epoch"].to_numpy(dtype=np.int64),
            loss_values=table["loss"].to_numpy(dtype=np.float64),
            reconstruction_s=loop.seconds,
            checkpoints=loop.checkpoints,
            checkpoint_seconds=loop.checkpoint_seconds,
            stop_reason=loop.stop_reason,
            probe_modes=probe_modes,
            initial_probe=initial_probe,
            initial_positions_x_px=inputs.xcoords.copy() if refined else None,
            initial_positions_y_px=inputs.ycoords.copy() if refined else None,
        )
