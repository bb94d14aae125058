"""Ending the driver processes that tests start: a crash (SIGKILL) or a clean stop (SIGTERM,
then SIGKILL if it does not end within its grace)."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import grpc


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


class ServingProcess:
    """A driver process serving CSI on a socket, with the test's gRPC channel to it."""

    stop_grace = 30.0

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash, an OOM kill or a power loss."""
        self._close_channel()
        sigkill(self.process)

    def stop(self) -> None:
        self._close_channel()
        terminate(self.process, self.stop_grace)

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
