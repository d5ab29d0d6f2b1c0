"""The probe an engine starts from, and its modes: built here, the same way for every engine.

* ``probe_start`` absent: probeGuess, untouched (today's runs, bit for bit).
* ``model``: the design's probe model rebuilt with the stated errors (planning resolved them into
  the options, :func:`.registry.probe_start_options`).
* ``estimated``: from the data alone: the amplitude is the square root of the mean diffraction
  pattern (masked pixels filled from their valid neighbours), the phase flat, centred in the frame
  as the model probes are.

A model or estimated probe carries no dose, so it is scaled to the measured data: ``N^2 sum |P|^2``
equals the mean counts per pattern, counted on the valid pixels and divided by the fraction of
the probe's own far-field power that falls on them (a beamstop hides part of every pattern).

Probe modes (``probe_modes`` K >= 2): mode 0 is the start probe, mode k the start probe times a
low-order polynomial ramp (x, y, xy, x^2 - y^2, ...), orthogonalised (Gram-Schmidt) and given
:data:`EXTRA_MODE_POWER` of mode 0's power; then all are scaled together so that their total
power is the start probe's (the data fix the total, not its split).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...errors import EngineError
from ...physics import defocused_pupil_probe
from .options import ProbeStart

if TYPE_CHECKING:
    from .base import EngineInputs

#: Power of each extra starting mode relative to mode 0 (before the total is rescaled).
EXTRA_MODE_POWER = 0.1
#: Sweeps of neighbour averaging that fill masked pixels of the mean pattern (a beamstop of radius
#: r needs about r^2 sweeps to fill from its rim; this covers radii up to ~10 px, and the fill
#: only shapes the start probe, which the engine then refines).
FILL_SWEEPS = 200


def centring_ramp(n: int) -> np.ndarray:
    """``exp(-2 pi i f (N-1)/2)`` on the FFT grid: moves a probe from pixel 0 to the frame centre,
    where every probe of this project (and pty-chi's position) puts it."""
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    centre = (n - 1) / 2.0
    return np.exp(-2j * np.pi * (fy + fx) * centre)


def fill_masked(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``image`` with its masked pixels replaced by the average of their neighbours, repeatedly
    (a discrete harmonic fill from the valid pixels); valid pixels are kept as they are."""
    if valid is None or valid.all():
        return image
    out = np.where(valid, image, image[valid].mean())
    hole = ~valid
    for _ in range(FILL_SWEEPS):
        padded = np.pad(out, 1, mode="edge")
        neighbours = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 4.0
        out = np.where(hole, neighbours, out)
    return out


def model_probe(n: int, start: ProbeStart) -> np.ndarray:
    """The model start probe (unit power, complex128): the design's probe model with its errors."""
    if start.model != "defocused_pupil":
        raise EngineError(f"engine_options/probe_start/model: {start.model!r} is not a model this engine can build")
    return defocused_pupil_probe(n, start.pupil_radius_fraction, start.defocus_phase_rad)


def estimated_probe(counts: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """A start probe from the data alone (complex128, unit power ``N^2 sum |P|^2 = 1``).

    Amplitude: the square root of the mean pattern (DC-centred, masked pixels filled); phase: flat,
    so the probe is the most compact one with that far-field intensity; centred in the frame.
    """
    n = counts.shape[-1]
    mean = fill_masked(np.asarray(counts, dtype=np.float64).mean(axis=0), valid)
    amplitude = np.sqrt(np.maximum(mean, 0.0))
    if not np.any(amplitude > 0):
        raise EngineError("probe_start estimated: the mean diffraction pattern is zero on every valid pixel")
    probe = np.fft.ifft2(np.fft.ifftshift(amplitude) * centring_ramp(n))
    return probe / math.sqrt(float(np.sum(np.abs(probe) ** 2)) * n * n)


def scale_to_counts(probe: np.ndarray, counts: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``probe`` scaled so that ``N^2 sum |P|^2`` is the measured mean counts per pattern.

    With a mask the valid counts are divided by the share of the probe's far-field power on the
    valid pixels (what the masked pixels would have held for a transmitting object).
    """
    far = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2
    if valid is None:
        measured, fraction = float(np.asarray(counts, dtype=np.float64).sum(axis=(1, 2)).mean()), 1.0
    else:
        measured = float(np.asarray(counts, dtype=np.float64)[:, valid].sum(axis=1).mean())
        fraction = float(far[valid].sum() / far.sum())
    if not (measured > 0 and fraction > 0):
        raise EngineError("probe_start: the data hold no counts on the valid pixels to scale the start probe to")
    n = probe.shape[-1]
    power = float(np.sum(np.abs(probe) ** 2)) * n * n
    return probe * math.sqrt(measured / fraction / power)


def start_probe(probe_guess: np.ndarray, counts: np.ndarray, valid: np.ndarray | None,
                start: ProbeStart | None) -> np.ndarray:
    """The single-mode start probe (complex64 (N, N)); ``start`` None: ``probe_guess`` itself."""
    if start is None:
        return np.asarray(probe_guess, dtype=np.complex64)
    n = probe_guess.shape[-1]
    if start.source == "model":
        probe = model_probe(n, start)
    elif start.source == "estimated":
        probe = estimated_probe(counts, valid)
    else:
        raise EngineError(f"engine_options/probe_start/source: {start.source!r} is not one of model, estimated")
    return scale_to_counts(probe, counts, valid).astype(np.complex64)


def mode_ramps(n: int, count: int) -> list[np.ndarray]:
    """``count`` low-order polynomial ramps about the frame centre, lowest order first."""
    c = (n - 1) / 2.0
    y, x = (np.mgrid[:n, :n].astype(np.float64) - c) / (n / 2.0)
    ramps = [x, y, x * y, x * x - y * y, x * x + y * y, x * (x * x + y * y), y * (x * x + y * y)]
    if count > len(ramps):
        raise EngineError(f"engine_options/probe_modes: at most {len(ramps) + 1} modes can be started")
    return ramps[:count]


def start_modes(probe: np.ndarray, count: int) -> np.ndarray:
    """``count`` orthogonal start modes (complex64 (K, N, N)) from the start ``probe``; K = 1: ``probe[None]``."""
    probe = np.asarray(probe, dtype=np.complex128)
    if count <= 1:
        return probe[None].astype(np.complex64)
    power0 = float(np.sum(np.abs(probe) ** 2))
    modes = [probe]
    for ramp in mode_ramps(probe.shape[-1], count - 1):
        mode = probe * ramp
        for previous in modes:
            mode = mode - np.vdot(previous, mode) / np.vdot(previous, previous) * previous
        power = float(np.sum(np.abs(mode) ** 2))
        if not power > 1e-12 * power0:
            raise EngineError("probe_modes: the start probe is too featureless to start further modes from")
        modes.append(mode * math.sqrt(EXTRA_MODE_POWER * power0 / power))
    stack = np.stack(modes)
    stack *= math.sqrt(power0 / float(np.sum(np.abs(stack) ** 2)))  # the data fix the total power
    return stack.astype(np.complex64)


def orthogonalise_modes(modes: np.ndarray) -> np.ndarray:
    """The same incoherent illumination as orthogonal modes sorted by power, strongest first.

    ``modes`` (K, N, N) -> ``S_k V_k`` of the SVD of the (K, N*N) stack: sum_k |P_k|^2 is unchanged
    pixel by pixel, and mode 0 is the dominant one whichever engine made them. Each mode's global
    phase is set so that its largest-magnitude pixel is real and positive.
    """
    k, n, m = modes.shape
    _, s, vh = np.linalg.svd(np.asarray(modes, dtype=np.complex128).reshape(k, n * m), full_matrices=False)
    out = s[:, None] * vh
    peaks = out[np.arange(k), np.argmax(np.abs(out), axis=1)]
    out *= np.where(np.abs(peaks) > 0, np.conj(peaks) / np.maximum(np.abs(peaks), 1e-300), 1.0)[:, None]
    return out.reshape(k, n, m).astype(np.complex64)


def probe_error(probe: np.ndarray, truth: np.ndarray) -> float:
    """``min_c ||c P - P_true|| / ||P_true||`` over complex scales c (the closed form: the
    normalised residual of projecting P_true onto P)."""
    p = np.asarray(probe, dtype=np.complex128).ravel()
    t = np.asarray(truth, dtype=np.complex128).ravel()
    tt = float(np.vdot(t, t).real)
    pp = float(np.vdot(p, p).real)
    if tt <= 0:
        raise EngineError("probe_error: the reference probe is zero")
    if pp <= 0:
        return 1.0
    overlap = abs(np.vdot(p, t)) ** 2
    return math.sqrt(max(tt - overlap / pp, 0.0) / tt)


def engine_start(inputs: EngineInputs, probe_start: ProbeStart | None, probe_modes: int | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """What an engine starts from: the modes (complex64 (K, N, N)) and the start probe to record
    (None when it is probeGuess, whose modes[0] is then exactly ``inputs.probe``)."""
    probe = start_probe(inputs.probe, inputs.counts, inputs.valid_pixels, probe_start)
    return start_modes(probe, probe_modes or 1), (None if probe_start is None else probe)


def final_modes(modes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """An engine's final probe (mode 0, complex64 (N, N)) and, with several modes, all of them
    orthogonalised and sorted (:func:`orthogonalise_modes`); one mode is returned as it is."""
    modes = np.asarray(modes).reshape(-1, *np.shape(modes)[-2:])
    if len(modes) == 1:
        return modes[0].astype(np.complex64), None
    ordered = orthogonalise_modes(modes)
    return ordered[0], ordered
