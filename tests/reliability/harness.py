"""What every loop-side reliability scenario shares: the controller with its watch loop as a
real process, and the audit that ends each scenario.

``LoopProcess`` runs ``cinder-csi controller --with-provisioner`` on the stand-ins of a
``cluster_env`` (OpenStack over HTTP, the Kubernetes stand-in over HTTP) exactly as a pod would
run it, so ``kill9()`` is a real SIGKILL: CSI calls, Cinder requests and Kubernetes writes in
flight are cut wherever they are. Every process writes its log to a file of its own, which the
secrets scan reads.

``audit`` states the promise: every Cinder volume is accounted for by a PV or was kept on
purpose (``retained``), no CSI name has two volumes, and no PV names a volume that is gone.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinder_csi.loop import protocol as p
from cinder_csi.standins.kube import ApiError
from tests.integration.cluster_env import ClusterEnv, wait_until
from tests.processes import sigkill, terminate
from tests.reliability.driver_env import free_port

Obj = dict[str, Any]
READY_LINE = "watch loop running"
GONE = ("deleted", "deleting")


@dataclass
class LoopProcess:
    """``cinder-csi controller --with-provisioner`` against the stand-ins of ``env``."""

    env: ClusterEnv
    name: str = "loop-controller"
    extra: Sequence[str] = ()
    timeout: float = 20.0  # --timeout: seconds a CSI call of the loop may take
    http_port: int = 0
    cloud_config: Path | None = None  # default: the cluster's cloud.conf
    kubeconfig: Path | None = None  # default: the cluster's kubeconfig
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.env.tmp_path / f"{self.name}.sock"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "cinder_csi.cli", "controller",
            "--endpoint", f"unix://{self.socket}",
            "--cloud-config", str(self.cloud_config or self.env.tmp_path / "cloud.conf"),
            "--cluster", self.env.cluster,
            "--with-provisioner", "--kubeconfig", str(self.kubeconfig or self.env.kubeconfig),
            "--timeout", str(self.timeout), "--worker-threads", "20",
            "--http-endpoint", f"127.0.0.1:{self.http_port or free_port()}",
            "--log-level", "DEBUG", *self.extra,
        ]

    def start(self, *, wait: bool = True) -> LoopProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log = self.env.tmp_path / f"{self.name}-{self.starts}.log"
        self.logs.append(log)
        self.process = subprocess.Popen(
            [*self.command(), "--log-file", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(log.with_suffix(".stderr"), "wb"),  # noqa: SIM115
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the loop says its informers synced and its workers run."""
        log = self.logs[-1]

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n"
                                     + self.output()[-3000:])
            return log.exists() and READY_LINE in log.read_text(errors="replace")

        wait_until(ready, timeout=timeout, what=f"{self.name}'s watch loop running")

    def kill9(self) -> None:
        sigkill(self.process)

    def stop(self) -> None:
        terminate(self.process)

    def output(self) -> str:
        """Everything every start of this process wrote: log files and stderr."""
        parts = []
        for log in self.logs:
            for path in (log, log.with_suffix(".stderr")):
                if path.exists():
                    parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


# ---------------------------------------------------------------- cluster objects


def create_claims(env: ClusterEnv, names: Iterable[str], **kw: Any) -> list[Obj]:
    return [env.create_claim(name, **kw) for name in names]


def delete(env: ClusterEnv, resource: str, name: str, namespace: str | None = None) -> bool:
    """Delete if present; True when it was there."""
    try:
        env.kube.store.delete(resource, name, namespace=namespace)
    except ApiError as exc:
        if exc.code != 404:
            raise
        return False
    return True


def live_volumes(env: ClusterEnv) -> list[Obj]:
    return [v for v in env.openstack.volumes() if v.get("status") not in GONE]


# ---------------------------------------------------------------- the audit


@dataclass
class Audit:
    leaked: list[str]  # live Cinder volumes of claims that no PV names and nobody kept
    duplicated: list[str]  # CSI names with more than one live volume
    dangling: list[str]  # PVs whose volume is gone
    volumes: int
    pvs: int

    @property
    def clean(self) -> bool:
        return not (self.leaked or self.duplicated or self.dangling)

    def __str__(self) -> str:
        return (f"{self.volumes} volumes, {self.pvs} PVs; leaked {self.leaked}, duplicated "
                f"{self.duplicated}, PVs without a volume {self.dangling}")


def audit(env: ClusterEnv, *, retained: Iterable[str] = (), in_flight: bool = False) -> Audit:
    """The audit of a settled cluster; with ``in_flight``, the invariant that holds at any
    moment: a volume may also be accounted for by a claim whose intent names it, and a PV
    whose volume was just deleted is not counted (its deletion is under way).

    Volumes are read first, then claims, then PVs: a volume given its PV while we read has
    its claim's intent or its PV in what we read."""
    kept = set(retained)
    volumes = live_volumes(env)
    intents = ({str((c.get("metadata", {}).get("annotations") or {}).get(p.ANN_PROVISIONING))
                for c in env.kube.store.view("persistentvolumeclaims")} | set(env.journal())
               if in_flight else set())
    pvs = env.kube.store.view("persistentvolumes")
    handles = {((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle") for pv in pvs}
    ids = {v["id"] for v in volumes}
    names = Counter(v["name"] for v in volumes if v.get("name"))
    return Audit(
        leaked=sorted(f"{v['id']} ({v['name']}, {v['status']})" for v in volumes
                      if v["id"] not in handles and v["id"] not in kept
                      and v["name"] not in intents),
        duplicated=sorted(n for n, count in names.items() if count > 1),
        dangling=[] if in_flight else sorted(
            str(pv["metadata"]["name"]) for pv in pvs
            if ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle") not in ids
            and (pv.get("spec") or {}).get("csi")),
        volumes=len(volumes), pvs=len(pvs),
    )


def accounted(env: ClusterEnv) -> Audit:
    """The audit that must hold at any moment, even mid-provisioning."""
    return audit(env, in_flight=True)


def wait_clean(env: ClusterEnv, *, timeout: float, retained: Iterable[str] = (),
               until: Callable[[], bool] = lambda: True) -> Audit:
    """Wait for a clean audit (and ``until``); the last audit otherwise, for the message."""
    kept = list(retained)
    deadline = time.monotonic() + timeout
    while True:
        result = audit(env, retained=kept)
        if result.clean and until():
            return result
        if time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def claims_left(env: ClusterEnv, namespace: str = "default") -> list[str]:
    return sorted(str(c["metadata"]["name"])
                  for c in env.kube.store.view("persistentvolumeclaims", namespace=namespace))


def seed_from_env(default: int) -> int:
    """``RELIABILITY_SEED=<n>`` replays a run, ``RELIABILITY_SEED=random`` explores a new one;
    otherwise ``default`` (so that CI runs the same campaign each time)."""
    text = os.environ.get("RELIABILITY_SEED", "")
    if text == "random":
        return random.SystemRandom().randrange(1_000_000)
    return int(text) if text else default
