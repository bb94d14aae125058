"""The claim controller: external-provisioner's provisioning protocol, made crash-safe.

For a claim that names our driver (see ``wants``): resolve the class, its parameters and
secret references, the topology and the data source into an ``Intent`` (``loop/intent.py``);
protect the data source; record the intent in the provisioning journal (``loop/journal.py``,
many claims per write), or on the claim when the journal cannot take it (one patch:
finalizer, the name ``pvc-<uid>`` and the whole resolved request); CreateVolume; create the
PV; clear the intent (from the journal: with its next write).

Crash-safety rules (what upstream lacks, external-provisioner#486; keep them when optimising):

- the intent is recorded BEFORE the first CreateVolume: in the journal, returning only once
  the server has it; on the claim, in ONE patch with its finalizer;
- a claim that carries a recorded intent is never resolved again (unless a reschedule picked
  another node): a restart resumes from the recording (CreateVolume is idempotent by name),
  whatever happened meanwhile to the class, its Secrets, the source or the node;
- a claim deleted mid-way keeps its journal entry (or its finalizer) until its PV exists, or
  until ``Unprovisioner`` has deleted every volume under its name or proven that none exists;
  never because an error looked final;
- the data source's protection finalizer is put on before the intent and taken off only after
  the intent is cleared.

Errors follow upstream's classes: gRPC codes that may mean "still running" retry with the same
name; RESOURCE_EXHAUSTED with a selected node reschedules (removes ``selected-node``);
INVALID_ARGUMENT and bad parameters retry only at the maximum backoff; anything else is final
and retried with backoff. Each failure is a Warning Event on the claim naming the volume and
what the driver said, and holds the claim off (``HoldOff``) so that claim updates cannot turn
retries into a hot loop.

Data sources (clones, snapshots, their protection) are in ``datasources``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import grpc

from cinder_csi import FEATURE_RECLAIM_POLICY, RECLAIM_POLICY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop import pvspec, topology
from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.datasources import (
    CLAIM_KIND,
    DataSources,
    data_source,
    parse_source_key,
    source_key,
    source_ref,
)
from cinder_csi.loop.errors import (
    IN_PROGRESS_CODES,
    DoNotRetrySoon,
    NotOurs,
    ParameterError,
    ProvisionFailed,
    Reschedule,
    RetryAfter,
    SourceError,
    TopologyError,
    rpc_code,
    rpc_error_text,
)
from cinder_csi.loop.intent import Intent, SourceRef, recorded_intent
from cinder_csi.loop.journal import JournalEntry, in_the_making
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import API_ERRORS
from cinder_csi.loop.kube.informer import Handlers
from cinder_csi.loop.kube.objects import (
    PV_PATH,
    Obj,
    annotations_of,
    deleting,
    edit_metadata,
    finalizers_of,
    get_or_none,
    merge_metadata,
    name_of,
    namespace_of,
    node_path,
    object_key,
    pv_path,
    read_secret,
)
from cinder_csi.loop.kube.throttle import ItemBackoff
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.protocol import in_flight
from cinder_csi.loop.unprovision import Unprovisioner
from cinder_csi.metrics import OperationMetrics

log = logging.getLogger(__name__)

WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
PROVISIONED_MEMORY = 600.0  # seconds a made PV is remembered while its binding is pending
HOLDOFF_BASE, HOLDOFF_CAP = 1.0, 300.0  # a failed claim's hold-off: 1 s doubling to 5 min
# "Provisioning" is news only while provisioning lasts: written if the claim is not done this
# many seconds after it started (real Cinder creates take longer), saving a request per claim
# that a fast cloud provisions at once, where "ProvisioningSucceeded" follows immediately.
PROVISIONING_EVENT_DELAY = 2.0


# ---------------------------------------------------------------- what a claim says


def strip_own(claim: Mapping[str, Any]) -> dict[str, Any]:
    """The claim without what only we (or the API server) write during provisioning."""
    meta = dict(claim.get("metadata") or {})
    for field in ("resourceVersion", "managedFields", "generation"):
        meta.pop(field, None)
    meta["annotations"] = {k: v for k, v in annotations_of(claim).items()
                           if k not in (p.ANN_PROVISIONING, p.ANN_PROVISIONING_REQUEST)}
    meta["finalizers"] = [f for f in finalizers_of(claim) if f != p.FINALIZER_PROVISIONING]
    return {**claim, "metadata": meta}


def provisioner_of(claim: Mapping[str, Any]) -> str | None:
    ann = annotations_of(claim)
    return ann.get(p.ANN_STORAGE_PROVISIONER) or ann.get(p.ANN_BETA_STORAGE_PROVISIONER)


def wants(claim: Mapping[str, Any], driver: str,
          storage_class: Mapping[str, Any] | None) -> bool:
    """external-provisioner's shouldProvision, for a claim without our intent."""
    if deleting(claim) or (claim.get("spec") or {}).get("volumeName"):
        return False
    if provisioner_of(claim) != driver:
        return False
    delayed = (storage_class is not None
               and storage_class.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER)
    return not delayed or bool(annotations_of(claim).get(p.ANN_SELECTED_NODE))


# ---------------------------------------------------------------- failures


def provision_metrics(ctx: LoopContext) -> OperationMetrics:
    return OperationMetrics(
        "controller_persistentvolumeclaim_provision", ["class", "source"],
        done="Volumes provisioned by the watch loop", failed="Failed provisioning attempts",
        duration="Duration of successful provisioning", registry=ctx.registry)


class HoldOff:
    """Per-claim backoff that claim updates cannot bypass.

    A failed claim is not tried again before its time even when it changes meanwhile (a
    reschedule removes and re-adds selected-node at once; retrying on each would be a hot loop).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._backoff = ItemBackoff(HOLDOFF_BASE, HOLDOFF_CAP)
        self._lock = threading.Lock()
        self._not_before: dict[str, float] = {}  # claim uid -> clock time

    def remaining(self, uid: str) -> float:
        """Seconds the claim must still wait after its last failure (<= 0: none)."""
        with self._lock:
            return self._not_before.get(uid, 0.0) - self._clock()

    def hold(self, uid: str, *, longest: bool) -> None:
        """Hold the claim off for its next backoff step, or for the longest one."""
        delay = self._backoff.cap if longest else self._backoff.when(uid)
        with self._lock:
            self._not_before[uid] = self._clock() + delay

    def forget(self, uid: str) -> None:
        """The claim succeeded or is gone: its next failure starts the backoff afresh."""
        self._backoff.forget(uid)
        with self._lock:
            self._not_before.pop(uid, None)


# ---------------------------------------------------------------- the controller


class ClaimController:
    name = "claims"

    def __init__(self, ctx: LoopContext, *, default_fstype: str = "ext4",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.default_fstype = default_fstype
        self.queue = WorkQueue("claims", metrics=ctx.queue_metrics)
        self.metrics = provision_metrics(ctx)
        self.holdoff = HoldOff(clock)
        self.sources = DataSources(ctx)
        self.unprovisioner = Unprovisioner(ctx, clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        # Claims whose PV we made and whose binding we have not seen yet (uid -> when, oldest
        # first), so a sync racing the PV informer does not provision again.
        self._provisioned: OrderedDict[str, float] = OrderedDict()
        # Claims whose intent we cleared while the cache may still show it (the binding's
        # update can arrive before our own write): clearing again would be a wasted request.
        self._cleared: set[str] = set()

    def register(self) -> None:
        self.ctx.informers.claims.add_handler(Handlers(
            on_add_func=self._on_claim,
            on_update_func=self._on_claim_update,
            on_delete_func=self._on_claim_deleted,
        ))

    def run(self) -> None:
        if self.ctx.journal is not None:  # what an earlier run left in the making
            for entry in self.ctx.journal.entries():
                self.queue.add(entry.claim_key)
        try:  # protection a crash left on a snapshot whose claim went meanwhile
            for ref in self.sources.protected_snapshots():
                self.queue.add(source_key(ref))
        except API_ERRORS as exc:
            log.warning("could not list VolumeSnapshots for stale protection: %s", exc)
        self.queue.run_until(self.ctx.stop, max(1, self.ctx.workers), self.sync, timeout=60)

    # ---- handlers

    def _on_claim(self, claim: Obj) -> None:
        source = source_ref(claim)
        if source and (claim.get("spec") or {}).get("volumeName"):
            self.queue.add(source_key(source))
        if in_the_making(claim, self.ctx.journal) or (
            not (claim.get("spec") or {}).get("volumeName")
            and provisioner_of(claim) == self.ctx.driver
        ):
            self.queue.add(object_key(claim))
        elif p.FINALIZER_CLONE_SOURCE in finalizers_of(claim):
            self.queue.add(source_key(SourceRef(CLAIM_KIND, namespace_of(claim),
                                                name_of(claim))))

    def _on_claim_update(self, old: Obj, new: Obj) -> None:
        if old is not new and strip_own(old) == strip_own(new):
            return  # only our own intent changed: the worker that wrote it carries on
        self._on_claim(new)

    def _on_claim_deleted(self, claim: Obj) -> None:
        uid = str(claim["metadata"].get("uid"))
        with self._lock:
            self._provisioned.pop(uid, None)
            self._cleared.discard(uid)
        self.holdoff.forget(uid)
        source = source_ref(claim)
        if source:
            self.queue.add(source_key(source))
        if self.ctx.journal is not None and self.ctx.journal.has(p.pv_name_for(uid)):
            self.queue.add(object_key(claim))  # deleted in the making: _settle_journal

    # ---- reconcile

    def sync(self, key: str) -> None:
        source = parse_source_key(key)
        if source is not None:
            self.sources.sync_source(source)
            return
        claim = self.ctx.informers.claims.cache.get(key)
        self._settle_journal(key, claim)
        if claim is None:
            return
        uid = str(claim["metadata"]["uid"])
        pv_name = p.pv_name_for(uid)
        started = in_the_making(claim, self.ctx.journal)
        if not started and uid in self._cleared:
            with self._lock:
                self._cleared.discard(uid)  # the cache shows our clearing now
        if (claim.get("spec") or {}).get("volumeName"):
            with self._lock:
                self._provisioned.pop(uid, None)
            if started:
                self._clear_intent(claim)
            return
        if self._recently_provisioned(uid):
            # Its PV exists; a cache that lags behind our own writes may still show the intent.
            if started:
                self._clear_intent(claim)
            return
        if started and deleting(claim):
            # Crash-safety: finished from the recorded intent alone. Its volume is deleted or
            # proven never made before the finalizer goes; nothing is resolved again.
            if not self._pv_exists(pv_name, claim, ask_api=True):
                self.unprovisioner.finish(claim, pv_name, self._recorded(claim, pv_name))
            self._clear_intent(claim)
            return
        # Otherwise the usual rules hold (a WaitForFirstConsumer claim sent back to the
        # scheduler waits).
        if not wants(claim, self.ctx.driver, self._class_of(claim)):
            return
        if self._pv_exists(pv_name, claim):
            if started:
                self._clear_intent(claim)
            return
        wait = self.holdoff.remaining(uid)
        if wait > 0:
            raise RetryAfter(wait, f"claim {key} failed recently")
        self._provision(claim, pv_name)
        self.holdoff.forget(uid)

    def _settle_journal(self, key: str, claim: Obj | None) -> None:
        """Journal entries under ``key`` whose claim is gone (deleted in the making, maybe
        while the loop was down): its volume is deleted or proven never made, unless its PV
        exists (then the PV controller and its reclaim policy take it from here)."""
        journal = self.ctx.journal
        if journal is None:
            return
        live = str(claim["metadata"].get("uid")) if claim is not None else None
        for entry in journal.entries_of(key):
            if entry.uid == live:
                continue
            stub = entry.claim_stub()
            if not self._pv_exists(entry.key, stub, ask_api=True):
                self.unprovisioner.finish(stub, entry.key, entry.intent)
            journal.forget(entry.key)
            if entry.intent.source is not None:
                self.queue.add(source_key(entry.intent.source))

    def _recorded(self, claim: Obj, pv_name: str) -> Intent | None:
        """The intent recorded for ``claim``: in the journal, else on the claim."""
        entry = self.ctx.journal.get(pv_name) if self.ctx.journal is not None else None
        if entry is not None and entry.uid == claim["metadata"].get("uid"):
            return entry.intent
        return recorded_intent(claim)

    def _recently_provisioned(self, uid: str) -> bool:
        now = self._clock()
        with self._lock:
            while self._provisioned and now - next(iter(self._provisioned.values())) > (
                    PROVISIONED_MEMORY):
                self._provisioned.popitem(last=False)
            return uid in self._provisioned

    def _class_of(self, claim: Obj) -> Obj | None:
        name = inf.claim_class_name(claim)
        return self.ctx.informers.classes.cache.get(name) if name else None

    def _pv_exists(self, pv_name: str, claim: Mapping[str, Any], *,
                   ask_api: bool = False) -> bool:
        """A PV of this name exists (in the cache; with ``ask_api``, also on the server)."""
        pv = self.ctx.informers.volumes.cache.get(pv_name)
        if pv is None and ask_api:
            pv = get_or_none(self.ctx.rest, pv_path(pv_name))
        if pv is None:
            return False
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("uid") != claim["metadata"]["uid"]:
            raise ProvisionFailed(f"PV {pv_name} exists but is bound to another claim "
                                  f"({ref.get('namespace')}/{ref.get('name')})")
        return True

    # ---- provisioning

    def _provision(self, claim: Obj, pv_name: str) -> None:
        source = data_source(claim)
        began = time.monotonic()
        intent = self._intent_for(claim, pv_name)
        if intent is None:
            return  # not ours to provision
        labels = (intent.storage_class, source["kind"] if source else "")
        try:
            secrets = self._provisioner_secrets(intent)
            fresh = self._record_intent(claim, intent)
        except SourceError as exc:
            self._failed(claim, labels, f"failed to provision volume {pv_name}: {exc}")
        if fresh is None:
            return  # the claim is gone
        claim = fresh
        announced = self.ctx.recorder.deferred(
            claim, "Normal", "Provisioning",
            f'External provisioner is provisioning volume for claim "{object_key(claim)}"',
            after=PROVISIONING_EVENT_DELAY)
        self.unprovisioner.started_create(pv_name)
        try:
            response = self.ctx.csi.create_volume(intent.request_with(secrets))
        except grpc.RpcError as exc:
            if rpc_code(exc) not in IN_PROGRESS_CODES:  # the driver answered: it is done
                self.unprovisioner.forget(pv_name)
            self._create_failed(claim, labels, pv_name, intent.storage_class, exc)
        self.unprovisioner.forget(pv_name)
        volume = pvspec.CreatedVolume.from_csi(response.volume)
        pv = pvspec.build_pv(
            name=pv_name, driver=self.ctx.driver, claim=claim,
            storage_class=intent.class_facts(), volume=volume,
            requested_bytes=intent.request.capacity_range.required_bytes,
            params=intent.parameters(), provisioner_identity=self.ctx.provisioner_identity,
        )
        if intent.request.parameters.get(RECLAIM_POLICY_KEY) == "Retain":
            # The driver recorded Retain with the volume: nothing for the volume controller
            # to record later (loop/deletion.py).
            pv["metadata"]["annotations"][p.ANN_RECLAIM_RECORDED] = "Retain"
        self._create_pv(claim, pv)
        with self._lock:
            self._provisioned[str(claim["metadata"]["uid"])] = self._clock()
        self._clear_intent(claim, intent)
        announced.cancel()
        self.ctx.recorder.normal(claim, "ProvisioningSucceeded",
                                 f"Successfully provisioned volume {pv_name}")
        self.metrics.total.labels(*labels).inc()
        self.metrics.duration.labels(*labels).observe(time.monotonic() - began)
        log.info("claim %s: provisioned %s as volume %s", object_key(claim), pv_name,
                 volume.volume_id)

    def _intent_for(self, claim: Obj, pv_name: str) -> Intent | None:
        """The recorded intent, or a freshly resolved one; None when the claim is not ours."""
        selected = annotations_of(claim).get(p.ANN_SELECTED_NODE) or ""
        recorded = self._recorded(claim, pv_name)
        if recorded is not None and recorded.selected_node == selected:
            return recorded  # crash-safety: never resolved again (see the module docstring)
        # Nothing recorded yet, or the scheduler picked another node after a reschedule (no
        # volume was made then; any made by name is still found by CreateVolume).
        class_name = inf.claim_class_name(claim)
        source = data_source(claim)
        labels = (class_name, source["kind"] if source else "")
        storage_class = self._class_of(claim)
        try:
            if storage_class is None:
                raise ParameterError(f'storageclass.storage.k8s.io "{class_name}" not found')
            if storage_class.get("provisioner") != self.ctx.driver:
                raise NotOurs()
            return self._resolve(claim, storage_class, pv_name, selected)
        except NotOurs:
            return None
        except ParameterError as exc:
            self._failed(claim, labels, f"failed to provision volume {pv_name}: {exc}",
                         permanent=True)
        except (SourceError, TopologyError) as exc:
            self._failed(claim, labels, f"failed to provision volume {pv_name}: {exc}")
        except Reschedule as exc:
            self._reschedule(claim, labels, f"failed to provision volume {pv_name}: {exc}")

    def _resolve(self, claim: Obj, storage_class: Mapping[str, Any], pv_name: str,
                 selected: str) -> Intent:
        if (claim.get("spec") or {}).get("selector"):
            raise ParameterError("claim Selector is not supported")
        params = pvspec.split_parameters(storage_class.get("parameters") or {}, claim, pv_name,
                                         default_fstype=self.default_fstype)
        reclaim = str(storage_class.get("reclaimPolicy") or "Delete")
        csi_params = dict(params.csi)
        if FEATURE_RECLAIM_POLICY in self.ctx.csi.features():
            # Kept as volume metadata by the driver, so the orphan sweep can tell a volume a
            # Retain PV once had from a lost one (loop/orphans.py).
            csi_params[RECLAIM_POLICY_KEY] = reclaim
        requirement = self._topology(claim, storage_class)
        content, source = self.sources.content_source(claim, storage_class)
        multi_writer = RPC.SINGLE_NODE_MULTI_WRITER in self.ctx.capabilities.get()
        request = csi_pb2.CreateVolumeRequest(
            name=pv_name,
            capacity_range=pvspec.capacity_range(claim),
            volume_capabilities=pvspec.capabilities(
                claim, params.fs_type, single_node_multi_writer=multi_writer),
            parameters=csi_params,
        )
        if requirement is not None:
            request.accessibility_requirements.CopyFrom(requirement.to_csi())
        if content is not None:
            request.volume_content_source.CopyFrom(content)
        return Intent(
            request=request,
            storage_class=str((storage_class.get("metadata") or {}).get("name", "")),
            reclaim_policy=reclaim,
            fs_type=params.fs_type,
            mount_options=tuple(str(o) for o in storage_class.get("mountOptions") or ()),
            secrets=params.secrets,
            source=source,
            selected_node=selected,
        )

    def _topology(self, claim: Obj, storage_class: Mapping[str, Any]
                  ) -> topology.Requirement | None:
        selected = annotations_of(claim).get(p.ANN_SELECTED_NODE)
        if selected and self._node(selected) is None:
            raise Reschedule(f'the selected node "{selected}" no longer exists')
        return topology.requirement(
            self.ctx.driver, claim, storage_class, selected_node=selected,
            csi_node_lookup=self.ctx.informers.csi_nodes.cache.get,
            csi_nodes=self.ctx.informers.csi_nodes.cache.objects,
            node_lookup=self.ctx.informers.nodes.cache.get,
        )

    def _node(self, name: str) -> Obj | None:
        node = self.ctx.informers.nodes.cache.get(name)
        if node is not None:
            return node
        # The cache may simply lag behind a node that just joined.
        return get_or_none(self.ctx.rest, node_path(name))

    def _provisioner_secrets(self, intent: Intent) -> dict[str, str]:
        """The provisioner Secret's values, read now by the recorded reference."""
        ref = intent.provisioner_secret
        if ref is None:
            return {}
        try:
            values = read_secret(self.ctx.rest, ref.namespace, ref.name)
        except ApiException as exc:
            if exc.status == 404:
                raise SourceError(f'provisioner secret "{ref.namespace}/{ref.name}" named by '
                                  "the StorageClass does not exist; create it or fix the "
                                  "class's csi.storage.k8s.io/provisioner-secret-* "
                                  "parameters") from None
            raise
        self.ctx.recorder.add_secrets(values.values())
        return values

    # ---- intent

    def _record_intent(self, claim: Obj, intent: Intent) -> Obj | None:
        """Protect the source, then record the intent: in the journal, or else on the claim
        (finalizer, name and request in ONE patch: a crash between two writes would leave a
        claim that cannot be finished). A no-op when exactly this intent is recorded already.
        None when the claim is gone."""
        if intent.source is not None:
            self.sources.protect(intent.source)
        journal = self.ctx.journal
        uid = str(claim["metadata"].get("uid"))
        if journal is not None and not in_flight(claim) and journal.record(JournalEntry(
                namespace_of(claim), name_of(claim), uid, intent)):
            current = self.ctx.informers.claims.cache.get(object_key(claim))
            if current is None or current["metadata"].get("uid") != uid:
                self._settle_journal(object_key(claim), current)  # gone before CreateVolume
                return None
            return claim
        with self._lock:
            self._cleared.discard(uid)
        # A strategic merge patch with a uid precondition: it cannot conflict with the PV
        # controller's writes to the claim, so one request records the whole intent.
        return merge_metadata(self.ctx.rest, claim, add_finalizers=[p.FINALIZER_PROVISIONING],
                              annotations=intent.annotations())

    def _clear_intent(self, claim: Obj, intent: Intent | None = None) -> None:
        """Clear the intent, then let the source's protection go (in that order). ``intent``:
        the one just provisioned from, which spares reading the recording back."""
        uid = str(claim["metadata"].get("uid"))
        entry = None
        if self.ctx.journal is not None:  # its removal goes with the journal's next write
            entry = self.ctx.journal.forget(p.pv_name_for(uid))
        with self._lock:
            done = uid in self._cleared  # on the claim already; the cache lags behind
        if in_flight(claim) and not done:
            self._clear_claim(claim, uid)
        recorded = intent or (entry.intent if entry else None) or recorded_intent(claim)
        for source in {source_ref(claim), recorded.source if recorded else None}:
            if source is not None:
                self.queue.add(source_key(source))

    def _clear_claim(self, claim: Obj, uid: str) -> None:
        cleared = merge_metadata(
            self.ctx.rest, claim, remove_finalizers=[p.FINALIZER_PROVISIONING],
            annotations={p.ANN_PROVISIONING: None, p.ANN_PROVISIONING_REQUEST: None})
        if cleared is not None and cleared is not claim:
            with self._lock:
                self._cleared.add(uid)

    def _create_pv(self, claim: Obj, pv: Obj) -> None:
        name = str(pv["metadata"]["name"])
        try:
            self.ctx.rest.create(PV_PATH, pv)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.ctx.rest.get(pv_path(name))  # made by an earlier attempt?
        ref = (existing.get("spec") or {}).get("claimRef") or {}
        handle = ((existing.get("spec") or {}).get("csi") or {}).get("volumeHandle")
        if ref.get("uid") != claim["metadata"]["uid"] or handle != pv["spec"]["csi"][
                "volumeHandle"]:
            message = (f"PV {name} already exists for another claim or volume "
                       f"({ref.get('namespace')}/{ref.get('name')}, {handle})")
            self.ctx.recorder.warning(claim, "ProvisioningFailed", message)
            raise ProvisionFailed(message)

    # ---- failures

    def _failed(self, claim: Obj, labels: tuple[str, str], message: str, *,
                permanent: bool = False) -> NoReturn:
        """Report a failed attempt and raise so the queue retries it. The intent stays: a
        failed call may have left a volume behind, whatever its error said."""
        self.metrics.failed.labels(*labels).inc()
        self.ctx.recorder.warning(claim, "ProvisioningFailed", message)
        self.holdoff.hold(str(claim["metadata"]["uid"]), longest=permanent)
        if permanent:
            raise DoNotRetrySoon(message)
        raise ProvisionFailed(message)

    def _create_failed(self, claim: Obj, labels: tuple[str, str], pv_name: str,
                       class_name: str, exc: grpc.RpcError) -> NoReturn:
        code = rpc_code(exc)
        detail = (f'failed to provision volume {pv_name} with StorageClass "{class_name}": '
                  f"{rpc_error_text(exc)}")
        if code in IN_PROGRESS_CODES:
            # The driver may still be creating it: same name next time, intent kept.
            self._failed(claim, labels, detail)
        elif (code == grpc.StatusCode.RESOURCE_EXHAUSTED
              and annotations_of(claim).get(p.ANN_SELECTED_NODE)):
            self._reschedule(claim, labels, detail)
        else:
            self._failed(claim, labels, detail,
                         permanent=code == grpc.StatusCode.INVALID_ARGUMENT)

    def _reschedule(self, claim: Obj, labels: tuple[str, str], message: str) -> NoReturn:
        if not deleting(claim):
            edit_metadata(self.ctx.rest, claim, annotations={p.ANN_SELECTED_NODE: None})
        self._failed(claim, labels, message + "; the claim goes back to the scheduler to pick "
                     "another node")
