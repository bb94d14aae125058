"""The watch loop as a whole: clients, informers, the duties, leader election, /metrics.

``cinder-csi provisioner`` runs it against any CSI controller socket; ``cinder-csi controller
--with-provisioner`` runs it beside our own controller in one process, calling it through its
own socket. Every duty gets one ``LoopContext``: the same clients, informers, recorder,
metrics registry and driver-capability cache.

Its liveness checks (``/healthz``, so that a probe restarts a wedged pod): the leader lease is
held (when electing), the caches synced in time, and no work queue is wedged (a worker on one
key, or a queue not draining, for far longer than a CSI call may take: ``stuck_after``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from cinder_csi.loop.caches import build_informers
from cinder_csi.loop.context import Controller, LoopContext
from cinder_csi.loop.csi_client import CSIClient, CSIMetrics
from cinder_csi.loop.journal import IntentJournal, configmap_name
from cinder_csi.loop.kube.client import (
    API_ERRORS,
    KubeClients,
    KubeOptions,
    api_error_text,
    build_clients,
)
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.leader import (
    KubeLeaseStore,
    LeaderElectionConfig,
    LeaderElector,
    SystemClock,
    default_identity,
    default_namespace,
    lease_name,
)
from cinder_csi.loop.kube.workqueue import WorkQueueMetrics
from cinder_csi.loop.unprovision import CALL_END_MARGIN
from cinder_csi.metrics import HealthChecks, Metrics, serve_http

log = logging.getLogger(__name__)

ALL_DUTIES = ("claims", "volumes", "attachments", "resizer", "orphans")
CSI_READY_TIMEOUT_S = 120.0
SYNC_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LoopOptions:
    csi_address: str
    kubeconfig: str | None = None
    workers: int = 100
    kube_qps: float = 300.0
    kube_burst: int = 600
    resync_period: float = 600.0
    csi_timeout: float = 180.0
    leader_election: bool = False
    leader_election_namespace: str | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Shifts this replica's wall clock for leader election (tests: the Lease must not care).
    clock_skew: float = 0.0
    http_endpoint: str = ""
    duties: tuple[str, ...] = ALL_DUTIES
    cluster: str = "kubernetes"
    cluster_explicit: bool = False  # --cluster was given (only then may orphans be deleted)
    # The controller runs in this process (--with-provisioner): no CSI call of an earlier run
    # can outlive it, so a volume's absence is proven at once after a restart.
    driver_in_process: bool = False
    orphan_interval: float = 600.0
    orphan_grace: float = 3600.0
    delete_orphans: bool = False
    # A work queue is wedged once a worker spent this long on one key (or nothing moved while
    # keys wait); None: three CSI timeouts, at least a minute.
    wedged_after: float | None = None
    # Extra duties built from the context (the registry claim, say).
    extra: tuple[Callable[[LoopContext], Controller], ...] = field(default_factory=tuple)

    @property
    def stuck_after(self) -> float:
        if self.wedged_after is not None:
            return self.wedged_after
        return max(3 * self.csi_timeout, 60.0)


def build_controllers(ctx: LoopContext, options: LoopOptions) -> list[Controller]:
    # Imported here so `cinder-csi node` never loads the Kubernetes side.
    from cinder_csi.loop.attacher import AttachmentController
    from cinder_csi.loop.claims import ClaimController
    from cinder_csi.loop.deletion import VolumeController
    from cinder_csi.loop.orphans import OrphanSweep
    from cinder_csi.loop.resizer import ResizeController

    factories: dict[str, Callable[[], Controller]] = {
        "claims": lambda: ClaimController(ctx),
        "volumes": lambda: VolumeController(ctx),
        "attachments": lambda: AttachmentController(ctx),
        "resizer": lambda: ResizeController(ctx),
        "orphans": lambda: OrphanSweep(
            ctx, interval=options.orphan_interval,
            grace=options.orphan_grace, delete_orphans=options.delete_orphans,
        ),
    }
    unknown = sorted(set(options.duties) - set(factories))
    if unknown:
        raise ValueError(f"unknown duties: {', '.join(unknown)}")
    built = [factories[name]() for name in options.duties]
    built += [factory(ctx) for factory in options.extra]
    return built


class WatchLoop:
    """Build once, ``run(stop)`` until stopped or the lease is lost."""

    def __init__(self, options: LoopOptions, *, registry: CollectorRegistry | None = None,
                 health: HealthChecks | None = None) -> None:
        self.options = options
        self.registry = registry or CollectorRegistry()
        self.health = health if health is not None else HealthChecks()
        self.health.register(
            "leader-election", lambda: "lost the leader lease" if self.lost_lease else None)
        self.health.register("informer-sync", self._sync_health)
        self.health.register("work-queues", self._queue_health)
        self._ctx: LoopContext | None = None
        self.lost_lease = False
        self.ready = threading.Event()  # informers synced and workers running
        # Since when (monotonic) the first sync has been overdue; None while it is not.
        self.sync_overdue_since: float | None = None
        self._clients: KubeClients | None = None

    def run(self, stop: threading.Event) -> int:
        """0 when stopped, 1 when leadership was lost (the process should exit and restart)."""
        options = self.options
        clients = build_clients(KubeOptions(
            kubeconfig=options.kubeconfig, qps=options.kube_qps, burst=options.kube_burst))
        self._clients = clients
        csi = CSIClient(options.csi_address, timeout=options.csi_timeout,
                        metrics=CSIMetrics(self.registry))
        http = None
        try:
            csi.wait_ready(CSI_READY_TIMEOUT_S)
            driver = csi.driver_name()
            if options.http_endpoint:  # standalone; in-process, the controller serves /metrics
                http = serve_http(options.http_endpoint, Metrics(driver, registry=self.registry),
                                  self.health)
            recorder = EventRecorder(clients.rest(), driver, host=socket.gethostname())
            recorder.start()
            ctx = LoopContext(
                driver=driver, csi=csi, rest=clients.rest(),
                informers=build_informers(clients.rest(), resync_period=options.resync_period),
                recorder=recorder, registry=self.registry,
                queue_metrics=WorkQueueMetrics(self.registry), workers=options.workers,
                provisioner_identity=f"{default_identity()}-{driver}",
                cluster=options.cluster, cluster_explicit=options.cluster_explicit,
            )
            if "claims" in options.duties:
                ctx.journal = IntentJournal(clients.rest(), self._namespace(),
                                            configmap_name(driver))
            self._ctx = ctx
            if options.leader_election:
                return self._run_elected(ctx, clients, stop)
            self._lead(ctx, stop)
            return 0
        finally:
            if http is not None:
                http.stop()
            csi.close()
            clients.close()

    def _namespace(self) -> str:
        """Where the Lease and the provisioning journal live."""
        return self.options.leader_election_namespace or default_namespace()

    def _run_elected(self, ctx: LoopContext, clients: KubeClients, stop: threading.Event) -> int:
        namespace = self._namespace()
        name = lease_name(ctx.driver)
        options = self.options
        elector = LeaderElector(
            KubeLeaseStore(clients.leader_rest(), namespace, name),
            LeaderElectionConfig(name=name, namespace=namespace, identity=default_identity(),
                                 lease_duration=options.lease_duration,
                                 renew_deadline=options.renew_deadline,
                                 retry_period=options.retry_period),
            on_started_leading=lambda leading_stop: self._lead(ctx, leading_stop),
            on_stopped_leading=lambda: ctx.stop.set(),
            clock=SystemClock(options.clock_skew),
        )
        # Fencing: no volume-changing CSI call starts unless the lease is proven held.
        ctx.csi.fence = elector.fence.check
        elector.run(stop)
        if not stop.is_set():
            self.lost_lease = True
            log.error("lost the leader lease %s/%s: stopping all work", namespace, name)
            return 1
        return 0

    def _lead(self, ctx: LoopContext, stop: threading.Event) -> None:
        # CSI calls that an earlier run sent (killed, or an earlier leader fenced off) end by
        # their deadline; until then, not finding a volume proves nothing (unprovision.py).
        fresh_driver = self.options.driver_in_process and not self.options.leader_election
        ctx.earlier_calls_end = time.monotonic() + (
            0.0 if fresh_driver else self.options.csi_timeout + CALL_END_MARGIN)
        controllers = build_controllers(ctx, self.options)
        for controller in controllers:
            controller.register()
        ctx.informers.start()
        try:
            if not self._wait_for_sync(ctx, stop) or not self._load_journal(ctx, stop):
                return
            threads = _start(controllers)
            self.ready.set()
            log.info("watch loop running for %s: %s", ctx.driver,
                     ", ".join(c.name for c in controllers))
            stop.wait()
            ctx.stop.set()
            for thread in threads:
                thread.join(timeout=30)
        finally:
            ctx.stop.set()
            if ctx.journal is not None:
                ctx.journal.stop()  # writes the removals still pending
            ctx.informers.stop()
            ctx.recorder.stop()

    @staticmethod
    def _load_journal(ctx: LoopContext, stop: threading.Event) -> bool:
        """What earlier runs left in the journal, read before any duty starts (until read,
        nothing may be provisioned or swept); False when stopped first."""
        journal = ctx.journal
        while journal is not None and not stop.is_set():
            try:
                journal.load()
                return True
            except API_ERRORS as exc:
                log.warning("reading the provisioning journal %s/%s failed, retrying: %s",
                            journal.namespace, journal.name, api_error_text(exc))
                stop.wait(2.0)
        return not stop.is_set()


    def _sync_health(self) -> str | None:
        since = self.sync_overdue_since
        if since is None:
            return None
        waited = SYNC_TIMEOUT_S + time.monotonic() - since
        return f"the caches have not synced in {waited:.0f}s; no duty runs"

    def _queue_health(self) -> str | None:
        ctx = self._ctx
        if ctx is None:
            return None
        wedged = [f"{queue.name}: {why}" for queue in ctx.queue_metrics.queues
                  if (why := queue.stalled(self.options.stuck_after)) is not None]
        return "; ".join(wedged) or None

    def _wait_for_sync(self, ctx: LoopContext, stop: threading.Event) -> bool:
        """Until every cache holds a whole first listing; False when stopped first.

        No duty starts on a partial view (an orphan sweep over a PV cache that never filled
        would see every volume as lost); an overdue sync is logged and fails /healthz, so a
        liveness probe restarts a loop that cannot list (RBAC, an overloaded API server)."""
        started = time.monotonic()
        while not stop.is_set():
            if ctx.informers.wait_for_sync(1.0):
                self.sync_overdue_since = None
                return True
            if self.sync_overdue_since is None and time.monotonic() - started > SYNC_TIMEOUT_S:
                self.sync_overdue_since = time.monotonic()
                log.error("informers did not sync within %.0fs (%s); no duty starts until they "
                          "do", SYNC_TIMEOUT_S, ", ".join(
                              i.name for i in ctx.informers.all() if not i.has_synced()))
        return False


def _start(controllers: Iterable[Controller]) -> list[threading.Thread]:
    threads = []
    for controller in controllers:
        thread = threading.Thread(target=controller.run, name=f"loop-{controller.name}",
                                  daemon=True)
        thread.start()
        threads.append(thread)
    return threads
