"""The README's main command: `cinder-csi sandbox --demo` completes and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.node_env import loop_devices_backed_by, unmount_below


@pytest.mark.root
def test_sandbox_demo_completes_and_cleans_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cinder_csi.cli", "sandbox", "--demo",
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        unmount_below(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = out.splitlines()
    assert "ready" in lines
    for needle in ("Bound to pvc-", "mounted by the node plugin", "on node-1",
                   "the data moved with the volume", "Cinder volume", "demo complete",
                   "stopped: no mounts or loop devices left behind"):
        assert needle in out, needle
    assert "Traceback" not in out + result.stderr
    assert loop_devices_backed_by(state) == []
