"""Ending the driver processes that tests start: a crash (SIGKILL) or a clean stop (SIGTERM,
then SIGKILL if it does not end within its grace)."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def sigkill(process: subprocess.Popen[Any] | None) -> None:
    """End it as a crash or an OOM kill would; nothing if it already ended."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


def terminate(process: subprocess.Popen[Any] | None, grace: float = 30.0) -> None:
    """SIGTERM, and SIGKILL after ``grace`` seconds; nothing if it already ended."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        sigkill(process)
