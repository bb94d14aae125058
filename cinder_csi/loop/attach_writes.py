"""The attachment controller's writes to VolumeAttachments and PersistentVolumes.

Patches whose API errors become ``AttemptFailed`` (a 409 conflict is not worth an
attachError), and the marks attaching leaves: the attacher finalizer on the PV, the finalizer
and node-ID annotation on the VA, and the VA's ``status``.
"""

from __future__ import annotations

from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from cinder_csi.loop.attach_common import (
    PV_PATH,
    VA_PATH,
    AttemptFailed,
    api_message,
    finalizers_of,
    meta_of,
    name_of,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.client import MERGE_PATCH, STRATEGIC_MERGE_PATCH
from cinder_csi.loop.kube.informer import Obj
from cinder_csi.loop.protocol import ANN_VA_NODE_ID


class AttachWrites:
    """Patches on behalf of the attachment controller, which owns ``finalizer``."""

    def __init__(self, ctx: LoopContext, finalizer: str) -> None:
        self.ctx = ctx
        self.finalizer = finalizer

    def ensure_pv_finalizer(self, pv: Obj) -> Obj:
        if self.finalizer in finalizers_of(pv):
            return pv
        return self.patch(f"{PV_PATH}/{name_of(pv)}",
                          {"metadata": {"finalizers": [self.finalizer]}},
                          "could not add PersistentVolume finalizer") or pv

    def ensure_va_marks(self, va: Obj, node_id: str) -> Obj:
        meta: dict[str, Any] = {}
        if self.finalizer not in finalizers_of(va):
            meta["finalizers"] = [self.finalizer]
        if (meta_of(va).get("annotations") or {}).get(ANN_VA_NODE_ID) != node_id:
            meta["annotations"] = {ANN_VA_NODE_ID: node_id}
        if not meta:
            return va
        return self.patch(f"{VA_PATH}/{name_of(va)}", {"metadata": meta},
                          "could not save VolumeAttachment") or va

    def mark_attached(self, va: Obj, metadata: dict[str, str]) -> None:
        old = (va.get("status") or {}).get("attachmentMetadata") or {}
        merged: dict[str, Any] = {k: None for k in old if k not in metadata}
        merged.update(metadata)
        status: dict[str, Any] = {"attached": True, "attachError": None}
        if merged:
            status["attachmentMetadata"] = merged
        self.patch_va_status(va, status, "mark attached")

    def patch(self, path: str, body: Obj, what: str, *, missing_ok: bool = False,
              content_type: str = STRATEGIC_MERGE_PATCH) -> Obj | None:
        try:
            return self.ctx.rest.patch(path, body, content_type=content_type)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise AttemptFailed(f"{what}: {api_message(exc)}",
                                record=exc.status != 409) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise AttemptFailed(f"{what}: {api_message(exc)}") from None

    def patch_va_status(self, va: Obj, status: Obj, what: str) -> Obj:
        return self.patch(f"{VA_PATH}/{name_of(va)}/status", {"status": status}, what,
                          content_type=MERGE_PATCH) or va
