"""Worker processes sleep idle OpenMP threads (a competing process must not stall every barrier)."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = ("import os; from ptydose.core.run.local import worker_environment; worker_environment(); "
         "import torch; print(os.environ['OMP_WAIT_POLICY'])")


def _run(env_changes: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_changes)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_workers_use_the_passive_wait_policy_by_default():
    """Without a user setting, a worker sets OMP_WAIT_POLICY=PASSIVE before torch is imported."""
    assert _run({}) == "PASSIVE"


def test_a_users_wait_policy_is_kept():
    """OMP_WAIT_POLICY set by the user (ACTIVE, say) is left as it is."""
    assert _run({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
