"""The provisioning intent: everything the loop resolved for a claim, recorded before CreateVolume.

Where it is recorded: in the provisioning journal (``loop/journal.py``), many claims per
write, or, when the journal cannot be used, on the claim itself as described below. Both are
honoured everywhere.

Crash-safety rule this module exists for: once a claim carries our intent, the loop can finish
it either way — make the PV, or delete the volume — without resolving anything again. The
StorageClass, its Secrets, the VolumeSnapshot or clone source and the selected node may all be
gone by then (deleted while the controller was down: issue 10 measured 30 of 30 volumes leaked
that way).

On the claim, in ONE patch, before the first CreateVolume (``ClaimController._record_intent``):

- ``ANN_PROVISIONING`` = the CSI/PV name (``pvc-<uid>``), which the orphan sweep reads;
- ``ANN_PROVISIONING_REQUEST`` = this ``Intent`` as JSON: the CreateVolume request *without*
  secrets (name, capacity, capabilities, parameters, topology, content source), the class's
  name, reclaim policy and mount options, the fs type, the Secret *references* by operation
  (never values: they are read again when needed), the data source object that a finalizer
  protects meanwhile, and the selected node the topology was computed for;
- ``FINALIZER_PROVISIONING``, so a claim deleted meanwhile stays until its volume is
  accounted for.

A performance change must not split this into two writes, nor write the request after the
CreateVolume call: a crash in between would bring back the leak.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop.kube.objects import annotations_of, object_key
from cinder_csi.loop.pvspec import Parameters, SecretRef

log = logging.getLogger(__name__)

INTENT_VERSION = 1


@dataclass(frozen=True)
class SourceRef:
    """The object a provisioning reads from, protected by a finalizer while it runs."""

    kind: str  # "VolumeSnapshot" or "PersistentVolumeClaim"
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Intent:
    request: csi_pb2.CreateVolumeRequest  # never carries secrets
    storage_class: str
    reclaim_policy: str
    fs_type: str
    mount_options: tuple[str, ...] = ()
    secrets: Mapping[str, SecretRef] = field(default_factory=dict)  # by operation
    source: SourceRef | None = None
    selected_node: str = ""  # the node the topology requirement was computed for

    def __post_init__(self) -> None:
        if self.request.secrets:
            raise ValueError("an intent never records secret values")

    @property
    def pv_name(self) -> str:
        return str(self.request.name)

    @property
    def provisioner_secret(self) -> SecretRef | None:
        return self.secrets.get("provisioner")

    def parameters(self) -> Parameters:
        """The class's parameters as they were taken apart when the intent was recorded."""
        return Parameters(dict(self.request.parameters), self.fs_type, dict(self.secrets))

    def class_facts(self) -> dict[str, Any]:
        """What the PV takes from the StorageClass, as it was when the intent was recorded
        (``pvspec.build_pv`` reads exactly these fields)."""
        facts: dict[str, Any] = {"metadata": {"name": self.storage_class},
                                 "reclaimPolicy": self.reclaim_policy}
        if self.mount_options:
            facts["mountOptions"] = list(self.mount_options)
        return facts

    def request_with(self, secrets: Mapping[str, str]) -> csi_pb2.CreateVolumeRequest:
        """A copy of the request carrying ``secrets`` (values read just now, never stored)."""
        request = csi_pb2.CreateVolumeRequest()
        request.CopyFrom(self.request)
        request.secrets.update(secrets)
        return request

    # ---- the annotation

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": INTENT_VERSION,
            "request": json_format.MessageToDict(self.request,
                                                 preserving_proto_field_name=True),
            "storageClass": self.storage_class,
            "reclaimPolicy": self.reclaim_policy,
            "fsType": self.fs_type,
            "mountOptions": list(self.mount_options),
            "secrets": {op: ref.as_dict() for op, ref in sorted(self.secrets.items())},
            "source": ({"kind": self.source.kind, "namespace": self.source.namespace,
                        "name": self.source.name} if self.source else None),
            "selectedNode": self.selected_node,
        }

    @classmethod
    def from_json(cls, text: str) -> Intent:
        """Raises ValueError for anything but an intent this version wrote."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Any) -> Intent:
        """Raises ValueError (json_format.ParseError for the request) for anything but an
        intent this version wrote."""
        if not isinstance(data, dict) or data.get("version") != INTENT_VERSION:
            raise ValueError(f"not an intent of version {INTENT_VERSION}")
        request = json_format.ParseDict(data.get("request") or {},
                                        csi_pb2.CreateVolumeRequest())
        if not request.name:
            raise ValueError("the recorded request has no name")
        source = data.get("source")
        return cls(
            request=request,
            storage_class=str(data.get("storageClass") or ""),
            reclaim_policy=str(data.get("reclaimPolicy") or "Delete"),
            fs_type=str(data.get("fsType") or ""),
            mount_options=tuple(str(o) for o in data.get("mountOptions") or ()),
            secrets={str(op): SecretRef(str(ref["name"]), str(ref["namespace"]))
                     for op, ref in (data.get("secrets") or {}).items()},
            source=(SourceRef(str(source["kind"]), str(source["namespace"]),
                              str(source["name"])) if source else None),
            selected_node=str(data.get("selectedNode") or ""),
        )

    def annotations(self) -> dict[str, str | None]:
        """The claim annotations that record this intent (with the finalizer, one patch)."""
        return {p.ANN_PROVISIONING: self.pv_name, p.ANN_PROVISIONING_REQUEST: self.to_json()}


def recorded_intent(claim: Mapping[str, Any]) -> Intent | None:
    """The intent recorded on ``claim``; None when there is none, or only the bare name an
    older version recorded (its caller must then resolve what it needs, as that version did).
    """
    text = annotations_of(claim).get(p.ANN_PROVISIONING_REQUEST)
    if not text:
        return None
    try:
        intent = Intent.from_json(text)
    except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
        log.warning("claim %s: unreadable %s annotation (%s); resolving afresh",
                    object_key(claim), p.ANN_PROVISIONING_REQUEST, exc)
        return None
    if intent.pv_name != annotations_of(claim).get(p.ANN_PROVISIONING, intent.pv_name):
        log.warning("claim %s: recorded request names %s, the intent %s; resolving afresh",
                    object_key(claim), intent.pv_name, annotations_of(claim)[p.ANN_PROVISIONING])
        return None
    return intent
