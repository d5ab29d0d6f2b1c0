"""The CDTools engine: automatic-differentiation ptychography (Adam) on the same inputs as pty-chi.

Conventions (CDTools 0.3, ``cdtools.models.FancyPtycho``; the proof is
``tests/core/run/test_cdtools_engine.py``):

* Positions: FancyPtycho turns translations (metres) into pixels with the object basis and
  subtracts ``min_translation``; the result is the top-left corner of the object window, taken at
  ``floor`` with the probe Fourier-shifted by the fraction. Our probe's centre is pixel
  ``(N - 1) / 2`` of its frame, so translations ``(x, y) * pixel_size`` with
  ``min_translation = (N - 1) / 2 - PAD`` put the probe centre on ``(xcoords, ycoords)`` of an
  object buffer padded by ``PAD`` pixels. pty-chi rounds where CDTools floors: where the two
  windows differ by a pixel the probe frame wraps by one pixel (``edge_energy_fraction`` of the
  probe), a ~1e-3 relative difference in those patterns and none in the others.
* Far field: CDTools' propagator is the *orthonormal* FFT, so the model's probe is ``N *
  probeGuess`` and its intensities are the contract's counts ``|fft2(P * O)|^2`` (DC-centred).
* The object starts flat (ones) -- the engine never gets ``objectGuess`` -- laid out in the
  ``objectGuess`` frame (the padding is cropped off). The probe starts from ``probeGuess``.
* Only the object and the probe are refined (the probe from ``probe_update_start_epoch``,
  0-based like pty-chi's optimisation plan); FancyPtycho's background and per-shot weights stay
  fixed, as pty-chi's recipe keeps them. The model is built without translation offsets (unlike
  ``FancyPtycho.from_dataset``, which creates and refines them), so positions stay fixed unless
  ``position_correction`` asks for offsets: then they are refined from
  :data:`POSITION_CORRECTION_START_EPOCH` on, at :data:`POSITION_LR_FACTOR` times the step size.
* Realistic conditions: a detector mask becomes the model's ``mask`` (CDTools' losses and their
  normaliser leave masked pixels out); probe modes are the model's incoherent modes (the start
  modes of :mod:`.probes`, times N like the single probe).
* Loss: ``gaussian`` is CDTools' amplitude MSE (Gaussian noise on sqrt(counts)), ``poisson``
  its Poisson NLL. The reported loss is CDTools' per-epoch loss, normalised per pixel.

Nothing is written to disk and no figure is made: the reconstructor runs in this thread
(``thread=False``, so it never polls matplotlib) and no CDTools save or plot call is used.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from ...errors import EngineError
from .base import EngineInputs, EngineResult, ProgressCallback
from .control import ChunkLoop, RunControl
from .options import CdtoolsOptions
from .probes import engine_start, final_modes

#: Pixels of padding around the object buffer: CDTools' floor window may start one pixel before
#: pty-chi's rounded one, which the data contract keeps inside the object.
PAD = 1
#: Further padding when the positions are nominal or refined: a nominal window (an experiment's
#: reported position) may lie partly outside the object the true windows cover, and a refined
#: one may move there.
POSITION_PAD = 4
#: CDTools' loss names for our noise models.
LOSSES = {"gaussian": "amplitude mse", "poisson": "poisson nll"}
#: The detector distance only sets CDTools' detector basis (the object basis comes from the
#: object pixel size directly); the far-field model does not depend on it.
NOMINAL_DETECTOR_DISTANCE_M = 1.0
#: First (0-based) epoch of position refinement: the object needs features to register against first.
POSITION_CORRECTION_START_EPOCH = 2
#: Adam's step for the translation offsets (pixels) relative to the object's step: a step of
#: ``learning_rate`` pixels per batch would make the positions wander by the noise alone.
POSITION_LR_FACTOR = 1.0


def import_cdtools() -> Any:
    """``cdtools`` (imports torch, matplotlib and h5py: seconds, once per process).

    CDTools builds a colormap at import with an argument matplotlib 3.11 deprecates; that one
    third-party warning is silenced, nothing else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing 'N' to ListedColormap is deprecated")
        import cdtools

    return cdtools


def translations_m(inputs: EngineInputs, pixel_size_m: float) -> np.ndarray:
    """CDTools translations (x, y, z) in metres, float32 (n, 3), of the probe centres."""
    n = len(inputs.xcoords)
    return np.stack([inputs.xcoords * pixel_size_m, inputs.ycoords * pixel_size_m, np.zeros(n)],
                    axis=1).astype(np.float32)


def object_pad(inputs: EngineInputs, options: CdtoolsOptions) -> int:
    """The object buffer's padding: :data:`PAD`, plus :data:`POSITION_PAD` for nominal or refined positions."""
    return PAD + (POSITION_PAD if options.position_correction or inputs.positions_source == "nominal" else 0)


def check_windows(inputs: EngineInputs, pad: int = PAD) -> None:
    """Every CDTools (floor) window lies inside the object buffer padded by ``pad``, else an EngineError."""
    n = inputs.probe.shape[-1]
    for axis, coords, size in (("y", inputs.ycoords, inputs.object_shape[0]), ("x", inputs.xcoords, inputs.object_shape[1])):
        start = np.floor(coords - (n - 1) / 2.0) + pad
        bad = np.flatnonzero((start < 0) | (start + n > size + 2 * pad))
        if bad.size:
            raise EngineError(f"{axis}coords[{bad[0]}] = {coords[bad[0]]}: the {n} x {n} window leaves the object "
                              f"(size {size}) by more than {pad} px")


def build_model(inputs: EngineInputs, options: CdtoolsOptions, initial_object: np.ndarray,
                initial_probes: np.ndarray | None = None) -> tuple[Any, Any]:
    """The CDTools ``(FancyPtycho, Ptycho2DDataset)`` of ``inputs``, starting from ``initial_object``.

    ``initial_object`` is in the ``objectGuess`` frame (the engine passes ones; the conventions
    test passes the truth to compare forward models). ``initial_probes`` (K, N, N) are the start
    modes in the contract's scale (None: probeGuess). Both live on the CPU.
    """
    import torch

    cdtools = import_cdtools()
    Ptycho2DDataset, FancyPtycho = cdtools.datasets.Ptycho2DDataset, cdtools.models.FancyPtycho

    if tuple(initial_object.shape) != tuple(inputs.object_shape):
        raise EngineError(f"initial object shape {initial_object.shape} differs from {inputs.object_shape}")
    pad = object_pad(inputs, options)
    check_windows(inputs, pad)
    n = inputs.probe.shape[-1]
    pixel = options.object_pixel_size_m
    # Detector pixel that makes CDTools' far-field object basis exactly this pixel size.
    detector_pixel = options.wavelength_m * NOMINAL_DETECTOR_DISTANCE_M / (n * pixel)
    # Basis columns: the (i, j) = (row, column) pixel steps in (x, y, z); rows follow y, columns x.
    detector = {"distance": NOMINAL_DETECTOR_DISTANCE_M,
                "basis": np.array([[0.0, detector_pixel], [detector_pixel, 0.0], [0.0, 0.0]], np.float32)}
    object_basis = np.array([[0.0, pixel], [pixel, 0.0], [0.0, 0.0]], np.float32)
    translations = translations_m(inputs, pixel)
    # The dataset wraps the counts without a copy; CDTools only zeroes NaNs in place, and the
    # contract guarantees there are none.
    dataset = Ptycho2DDataset(translations, torch.as_tensor(inputs.counts), wavelength=options.wavelength_m,
                              detector_geometry=detector)
    padded = np.pad(initial_object.astype(np.complex64), pad, constant_values=1.0)
    probes = inputs.probe[None] if initial_probes is None else initial_probes
    # Offsets only when asked: a model without them keeps its parameters (and Adam's groups) as before.
    offsets = ({"translation_offsets": torch.zeros((len(inputs.counts), 2), dtype=torch.float32)}
               if options.position_correction else {})
    mask = {} if inputs.valid_pixels is None else {"mask": torch.as_tensor(inputs.valid_pixels, dtype=torch.bool)}
    model = FancyPtycho(
        options.wavelength_m, detector, object_basis,
        probe_guess=probes.astype(np.complex64) * n,  # orthonormal FFT: N * probe gives counts
        obj_guess=padded,
        min_translation=torch.tensor([(n - 1) / 2.0 - pad] * 2, dtype=torch.float32),
        background=torch.zeros((n, n), dtype=torch.float32),
        # Explicit unit weights: without them FancyPtycho builds them on the CPU, which fails on CUDA.
        weights=torch.ones(len(inputs.counts), dtype=torch.float32),
        loss=LOSSES[options.noise_model],
        **offsets,
        **mask,
    )
    # Synthetic data: no detector background and no shot-to-shot intensity change to learn.
    model.background.requires_grad_(False)
    model.weights.requires_grad_(False)
    return model, dataset


def learning_rate(options: CdtoolsOptions, epoch: int, num_epochs: int) -> float:
    """Adam's step size in ``epoch`` (0-based): ``learning_rate`` decaying geometrically to ``learning_rate_final``.

    A large step finds the object quickly, a small one settles it below the noise a large step
    keeps stirring up; the geometric decay spends the run's epochs between the two.
    """
    fraction = epoch / (num_epochs - 1) if num_epochs > 1 else 0.0
    return options.learning_rate * (options.learning_rate_final / options.learning_rate) ** fraction


class CdtoolsEngine:
    """CDTools' FancyPtycho with its Adam reconstructor behind the engine interface."""

    def load(self) -> None:
        import_cdtools()

    def reconstruct(self, inputs: EngineInputs, algorithm: str, num_epochs: int, options: CdtoolsOptions, *,
                    device: str, progress: ProgressCallback | None = None,
                    control: RunControl | None = None) -> EngineResult:
        """Run Adam in chunks of ``options.chunk_epochs`` epochs (:class:`.control.ChunkLoop`):
        progress after each chunk, checkpoints and the stopping rule as ``control`` asks.

        The learning-rate schedule spans the *planned* epochs: a run the stopping rule ends early
        stops at the step size it had reached.
        """
        import torch
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler

        AdamReconstructor = import_cdtools().reconstructors.AdamReconstructor

        if algorithm != "ADAM":
            raise EngineError(f"algorithm {algorithm}: the CDTools engine offers ADAM")
        modes, initial_probe = engine_start(inputs, options.probe_start, options.probe_modes)
        model, dataset = build_model(inputs, options, np.ones(inputs.object_shape, np.complex64),  # never objectGuess
                                     modes)
        pad = object_pad(inputs, options)
        target = torch.device("cuda" if device == "cuda" else "cpu")
        model.to(device=target)
        dataset.get_as(device=target)
        # One fancy-indexed batch per step (one transfer to the device), in a seeded order that
        # leaves torch's global random state alone.
        order = torch.Generator().manual_seed(options.seed)
        sampler = BatchSampler(RandomSampler(dataset, generator=order), options.batch_size, drop_last=False)
        loader = DataLoader(dataset, sampler=sampler, batch_size=None)
        refine_positions = bool(options.position_correction)
        reconstructor = AdamReconstructor(
            model, dataset, **({"lr_factors": {"translation_offsets": POSITION_LR_FACTOR}} if refine_positions else {}))
        model.probe.requires_grad_(False)
        if refine_positions:
            model.translation_offsets.requires_grad_(False)
        loop = ChunkLoop(num_epochs, options.chunk_epochs, control, progress)
        for n in loop:
            done = loop.done
            start = time.perf_counter()
            epochs = reconstructor.optimize(n, lr=learning_rate(options, done, num_epochs), custom_data_loader=loader,
                                            thread=False, calculation_width=options.batch_size)
            for epoch in range(done, done + n):
                # Set before the generator runs this epoch (it runs lazily, in this thread).
                reconstructor.adjust_optimizer(lr=learning_rate(options, epoch, num_epochs))
                model.probe.requires_grad_(options.optimize_probe and epoch >= options.probe_update_start_epoch)
                if refine_positions:
                    model.translation_offsets.requires_grad_(epoch >= POSITION_CORRECTION_START_EPOCH)
                next(epochs)
            next(epochs, None)  # lets the generator finish its own bookkeeping
            if target.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            loop.chunk_done(seconds, [float(v) for v in model.loss_history], lambda: _object_copy(model, pad))
        losses = np.asarray([float(v) for v in model.loss_history], dtype=np.float64)
        if not np.all(np.isfinite(losses)):
            raise EngineError(f"CDTools diverged: non-finite loss at epoch {int(np.argmin(np.isfinite(losses)))} "
                              f"(learning_rate {options.learning_rate} too large?)")
        with torch.no_grad():
            obj = _object_copy(model, pad)
            probes = (model.probe * model.probe_norm).detach().cpu().numpy() / inputs.probe.shape[-1]
            # The model's translations back in object pixels, plus the refined offsets (pixels,
            # (row, column) = (y, x) as the object basis orders them).
            x_px = dataset.translations[:, 0].double().cpu().numpy() / options.object_pixel_size_m
            y_px = dataset.translations[:, 1].double().cpu().numpy() / options.object_pixel_size_m
            if refine_positions:
                offsets = (model.translation_offsets * model.translation_scale).double().cpu().numpy()
                x_px, y_px = x_px + offsets[:, 1], y_px + offsets[:, 0]
        probe, probe_modes = final_modes(probes)
        return EngineResult(
            object=np.ascontiguousarray(obj, dtype=np.complex64),
            probe=probe,
            positions_x_px=x_px,
            positions_y_px=y_px,
            loss_epochs=np.arange(len(losses), dtype=np.int64),
            loss_values=losses,
            reconstruction_s=loop.seconds,
            checkpoints=loop.checkpoints,
            checkpoint_seconds=loop.checkpoint_seconds,
            stop_reason=loop.stop_reason,
            probe_modes=probe_modes,
            initial_probe=initial_probe,
            initial_positions_x_px=inputs.xcoords.copy() if refine_positions else None,
            initial_positions_y_px=inputs.ycoords.copy() if refine_positions else None,
        )


def _object_copy(model: Any, pad: int = PAD) -> np.ndarray:
    """The model's object in the objectGuess frame (padding cropped), a complex64 CPU copy."""
    return np.array(model.obj.detach().cpu().numpy()[pad:-pad, pad:-pad], dtype=np.complex64)
