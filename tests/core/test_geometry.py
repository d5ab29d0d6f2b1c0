"""pty-chi's position conventions, shared by the generator, the validator, the engine and metrics."""

from __future__ import annotations

import numpy as np

from ptydose.core.geometry import position_origin, subpixel_residuals, window_starts


def test_position_origin_is_round_half_to_even_minus_half():
    """O = round(M/2) - 0.5 per axis, rounding half to even as torch does."""
    assert position_origin((20, 21)).tolist() == [9.5, 9.5]  # round(10.5) = 10
    assert position_origin((23, 8)).tolist() == [11.5, 3.5]  # round(11.5) = 12
    assert position_origin((95, 96)).tolist() == [47.5, 47.5]  # round(47.5) = 48


def test_window_starts_hit_the_rounding_edges_like_pty_chi():
    """Window start = round(c - O) + O - (N-1)/2: p = 0.5 rounds down, 1.5 rounds up (half to even)."""
    # M = 96 -> O = 47.5; N = 32 -> (N-1)/2 = 15.5.
    centres = np.array([47.5, 48.0, 48.6, 46.5, 49.0])
    starts = window_starts(np.stack([centres, centres], axis=1), (96, 96), 32)
    assert starts[:, 0].tolist() == [32, 32, 33, 31, 34]
    assert starts[:, 1].tolist() == starts[:, 0].tolist()
    # Rows and columns are independent; odd N = 31 on M = 95 -> (N-1)/2 = 15.
    starts = window_starts(np.array([[9.5, 3.5], [9.6, 3.4], [10.0, 4.0], [11.0, 16.5]]), (20, 20), 8)
    assert starts[:, 0].tolist() == [6, 6, 6, 8]
    assert starts[:, 1].tolist() == [0, 0, 0, 13]
    assert window_starts(np.array([[47.5, 47.5]]), (95, 95), 31).tolist() == [[32, 32]]


def test_residual_plus_window_centre_is_the_probe_centre():
    """The integer window centre plus the sub-pixel residual gives back the probe centre exactly."""
    rng = np.random.default_rng(0)
    coords = rng.uniform(20, 70, size=(50, 2))
    starts = window_starts(coords, (96, 90), 32)
    residuals = subpixel_residuals(coords, (96, 90))
    assert np.all(np.abs(residuals) <= 0.5)
    np.testing.assert_allclose(starts + (32 - 1) / 2.0 + residuals, coords, rtol=0, atol=1e-12)


def test_sub_pixel_residual_is_what_pty_chi_shifts_the_probe_by():
    """A centre 0.3 px left of a whole pixel gives residual -0.3 and the window of that pixel."""
    coords = np.array([[47.5, 40.2], [50.49, 60.51]])
    # c - O = (0, -7.3) -> round (0, -7) -> s = (0 + 47.5 - 15.5, -7 + 47.5 - 15.5)
    assert window_starts(coords, (96, 96), 32).tolist() == [[32, 25], [35, 45]]
    np.testing.assert_allclose(subpixel_residuals(coords, (96, 96)), [[0.0, -0.3], [-0.01, 0.01]], atol=1e-12)
