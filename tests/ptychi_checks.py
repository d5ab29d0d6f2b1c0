"""Checks shared by the run-ptychi tests: illuminated region, phase error, product.h5 layout.

Importable as ``ptychi_checks`` because pytest puts the folder of ``tests/conftest.py`` on sys.path.
"""

from __future__ import annotations

import h5py
import numpy as np

from ptydose.core.geometry import window_starts

PRODUCT_ROOT_ATTRS = ("name", "comments", "detector_object_distance_m", "photon_energy_eV", "probe_photon_count",
                      "exposure_time_s")
PRODUCT_DATASETS = ("probe", "object", "object_layer_spacing_m", "probe_position_indexes", "probe_position_x_m",
                    "probe_position_y_m", "loss_epochs", "loss_values")


def illuminated(probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, object_shape: tuple[int, int],
                threshold: float = 0.1) -> np.ndarray:
    """Pixels whose summed probe intensity over all exposures exceeds ``threshold`` of the maximum."""
    n = probe.shape[0]
    intensity = np.abs(probe) ** 2
    total = np.zeros(object_shape)
    for sy, sx in window_starts(np.stack([ycoords, xcoords], axis=1), object_shape, n):
        total[sy:sy + n, sx:sx + n] += intensity
    return total > threshold * total.max()


def phase_rmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """RMS phase error inside ``mask`` after removing the best global phase offset."""
    est, ref = estimate[mask], truth[mask]
    est = est * np.exp(1j * np.angle(np.vdot(est, ref)))
    return float(np.sqrt(np.mean(np.angle(ref * np.conj(est)) ** 2)))


def check_product_layout(path, object_shape, probe_shape, n_positions, n_epochs) -> h5py.File:
    """Assert the Ptychodus 1.7 product layout of ``path``; returns the open file for more checks."""
    h5 = h5py.File(path, "r")
    for attr in PRODUCT_ROOT_ATTRS:
        assert attr in h5.attrs, attr
    for name in PRODUCT_DATASETS:
        assert isinstance(h5[name], h5py.Dataset), name
    assert h5["object"].shape == (1, *object_shape) and np.iscomplexobj(h5["object"][()])
    assert h5["probe"].shape == probe_shape and np.iscomplexobj(h5["probe"][()])
    for attr in ("center_x_m", "center_y_m", "pixel_width_m", "pixel_height_m"):
        assert attr in h5["object"].attrs, attr
    for attr in ("pixel_width_m", "pixel_height_m"):
        assert attr in h5["probe"].attrs, attr
    # Ptychodus requires len(layer spacings) + 1 == number of object layers.
    assert h5["object_layer_spacing_m"].shape == (0,)
    for name in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m"):
        assert h5[name].shape == (n_positions,)
    assert h5["loss_epochs"].shape == h5["loss_values"].shape == (n_epochs,)
    return h5
