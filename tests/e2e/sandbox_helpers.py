"""Running `cinder-csi sandbox` as a child process, for the e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from tests.integration.node_env import loop_devices_backed_by, unmount_below

T = TypeVar("T")


@dataclass
class RunningSandbox:
    process: subprocess.Popen[str]
    state_dir: Path
    output: list[str]

    def channel(self, name: str) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.state_dir / name}")


def start_sandbox(state_dir: Path, *extra: str) -> RunningSandbox:
    process = subprocess.Popen(
        [sys.executable, "-m", "cinder_csi.cli", "sandbox", "--state-dir", str(state_dir),
         "--log-level", "DEBUG", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Its own process group: a sandbox killed after a failed stop takes its controller,
        # node plugins and loop with it instead of leaving them running.
        start_new_session=True,
    )
    output: list[str] = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line.rstrip("\n"))
        if line.strip() == "ready":
            # Keep reading, or a chatty sandbox would block on a full pipe.
            threading.Thread(target=_drain, args=(process, output), daemon=True).start()
            return RunningSandbox(process, state_dir, output)
    _kill_group(process)
    raise AssertionError("sandbox did not print ready:\n" + "\n".join(output))


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line.rstrip("\n"))


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the sandbox and every process it started (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop_sandbox(sandbox: RunningSandbox) -> int:
    sandbox.process.send_signal(signal.SIGTERM)
    try:
        sandbox.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_group(sandbox.process)
    time.sleep(0.2)  # the drain thread reads the last lines
    return sandbox.process.returncode


@contextmanager
def running_sandbox(root: Path, *extra: str) -> Iterator[RunningSandbox]:
    """A sandbox under ``root``; stopped, and its mounts removed, even when the test fails."""
    sandbox = start_sandbox(root / "state", *extra)
    try:
        yield sandbox
    finally:
        if sandbox.process.poll() is None:
            stop_sandbox(sandbox)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sandbox.process.pid, signal.SIGKILL)  # children a crash left behind
        unmount_below(root)
        for line in loop_devices_backed_by(root):
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


def until(probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
