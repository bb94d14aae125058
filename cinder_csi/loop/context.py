"""What every controller of the watch loop is given: one of each shared thing."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry

from cinder_csi.loop.caches import Informers
from cinder_csi.loop.capabilities import DriverCapabilities
from cinder_csi.loop.csi_client import CSIClient
from cinder_csi.loop.journal import IntentJournal
from cinder_csi.loop.kube.client import KubeRest
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.workqueue import WorkQueueMetrics


@dataclass
class LoopContext:
    driver: str  # the CSI driver name we act for (GetPluginInfo)
    csi: CSIClient
    rest: KubeRest  # throttled main client, raw JSON
    informers: Informers
    recorder: EventRecorder
    registry: CollectorRegistry
    queue_metrics: WorkQueueMetrics
    workers: int = 100
    # Identity written into PV volumeAttributes (storage.kubernetes.io/csiProvisionerIdentity).
    provisioner_identity: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    # The cluster id (--cluster): a volume tagged with another is never touched. Only one set
    # explicitly lets the orphan sweep delete (the default collides across clusters).
    cluster: str = "kubernetes"
    cluster_explicit: bool = False
    # Monotonic time after which no CSI call sent by an earlier run of the loop (killed, or an
    # earlier leader) can still be running in the driver: until then, finding no volume by
    # name proves nothing (a CreateVolume already sent may still make one).
    earlier_calls_end: float = 0.0
    # Where intents are recorded before CreateVolume (loop/journal.py); None: on each claim.
    journal: IntentJournal | None = None
    # The driver's controller capabilities, asked once for every duty.
    capabilities: DriverCapabilities = field(init=False)

    def __post_init__(self) -> None:
        self.capabilities = DriverCapabilities(self.csi)


class Controller(Protocol):
    """One duty of the loop. ``register`` runs before the informers start; ``run`` starts the
    workers and returns once ``ctx.stop`` is set and they have finished."""

    name: str

    def register(self) -> None: ...

    def run(self) -> None: ...
