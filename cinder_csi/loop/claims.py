"""The claim controller: external-provisioner's provisioning protocol, made crash-safe.

For a claim that names our driver (see ``wants``): resolve the class, its parameters and
secrets, the topology and the data source; record the intent on the claim (finalizer +
annotation naming ``pvc-<uid>``); CreateVolume; create the PV; clear the intent.

The intent is what upstream lacks (external-provisioner#486): a restart resumes every claim
that carries it (CreateVolume is idempotent by name), and a claim deleted mid-way is held by
the finalizer until its PV exists; the PV then goes Released and the volume controller deletes
it per reclaim policy. Nothing leaks.

Errors follow upstream's classes: gRPC codes that may mean "still running" retry with the same
name; RESOURCE_EXHAUSTED with a selected node reschedules (removes ``selected-node``);
INVALID_ARGUMENT and bad parameters retry only at the maximum backoff; anything else is final
and retried with backoff. Each failure is a Warning Event on the claim naming the volume and
what the driver said.

This module holds the handlers, the sync and the provisioning steps. The claim predicates are
in ``claim_predicates``, data sources (clones, snapshots, source protection) in
``datasources``, failure classification, Events and hold-off in ``claim_failures``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter, Histogram

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop import pvspec, topology
from cinder_csi.loop.capabilities import read_secret
from cinder_csi.loop.claim_failures import (
    ClaimFailures,
    ProvisionFailed,
    Reschedule,
    Skip,
    SourceError,
)
from cinder_csi.loop.claim_predicates import (
    in_flight,
    provisioner_of,
    strip_own,
    terminating,
    wants,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.datasources import (
    SOURCE_PREFIX,
    DataSources,
    clone_source_key,
    clone_source_name,
    data_source,
)
from cinder_csi.loop.deletion import (
    annotations_of,
    edit_metadata,
    finalizers_of,
    pv_path,
)
from cinder_csi.loop.kube.informer import Handlers, Obj, object_key
from cinder_csi.loop.kube.workqueue import RetryAfter, WorkQueue

log = logging.getLogger(__name__)

_PROVISIONED_MEMORY = 600.0  # how long a made PV is remembered while binding is pending
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

Cap = csi_pb2.ControllerServiceCapability.RPC.Type


class ProvisionMetrics:
    def __init__(self, ctx: LoopContext) -> None:
        labels = ["class", "source"]
        self.total = Counter("controller_persistentvolumeclaim_provision_total",
                             "Volumes provisioned by the watch loop", labels,
                             registry=ctx.registry)
        self.failed = Counter("controller_persistentvolumeclaim_provision_failed_total",
                              "Failed provisioning attempts", labels, registry=ctx.registry)
        self.duration = Histogram("controller_persistentvolumeclaim_provision_duration_seconds",
                                  "Duration of successful provisioning", labels,
                                  buckets=_DURATION_BUCKETS, registry=ctx.registry)


# ---------------------------------------------------------------- the controller


class ClaimController:
    name = "claims"

    def __init__(self, ctx: LoopContext, *, default_fstype: str = "ext4") -> None:
        self.ctx = ctx
        self.default_fstype = default_fstype
        self.queue = WorkQueue("claims", metrics=ctx.queue_metrics)
        self.metrics = ProvisionMetrics(ctx)
        self.failures = ClaimFailures(ctx, self.metrics.failed, self._clear_intent)
        self.sources = DataSources(ctx)
        self._lock = threading.Lock()
        # Claims whose PV we made and whose binding we have not seen yet (uid -> when), so a
        # sync racing the PV informer does not provision again.
        self._provisioned: dict[str, float] = {}
        self._multi_writer: bool | None = None

    @property
    def _not_before(self) -> dict[str, float]:
        """When each failed claim may be tried again (kept by ``self.failures``)."""
        return self.failures.not_before

    def register(self) -> None:
        self.ctx.informers.claims.add_handler(Handlers(
            on_add_func=self._on_claim,
            on_update_func=self._on_claim_update,
            on_delete_func=self._on_claim_deleted,
        ))

    def run(self) -> None:
        self.queue.start(max(1, self.ctx.workers), self.sync)
        self.ctx.stop.wait()
        self.queue.shutdown()
        self.queue.join(timeout=60)

    # ---- handlers

    def _on_claim(self, claim: Obj) -> None:
        source = clone_source_name(claim)
        if source and (claim.get("spec") or {}).get("volumeName"):
            self.queue.add(clone_source_key(claim["metadata"]["namespace"], source))
        if in_flight(claim) or (
            not (claim.get("spec") or {}).get("volumeName")
            and provisioner_of(claim) == self.ctx.driver
        ):
            self.queue.add(object_key(claim))
        elif p.FINALIZER_CLONE_SOURCE in finalizers_of(claim):
            self.queue.add(SOURCE_PREFIX + object_key(claim))

    def _on_claim_update(self, old: Obj, new: Obj) -> None:
        if old is not new and strip_own(old) == strip_own(new):
            return  # only our own intent changed: the worker that wrote it carries on
        self._on_claim(new)

    def _on_claim_deleted(self, claim: Obj) -> None:
        uid = str(claim["metadata"].get("uid"))
        with self._lock:
            self._provisioned.pop(uid, None)
        self.failures.forget(uid)
        source = clone_source_name(claim)
        if source:
            self.queue.add(clone_source_key(claim["metadata"]["namespace"], source))

    # ---- reconcile

    def sync(self, key: str) -> None:
        if key.startswith(SOURCE_PREFIX):
            self.sources.sync_clone_source(key[len(SOURCE_PREFIX):])
            return
        claim = self.ctx.informers.claims.cache.get(key)
        if claim is None:
            return
        uid = str(claim["metadata"]["uid"])
        pv_name = p.pv_name_for(uid)
        started = in_flight(claim)
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
        # A claim that carries our intent is finished even once terminating; otherwise the
        # usual rules hold (a WaitForFirstConsumer claim sent back to the scheduler waits).
        if not (started and terminating(claim)) and not wants(
                claim, self.ctx.driver, self._class_of(claim)):
            return
        if self._pv_exists(pv_name, claim):
            if started:
                self._clear_intent(claim)
            return
        if not terminating(claim):  # a deleted claim is finished at once, never held off
            wait = self.failures.hold_remaining(uid)
            if wait > 0:
                raise RetryAfter(wait, f"claim {key} failed recently")
        self._provision(claim, pv_name)
        self.failures.forget(uid)

    def _recently_provisioned(self, uid: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for old in [u for u, t in self._provisioned.items() if now - t > _PROVISIONED_MEMORY]:
                del self._provisioned[old]
            return uid in self._provisioned

    def _class_of(self, claim: Obj) -> Obj | None:
        name = inf.claim_class_name(claim)
        return self.ctx.informers.classes.cache.get(name) if name else None

    def _pv_exists(self, pv_name: str, claim: Mapping[str, Any]) -> bool:
        pv = self.ctx.informers.volumes.cache.get(pv_name)
        if pv is None:
            return False
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("uid") != claim["metadata"]["uid"]:
            raise ProvisionFailed(f"PV {pv_name} exists but is bound to another claim "
                                  f"({ref.get('namespace')}/{ref.get('name')})")
        return True

    # ---- provisioning

    def _provision(self, claim: Obj, pv_name: str) -> None:
        class_name = inf.claim_class_name(claim)
        source = data_source(claim)
        labels = (class_name, source["kind"] if source else "")
        began = time.monotonic()
        storage_class = self._class_of(claim)
        try:
            if storage_class is None:
                raise pvspec.ParameterError(
                    f'storageclass.storage.k8s.io "{class_name}" not found')
            if storage_class.get("provisioner") != self.ctx.driver:
                raise Skip()
            request, params, clone_source = self._request(claim, storage_class, pv_name)
        except Skip:
            return
        except pvspec.ParameterError as exc:
            self.failures.failed(claim, labels, f"failed to provision volume {pv_name}: {exc}",
                                 final=True, permanent=True)
            return
        except (SourceError, topology.TopologyError) as exc:
            self.failures.failed(claim, labels, f"failed to provision volume {pv_name}: {exc}",
                                 final=isinstance(exc, SourceError))
            return
        except Reschedule as exc:
            self.failures.reschedule(claim, labels,
                                     f"failed to provision volume {pv_name}: {exc}")
            return

        fresh = self._record_intent(claim, pv_name, clone_source)
        if fresh is None:
            return  # the claim is gone
        claim = fresh
        self.ctx.recorder.normal(
            claim, "Provisioning",
            f'External provisioner is provisioning volume for claim "{object_key(claim)}"')
        try:
            response = self.ctx.csi.create_volume(request)
        except grpc.RpcError as exc:
            self.failures.create_failed(claim, labels, pv_name, class_name, exc)
            return
        volume = pvspec.CreatedVolume.from_csi(response.volume)
        pv = pvspec.build_pv(
            name=pv_name, driver=self.ctx.driver, claim=claim, storage_class=storage_class,
            volume=volume, requested_bytes=request.capacity_range.required_bytes,
            params=params, provisioner_identity=self.ctx.provisioner_identity,
        )
        self._create_pv(claim, pv)
        with self._lock:
            self._provisioned[str(claim["metadata"]["uid"])] = time.monotonic()
        self._clear_intent(claim)
        self.ctx.recorder.normal(claim, "ProvisioningSucceeded",
                                 f"Successfully provisioned volume {pv_name}")
        self.metrics.total.labels(*labels).inc()
        self.metrics.duration.labels(*labels).observe(time.monotonic() - began)
        log.info("claim %s: provisioned %s as volume %s", object_key(claim), pv_name,
                 volume.volume_id)

    def _request(self, claim: Obj, storage_class: Mapping[str, Any], pv_name: str
                 ) -> tuple[csi_pb2.CreateVolumeRequest, pvspec.Parameters, Obj | None]:
        if (claim.get("spec") or {}).get("selector"):
            raise pvspec.ParameterError("claim Selector is not supported")
        params = pvspec.split_parameters(storage_class.get("parameters") or {}, claim, pv_name,
                                         default_fstype=self.default_fstype)
        secrets = self._provisioner_secrets(params)
        requirement = self._topology(claim, storage_class)
        content, clone_source = self.sources.content_source(claim, storage_class)
        request = csi_pb2.CreateVolumeRequest(
            name=pv_name,
            capacity_range=pvspec.capacity_range(claim),
            volume_capabilities=pvspec.capabilities(
                claim, params.fs_type, single_node_multi_writer=self._single_node_multi_writer()),
            parameters=params.csi,
            secrets=secrets,
        )
        if requirement is not None:
            request.accessibility_requirements.CopyFrom(requirement.to_csi())
        if content is not None:
            request.volume_content_source.CopyFrom(content)
        return request, params, clone_source

    def _topology(self, claim: Obj, storage_class: Mapping[str, Any]
                  ) -> topology.Requirement | None:
        selected = annotations_of(claim).get(p.ANN_SELECTED_NODE)
        try:
            if selected and self._node(selected) is None:
                raise Reschedule(f'the selected node "{selected}" no longer exists')
            return topology.requirement(
                self.ctx.driver, claim, storage_class, selected_node=selected,
                csi_node_lookup=self.ctx.informers.csi_nodes.cache.get,
                csi_nodes=self.ctx.informers.csi_nodes.cache.objects,
                node_lookup=self.ctx.informers.nodes.cache.get,
            )
        except (Reschedule, topology.TopologyError):
            if terminating(claim):
                # Only finishing what was started: a volume made earlier is found by name
                # whatever the topology; a new one is deleted right after anyway.
                return None
            raise

    def _single_node_multi_writer(self) -> bool:
        if self._multi_writer is None:
            self._multi_writer = (
                Cap.SINGLE_NODE_MULTI_WRITER in self.ctx.csi.controller_capabilities())
        return self._multi_writer

    def _node(self, name: str) -> Obj | None:
        node = self.ctx.informers.nodes.cache.get(name)
        if node is not None:
            return node
        try:  # the cache may simply lag behind a node that just joined
            return self.ctx.rest.get(f"/api/v1/nodes/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _provisioner_secrets(self, params: pvspec.Parameters) -> dict[str, str]:
        ref = params.provisioner_secret
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

    def _record_intent(self, claim: Obj, pv_name: str, clone_source: Obj | None) -> Obj | None:
        if clone_source is not None and edit_metadata(
                self.ctx.rest, clone_source, add_finalizers=[p.FINALIZER_CLONE_SOURCE]) is None:
            raise ProvisionFailed(f"source claim {object_key(clone_source)} vanished")
        if in_flight(claim):
            return claim
        return edit_metadata(self.ctx.rest, claim, add_finalizers=[p.FINALIZER_PROVISIONING],
                             annotations={p.ANN_PROVISIONING: pv_name})

    def _clear_intent(self, claim: Obj) -> None:
        edit_metadata(self.ctx.rest, claim, remove_finalizers=[p.FINALIZER_PROVISIONING],
                      annotations={p.ANN_PROVISIONING: None})
        source = clone_source_name(claim)
        if source:
            self.queue.add(clone_source_key(claim["metadata"]["namespace"], source))

    def _create_pv(self, claim: Obj, pv: Obj) -> None:
        name = str(pv["metadata"]["name"])
        try:
            self.ctx.rest.create("/api/v1/persistentvolumes", pv)
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
