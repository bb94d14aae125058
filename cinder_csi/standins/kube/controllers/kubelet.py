"""A kubelet for one node, as far as CSI volumes go, plus node-driver-registrar's part.

On start it registers the node plugin (CSINode entry, topology labels and the nodeid
annotation on the Node). For each pod on its node it waits for the VolumeAttachment to be
attached, then calls NodeStageVolume once per volume and NodePublishVolume per pod, marks the pod
Running and records the publish path in the pod annotation ``sandbox.cinder-csi/publish-path-<pv>``.
A pod being deleted is unpublished (and unstaged when no other pod on the node uses the volume)
and then removed. A claim with the FileSystemResizePending condition gets NodeExpandVolume.
While a volume is staged it is listed in ``node.status.volumesInUse``, which is what keeps the
attach/detach controller from detaching a mounted volume.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from cinder_csi.standins.kube import volumes as v
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.csi_node import (
    NodeClient,
    PluginInfo,
    Volume,
    VolumePaths,
    publish_path,
    staging_path,
)
from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.quantity import is_quantity, parse_quantity
from cinder_csi.standins.kube.store import Change, Obj, Store, set_condition

log = logging.getLogger(__name__)

PUBLISH_PATH_ANNOTATION = "sandbox.cinder-csi/publish-path-"
NODE_ID_ANNOTATION = "csi.volume.kubernetes.io/nodeid"
_RETRY_MAX = 5.0


class _NotYet(Exception):
    """Something the pod needs is not there yet; its arrival is a change that brings us back."""


@dataclass
class _Mount:
    volume: Volume
    paths: VolumePaths


class Kubelet(Controller):
    name = "kubelet"

    def __init__(
        self,
        store: Store,
        node: str,
        csi_socket: Path,
        root: Path,
        *,
        rpc_timeout: float = 30.0,
        register_timeout: float = 10.0,
    ) -> None:
        super().__init__(store)
        self.node = node
        self.root = root
        self.client = NodeClient(csi_socket, timeout=rpc_timeout)
        self._register_timeout = register_timeout
        self.info: PluginInfo | None = None
        self._mounts: dict[tuple[str, str], tuple[str, dict[str, _Mount]]] = {}  # pod -> uid, pv
        self._staged: dict[str, _Mount] = {}  # pv name -> staging
        self._failures: dict[Hashable, int] = {}

    # ------------------------------------------------------------ registration

    def install(self) -> None:
        try:
            self.info = self.client.register(self._register_timeout)
        except grpc.RpcError:
            self.client.close()
            raise
        self._register_csinode(self.info)

    def uninstall(self) -> None:
        self.client.close()

    def _register_csinode(self, info: PluginInfo) -> None:
        node = self.store.peek("nodes", self.node)
        if node is None:
            raise ApiError(404, "NotFound", f'nodes "{self.node}" not found')
        entry: Obj = {
            "name": info.driver,
            "nodeID": info.node_id,
            "topologyKeys": sorted(info.topology) or None,
        }
        if info.max_volumes > 0:
            entry["allocatable"] = {"count": info.max_volumes}
        entry = {k: val for k, val in entry.items() if val is not None}
        if self.store.peek("csinodes", self.node) is None:
            self.store.create(
                "csinodes",
                {
                    "metadata": {
                        "name": self.node,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.node,
                                "uid": node["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": {"drivers": []},
                },
            )

        def add_driver(obj: Obj) -> None:
            drivers = [d for d in obj["spec"].get("drivers") or [] if d.get("name") != info.driver]
            obj["spec"]["drivers"] = [*drivers, entry]

        self.store.mutate("csinodes", self.node, add_driver)

        def label(obj: Obj) -> None:
            obj["metadata"].setdefault("labels", {}).update(info.topology)
            ann = obj["metadata"].setdefault("annotations", {})
            ids = json.loads(ann.get(NODE_ID_ANNOTATION, "{}"))
            ids[info.driver] = info.node_id
            ann[NODE_ID_ANNOTATION] = json.dumps(ids, sort_keys=True)

        self.store.mutate("nodes", self.node, label)

    # ------------------------------------------------------------ keys

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        kind = change.resource.kind
        if kind == "Pod":
            nodes = {
                ((o or {}).get("spec") or {}).get("nodeName")
                for o in (change.object, change.previous)
            }
            if self.node in nodes:
                yield change.key
        elif kind in ("VolumeAttachment", "PersistentVolumeClaim", "PersistentVolume"):
            yield from self._my_pods()

    def initial_keys(self) -> Iterable[Hashable]:
        return self._my_pods()

    def _my_pods(self) -> list[Hashable]:
        keys: list[Hashable] = [
            (p["metadata"]["namespace"], p["metadata"]["name"])
            for p in self.store.view("pods")
            if (p.get("spec") or {}).get("nodeName") == self.node
        ]
        return keys + [k for k in self._mounts if k not in keys]

    # ------------------------------------------------------------ reconcile

    def reconcile(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        ns, name = str(key[0]), str(key[1])
        try:
            self._sync(ns, name)
        except _NotYet:
            return None
        except grpc.RpcError as exc:
            tries = self._failures.get(key, 0) + 1
            self._failures[key] = tries
            self._event(ns, name, "FailedMount", f"{exc.code().name}: {exc.details()}")
            return float(min(_RETRY_MAX, 0.1 * 2**tries))
        self._failures.pop(key, None)
        return None

    def _sync(self, ns: str, name: str) -> None:
        pod = self.store.peek("pods", name, namespace=ns)
        uid = self._mounts.get((ns, name), ("", {}))[0]
        if pod is None or pod["metadata"]["uid"] != uid:
            self._teardown(ns, name)  # the pod we mounted for is gone (maybe force-deleted)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node:
            return
        if pod["metadata"].get("deletionTimestamp") or v.pod_phase_terminal(pod):
            self._teardown(ns, name)
            self._finish(pod)
            return
        self._setup(pod)
        self._resize(pod)

    def _volume_for(self, pod: Obj, claim_name: str) -> tuple[Obj, Obj]:
        ns = pod["metadata"]["namespace"]
        claim = self.store.peek("persistentvolumeclaims", claim_name, namespace=ns)
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        pv = self.store.peek("persistentvolumes", volume_name) if volume_name else None
        if claim is None or pv is None or (claim.get("status") or {}).get("phase") != "Bound":
            raise _NotYet()
        return claim, pv

    def _setup(self, pod: Obj) -> None:
        assert self.info is not None
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        mounts = self._mounts.setdefault(key, (meta["uid"], {}))[1]
        for _, claim_name, read_only in v.pod_volumes(pod):
            _, pv = self._volume_for(pod, claim_name)
            vol = Volume.from_pv(pv)
            if vol.driver != self.info.driver:
                raise _NotYet()  # a volume of a driver this kubelet has no plugin for
            if vol.pv_name in mounts:
                continue
            publish_context = self._attached(vol)
            secrets = self._secrets(pv, "nodeStageSecretRef")
            self._mark_in_use(vol, True)
            staging = staging_path(self.root, vol) if self.info.stage_unstage else None
            if staging is not None and vol.pv_name not in self._staged:
                staging.mkdir(parents=True, exist_ok=True)
                self.client.stage(vol, staging, publish_context, secrets)
                self._staged[vol.pv_name] = _Mount(vol, VolumePaths(staging, staging))
            target = publish_path(self.root, vol, meta["uid"])
            target.parent.mkdir(parents=True, exist_ok=True)
            paths = VolumePaths(staging, target)
            self.client.publish(
                vol,
                paths,
                publish_context,
                self._context(pod, vol),
                self._secrets(pv, "nodePublishSecretRef"),
                read_only or vol.read_only,
            )
            mounts[vol.pv_name] = _Mount(vol, paths)
        self._mark_running(pod, mounts)

    def _attached(self, vol: Volume) -> dict[str, str]:
        """The VolumeAttachment's publish context, once attached; {} when none is needed."""
        driver = self.store.peek("csidrivers", vol.driver)
        if driver is not None and (driver.get("spec") or {}).get("attachRequired") is False:
            return {}
        va = self.store.peek(
            "volumeattachments", v.attachment_name(vol.handle, vol.driver, self.node)
        )
        status = (va or {}).get("status") or {}
        if status.get("attached") is not True:
            raise _NotYet()
        return {str(k): str(val) for k, val in (status.get("attachmentMetadata") or {}).items()}

    def _context(self, pod: Obj, vol: Volume) -> dict[str, str]:
        context = dict(vol.attributes)
        driver = self.store.peek("csidrivers", vol.driver)
        if driver is not None and (driver.get("spec") or {}).get("podInfoOnMount"):
            meta = pod["metadata"]
            context.update(
                {
                    "csi.storage.k8s.io/pod.name": meta["name"],
                    "csi.storage.k8s.io/pod.namespace": meta["namespace"],
                    "csi.storage.k8s.io/pod.uid": meta["uid"],
                    "csi.storage.k8s.io/serviceAccount.name": str(
                        (pod.get("spec") or {}).get("serviceAccountName", "default")
                    ),
                    "csi.storage.k8s.io/ephemeral": "false",
                }
            )
        return context

    def _secrets(self, pv: Obj, field: str) -> dict[str, str]:
        ref = (((pv.get("spec") or {}).get("csi") or {}).get(field)) or {}
        if not ref.get("name"):
            return {}
        secret = self.store.peek(
            "secrets", str(ref["name"]), namespace=str(ref.get("namespace", "default"))
        )
        if secret is None:
            raise _NotYet()
        out = {}
        for key, value in (secret.get("data") or {}).items():
            try:
                out[str(key)] = base64.b64decode(str(value)).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not text: kubelet would pass bytes we cannot put in a map<string>
        out.update({str(k): str(val) for k, val in (secret.get("stringData") or {}).items()})
        return out

    def _teardown(self, ns: str, name: str) -> None:
        _, mounts = self._mounts.get((ns, name), ("", {}))
        for pv_name, mount in list(mounts.items()):
            self.client.unpublish(mount.volume, mount.paths.target)
            del mounts[pv_name]
            in_use = any(pv_name in other for _, other in self._mounts.values())
            if not in_use:
                staged = self._staged.get(pv_name)
                if staged is not None and staged.paths.staging is not None:
                    self.client.unstage(staged.volume, staged.paths.staging)
                self._staged.pop(pv_name, None)
                self._mark_in_use(mount.volume, False)
        self._mounts.pop((ns, name), None)

    def _finish(self, pod: Obj) -> None:
        """All volumes are down: report the containers terminated and let the pod go."""
        meta = pod["metadata"]
        now = self.store.now()

        def terminated(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            current = status.get("containerStatuses") or []
            if current and all("terminated" in (c.get("state") or {}) for c in current):
                return False
            status["containerStatuses"] = [
                _container_status(c, now, running=False)
                for c in (obj.get("spec") or {}).get("containers") or []
            ]
            set_condition(status, "Ready", "False", now, "PodCompleted")
            set_condition(status, "ContainersReady", "False", now, "PodCompleted")
            return True

        self.store.mutate(
            "pods", meta["name"], terminated, namespace=meta["namespace"], subresource="status"
        )
        if meta.get("deletionTimestamp"):
            self.store.delete(
                "pods",
                meta["name"],
                namespace=meta["namespace"],
                grace_period=0,
                preconditions={"uid": meta["uid"]},
            )

    def _mark_running(self, pod: Obj, mounts: dict[str, _Mount]) -> None:
        meta = pod["metadata"]
        wanted = {PUBLISH_PATH_ANNOTATION + pv: str(m.paths.target) for pv, m in mounts.items()}
        if any(v.annotations_of(pod).get(k) != path for k, path in wanted.items()):

            def annotate(obj: Obj) -> None:
                obj["metadata"].setdefault("annotations", {}).update(wanted)

            self.store.mutate("pods", meta["name"], annotate, namespace=meta["namespace"])
        now = self.store.now()
        node = self.store.peek("nodes", self.node) or {}
        host_ip = next(
            (
                a.get("address")
                for a in (node.get("status") or {}).get("addresses") or []
                if a.get("type") in ("InternalIP", "Hostname")
            ),
            "127.0.0.1",
        )

        def running(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            if status.get("phase") == "Running":
                return False
            status["phase"] = "Running"
            status.setdefault("startTime", now)
            status["hostIP"] = host_ip
            status["podIP"] = "10.244.0.10"
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
                set_condition(status, kind, "True", now)
            status["containerStatuses"] = [
                _container_status(c, now, running=True)
                for c in (obj.get("spec") or {}).get("containers") or []
            ]
            return True

        self.store.mutate(
            "pods", meta["name"], running, namespace=meta["namespace"], subresource="status"
        )

    def _resize(self, pod: Obj) -> None:
        assert self.info is not None
        meta = pod["metadata"]
        _, mounts = self._mounts.get((meta["namespace"], meta["name"]), ("", {}))
        for _, claim_name, _ in v.pod_volumes(pod):
            claim, pv = self._volume_for(pod, claim_name)
            pending = any(
                c.get("type") == "FileSystemResizePending" and c.get("status") == "True"
                for c in (claim.get("status") or {}).get("conditions") or []
            )
            mount = mounts.get(pv["metadata"]["name"])
            if not pending or mount is None:
                continue
            size = ((pv.get("spec") or {}).get("capacity") or {}).get("storage")
            if not is_quantity(size):
                continue
            if self.info.expand:
                self.client.expand(mount.volume, mount.paths, int(parse_quantity(size)))

            def finished(obj: Obj, size: str = str(size)) -> None:
                status = obj.setdefault("status", {})
                status["capacity"] = {**(status.get("capacity") or {}), "storage": size}
                status["conditions"] = [
                    c
                    for c in status.get("conditions") or []
                    if c.get("type") != "FileSystemResizePending"
                ]
                if not status["conditions"]:
                    del status["conditions"]
                allocated = status.get("allocatedResourceStatuses") or {}
                allocated.pop("storage", None)
                if allocated:
                    status["allocatedResourceStatuses"] = allocated
                else:
                    status.pop("allocatedResourceStatuses", None)

            self.store.mutate(
                "persistentvolumeclaims",
                claim_name,
                finished,
                namespace=meta["namespace"],
                subresource="status",
            )

    def _mark_in_use(self, vol: Volume, in_use: bool) -> None:
        name = v.unique_volume_name(vol.driver, vol.handle)

        def change(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            current = list(status.get("volumesInUse") or [])
            if (name in current) == in_use:
                return False
            current = sorted({*current, name}) if in_use else [n for n in current if n != name]
            if current:
                status["volumesInUse"] = current
            else:
                status.pop("volumesInUse", None)
            return True

        self.store.mutate("nodes", self.node, change, subresource="status")

    def _event(self, ns: str, name: str, reason: str, message: str) -> None:
        pod = self.store.peek("pods", name, namespace=ns)
        if pod is None:
            return
        log.info("kubelet %s: pod %s/%s: %s: %s", self.node, ns, name, reason, message)
        now = self.store.now()
        self.store.create(
            "events",
            {
                "metadata": {"generateName": f"{name}.", "namespace": ns},
                "involvedObject": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": name,
                    "uid": pod["metadata"]["uid"],
                    "apiVersion": "v1",
                },
                "reason": reason,
                "message": message,
                "type": "Warning",
                "source": {"component": "kubelet", "host": self.node},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
            namespace=ns,
        )


def _container_status(container: Obj, now: str, *, running: bool) -> Obj:
    state: Obj = (
        {"running": {"startedAt": now}}
        if running
        else {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
    )
    return {
        "name": container.get("name", ""),
        "image": container.get("image", ""),
        "imageID": "",
        "ready": running,
        "restartCount": 0,
        "started": running,
        "state": state,
    }
