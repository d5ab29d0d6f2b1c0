"""The NPZ data contract's optional members and metadata of realistic conditions: probe modes,
nominal positions, a detector mask and continuous counts (docs/data_contract.md)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from builders import assert_error, errors_of, example_arrays, npy_bytes, replace_member, save_raw
from ptydose.core import contract
from ptydose.core.contract import check_npz, read_contract_npz, write_contract_npz
from ptydose.core.errors import ContractError
from ptydose.core.physics import ForwardModel
from ptydose.validate_npz import cli

N, M, n, DOSE = 8, 20, 6, 1000
DC = (N // 2, N // 2)
BAD_PIXEL = (0, 1)
MODES = {"full": {"full": True}, "full, 1-byte bands": {"full": True, "chunk_bytes": 1}}


def realistic(*, modes: int = 3, nominal: bool = True, mask: bool = True, continuous: bool = False,
              seed: int = 3) -> tuple[dict[str, np.ndarray], dict]:
    """A tiny dataset with every optional member, physically consistent as gen-synthetic makes them.

    ``modes`` orthogonal probe modes (probe times 1, x, y, orthonormalised; power ratio 0.3; the
    total at the dose), patterns the incoherent sum over modes, Poisson counts; ``continuous`` adds
    Gaussian readout noise clipped at 0; ``mask`` masks the DC pixel (a beamstop) and one dead
    pixel and fills them with values no detector would give (non-integer counts) — the value checks
    must ignore them; ``nominal`` reports positions off the true ones by up to 0.4 px.
    """
    arrays, meta = example_arrays(n=n, frame=N, object_size=M, dose=DOSE, seed=seed)
    rng = np.random.default_rng(seed + 100)
    scale = meta["amplitude_scale"]
    coords = np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1)
    unit = arrays["probeGuess"].astype(np.complex128) / math.sqrt(DOSE)
    if modes > 1:
        yy, xx = np.mgrid[:N, :N] - (N - 1) / 2.0
        basis: list[np.ndarray] = []
        for raw in (unit, unit * xx, unit * yy)[:modes]:
            for b in basis:  # Gram-Schmidt: orthogonal to the modes before it
                raw = raw - np.vdot(b, raw) * b
            basis.append(raw / np.linalg.norm(raw))
        fractions = np.array([0.3 ** k for k in range(modes)])
        fractions /= fractions.sum()
        # ||b|| = 1 means sum |b|^2 = 1: N^2 sum over all modes of |P|^2 is then the dose.
        probe_modes = np.stack([math.sqrt(f * DOSE) / N * b for f, b in zip(fractions, basis)]).astype(np.complex64)
        arrays["probe_modes"] = probe_modes
        arrays["probeGuess"] = probe_modes[0].copy()
        meta["probe_modes"] = {"count": modes, "power_ratio": 0.3, "power_fractions": [round(float(f), 9) for f in fractions]}
        expected = sum(ForwardModel(p.astype(np.complex128), arrays["objectGuess"]).intensities(coords).astype(np.float64)
                       for p in probe_modes)
        counts = rng.poisson(expected).astype(np.float64)
    else:
        expected = None
        counts = np.rint((arrays["diffraction"].astype(np.float64) * scale) ** 2)
    detector = {"readout_noise_adu": 0.0, "adu_per_photon": 1.0, "mask_saturated": True, "beamstop_radius_px": 0.0,
                "bad_pixels": 0, "binning": 1, "counts": "integer", "n_masked_pixels": 0, "n_saturated_values": 0}
    if continuous:
        counts = np.maximum(counts + rng.normal(0.0, 0.3, counts.shape), 0.0)
        detector.update(readout_noise_adu=3.0, adu_per_photon=10.0, counts="continuous", readout_seed=7)
    valid = np.ones((N, N), dtype=bool)
    if mask:
        valid[DC] = valid[BAD_PIXEL] = False
        counts[:, ~valid] = 2.5  # not a measurement: neither integer nor zero
        arrays["valid_pixels"] = valid
        detector.update(beamstop_radius_px=0.5, bad_pixels=1, n_masked_pixels=2)
    arrays["diffraction"] = (np.sqrt(counts) / scale).astype(np.float32)
    stored = (arrays["diffraction"].astype(np.float64) * scale) ** 2
    recovered = stored if continuous else np.rint(stored)
    meta["measured_mean_counts"] = float((recovered * valid).sum(axis=(1, 2)).mean())
    if expected is not None:
        meta["expected_mean_counts"] = float(expected.sum(axis=(1, 2)).mean())
    if mask or continuous:
        meta["detector"] = detector
    if nominal:
        offsets = rng.uniform(-0.4, 0.4, (n, 2))
        arrays["nominal_ycoords"] = arrays["ycoords"] + offsets[:, 0]
        arrays["nominal_xcoords"] = arrays["xcoords"] + offsets[:, 1]
        distance = np.hypot(offsets[:, 0], offsets[:, 1])
        meta["position_errors"] = {"random_px": 0.25, "scale": 0.0, "rotation_deg": 0.0, "drift_px": [0.0, 0.0],
                                   "rms_error_px": float(np.sqrt(np.mean(distance ** 2))),
                                   "max_error_px": float(distance.max())}
    return arrays, meta


def lines(path, **kwargs) -> list[str]:
    return [line.replace(str(path), "<path>") for line in check_npz(path, **kwargs).lines()]


@pytest.fixture()
def full():
    """Every optional member, integer counts with a mask (fresh copy per test)."""
    return realistic()


# --- valid files --------------------------------------------------------------------------------


@pytest.mark.parametrize("continuous", [False, True])
def test_realistic_file_is_valid_in_every_mode(tmp_path, continuous):
    """All four optional members (and continuous counts): no error and no warning in any mode."""
    path = write_contract_npz(tmp_path / "r.npz", *realistic(continuous=continuous))
    for kwargs in (*MODES.values(), {"full": False}):
        report = check_npz(path, **kwargs)
        assert report.passes(strict=True), report.lines()
    data = read_contract_npz(path)
    assert set(data.arrays) == {*contract.ARRAY_KEYS, *contract.OPTIONAL_KEYS}
    assert not data.warnings


def test_optional_members_follow_the_eight_in_contract_order(tmp_path, full):
    """write_contract_npz writes the eight of today, then probe_modes, nominal_x/ycoords, valid_pixels."""
    path = write_contract_npz(tmp_path / "r.npz", *full)
    with zipfile.ZipFile(path) as zf:
        names = [info.filename for info in zf.infolist()]
    assert names == [f"{key}.npy" for key in contract.MEMBERS]
    assert list(contract.MEMBERS)[:8] == list(contract.CONTRACT)
    assert contract.OPTIONAL_KEYS == ("probe_modes", "nominal_xcoords", "nominal_ycoords", "valid_pixels")
    path = write_contract_npz(tmp_path / "m.npz", *realistic(modes=1, nominal=False))
    with zipfile.ZipFile(path) as zf:
        assert [info.filename for info in zf.infolist()][8:] == ["valid_pixels.npy"]
    assert check_npz(path).passes(strict=True)


def test_todays_files_are_written_and_checked_as_before(tmp_path):
    """A file without the optional members: the same bytes whatever else is in `arrays`' optional
    slots' absence, exactly the eight members, and the optional getters say "absent"."""
    arrays, meta = example_arrays(n=n, frame=N, object_size=M, dose=DOSE, seed=3)
    path = write_contract_npz(tmp_path / "a.npz", arrays, meta)
    again = write_contract_npz(tmp_path / "b.npz", {**arrays, "unknown": np.zeros(3)}, meta)
    assert path.read_bytes() == again.read_bytes()
    with zipfile.ZipFile(path) as zf:
        assert [info.filename for info in zf.infolist()] == [f"{key}.npy" for key in contract.CONTRACT]
    assert check_npz(path).passes(strict=True)
    data = read_contract_npz(path)
    assert data.valid_pixels() is None
    x, y = data.engine_positions()
    assert x is data["xcoords"] and y is data["ycoords"]
    assert data.counts().dtype == np.int64 and not data.continuous_counts


def test_compressed_realistic_file_is_valid(tmp_path, full):
    """np.savez_compressed (deflated members) of a realistic file passes, streamed in 1-byte bands too."""
    arrays, meta = full
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **arrays, _metadata=np.array(json.dumps(meta)))
    for kwargs in MODES.values():
        assert check_npz(path, **kwargs).passes(strict=True)


def test_unknown_members_are_still_a_warning(tmp_path, full):
    """Beside the optional members, any other member stays 'unexpected key (ignored by the tools)'."""
    path = replace_member(write_contract_npz(tmp_path / "x.npz", *full), "", None, extra=[("probe_mode.npy", npy_bytes(
        {"descr": "<c8", "fortran_order": False, "shape": (1,)}, b"\0" * 8))])
    report = check_npz(path)
    assert report.ok and [(p.key, p.message) for p in report.warnings] == [
        ("probe_mode", "unexpected key (ignored by the tools)")]


# --- ContractData -------------------------------------------------------------------------------


def test_counts_are_unrounded_only_for_continuous_counts(tmp_path):
    """counts(): (d*s)^2 as float64 with detector.counts 'continuous'; rounded int64 otherwise."""
    arrays, meta = realistic(continuous=True)
    data = read_contract_npz(write_contract_npz(tmp_path / "c.npz", arrays, meta))
    exact = (arrays["diffraction"].astype(np.float64) * meta["amplitude_scale"]) ** 2
    assert data.continuous_counts
    counts = data.counts()
    assert counts.dtype == np.float64
    np.testing.assert_array_equal(counts, exact)
    assert not np.array_equal(counts, np.rint(counts))  # the readout noise is really there
    integer = read_contract_npz(write_contract_npz(tmp_path / "i.npz", *realistic()))
    assert not integer.continuous_counts and integer.counts().dtype == np.int64


def test_mask_and_engine_positions_getters(tmp_path, full):
    """valid_pixels() is the stored mask; engine_positions() the nominal positions, not the true ones."""
    arrays, meta = full
    data = read_contract_npz(write_contract_npz(tmp_path / "g.npz", arrays, meta))
    mask = data.valid_pixels()
    assert mask.dtype == np.bool_ and mask.shape == (N, N)
    np.testing.assert_array_equal(mask, arrays["valid_pixels"])
    x, y = data.engine_positions()
    np.testing.assert_array_equal(x, arrays["nominal_xcoords"])
    np.testing.assert_array_equal(y, arrays["nominal_ycoords"])
    assert x.dtype == y.dtype == np.float64
    assert not np.array_equal(x, data["xcoords"])


def test_getters_with_a_subset_of_keys(tmp_path, full):
    """keys= may name optional members the file lacks (getter: None); a present one left unloaded
    is refused rather than silently replaced by the true positions or 'no mask'."""
    arrays, meta = full
    path = write_contract_npz(tmp_path / "s.npz", arrays, meta)
    loaded = read_contract_npz(path, check_values=False, keys=("xcoords", "ycoords", "nominal_xcoords",
                                                                "nominal_ycoords", "valid_pixels"))
    np.testing.assert_array_equal(loaded.engine_positions()[0], arrays["nominal_xcoords"])
    assert loaded.valid_pixels() is not None
    partial = read_contract_npz(path, check_values=False, keys=("xcoords", "ycoords"))
    with pytest.raises(ContractError, match=r"s\.npz: nominal_xcoords: in the file but not loaded"):
        partial.engine_positions()
    with pytest.raises(ContractError, match=r"s\.npz: valid_pixels: in the file but not loaded"):
        partial.valid_pixels()
    plain = write_contract_npz(tmp_path / "p.npz", *example_arrays(n=n, frame=N, object_size=M, dose=DOSE, seed=3))
    none = read_contract_npz(plain, check_values=False, keys=("xcoords", "ycoords", "valid_pixels", "nominal_xcoords"))
    assert set(none.arrays) == {"xcoords", "ycoords"} and none.valid_pixels() is None


def test_loading_checks_the_optional_values_too(tmp_path, full):
    """read_contract_npz's value checks cover the optional members (first problem line raised)."""
    arrays, meta = full
    arrays["valid_pixels"][:] = False
    path = write_contract_npz(tmp_path / "l.npz", arrays, meta)
    with pytest.raises(ContractError, match=r"l\.npz: valid_pixels: no valid pixel"):
        read_contract_npz(path)


# --- continuous counts --------------------------------------------------------------------------


def test_integer_check_is_skipped_only_when_the_metadata_says_continuous(tmp_path):
    """The same noisy amplitudes fail the integer-counts rule unless detector.counts is 'continuous'."""
    arrays, meta = realistic(continuous=True)
    assert check_npz(write_contract_npz(tmp_path / "c.npz", arrays, meta)).passes(strict=True)
    meta["detector"].update(counts="integer", readout_noise_adu=0.0)
    report = check_npz(write_contract_npz(tmp_path / "i.npz", arrays, meta))
    assert_error(report, "diffraction", "counts not recoverable as integers")
    del meta["detector"]
    arrays.pop("valid_pixels")
    assert_error(check_npz(write_contract_npz(tmp_path / "n.npz", arrays, meta)), "diffraction",
                 "counts not recoverable as integers")


def test_continuous_counts_still_finite_non_negative_and_amplitude(tmp_path):
    """Continuous counts skip only the integer rule: NaN, negatives, intensity and the mean still fail."""
    arrays, meta = realistic(continuous=True)
    arrays["diffraction"][1, 2, 3] = np.nan
    arrays["diffraction"][2, 1, 2] = -1.0
    report = check_npz(write_contract_npz(tmp_path / "bad.npz", arrays, meta))
    assert_error(report, "diffraction", "1 non-finite values")
    assert_error(report, "diffraction", "1 negative values")
    arrays, meta = realistic(continuous=True)
    arrays["diffraction"] = (arrays["diffraction"] * np.float32(3.0)).astype(np.float32)
    report = check_npz(write_contract_npz(tmp_path / "big.npz", arrays, meta))
    assert_error(report, "diffraction", "looks like unnormalised intensity")
    arrays, meta = realistic(continuous=True)
    meta["measured_mean_counts"] *= 1.001
    assert_error(check_npz(write_contract_npz(tmp_path / "mean.npz", arrays, meta)),
                 "_metadata/measured_mean_counts", "does not match the data")


def test_readout_noise_requires_continuous_counts(tmp_path):
    """detector.readout_noise_adu > 0 with counts 'integer' contradicts itself."""
    arrays, meta = realistic(continuous=True)
    meta["detector"]["counts"] = "integer"
    report = check_npz(write_contract_npz(tmp_path / "r.npz", arrays, meta), full=False)
    assert errors_of(report) == [("_metadata/detector/counts", "readout noise makes the counts continuous (expected "
                                  "'continuous' with readout_noise_adu 3, found 'integer')")]


# --- valid_pixels -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
def test_masked_pixels_are_ignored_by_the_statistics(tmp_path, full, mode):
    """Masked pixels hold non-integer counts: with the mask the file passes; without it the integer
    rule fails; a huge masked value does not trip the intensity rule nor the measured mean."""
    arrays, meta = full
    assert check_npz(write_contract_npz(tmp_path / "m.npz", arrays, meta), **MODES[mode]).passes(strict=True)
    arrays["diffraction"][:, DC[0], DC[1]] = 1e4  # 25 orders above the rest: (1e4)^2 per pixel
    assert check_npz(write_contract_npz(tmp_path / "huge.npz", arrays, meta), **MODES[mode]).passes(strict=True)
    unmasked = {k: v for k, v in arrays.items() if k != "valid_pixels"}
    meta = {**meta, "detector": {**meta["detector"], "n_masked_pixels": 0}}
    report = check_npz(write_contract_npz(tmp_path / "u.npz", unmasked, meta), **MODES[mode])
    assert_error(report, "diffraction", "counts not recoverable as integers")
    assert_error(report, "diffraction", "looks like unnormalised intensity")


@pytest.mark.parametrize("value, fragment", [(np.nan, "1 non-finite values"), (-1.0, "1 negative values")])
def test_masked_pixels_must_still_be_finite_and_non_negative(tmp_path, full, value, fragment):
    """A masked value may be anything finite >= 0, nothing else."""
    arrays, meta = full
    arrays["diffraction"][3, BAD_PIXEL[0], BAD_PIXEL[1]] = value
    assert_error(check_npz(write_contract_npz(tmp_path / "f.npz", arrays, meta)), "diffraction", fragment)


def test_measured_mean_counts_are_over_valid_pixels(tmp_path, full):
    """measured_mean_counts counts the valid pixels: the total over every pixel is refused."""
    arrays, meta = full
    stored = np.rint((arrays["diffraction"].astype(np.float64) * meta["amplitude_scale"]) ** 2)
    meta["measured_mean_counts"] = float(stored.sum(axis=(1, 2)).mean())
    assert_error(check_npz(write_contract_npz(tmp_path / "all.npz", arrays, meta)), "_metadata/measured_mean_counts",
                 "does not match the data")


def test_mask_errors(tmp_path, full):
    """No True pixel, bytes other than 0/1, a wrong frame, dtype or masked count: one line each."""
    arrays, meta = full

    def check(name, change=None, **kwargs):
        a, m = realistic()
        if change is not None:
            change(a, m)
        return check_npz(write_contract_npz(tmp_path / f"{name}.npz", a, m) if not kwargs else
                         save_raw(tmp_path / f"{name}.npz", a, m), full=True)

    report = check("none", lambda a, m: a["valid_pixels"].fill(False))
    assert errors_of(report) == [("valid_pixels", "no valid pixel (expected at least one True, found all 64 False)")]
    report = check("count", lambda a, m: m["detector"].update(n_masked_pixels=3))
    assert errors_of(report) == [("_metadata/detector/n_masked_pixels",
                                  "does not match the data (expected 2 = False pixels of valid_pixels, found 3)")]
    report = check("frame", lambda a, m: a.update(valid_pixels=np.ones((N, N + 1), bool)), raw=True)
    assert errors_of(report) == [("valid_pixels", "frame size does not match diffraction (expected (8, 8), found (8, 9))")]
    report = check("dtype", lambda a, m: a.update(valid_pixels=a["valid_pixels"].astype(np.uint8)), raw=True)
    assert errors_of(report) == [("valid_pixels", "wrong dtype (expected bool, found uint8)")]
    report = check("missing", lambda a, m: a.pop("valid_pixels"))
    assert ("valid_pixels", "missing (expected the detector mask with _metadata/detector/n_masked_pixels = 2)") \
        in errors_of(report)
    # A bool member whose bytes are not 0/1: numpy would read 2 as True; the contract refuses it.
    path = write_contract_npz(tmp_path / "bytes.npz", arrays, meta)
    forged = np.ones((N, N), np.uint8)
    forged[2, 3] = 2
    replace_member(path, "valid_pixels.npy", npy_bytes({"descr": "|b1", "fortran_order": False, "shape": (N, N)},
                                                       forged.tobytes()))
    assert errors_of(check_npz(path)) == [("valid_pixels", "1 values not a bool (expected bytes 0 or 1, found 2 at "
                                                           "index (2, 3))")]
    assert check_npz(path, full=False).ok  # a value rule: header-only mode does not read the data


# --- nominal positions ----------------------------------------------------------------------------


def test_nominal_position_errors(tmp_path):
    """One of the pair, a wrong length, a NaN, or position_errors metadata without them: an error;
    float32: the coordinates' warning."""
    def report(name, change, raw=False):
        a, m = realistic()
        change(a, m)
        path = tmp_path / f"{name}.npz"
        return check_npz(save_raw(path, a, m) if raw else write_contract_npz(path, a, m))

    assert errors_of(report("one", lambda a, m: a.pop("nominal_ycoords"))) == [
        ("nominal_ycoords", "missing (expected nominal_xcoords and nominal_ycoords together, found only nominal_xcoords)")]
    assert errors_of(report("length", lambda a, m: a.update(nominal_xcoords=a["nominal_xcoords"][:-1]))) == [
        ("nominal_xcoords", "shape does not match diffraction (expected (6,), found (5,))")]
    assert errors_of(report("nan", lambda a, m: a["nominal_ycoords"].__setitem__(2, np.nan))) == [
        ("nominal_ycoords", "1 non-finite values (expected all finite, found nan at index (2,))")]
    both_missing = report("meta", lambda a, m: (a.pop("nominal_xcoords"), a.pop("nominal_ycoords")))
    assert errors_of(both_missing) == [
        ("nominal_xcoords", "missing (expected the nominal positions _metadata/position_errors describes)"),
        ("nominal_ycoords", "missing (expected the nominal positions _metadata/position_errors describes)")]
    f32 = report("f32", lambda a, m: a.update(nominal_xcoords=a["nominal_xcoords"].astype(np.float32)), raw=True)
    assert f32.ok and [(p.key, p.message) for p in f32.warnings] == [
        ("nominal_xcoords", "float32 coordinates lose precision (expected float64, found float32)")]


def test_nominal_positions_must_keep_the_windows_inside_the_object(tmp_path):
    """The engines are given the nominal positions: one far outside (or absurdly large) is an error
    naming nominal_xcoords, as a true position outside is one naming xcoords."""
    for name, value in (("outside", 1e4), ("huge", 1e300)):
        arrays, meta = realistic()
        arrays["nominal_xcoords"][1] = value
        (problem,) = check_npz(write_contract_npz(tmp_path / f"{name}.npz", arrays, meta)).errors
        assert problem.key == "nominal_xcoords"
        assert problem.message.startswith("1 windows at the nominal positions leave objectGuess")


def test_nominal_positions_without_error_metadata_are_accepted(tmp_path):
    """A measurement may report nominal positions with no simulated error model behind them."""
    arrays, meta = realistic(modes=1, mask=False)
    del meta["position_errors"]
    assert check_npz(write_contract_npz(tmp_path / "n.npz", arrays, meta)).passes(strict=True)


# --- probe modes and the probe's power --------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
def test_probe_mode_value_errors(tmp_path, mode):
    """Mode 0 must be probeGuess, every mode finite, the total power the dose, the fractions as stated
    (the same lines whether streamed mode by mode or byte by byte)."""
    def lines_of(name, change):
        a, m = realistic()
        change(a, m)
        return lines(write_contract_npz(tmp_path / f"{name}.npz", a, m), **MODES[mode])

    def first_mode(a, m):  # a phase change: the power stays, so only this rule fails
        a["probe_modes"][0, 3, 3] *= np.complex64(np.exp(0.1j))

    assert lines_of("mode0", first_mode) == [
        "<path>: probe_modes: mode 0 is not probeGuess (expected probe_modes[0] == probeGuess, found 1 of 64 values "
        "differ)"]
    assert lines_of("nan", lambda a, m: a["probe_modes"].__setitem__((2, 1, 1), np.nan)) == [
        "<path>: probe_modes: 1 non-finite values (expected all finite, found (nan+0j) at index (2, 1, 1))"]

    def louder(a, m):  # every mode 1 % louder in amplitude, mode 0 = probeGuess still
        a["probe_modes"] = (a["probe_modes"] * np.float32(1.01)).astype(np.complex64)
        a["probeGuess"] = a["probe_modes"][0].copy()

    (line,) = lines_of("power", louder)
    assert line.startswith("<path>: probe_modes: probe not scaled to the dose (expected N^2 sum |probe_modes|^2 over "
                           "all modes = _metadata/dose = 1000 within 0.0001 relative, found 1020.")

    def fractions(a, m):
        m["probe_modes"]["power_fractions"] = [0.7, 0.2, 0.1]

    (line,) = lines_of("fractions", fractions)
    assert line.startswith("<path>: _metadata/probe_modes/power_fractions: does not match the data (expected each "
                           "mode's share of sum |probe_modes|^2 within 0.0001, found 0.1 for mode 2, whose share is ")


def test_probe_mode_structure_errors(tmp_path):
    """K >= 2, the frame, the metadata count and the number of fractions; metadata without the member."""
    def errors(name, change):
        a, m = realistic()
        change(a, m)
        return errors_of(check_npz(save_raw(tmp_path / f"{name}.npz", a, m), full=False))

    assert errors("one", lambda a, m: a.update(probe_modes=a["probe_modes"][:1])) == [
        ("probe_modes", "fewer than two modes (expected (K, N, N) with K >= 2: a single mode is probeGuess alone, "
                        "found (1, 8, 8))")]
    assert errors("frame", lambda a, m: a.update(probe_modes=np.zeros((3, N, N + 2), np.complex64))) == [
        ("probe_modes", "frame size does not match diffraction (expected (K, 8, 8), found (3, 8, 10))")]
    assert errors("dtype", lambda a, m: a.update(probe_modes=a["probe_modes"].astype(np.complex128))) == [
        ("probe_modes", "wrong dtype (expected complex64, found complex128)")]
    assert errors("count", lambda a, m: m["probe_modes"].update(count=2, power_fractions=[0.8, 0.2])) == [
        ("_metadata/probe_modes/count", "does not match the data (expected 3 = probe_modes.shape[0], found 2)")]
    assert errors("fractions", lambda a, m: m["probe_modes"].update(power_fractions=[0.8, 0.2])) == [
        ("_metadata/probe_modes/power_fractions", "one per mode (expected 3 values, found 2)")]
    assert errors("absent", lambda a, m: a.pop("probe_modes")) == [
        ("probe_modes", "missing (expected the 3 modes _metadata/probe_modes describes)")]


def test_probe_guess_power_is_checked_without_modes(tmp_path):
    """Without modes, N^2 sum |probeGuess|^2 should be the dose; a 1e-5 float32 rescale is within tolerance.
    A single-mode probe predates the rule: a miss is a warning (strict validation fails), not an error."""
    arrays, meta = example_arrays(n=n, frame=N, object_size=M, dose=DOSE, seed=3)
    arrays["probeGuess"] = (arrays["probeGuess"] * np.float32(1 + 1e-5)).astype(np.complex64)
    report = check_npz(write_contract_npz(tmp_path / "ok.npz", arrays, meta))
    assert report.ok and not report.warnings
    arrays["probeGuess"] = (arrays["probeGuess"] * np.float32(math.sqrt(2))).astype(np.complex64)
    report = check_npz(write_contract_npz(tmp_path / "x2.npz", arrays, meta))
    assert report.ok and not report.passes(strict=True)
    (problem,) = report.warnings
    assert problem.key == "probeGuess"
    assert problem.message.startswith("probe not scaled to the dose (expected N^2 sum |probeGuess|^2 = _metadata/dose "
                                      "= 1000 within 0.0001 relative, found 2000.")


def test_single_mode_file_uses_probe_guess_power(tmp_path):
    """A file without probe_modes but with a mask, nominal positions and continuous counts passes."""
    arrays, meta = realistic(modes=1, continuous=True)
    assert "probe_modes" not in arrays
    assert check_npz(write_contract_npz(tmp_path / "s.npz", arrays, meta)).passes(strict=True)


# --- metadata ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, key, fragment", [
    (lambda m: m["detector"].update(gain=2.0), "_metadata/detector", "Additional properties are not allowed ('gain'"),
    (lambda m: m["detector"].update(counts="float"), "_metadata/detector/counts", "is not one of ['integer', 'continuous']"),
    (lambda m: m["detector"].update(binning=9), "_metadata/detector/binning", "9 is greater than the maximum of 8"),
    (lambda m: m["detector"].pop("counts"), "_metadata/detector", "'counts' is a required property"),
    (lambda m: m["position_errors"].update(rms_error_px=-1.0), "_metadata/position_errors/rms_error_px",
     "-1.0 is less than the minimum of 0"),
    (lambda m: m["position_errors"].update(drift_px=[1.0]), "_metadata/position_errors/drift_px", "is too short"),
    (lambda m: m["probe_modes"].update(power_ratio=0), "_metadata/probe_modes/power_ratio",
     "0 is less than or equal to the minimum of 0"),
    (lambda m: m.update(ground_truth="no"), "_metadata/ground_truth", "'no' is not of type 'boolean'"),
    (lambda m: m.update(thinning={"parent": "p.npz"}), "_metadata/thinning", "'parent_sha256' is a required property"),
])
def test_metadata_schema_of_the_new_blocks(tmp_path, full, change, key, fragment):
    """Each new block is closed (no unknown keys), typed and bounded: one line naming the JSON path."""
    arrays, meta = full
    change(meta)
    assert_error(check_npz(write_contract_npz(tmp_path / "m.npz", arrays, meta), full=False), key, fragment)


def _thinning(parent_dose: int, fraction: float) -> dict:
    return {"parent": "parent.npz", "parent_sha256": "a" * 64, "parent_dose": parent_dose, "fraction": fraction,
            "replicate": 0, "seed": 12345}


def test_thinning_and_ground_truth_metadata(tmp_path):
    """A thinned file: fraction = dose / parent_dose, parent_dose >= dose; ground_truth false is accepted."""
    arrays, meta = example_arrays(n=n, frame=N, object_size=M, dose=DOSE, seed=3)
    meta.update(thinning=_thinning(4000, 0.25), ground_truth=False)
    assert check_npz(write_contract_npz(tmp_path / "t.npz", arrays, meta)).passes(strict=True)
    meta["thinning"] = _thinning(4000, 0.5)
    assert errors_of(check_npz(write_contract_npz(tmp_path / "f.npz", arrays, meta), full=False)) == [
        ("_metadata/thinning/fraction", "not dose / parent_dose (expected 0.25, found 0.5)")]
    meta["thinning"] = _thinning(500, 1.0)
    assert errors_of(check_npz(write_contract_npz(tmp_path / "d.npz", arrays, meta), full=False)) == [
        ("_metadata/thinning/parent_dose", "below the file's dose (expected >= 1000: thinning only lowers the dose, "
                                           "found 500)")]


# --- validate-npz -----------------------------------------------------------------------------------


def test_validate_npz_reports_realistic_problems_one_line_each(tmp_path):
    """validate-npz: a valid realistic file exits 0; a bad one exits 1 with `path: key: message` lines."""
    good = write_contract_npz(tmp_path / "good.npz", *realistic(continuous=True))
    result = CliRunner().invoke(cli, [str(good)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    arrays, meta = realistic()
    arrays["valid_pixels"][:] = False
    arrays.pop("nominal_ycoords")
    bad = write_contract_npz(tmp_path / "bad.npz", arrays, meta)
    result = CliRunner().invoke(cli, ["-q", str(bad)], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{bad}: nominal_ycoords: missing (expected nominal_xcoords and nominal_ycoords together, found only "
        f"nominal_xcoords)",
        f"{bad}: valid_pixels: no valid pixel (expected at least one True, found all 64 False)",
    ]
