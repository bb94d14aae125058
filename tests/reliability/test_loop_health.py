"""The watch loop's /healthz fails when the loop cannot do its work, so a liveness probe
restarts the pod (issue 10, build 3): caches that never sync, a wedged work queue. Before,
it reported only a lost lease, and a loop whose first sync timed out carried on as if synced.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cinder_csi.loop import runner
from cinder_csi.loop.context import Controller, LoopContext
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.runner import LoopOptions, WatchLoop
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.reliability.harness import free_port


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, real_devices=False) as made:
        yield made


def healthz(port: int) -> tuple[int, str]:
    """Status and body; (0, why) while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 0, str(exc.reason)


class Wedged:
    """A duty whose worker never comes back from one key, as a deadlocked handler would."""

    name = "wedged"

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self.queue = WorkQueue("wedged", metrics=ctx.queue_metrics)
        self.release = threading.Event()

    def register(self) -> None:
        self.queue.add("default/stuck")

    def run(self) -> None:
        self.queue.run_until(self.ctx.stop, 1, lambda key: self.release.wait(), timeout=5)


@contextmanager
def running(env: ClusterEnv, **options: object) -> Iterator[tuple[WatchLoop, int]]:
    port = free_port()
    loop = WatchLoop(LoopOptions(
        csi_address=f"unix://{env.socket}", kubeconfig=str(env.kubeconfig),
        http_endpoint=f"127.0.0.1:{port}", cluster=env.cluster, workers=4,
        duties=("claims", "volumes"), **options))  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: healthz(port)[0] in (200, 503), timeout=30, what="/healthz served")
        yield loop, port
    finally:
        stop.set()
        thread.join(30)


def test_caches_that_never_sync_fail_healthz_and_start_no_duty(
        env: ClusterEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SYNC_TIMEOUT_S", 1.0)
    env.kube.faults.fail(10**6, code=500, path="/persistentvolumes")
    with running(env) as (loop, port):
        wait_until(lambda: healthz(port)[0] == 503, timeout=30, what="/healthz failing")
        body = healthz(port)[1]
        assert "informer-sync: the caches have not synced" in body, body
        assert not loop.ready.is_set()  # no duty runs on a partial view
        env.kube.faults.clear()
        wait_until(loop.ready.is_set, timeout=30, what="duties started once synced")
        assert healthz(port) == (200, "ok\n")


def test_a_wedged_work_queue_fails_healthz(env: ClusterEnv) -> None:
    duties: list[Wedged] = []

    def wedged(ctx: LoopContext) -> Controller:
        duties.append(Wedged(ctx))
        return duties[-1]

    with running(env, extra=(wedged,), wedged_after=1.0) as (loop, port):
        wait_until(loop.ready.is_set, timeout=30, what="loop running")
        wait_until(lambda: healthz(port)[0] == 503, timeout=30, what="/healthz failing")
        assert "work-queues: wedged: a worker has been on default/stuck" in healthz(port)[1]
        duties[0].release.set()
        wait_until(lambda: healthz(port) == (200, "ok\n"), timeout=30, what="healthy again")
