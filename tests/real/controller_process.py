"""The real `cinder-csi controller` as a child process, reached over its unix socket."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from tests.processes import ServingProcess

START_TIMEOUT_S = 60.0


class ControllerProcess(ServingProcess):
    """`python -m cinder_csi.cli controller ...` with its log in ``workdir``."""

    def __init__(self, workdir: Path, args: Sequence[str], *, name: str = "controller") -> None:
        self.workdir = workdir
        self.socket = workdir / f"{name}.sock"
        self.log = workdir / f"{name}.log"
        self.args = list(args)
        super().__init__()
        self.started_at = 0.0
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cinder_csi.cli", "controller",
                "--endpoint", self.endpoint, "--log-file", str(self.log), *self.args]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts}: {' '.join(self.command())}\n".encode())
        # The child keeps its own copy of the descriptor; ours may close at once.
        with open(self.workdir / f"{self.socket.stem}.stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.started_at = time.monotonic()
        self.channel = grpc.insecure_channel(self.endpoint)
        self._wait_serving()

    def _wait_serving(self) -> None:
        identity = csi_pb2_grpc.IdentityStub(self.channel)
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"controller exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=2)
                return
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.2)
        raise AssertionError(f"controller did not serve within {START_TIMEOUT_S}s: {last}")

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(self.channel)

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self.channel)

    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.alive() else 0.0


    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@contextmanager
def running_controller(workdir: Path, args: Sequence[str], *,
                       name: str = "controller") -> Iterator[ControllerProcess]:
    process = ControllerProcess(workdir, args, name=name)
    process.start()
    try:
        yield process
    finally:
        process.stop()
