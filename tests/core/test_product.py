"""product.h5: the Ptychodus 1.7 product layout, read back with h5py."""

from __future__ import annotations

import numpy as np
import pytest
from ptychi_checks import check_product_layout

from ptydose.core.product import ProductMetadata, write_product


def test_product_layout_and_values(tmp_path):
    """Every attribute and dataset is present with the given values; positions in metres about the centre."""
    rng = np.random.default_rng(0)
    obj = (rng.random((10, 12)) + 1j * rng.random((10, 12))).astype(np.complex64)
    probe = (rng.random((4, 4)) + 1j).astype(np.complex64)
    xs = np.array([5.5, 6.5, 3.0])
    ys = np.array([4.5, 2.0, 7.0])
    meta = ProductMetadata(name="smoke dose_1000/dense/train", comments="a test", detector_object_distance_m=2.0,
                           photon_energy_eV=8800.0, probe_photon_count=1000.0, exposure_time_s=0.1,
                           pixel_size_m=1e-7)
    path = write_product(tmp_path / "job" / "product.h5", meta, obj, probe, xs, ys, np.array([3, 8, 9]),
                         np.arange(5), np.linspace(1, 0.1, 5))
    with check_product_layout(path, (10, 12), (4, 4), 3, 5) as h5:
        assert h5.attrs["name"] == "smoke dose_1000/dense/train"
        assert h5.attrs["photon_energy_eV"] == 8800.0
        assert h5.attrs["probe_photon_count"] == 1000.0
        assert h5.attrs["detector_object_distance_m"] == 2.0
        assert h5.attrs["exposure_time_s"] == 0.1
        np.testing.assert_array_equal(h5["object"][0], obj)
        np.testing.assert_array_equal(h5["probe"][()], probe)
        np.testing.assert_array_equal(h5["probe_position_indexes"][()], [3, 8, 9])
        # Ptychodus puts world (center_x_m, center_y_m) = (0, 0) at pixel ((W-1)/2, (H-1)/2).
        np.testing.assert_allclose(h5["probe_position_x_m"][()], (xs - 5.5) * 1e-7, rtol=0, atol=1e-18)
        np.testing.assert_allclose(h5["probe_position_y_m"][()], (ys - 4.5) * 1e-7, rtol=0, atol=1e-18)
        assert h5["object"].attrs["pixel_width_m"] == h5["probe"].attrs["pixel_height_m"] == 1e-7
        np.testing.assert_array_equal(h5["loss_epochs"][()], np.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["product.h5"]  # no temporary file left


def test_product_is_replaced_atomically(tmp_path):
    """A failed write leaves the previous product.h5 intact and no temporary file behind."""
    meta = ProductMetadata("p", "", 1.0, 8000.0, 1.0, 1.0, 1e-7)
    obj = np.ones((6, 6), np.complex64)
    path = write_product(tmp_path / "product.h5", meta, obj, np.ones((2, 2), np.complex64), [2.5], [2.5], [0],
                         [0], [1.0])
    before = path.read_bytes()
    # loss_values that are not numbers: numpy refuses them half-way through the file (a TypeError).
    with pytest.raises(TypeError, match="float"):
        write_product(path, meta, obj, np.ones((2, 2), np.complex64), [2.5], [2.5], [0], [0, 1], object())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["product.h5"]
