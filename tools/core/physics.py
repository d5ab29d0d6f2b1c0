"""Physics of the synthetic data: probe, object, scan and pty-chi's forward model.

Conventions (pty-chi 2.2, verified against ``ptychi/forward_models.py`` and ``image_proc.py``):

* Coordinates ``c = (y, x)`` are probe centres in object pixel-index coordinates (pixel ``i`` has
  its centre at ``i``). pty-chi's position is ``p = c - O`` with the object origin
  ``O = round(M / 2) - 0.5`` per axis (its default ``SUPPORT`` origin).
* pty-chi extracts the object window at the *integer* start ``s = round(p) + O - (N - 1) / 2`` and
  Fourier-shifts the probe (periodically, ``exp(-2 pi i f r)``) by the residual ``r = p - round(p)``.
* Far field: the unnormalised FFT, ``I = |fft2(shift(P, r) * obj[s_y:s_y+N, s_x:s_x+N])|^2``,
  stored fft-shifted (DC at the centre).
* Dose = expected photons per exposure through a fully transmitting object
  ``= sum |fft2(P)|^2 = N^2 sum |P|^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage

from .errors import DesignError
from .geometry import subpixel_residuals, window_starts

#: Fraction of the probe intensity inside the circle whose diameter we call the probe diameter.
ENCIRCLED_FRACTION = 0.9
#: Width of the soft pupil edge, in frequency pixels (1/N cycles per pixel).
PUPIL_EDGE_PX = 4.0


# ----------------------------------------------------------------------------------------------
# Position conventions
# ----------------------------------------------------------------------------------------------
def windows_inside(coords_yx: np.ndarray, object_shape: tuple[int, int], n: int, margin_px: float = 0.0) -> np.ndarray:
    """True where the whole N x N window (plus ``margin_px``) lies inside the object."""
    starts = window_starts(coords_yx, object_shape, n)
    limits = np.asarray(object_shape)[None, :]
    return np.all((starts >= margin_px) & (starts + n <= limits - margin_px), axis=1)


# ----------------------------------------------------------------------------------------------
# Probe
# ----------------------------------------------------------------------------------------------
def defocused_pupil_probe(n: int, pupil_radius_fraction: float, defocus_phase_rad: float) -> np.ndarray:
    """A focused probe: circular pupil with quadratic defocus phase, unit-normalised.

    The pupil is ``|f| <= pupil_radius_fraction`` (cycles per pixel; 0.5 = Nyquist; soft edge) with phase
    ``defocus_phase_rad * (|f| / radius)^2``. Its inverse FFT is centred at pixel ``(N - 1) / 2``
    of the frame, which is where pty-chi puts the probe position (the centre of its window).
    Returned as complex128 with ``N^2 sum |P|^2 = 1`` (one photon through free space).
    """
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    rho = np.hypot(fy, fx)
    radius = float(pupil_radius_fraction)
    # Raised-cosine pupil edge, PUPIL_EDGE_PX frequency pixels wide (half inside, half outside
    # the nominal radius). A hard edge rings out to the frame border (~2 % of the energy in the
    # outer N/8), which pty-chi's periodic sub-pixel shift would wrap around; the soft edge
    # (as partial coherence and finite optics give) keeps that below ~1e-3.
    width = PUPIL_EDGE_PX / n
    ramp = np.clip((radius + width / 2.0 - rho) / width, 0.0, 1.0)
    pupil = (0.5 * (1.0 - np.cos(np.pi * ramp))).astype(np.complex128)
    pupil *= np.exp(1j * defocus_phase_rad * (rho / radius) ** 2)
    # Move the probe centre from pixel 0 to pixel (N-1)/2: a (band-limited) Fourier shift.
    centre = (n - 1) / 2.0
    pupil *= np.exp(-2j * np.pi * (fy * centre + fx * centre))
    probe = np.fft.ifft2(pupil)
    return normalise_probe(probe)


def normalise_probe(probe: np.ndarray) -> np.ndarray:
    """Scale a probe so that ``N^2 sum |P|^2 = 1``."""
    n = probe.shape[-1]
    power = float(np.sum(np.abs(probe) ** 2)) * n * n
    if not np.isfinite(power) or power <= 0:
        raise DesignError("probe: the probe has no intensity")
    return (probe / math.sqrt(power)).astype(np.complex128)


def load_probe_npz(path: Path, n: int) -> np.ndarray:
    """Load a measured complex (N, N) ``probeGuess`` from an NPZ (never unpickled), unit-normalised."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "probeGuess" not in data.files:
                raise DesignError(f"{path}: probe/npz: no 'probeGuess' array (keys: {', '.join(data.files)})")
            probe = np.asarray(data["probeGuess"])
    except (OSError, ValueError) as exc:
        raise DesignError(f"{path}: probe/npz: cannot read probeGuess: {exc}") from exc
    if probe.ndim == 3 and probe.shape[0] == 1:
        probe = probe[0]
    if probe.shape != (n, n):
        raise DesignError(f"{path}: probe/npz: probeGuess has shape {probe.shape}, expected ({n}, {n})")
    if not np.all(np.isfinite(probe)):
        raise DesignError(f"{path}: probe/npz: probeGuess has non-finite values")
    return normalise_probe(probe.astype(np.complex128))


def encircled_diameter(probe: np.ndarray, fraction: float = ENCIRCLED_FRACTION) -> float:
    """Diameter (pixels) of the circle about the intensity centroid holding ``fraction`` of |P|^2."""
    intensity = np.abs(probe) ** 2
    total = intensity.sum()
    yy, xx = np.indices(intensity.shape, dtype=np.float64)
    cy = float((yy * intensity).sum() / total)
    cx = float((xx * intensity).sum() / total)
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r, kind="stable")
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    k = int(np.searchsorted(cumulative, fraction))
    # Each pixel stands for a unit area: use the radius of the disc with the same area as the
    # pixels enclosed, which is smooth in the probe size (the pixel radius itself is jumpy).
    return float(2.0 * math.sqrt((k + 1) / math.pi))


def edge_energy_fraction(probe: np.ndarray, border: int | None = None) -> float:
    """Fraction of |P|^2 in the outer border (N/8 wide) of the frame.

    pty-chi's sub-pixel probe shift is periodic, so energy at the frame edge would wrap around.
    """
    n = probe.shape[-1]
    border = max(1, n // 8) if border is None else border
    intensity = np.abs(probe) ** 2
    inner = intensity[border:n - border, border:n - border].sum()
    return float(1.0 - inner / intensity.sum())


def build_probe(probe_design: dict, resolve) -> tuple[np.ndarray, dict]:
    """The unit-normalised probe of a design and its metadata (model, nominal and measured size)."""
    n = int(probe_design["size"])
    if "npz" in probe_design:
        path = resolve(probe_design["npz"])
        probe = load_probe_npz(path, n)
        meta = {"source": "npz", "npz": str(probe_design["npz"])}
    else:
        probe = defocused_pupil_probe(n, probe_design["pupil_radius_fraction"], probe_design.get("defocus_phase_rad", 0.0))
        meta = {
            "source": "model",
            "model": probe_design["model"],
            "pupil_radius_fraction": float(probe_design["pupil_radius_fraction"]),
            "defocus_phase_rad": float(probe_design.get("defocus_phase_rad", 0.0)),
            "pupil_edge_px": PUPIL_EDGE_PX,
        }
    meta.update(
        size=n,
        nominal_diameter_px=float(probe_design["nominal_diameter_px"]),
        measured_diameter_px=round(encircled_diameter(probe), 3),
        diameter_definition=f"diameter of the circle about the intensity centroid holding {ENCIRCLED_FRACTION:.0%} of |P|^2",
        edge_energy_fraction=float(f"{edge_energy_fraction(probe):.3e}"),
    )
    return probe, meta


# ----------------------------------------------------------------------------------------------
# Object
# ----------------------------------------------------------------------------------------------
def _rescale01(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def random_field(shape: tuple[int, int], feature_size_px: float, rng: np.random.Generator) -> np.ndarray:
    """Band-limited Gaussian random field in [0, 1] with correlation length ``feature_size_px``."""
    noise = rng.standard_normal(shape)
    return _rescale01(ndimage.gaussian_filter(noise, sigma=feature_size_px, mode="wrap"))


def lines_pattern(shape: tuple[int, int], feature_size_px: float, rng: np.random.Generator) -> np.ndarray:
    """Random line segments of widths 1-4 x ``feature_size_px`` at random angles, in [0, 1].

    Sharp-edged lines of several widths and orientations give broadband content up to the finest
    feature size; a half-pixel blur keeps the edges free of pixel aliasing.
    """
    rows, cols = shape
    yy, xx = np.indices(shape, dtype=np.float64)
    image = np.zeros(shape)
    n_lines = max(8, int(rows * cols / (24.0 * feature_size_px) ** 2 * 4))
    for _ in range(n_lines):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        angle = rng.uniform(0, np.pi)
        half_length = rng.uniform(0.1, 0.35) * min(rows, cols)
        width = feature_size_px * rng.choice([1.0, 1.5, 2.0, 3.0, 4.0])
        dy, dx = math.sin(angle), math.cos(angle)
        along = (yy - cy) * dy + (xx - cx) * dx
        across = -(yy - cy) * dx + (xx - cx) * dy
        inside = (np.abs(across) <= width / 2.0) & (np.abs(along) <= half_length)
        image = np.maximum(image, inside * rng.uniform(0.5, 1.0))
    return _rescale01(ndimage.gaussian_filter(image, sigma=0.5))


def image_pattern(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A grayscale image file resized to ``shape``, in [0, 1]."""
    import matplotlib.image as mpimg

    try:
        img = np.asarray(mpimg.imread(path), dtype=np.float64)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DesignError(f"{path}: object/image: cannot read image: {exc}") from exc
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)  # drop alpha, average colour channels
    if img.ndim != 2 or min(img.shape) < 2:
        raise DesignError(f"{path}: object/image: not a 2-D image (shape {img.shape})")
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    resized = ndimage.zoom(img, zoom, order=1, mode="nearest", grid_mode=True)
    return _rescale01(resized[: shape[0], : shape[1]])


def build_object(object_design: dict, resolve, seed: int) -> tuple[np.ndarray, dict]:
    """The complex ground-truth object of a design (complex64) and its metadata.

    A content map ``t`` in [0, 1] sets the phase ``max_phase * (2 t - 1)``; the amplitude
    ``1 - (1 - min_amplitude) * a`` follows a map ``a`` that shares ``t`` half-and-half with an
    independent random field, so amplitude and phase are correlated (as for real material) but
    not identical.
    """
    shape = tuple(int(v) for v in object_design["shape"])
    model = object_design["model"]
    feature = float(object_design.get("feature_size_px", 2.0))
    rng = np.random.default_rng([seed, 1])  # stream 1 of the simulation seed: the object
    if model == "lines":
        content = lines_pattern(shape, feature, rng)
    elif model == "random_field":
        content = random_field(shape, feature, rng)
    elif model == "lines_and_random":
        content = _rescale01(0.6 * lines_pattern(shape, feature, rng) + 0.4 * random_field(shape, feature, rng))
    elif model == "image":
        content = image_pattern(resolve(object_design["image"]), shape)
    else:
        raise DesignError(f"object/model: unknown model '{model}'")
    absorption = _rescale01(0.5 * content + 0.5 * random_field(shape, 2.0 * feature, rng))
    max_phase = float(object_design["max_phase_rad"])
    min_amp = float(object_design["min_amplitude"])
    phase = max_phase * (2.0 * content - 1.0)
    amplitude = 1.0 - (1.0 - min_amp) * absorption
    obj = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    meta = {
        "model": model,
        "shape": list(shape),
        "feature_size_px": feature,
        "max_phase_rad": max_phase,
        "min_amplitude": min_amp,
        "mean_transmission": float(np.mean(np.abs(obj) ** 2)),
    }
    if model == "image":
        meta["image"] = str(object_design["image"])
    return obj, meta


# ----------------------------------------------------------------------------------------------
# Scan
# ----------------------------------------------------------------------------------------------
def centre_limits(object_shape: tuple[int, int], n: int, margin_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest probe centre per axis whose window is always inside (plus margin).

    pty-chi's window starts at ``round(c - O) + O - (N - 1)/2 >= c - 0.5 - (N - 1)/2``, so
    ``c >= (N - 1)/2 + margin + 0.5`` keeps ``s >= margin`` (and symmetrically at the far edge).
    """
    lo = np.full(2, (n - 1) / 2.0 + margin_px + 0.5)
    hi = np.asarray(object_shape, dtype=np.float64) - 1.0 - lo
    return lo, hi


def raster_scan(object_shape, n, step_px, jitter_px, margin_px, rng) -> np.ndarray:
    """Jittered raster of probe centres ``(y, x)``, row by row, centred on the object.

    The number of rows is even so that no nominal row sits on the object's y-centre, where the
    train/test split cuts (rows lie at least step/2 from it).
    """
    lo, hi = centre_limits(object_shape, n, margin_px)
    span = hi - lo - 2.0 * jitter_px
    if np.any(span < 0):
        raise DesignError("scan: jitter_px and margin_px leave no room for probe positions")
    counts = np.floor(span / step_px).astype(int) + 1
    if counts[0] % 2 == 1:
        counts[0] -= 1
    if counts[0] < 2 or counts[1] < 1:
        raise DesignError(f"scan/step_px: {step_px} px leaves fewer than 2 raster rows in the object")
    centre = (lo + hi) / 2.0
    ys = centre[0] + (np.arange(counts[0]) - (counts[0] - 1) / 2.0) * step_px
    xs = centre[1] + (np.arange(counts[1]) - (counts[1] - 1) / 2.0) * step_px
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid + rng.uniform(-jitter_px, jitter_px, size=grid.shape)


def spiral_scan(object_shape, n, step_px, jitter_px, margin_px, rng) -> np.ndarray:
    """Fermat spiral of probe centres (golden-angle), area per point ``step_px^2``, clipped to the
    allowed rectangle, plus uniform jitter."""
    lo, hi = centre_limits(object_shape, n, margin_px)
    lo_j, hi_j = lo + jitter_px, hi - jitter_px
    if np.any(hi_j < lo_j):
        raise DesignError("scan: jitter_px and margin_px leave no room for probe positions")
    centre = (lo + hi) / 2.0
    c = step_px / math.sqrt(math.pi)  # pi c^2 = area per point = step^2
    r_max = float(np.hypot(*(hi_j - lo_j))) / 2.0
    k = np.arange(int((r_max / c) ** 2) + 2)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    r = c * np.sqrt(k)
    pts = centre + np.stack([r * np.sin(k * golden), r * np.cos(k * golden)], axis=1)
    keep = np.all((pts >= lo_j) & (pts <= hi_j), axis=1)
    pts = pts[keep]
    return pts + rng.uniform(-jitter_px, jitter_px, size=pts.shape)


def build_scan(scan_design: dict, object_shape, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Probe centres ``(y, x)`` (float64, object pixel-index coordinates) and scan metadata."""
    rng = np.random.default_rng([seed, 2])  # stream 2 of the simulation seed: the scan jitter
    pattern = scan_design["pattern"]
    margin = float(scan_design.get("margin_px", 0.0))
    args = (object_shape, n, float(scan_design["step_px"]), float(scan_design["jitter_px"]), margin, rng)
    coords = raster_scan(*args) if pattern == "raster" else spiral_scan(*args)
    if not np.all(windows_inside(coords, object_shape, n, margin)):  # guaranteed by centre_limits
        raise AssertionError("scan: a probe window left the object")
    meta = {
        "pattern": pattern,
        "step_px": float(scan_design["step_px"]),
        "jitter_px": float(scan_design["jitter_px"]),
        "margin_px": margin,
        "n_positions": int(len(coords)),
        "y_range": [float(coords[:, 0].min()), float(coords[:, 0].max())],
        "x_range": [float(coords[:, 1].min()), float(coords[:, 1].max())],
    }
    return coords, meta


# ----------------------------------------------------------------------------------------------
# Forward model
# ----------------------------------------------------------------------------------------------
def object_windows(obj: np.ndarray, coords_yx: np.ndarray, n: int) -> np.ndarray:
    """The integer N x N object windows pty-chi multiplies the probe with, (n, N, N) complex64."""
    starts = window_starts(coords_yx, obj.shape, n)
    # Indexing a strided view of every window copies whole rows: several times faster than
    # gathering N x N pixel indices one by one.
    every_window = np.lib.stride_tricks.sliding_window_view(obj, (n, n))
    return every_window[starts[:, 0], starts[:, 1]].astype(np.complex64, copy=False)


@dataclass
class ForwardModel:
    """pty-chi's planar far-field forward model for one probe and object, batched.

    ``probe`` may be at any scale: intensities scale with ``|P|^2``. A ``(K, N, N)`` probe is K
    mutually incoherent modes: the intensities are the sum over modes of each mode's pattern.
    ``binning`` b > 1 models a detector with N*b x N*b pixels summed b x b (see
    :meth:`far_intensities`). One (N, N) probe with b = 1 is pty-chi's model exactly.
    """

    probe: np.ndarray
    obj: np.ndarray
    workers: int = 1
    binning: int = 1

    def __post_init__(self) -> None:
        self.n = self.probe.shape[-1]
        if self.probe.ndim not in (2, 3) or self.probe.shape[-2] != self.n:
            raise ValueError(f"probe: expected (N, N) or (K, N, N), found shape {self.probe.shape}")
        if int(self.binning) < 1:
            raise ValueError(f"binning: expected an integer >= 1, found {self.binning}")
        self.binning = int(self.binning)
        self.probe_ft = scipy.fft.fft2(self.probe.astype(np.complex128))
        f = np.fft.fftfreq(self.n)
        self._fy, self._fx = f[:, None], f[None, :]
        self._fine_ramp = None
        if self.binning > 1:
            # Multiplying the exit wave by exp(2 pi i r s / (N b)), s = (b - 1)/2, moves the fine
            # grid by s fine pixels, so that fine pixels b m .. b m + b - 1 sit symmetrically about
            # the N-grid frequency m / N (the binned pixel's centre).
            r = np.arange(self.n)
            line = np.exp(2j * np.pi * r * ((self.binning - 1) / 2.0) / (self.n * self.binning))
            self._fine_ramp = (line[:, None] * line[None, :]).astype(np.complex64)

    @property
    def modes(self) -> int:
        return 1 if self.probe.ndim == 2 else self.probe.shape[0]

    def shifted_probes(self, residuals: np.ndarray, mode: int | None = None) -> np.ndarray:
        """Probe (mode ``mode`` of a multi-mode probe) Fourier-shifted (periodically) by each residual
        ``(r_y, r_x)``, complex64."""
        probe_ft = self.probe_ft if mode is None else self.probe_ft[mode]
        ramp = np.exp(-2j * np.pi * (residuals[:, 0, None, None] * self._fy + residuals[:, 1, None, None] * self._fx))
        return scipy.fft.ifft2((probe_ft[None] * ramp).astype(np.complex64), workers=self.workers)

    def exit_waves(self, coords_yx: np.ndarray, mode: int | None = None) -> np.ndarray:
        residuals = subpixel_residuals(coords_yx, self.obj.shape)
        return self.shifted_probes(residuals, mode) * object_windows(self.obj, coords_yx, self.n)

    def far_intensities(self, exit_waves: np.ndarray) -> np.ndarray:
        """``|fft2(exit)|^2`` on the stored N x N grid, unshifted (DC at [0, 0]).

        With binning b: the exit wave, zero-padded to N b, gives the field on a b times finer
        frequency grid (a detector with N b pixels); its intensity summed over b x b blocks and
        divided by b^2 keeps the total (Parseval: sum over N b pixels = (N b)^2 sum |exit|^2).
        """
        b = self.binning
        if b == 1:
            far = scipy.fft.fft2(exit_waves, workers=self.workers)
            return far.real ** 2 + far.imag ** 2
        fine = scipy.fft.fft2(exit_waves * self._fine_ramp, s=(self.n * b, self.n * b), workers=self.workers)
        intensity = fine.real ** 2 + fine.imag ** 2
        binned = intensity.reshape(-1, self.n, b, self.n, b).sum(axis=(2, 4), dtype=np.float64)
        return binned / float(b * b)

    def intensities(self, coords_yx: np.ndarray) -> np.ndarray:
        """Expected intensities ``|fft2(exit)|^2``, fft-shifted (DC centred), float32 (n, N, N)."""
        if self.probe.ndim == 2 and self.binning == 1:  # today's model, operation for operation
            far = scipy.fft.fft2(self.exit_waves(coords_yx), workers=self.workers)
            intensity = far.real ** 2 + far.imag ** 2
            return np.fft.fftshift(intensity, axes=(-2, -1)).astype(np.float32, copy=False)
        residuals = subpixel_residuals(coords_yx, self.obj.shape)
        windows = object_windows(self.obj, coords_yx, self.n)
        total = np.zeros((len(windows), self.n, self.n), dtype=np.float64)
        for mode in range(self.modes):
            exit_waves = self.shifted_probes(residuals, None if self.probe.ndim == 2 else mode) * windows
            total += self.far_intensities(exit_waves)
        return np.fft.fftshift(total, axes=(-2, -1)).astype(np.float32)

    def batches(self, coords_yx: np.ndarray, batch_size: int = 256) -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, len(coords_yx), batch_size):
            sl = slice(start, min(start + batch_size, len(coords_yx)))
            yield sl, self.intensities(coords_yx[sl])


def amplitude_scale(dose: int, n: int) -> float:
    """``sqrt(dose) / N``: diffraction = sqrt(counts) / amplitude_scale, so sum(d^2)/N^2 ~ T."""
    return math.sqrt(float(dose)) / n


# ----------------------------------------------------------------------------------------------
# Realistic conditions: partially coherent probe, position errors, detector
# ----------------------------------------------------------------------------------------------
#: Pupil polynomials x^i y^j of the probe modes k >= 1, in order of total degree (Hermite-like:
#: mode 1 ~ d/dx P, mode 2 ~ d/dy P, then second derivatives, ...); enough for 9 extra modes.
MODE_POLYNOMIALS = ((1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3))
#: A mode whose part orthogonal to the previous ones keeps less than this fraction of its norm is
#: numerically degenerate (a probe with almost no spectral extent along that polynomial).
MODE_DEGENERACY_TOL = 1e-6


def mode_power_fractions(count: int, power_ratio: float) -> list[float]:
    """Fraction of the total power in each mode: ``power_ratio**k / sum_j power_ratio**j``."""
    weights = [float(power_ratio) ** k for k in range(int(count))]
    total = sum(weights)
    return [w / total for w in weights]


def probe_modes(probe: np.ndarray, count: int, power_ratio: float) -> np.ndarray:
    """K mutually orthogonal probe modes made from ``probe``, complex128 (K, N, N).

    Mode 0 is ``probe`` (rescaled); mode k >= 1 is the probe's pupil (its FFT) times the k-th
    polynomial of :data:`MODE_POLYNOMIALS` in the frequencies normalised by the pupil's rms
    radius, i.e. a derivative of the probe, Gram-Schmidt orthogonalised against the modes before
    it. Derivative modes keep the probe's band limit and its centre, as the modes of a partially
    coherent focused beam do. Powers: mode k holds ``power_ratio**k`` of mode 0's, and
    ``N^2 sum_k sum |P_k|^2 = 1``.
    """
    count = int(count)
    if count < 1 or count - 1 > len(MODE_POLYNOMIALS):
        raise DesignError(f"probe/modes/count: {count} is outside 1..{len(MODE_POLYNOMIALS) + 1}")
    n = probe.shape[-1]
    spectrum = np.fft.fft2(probe.astype(np.complex128))
    weight = np.abs(spectrum) ** 2
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    rms = math.sqrt(float(((fy ** 2 + fx ** 2) * weight).sum() / weight.sum()))
    if not rms > 0:
        raise DesignError("probe/modes: the probe has no spectral extent to make further modes from")
    u, v = fx / rms, fy / rms
    unit = [spectrum / np.linalg.norm(spectrum)]
    for i, j in MODE_POLYNOMIALS[:count - 1]:
        mode = spectrum * (u ** i) * (v ** j)
        norm0 = np.linalg.norm(mode)
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to rounding error
            for previous in unit:
                mode = mode - np.vdot(previous, mode) * previous
        norm = np.linalg.norm(mode)
        if not norm > MODE_DEGENERACY_TOL * norm0:
            raise DesignError(f"probe/modes/count: the probe cannot give {count} independent modes")
        unit.append(mode / norm)
    fractions = mode_power_fractions(count, power_ratio)
    # Orthonormal spectra -> real space (ifft2 keeps orthogonality), each at N^2 sum|P_k|^2 = fraction.
    modes = np.stack([np.fft.ifft2(m) for m in unit])
    modes /= np.sqrt(np.sum(np.abs(modes) ** 2, axis=(-2, -1), keepdims=True)) * n
    modes *= np.sqrt(np.asarray(fractions))[:, None, None]
    modes[0] = normalise_probe(probe) * math.sqrt(fractions[0])  # the design's probe itself, not a round trip
    return modes


def rotation_yx(rotation_deg: float) -> np.ndarray:
    """The 2 x 2 matrix rotating ``(y, x)`` vectors by ``rotation_deg`` (counter-clockwise in the
    (x, y) plane: x' = x cos - y sin, y' = x sin + y cos)."""
    a = math.radians(float(rotation_deg))
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s], [-s, c]])


def nominal_positions(true_yx: np.ndarray, errors: dict, seed: int) -> np.ndarray:
    """The positions an experiment reports, ``(y, x)`` float64, for probes truly at ``true_yx``.

    The model is ``true = c + (1 + scale) R(rotation) (nominal - c) + drift t_i + random_i`` with c
    the mean true position, ``t_i = i / (n - 1)`` along the scan order, ``drift`` the ``(y, x)``
    drift over the whole scan and ``random_i ~ N(0, random_px^2)`` per axis (stream
    ``[seed, 4]``, an (n, 2) draw in (y, x) order); solved here for the nominal positions.
    """
    true_yx = np.asarray(true_yx, dtype=np.float64)
    n_pos = len(true_yx)
    rng = np.random.default_rng([int(seed), 4])  # stream 4 of the simulation seed: position errors
    random = rng.standard_normal((n_pos, 2)) * float(errors.get("random_px", 0.0))
    t = np.arange(n_pos, dtype=np.float64) / max(n_pos - 1, 1)
    drift = np.asarray(errors.get("drift_px", (0.0, 0.0)), dtype=np.float64)
    centre = true_yx.mean(axis=0)
    ideal = true_yx - centre - t[:, None] * drift[None, :] - random  # = (1 + s) R (nominal - c)
    inverse = rotation_yx(-float(errors.get("rotation_deg", 0.0))) / (1.0 + float(errors.get("scale", 0.0)))
    return centre + ideal @ inverse.T


def position_error_figures(true_yx: np.ndarray, nominal_yx: np.ndarray) -> dict:
    """RMS and largest distance between the nominal and the true positions, object pixels."""
    distance = np.hypot(*(np.asarray(nominal_yx) - np.asarray(true_yx)).T)
    return {"rms_error_px": round(float(np.sqrt(np.mean(distance ** 2))), 6),
            "max_error_px": round(float(distance.max()), 6)}


@dataclass(frozen=True)
class Detector:
    """A detector's effects on the patterns (design block ``detector``; defaults: ideal)."""

    readout_noise_adu: float = 0.0
    adu_per_photon: float = 1.0
    saturation_photons: int | None = None
    mask_saturated: bool = True
    beamstop_radius_px: float = 0.0
    bad_pixels: int = 0
    binning: int = 1

    @classmethod
    def from_design(cls, block: dict) -> Detector:
        saturation = block.get("saturation_photons")
        return cls(readout_noise_adu=float(block.get("readout_noise_adu", 0.0)),
                   adu_per_photon=float(block.get("adu_per_photon", 1.0)),
                   saturation_photons=None if saturation is None else int(saturation),
                   mask_saturated=bool(block.get("mask_saturated", True)),
                   beamstop_radius_px=float(block.get("beamstop_radius_px", 0.0)),
                   bad_pixels=int(block.get("bad_pixels", 0)), binning=int(block.get("binning", 1)))

    @property
    def continuous(self) -> bool:
        """Readout noise makes the counts real numbers (no longer whole photons)."""
        return self.readout_noise_adu > 0

    @property
    def masks_saturated(self) -> bool:
        return self.saturation_photons is not None and self.mask_saturated

    @property
    def has_mask(self) -> bool:
        """Whether the data carry a mask of pixels not measured (``valid_pixels``)."""
        return self.beamstop_radius_px > 0 or self.bad_pixels > 0 or self.masks_saturated


def beamstop_mask(n: int, radius_px: float) -> np.ndarray:
    """True inside the beamstop: pixels within ``radius_px`` of the DC pixel ``(N/2, N/2)`` of a
    DC-centred (fft-shifted) N x N pattern; none for radius 0."""
    if radius_px <= 0:
        return np.zeros((n, n), dtype=bool)
    yy, xx = np.indices((n, n), dtype=np.float64)
    return np.hypot(yy - n // 2, xx - n // 2) <= float(radius_px)


def bad_pixel_mask(n: int, count: int, beamstop: np.ndarray, seed: int) -> np.ndarray:
    """True at ``count`` dead pixels, fixed for the study: drawn without replacement among the pixels
    outside the beamstop (stream ``[seed, 6]``)."""
    mask = np.zeros((n, n), dtype=bool)
    if count <= 0:
        return mask
    candidates = np.flatnonzero(~beamstop.ravel())
    if count > len(candidates):
        raise DesignError(f"detector/bad_pixels: {count} dead pixels do not fit in the {len(candidates)} pixels "
                          f"outside the beamstop")
    rng = np.random.default_rng([int(seed), 6])  # stream 6 of the simulation seed: dead pixels
    mask.ravel()[np.sort(rng.choice(candidates, size=int(count), replace=False))] = True
    return mask


def detect(expected: np.ndarray, detector: Detector, beamstop: np.ndarray, bad: np.ndarray,
           poisson_rng: np.random.Generator,
           readout_rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of patterns through the detector, in this order: beamstop (no photons arrive) ->
    Poisson -> ceiling ``min(k, saturation_photons)`` -> readout ``adu = g k + N(0, sigma^2)``,
    counts ``max(adu / g, 0)`` -> dead pixels read 0.

    ``expected``: float64 (n, N, N) expected photons (binned, DC-centred). Returns the expected
    photons after the beamstop, the counts (int64, or float64 with readout noise) and where a
    pattern reached the ceiling (bool). The Poisson draw takes the same numbers from
    ``poisson_rng`` as without a detector; the readout noise has a stream of its own.
    """
    if beamstop.any():
        expected = np.where(beamstop, 0.0, expected)
    photons = poisson_rng.poisson(expected)
    if detector.saturation_photons is not None:
        saturated = photons >= detector.saturation_photons
        np.minimum(photons, detector.saturation_photons, out=photons)
    else:
        saturated = np.zeros(photons.shape, dtype=bool)
    if detector.continuous:
        if readout_rng is None:
            raise ValueError("detect: readout noise needs its random stream")
        gain = detector.adu_per_photon
        adu = gain * photons + detector.readout_noise_adu * readout_rng.standard_normal(photons.shape)
        counts = np.maximum(adu / gain, 0.0)
    else:
        counts = photons
    if bad.any():
        counts[:, bad] = 0
    return expected, counts, saturated


def valid_pixel_mask(detector: Detector, beamstop: np.ndarray, bad: np.ndarray,
                     saturated_any: np.ndarray) -> np.ndarray:
    """True where a pixel was measured: not beamstop, not dead and (with ``mask_saturated``) never at
    the ceiling in any pattern of the dose's scan."""
    valid = ~beamstop & ~bad
    if detector.masks_saturated:
        valid &= ~saturated_any
    return valid
