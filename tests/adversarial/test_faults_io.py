"""Family 5 (I/O faults of the shared writers): a failed write names its path and leaves nothing behind."""

from __future__ import annotations

import errno

import pytest

from ptydose._cli import os_error_line
from ptydose.core.fileio import atomic_output


def test_full_disk_during_a_write_names_the_target_and_leaves_no_temporary(tmp_path):
    """ENOSPC from a write on an open file carries no path: the error names the file being written."""
    target = tmp_path / "out" / "reconstruction.npz"
    with pytest.raises(OSError) as caught:
        with atomic_output(target) as handle:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")  # what a full disk raises from write()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert os_error_line(caught.value) == f"{target}: No space left on device"
    assert list(target.parent.iterdir()) == []  # no half file, no temporary
