"""The two-reconstruction FRC: against an independent ring-by-ring numpy computation, and in summary.json.

The reference here re-implements the documented ring definition with explicit loops over rings
(docs/manifests.md, "Uncertainty and comparisons"): the second image shifted by the reported
registration shift (a Fourier shift written here), its global phase offset removed, both
weighted by a separable Tukey window (alpha 0.25) times the Gaussian-softened mask (sigma 2 px)
on the mask's bounding box, weighted mean removed, then per ring i (Fourier pixels with
floor(|f| L) = i, L the shorter side, i = 1 .. L/2 - 1): Re sum(A conj B) / sqrt(sum|A|^2 sum|B|^2),
and the half-bit threshold (0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal.windows import tukey
from test_summarize import M, _band_limited_object, build_crafted_sweep

from ptydose.core import metrics
from ptydose.core.manifests import read_json
from ptydose.core.summary import summarize

# Both sides use the same FFT of the same arrays; only the ring sums' order differs (bincount
# vs boolean-mask sums): agreement to 1e-9 leaves room for that and nothing else.
RING_TOL = 1e-9


def _shifted(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1])))


def reference_frc(first: np.ndarray, second: np.ndarray, mask: np.ndarray, shift: tuple[float, float]) -> dict:
    """The documented two-reconstruction FRC, ring by ring, with the given registration shift."""
    a = np.asarray(first, np.complex128)
    b = _shifted(np.asarray(second, np.complex128), shift)
    b = b * np.exp(-1j * np.angle(np.sum(b[mask] * np.conj(a[mask]))))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    weight = ndimage.gaussian_filter(mask.astype(np.float64), 2.0)[box]
    shape = weight.shape
    window = np.outer(tukey(shape[0], 0.25), tukey(shape[1], 0.25)) * weight

    def spectrum(image: np.ndarray) -> np.ndarray:
        crop = image[box]
        return np.fft.fft2((crop - np.sum(crop * window) / np.sum(window)) * window)

    fa, fb = spectrum(a), spectrum(b)
    length = min(shape)
    radius = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]) * length
    frc, threshold, n_pixels = [], [], []
    for i in range(1, length // 2):
        ring = (radius >= i) & (radius < i + 1)
        num = np.sum(fa[ring] * np.conj(fb[ring])).real
        den = math.sqrt(np.sum(np.abs(fa[ring]) ** 2) * np.sum(np.abs(fb[ring]) ** 2))
        n = int(ring.sum())
        frc.append(num / den)
        n_pixels.append(n)
        threshold.append((0.2071 + 1.9102 / math.sqrt(n)) / (1.2071 + 0.9102 / math.sqrt(n)))
    return {"frc": np.array(frc), "threshold": np.array(threshold), "n_pixels": np.array(n_pixels),
            "frequency": (np.arange(1, length // 2) + 0.5) / length}


def _mask() -> np.ndarray:
    mask = np.zeros((M, M), bool)
    mask[12:70, 16:66] = True
    return mask


def _noisy(obj: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return obj + sigma * (rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape))


def test_pair_frc_matches_an_independent_ring_by_ring_computation():
    """compare_pair's rings, thresholds and pixel counts equal the reference at the shift it reports (1e-9)."""
    rng = np.random.default_rng(3)
    obj = _band_limited_object(seed=4)
    first = _noisy(obj * np.exp(0.4j), 0.05, rng)
    known = (0.37, -0.62)
    second = _noisy(_shifted(obj, (-known[0], -known[1])) * np.exp(-1.1j), 0.05, rng)
    mask = _mask()
    pair = metrics.compare_pair(first, second, mask)
    # Registration recovers the known shift: the noise (5 % of the signal) moves it by far less than 0.02 px.
    assert pair.shift == pytest.approx(known, abs=0.02)
    ref = reference_frc(first, second, mask, pair.shift)
    np.testing.assert_array_equal(pair.frc.n_pixels, ref["n_pixels"])
    np.testing.assert_allclose(pair.frc.frequency, ref["frequency"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(pair.frc.threshold, ref["threshold"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(pair.frc.frc, ref["frc"], rtol=0, atol=RING_TOL)
    measures = metrics.frc_measures(pair.frc.frequency, pair.frc.frc, pair.frc.threshold)
    assert measures["integral"] == pytest.approx(float(np.mean(ref["frc"])), abs=RING_TOL)


def test_pair_frc_of_identical_reconstructions_is_one_and_never_crosses():
    """The same image twice (different global phase): FRC 1 on every ring, no crossing, integral 1."""
    obj = _band_limited_object(seed=4)
    pair = metrics.compare_pair(obj, obj * np.exp(2.0j), _mask())
    np.testing.assert_allclose(pair.frc.frc, 1.0, atol=1e-9)
    measures = metrics.frc_measures(pair.frc.frequency, pair.frc.frc, pair.frc.threshold)
    assert not measures["crossed"] and measures["fraction_of_nyquist"] == 1.0
    assert not measures["crossed_0_5"] and measures["integral"] == pytest.approx(1.0, abs=1e-9)


def test_crossings_are_found_on_a_constructed_curve():
    """A curve 0.9 falling linearly to 0.1: half-bit and 0.5 crossings interpolated between the rings around them."""
    frequency = (np.arange(1, 11) + 0.5) / 20
    frc = np.linspace(0.9, 0.1, 10)
    threshold = np.full(10, 0.3)
    m = metrics.frc_measures(frequency, frc, threshold)
    # FRC(f) is linear in f: it equals 0.3 at ring 7.5 -> f = (1 + 6.75 + 0.5) / 20; 0.5 at ring index 4.5.
    step = 0.8 / 9
    assert m["crossing_frequency_cycles_per_px"] == pytest.approx(frequency[0] + (0.6 / step) / 20, abs=1e-12)
    assert m["frequency_0_5_cycles_per_px"] == pytest.approx(frequency[0] + (0.4 / step) / 20, abs=1e-12)
    assert m["integral"] == pytest.approx(0.5, abs=1e-12)
    assert m["resolution_px"] == pytest.approx(1 / (2 * m["crossing_frequency_cycles_per_px"]))


@pytest.fixture(scope="module")
def k3(tmp_path_factory, smoke_design_path):
    """A crafted K = 3 sweep (2 doses, baseline only), summarized: (root, summary.json, job id -> input NPZ)."""
    root = build_crafted_sweep(tmp_path_factory.mktemp("pairs"), smoke_design_path, (1000, 100000),
                               {"baseline": (0.1, 0.8)}, replicates=3)
    outcome = summarize(root, make_figures=True)
    manifest = read_json(root / "reconstruction_manifest.json", "reconstruction_manifest")
    return root, read_json(outcome.summary_path, "summary"), {j["id"]: j["input_npz"] for j in manifest["jobs"]}


def test_summary_pair_frc_rings_match_the_reference_from_the_files(k3):
    """summary.json's pair_frc: each pair's rings and their mean equal the reference computed from the reconstruction files."""
    root, summary, inputs = k3
    entries = summary["pair_frc"]
    assert [(e["dose"], e["split"], e["replicates"]) for e in entries] == [
        (1000, "train", [0, 1, 2]), (1000, "test", [0, 1, 2]), (100000, "train", [0, 1, 2]), (100000, "test", [0, 1, 2])]
    jobs = {(j["dose"], j["split"], j["replicate"]): j for j in summary["jobs"]}
    for entry in entries:
        objects = {r: np.load(root / jobs[(entry["dose"], entry["split"], r)]["job_id"] / "reconstruction.npz",
                              allow_pickle=False)["object"] for r in entry["replicates"]}
        r0 = jobs[(entry["dose"], entry["split"], 0)]
        # The mask: rebuilt from the input's probe and positions (replicates share them), threshold 0.1 of the design.
        with np.load(inputs[r0["job_id"]], allow_pickle=False) as data:
            mask = metrics.illuminated_mask(data["probeGuess"], data["xcoords"], data["ycoords"], (M, M), 0.1)
        assert r0["metrics"]["bounding_box"] == entry["bounding_box"]
        assert [p["replicates"] for p in entry["pairs"]] == [[0, 1], [0, 2], [1, 2]]
        curves = []
        for pair in entry["pairs"]:
            first, second = pair["replicates"]
            ref = reference_frc(objects[first], objects[second], mask, tuple(pair["registration_shift_px"]))
            np.testing.assert_allclose(pair["frc"], ref["frc"], rtol=0, atol=RING_TOL)
            curves.append(ref["frc"])
        np.testing.assert_allclose(entry["rings"]["frc"], np.mean(curves, axis=0), rtol=0, atol=RING_TOL)
        np.testing.assert_allclose(entry["rings"]["threshold"], ref["threshold"], rtol=0, atol=1e-15)
        assert entry["rings"]["n_pixels"] == ref["n_pixels"].tolist()
        assert entry["integral"] == pytest.approx(float(np.mean(np.mean(curves, axis=0))), abs=RING_TOL)
        assert entry["flat"]["pair_frc_integral"] == entry["integral"]


def test_pair_frc_ranks_dose_and_reaches_markdown_and_figures(k3):
    """More dose, less noise: the pair FRC integral rises; the markdown has the table, the figure exists."""
    root, summary, _ = k3
    integral = {(e["dose"], e["split"]): e["integral"] for e in summary["pair_frc"]}
    for split in ("train", "test"):
        assert integral[(100000, split)] > integral[(1000, split)]
    cells = {c["dose"]: c for c in summary["statistics"]["cells"]}
    assert cells[1000]["metrics"]["pair_frc_integral"]["n"] == 2  # one value per split
    text = (root / "summary" / "summary.md").read_text()
    assert "## Resolution: two-reconstruction FRC" in text and "Headline resolution: its half-bit crossing" in text
    assert (root / "summary" / "figures" / "pair_frc_curves.png").read_bytes()[:4] == b"\x89PNG"
