"""A claim deleted while its provisioning was in flight: its volume is deleted, or proven never
made, before the claim may go.

external-provisioner forgets such volumes (kubernetes-csi/external-provisioner#486); issue 10
measured 30 of 30 leaked when the StorageClass went too. The claim's intent (its journal
entry, or its finalizer) stays until ``Unprovisioner.finish`` returns, which it does only when:

- every volume under the claim's CSI name (``pvc-<uid>``), looked up through ListVolumes (our
  driver reports each volume's Cinder name in volume_context), was deleted with DeleteVolume;
- and the listing that found them started once no CreateVolume for that name can still be
  running in the driver: one of ours (``started_create``) or one that an earlier run of the
  loop sent before it was killed or lost its lease (``LoopContext.earlier_calls_end``). A
  listing before then proves nothing: Cinder may still be about to make the volume.

It needs nothing the claim resolved before: the provisioner Secret comes by reference from the
recorded intent (``loop/intent.py``); when that Secret is gone, DeleteVolume is tried without
secrets and an Event says so, and the intent stays until a call succeeds.

A driver that does not report names (another CSI driver, an older one) cannot prove absence by
listing: the recorded request is sent again (CreateVolume is idempotent by name) and the volume
it answers with is deleted. If even that is impossible, the finalizer (or journal entry) stays
and a Warning Event tells the operator what to check before removing it by hand.

Never does the intent go because a StorageClass, Secret, snapshot or node is gone, or
because a CreateVolume failed: a failed call may still have left a volume behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import NoReturn

import grpc

from cinder_csi import CLUSTER_KEY, FEATURE_LISTED_NAMES, LISTED_NAME_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import pvspec
from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import listed_volumes
from cinder_csi.loop.errors import (
    IN_PROGRESS_CODES,
    DoNotRetrySoon,
    ParameterError,
    ProvisionFailed,
    RetryAfter,
    rpc_code,
    rpc_error_text,
)
from cinder_csi.loop.intent import Intent
from cinder_csi.loop.kube.objects import Obj, object_key
from cinder_csi.loop.secrets import deletion_secrets

log = logging.getLogger(__name__)

PAGE_SIZE = 500
# A CreateVolume ends at its deadline in the driver; allow for the cloud request it may have
# in flight then, and for clocks that are not quite in step between processes.
CALL_END_MARGIN = 30.0
REASON = "ProvisioningCancelled"


class Unprovisioner:
    def __init__(self, ctx: LoopContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self._clock = clock
        self._lock = threading.Lock()
        self._creates_end: dict[str, float] = {}  # CSI name -> when our last call surely ended

    def started_create(self, name: str) -> None:
        """Call right before each CreateVolume of ``name``: until that call surely ended in
        the driver, finding no volume by that name proves nothing."""
        ends = self._clock() + self.ctx.csi.timeout + CALL_END_MARGIN
        with self._lock:
            self._creates_end[name] = max(ends, self._creates_end.get(name, 0.0))

    def forget(self, name: str) -> None:
        """The last CreateVolume of ``name`` got the driver's answer: it is not running."""
        with self._lock:
            self._creates_end.pop(name, None)

    def finish(self, claim: Obj, name: str, intent: Intent | None) -> None:
        """Return once no volume named ``name`` exists (deleted, or proven never made);
        raise to be called again later. ``intent``: what was recorded for the claim (``claim``
        may be a stub of one already gone). The caller then clears the intent."""
        calls_end = self._calls_end(name)  # before listing: the listing must start after it
        found = self._named(name)
        if found is None:  # the driver cannot look names up: make it say the id
            found = [self._made_again(claim, intent, name)]
        for volume_id in found:
            self._delete(claim, intent, name, volume_id)
        wait = calls_end - self._clock()
        if wait > 0:
            raise RetryAfter(wait, f"claim {object_key(claim)}: a CreateVolume of {name} sent "
                             "earlier may still be running; looking again once it ended")
        self.ctx.recorder.normal(
            claim, REASON,
            f"claim deleted while its volume {name} was being provisioned: "
            + (f"deleted volume {', '.join(found)}" if found else "no volume was made"))
        self.forget(name)

    def _calls_end(self, name: str) -> float:
        with self._lock:
            ours = self._creates_end.get(name, 0.0)
        return max(ours, self.ctx.earlier_calls_end)

    # ---- finding

    def _named(self, name: str) -> list[str] | None:
        """Ids of this cluster's volumes named ``name``; None when the driver cannot say."""
        if (FEATURE_LISTED_NAMES not in self.ctx.csi.features()
                or RPC.LIST_VOLUMES not in self.ctx.capabilities.get()):
            return None
        found = []
        for entry in listed_volumes(self.ctx.csi, page_size=PAGE_SIZE, stop=self.ctx.stop):
            context = entry.volume.volume_context
            if context.get(LISTED_NAME_KEY) != name:
                continue
            tag = context.get(CLUSTER_KEY)
            if tag is not None and tag != self.ctx.cluster:
                log.warning("volume %s is named %s but belongs to cluster %r; not ours",
                            entry.volume.volume_id, name, tag)
                continue
            found.append(str(entry.volume.volume_id))
        if self.ctx.stop.is_set():  # a cut-short listing proves nothing
            raise RetryAfter(1.0, "stopping")
        return found

    def _made_again(self, claim: Obj, intent: Intent | None, name: str) -> str:
        if intent is None:
            self._cannot_prove(claim, name, "the claim carries no recorded request to send "
                               "again (it was recorded by an older version)")
        self.started_create(name)
        try:
            response = self.ctx.csi.create_volume(
                intent.request_with(self._secrets(claim, intent, name)))
        except grpc.RpcError as exc:
            if rpc_code(exc) in IN_PROGRESS_CODES:
                raise ProvisionFailed(f"CreateVolume {name}: {rpc_error_text(exc)}") from None
            self._cannot_prove(claim, name, f"CreateVolume answered {rpc_error_text(exc)}")
        return str(response.volume.volume_id)

    def _cannot_prove(self, claim: Obj, name: str, why: str) -> NoReturn:
        message = (f"cannot tell whether volume {name} of this deleted claim exists: the driver "
                   f"does not report volume names in ListVolumes and {why}. Check the storage "
                   f"backend for a volume named {name}, delete it if present, then remove the "
                   + (f"finalizer {', '.join(claim['metadata']['finalizers'])} from the claim"
                      if claim["metadata"].get("finalizers") else
                      f"key {name} from the provisioning journal (ConfigMap "
                      f"{self._journal_name()})") + " by hand")
        self.ctx.recorder.warning(claim, "ProvisioningFailed", message)
        raise DoNotRetrySoon(message)

    def _journal_name(self) -> str:
        journal = self.ctx.journal
        return f"{journal.namespace}/{journal.name}" if journal is not None else "none"

    # ---- deleting

    def _delete(self, claim: Obj, intent: Intent | None, name: str, volume_id: str) -> None:
        secrets = self._secrets(claim, intent, name)
        try:
            self.ctx.csi.delete_volume(
                csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=secrets))
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return
            message = (f"failed to delete volume {volume_id} ({name}) of this claim, deleted "
                       f"while provisioning: {rpc_error_text(exc)}")
            self.ctx.recorder.warning(claim, "VolumeFailedDelete", message)
            raise ProvisionFailed(message) from None
        log.info("claim %s was deleted while provisioning: deleted its volume %s (%s)",
                 object_key(claim), volume_id, name)

    def _secrets(self, claim: Obj, intent: Intent | None, name: str) -> Mapping[str, str]:
        ref = intent.provisioner_secret if intent is not None else self._class_secret(claim,
                                                                                       name)
        return deletion_secrets(self.ctx, claim, ref, name)

    def _class_secret(self, claim: Obj, name: str) -> pvspec.SecretRef | None:
        """An intent of an older version recorded no Secret: the class's, if it still
        exists."""
        class_name = inf.claim_class_name(claim)
        storage_class = self.ctx.informers.classes.cache.get(class_name) if class_name else None
        if storage_class is None:
            return None
        try:
            return pvspec.split_parameters(storage_class.get("parameters") or {}, claim,
                                           name).provisioner_secret
        except ParameterError:
            return None
