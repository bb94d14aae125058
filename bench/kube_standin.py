"""How many writes per second the Kubernetes stand-in sustains, so that a benchmark of the loop
measures the loop and not the stand-in (target: at least 300 writes/s on this machine).

The stand-in runs as its own process (``python -m cinder_csi.standins.kube``) with its cluster
controllers; this process drives it over raw HTTP/1.1 keep-alive connections, one per thread,
while a few watches stay open on the written resource (as informers would). Phases: create N
PVCs, merge-patch an annotation onto each, GET each, delete each. Each phase is timed alone;
the stand-in's CPU per request comes from /proc.

Usage: python -m bench kube_standin [--objects 1000] [--connections 1,8] [--watches 3] [--runs 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bench.processes import Child
from bench.procstat import CpuMeter, sample
from bench.results import Report, mean, spread

TARGET_WRITES_PER_S = 300.0
PVC_PATH = "/api/v1/namespaces/default/persistentvolumeclaims"
USER_AGENT = "bench-kube-standin"


class StandInProcess:
    """``python -m cinder_csi.standins.kube`` as a child, until ``stop()``."""

    def __init__(self, root: Path, controllers: str) -> None:
        self.kubeconfig = root / "kubeconfig"
        self.child = Child("standin", [
            sys.executable, "-m", "cinder_csi.standins.kube", "--kubeconfig",
            str(self.kubeconfig), "--controllers", controllers, "--event-window", "100000",
            "--node", "node-0:topology.cinder.csi.openstack.org/zone=az-a"], root)
        deadline = time.monotonic() + 60
        while not self.kubeconfig.exists():
            if self.child.process.poll() is not None or time.monotonic() > deadline:
                self.child.stop()
                raise RuntimeError(f"stand-in did not start; see {root / 'standin.stderr'}")
            time.sleep(0.05)
        server = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        url = urlsplit(server)
        self.host, self.port = str(url.hostname), int(url.port or 80)

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        self.child.stop()


class Connection:
    """One keep-alive connection that raises on any answer but the expected ones."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json", ok: Sequence[int] = (200, 201)) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
        return payload

    def close(self) -> None:
        self.conn.close()


class Watchers:
    """``count`` open watches on PVCs, read to the end by one thread each (as informers do)."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.events = 0
        self._lock = threading.Lock()
        self._conns = [http.client.HTTPConnection(host, port, timeout=600) for _ in range(count)]
        self._threads = [threading.Thread(target=self._read, args=(c,), daemon=True)
                         for c in self._conns]
        for thread in self._threads:
            thread.start()

    def _read(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", f"{PVC_PATH}?watch=true&allowWatchBookmarks=true",
                     headers={"User-Agent": USER_AGENT})
        resp = conn.getresponse()
        try:
            for line in resp:
                json.loads(line)  # as an informer would, so the client pays what it would
                with self._lock:
                    self.events += 1
        except (OSError, http.client.HTTPException, ValueError):
            return  # closed by close()

    def close(self) -> None:
        for conn in self._conns:
            if conn.sock is not None:
                conn.sock.close()


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": {"bench": "kube-standin"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "1Gi"}}}}


def run_phase(standin: StandInProcess, names: list[str], connections: int,
              one: Callable[[Connection, str], None]) -> tuple[float, float]:
    """(requests per second, stand-in CPU ms per request) for ``one`` over every name."""
    local = threading.local()
    opened: list[Connection] = []
    lock = threading.Lock()

    def conn() -> Connection:
        found: Connection | None = getattr(local, "conn", None)
        if found is None:
            found = Connection(standin.host, standin.port)
            local.conn = found
            with lock:
                opened.append(found)
        return found

    meter = CpuMeter(standin.pid).start()
    started = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(lambda name: one(conn(), name), names))
    seconds = time.monotonic() - started
    cpu = meter.stop()
    for c in opened:
        c.close()
    return len(names) / seconds, 1000 * cpu / len(names)


PHASES: dict[str, Callable[[Connection, str], None]] = {
    "create": lambda c, name: c.call("POST", PVC_PATH, claim(name)),
    "merge-patch": lambda c, name: c.call(
        "PATCH", f"{PVC_PATH}/{name}",
        {"metadata": {"annotations": {"bench/touched": "yes"}}},
        "application/merge-patch+json"),
    "get": lambda c, name: c.call("GET", f"{PVC_PATH}/{name}"),
    "delete": lambda c, name: c.call("DELETE", f"{PVC_PATH}/{name}", ok=(200, 202)),
}
WRITES = ("create", "merge-patch", "delete")


def run(objects: int, connections: int, watches: int, controllers: str,
        ) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        standin = StandInProcess(Path(tmp), controllers)
        watchers = None
        try:
            watchers = Watchers(standin.host, standin.port, watches)
            names = [f"bench-{i}" for i in range(objects)]
            out = {phase: run_phase(standin, names, connections, one)
                   for phase, one in PHASES.items()}
            out["_rss"] = (sample(standin.pid).peak_rss_mb, 0.0)
            return out
        finally:
            if watchers is not None:
                watchers.close()
            standin.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench kube_standin", description=__doc__)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--watches", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--controllers", default="pv,protection,scheduler,attach_detach,namespace")
    args = parser.parse_args(argv)
    report = Report("kube_standin", [
        "connections", "phase", "requests/s (runs)", "stand-in CPU ms/request",
        f"ratio to {TARGET_WRITES_PER_S:.0f}/s"])
    figures: dict[str, Any] = {}
    for connections in [int(x) for x in args.connections.split(",")]:
        runs = [run(args.objects, connections, args.watches, args.controllers)
                for _ in range(args.runs)]
        for phase in PHASES:
            rates = [r[phase][0] for r in runs]
            cpu = [r[phase][1] for r in runs]
            ratio = f"{min(rates) / TARGET_WRITES_PER_S:.2f}x" if phase in WRITES else "-"
            report.add(connections, phase, spread(rates), mean(cpu), ratio)
            figures[f"c{connections}/{phase}"] = {"rates": rates, "cpu_ms": cpu}
        figures[f"c{connections}/peak_rss_mb"] = [r["_rss"][0] for r in runs]
    report.figures = figures
    report.note(f"{args.objects} PVCs per phase, {args.watches} watches open on PVCs, "
                f"controllers: {args.controllers}; {args.runs} runs each (spread shown)")
    report.note("the ratio is the slowest run's write rate to the 300 writes/s target")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
