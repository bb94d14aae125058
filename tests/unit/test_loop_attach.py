"""cinder_csi.loop.attacher: the external-attacher protocol against fakes."""

from __future__ import annotations

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.attacher import AttachmentController, AttachOptions
from cinder_csi.loop.errors import DoNotRetrySoon, RetryAfter
from cinder_csi.loop.protocol import ANN_VA_NODE_ID, attacher_finalizer
from tests.unit.loop_fakes import (
    DRIVER,
    NODE_ID,
    RPC,
    VOLUME_ID,
    RpcError,
    World,
    csinode,
    pv,
    secret,
    va,
)

FINALIZER = attacher_finalizer(DRIVER)
DELETED = "2026-01-01T00:00:00Z"
Mode = csi_pb2.VolumeCapability.AccessMode


@pytest.fixture
def world() -> World:
    w = World()
    w.add("csinodes", csinode())
    return w


def controller(world: World, **options: object) -> AttachmentController:
    ctl = AttachmentController(world.ctx, AttachOptions(**options))  # type: ignore[arg-type]
    ctl.register()
    return ctl


def attached(world: World, name: str = "va-1") -> dict[str, object]:
    obj = world.get("volumeattachments", name)
    assert obj is not None
    return dict(obj.get("status") or {})


# ---- attach


def test_attach_puts_finalizers_then_publishes_then_reports(world: World) -> None:
    world.add("persistentvolumes", pv(mountOptions=["noatime", "discard"]))
    world.add("volumeattachments", va())
    ctl = controller(world)

    ctl.sync_attach("va-1")

    (request,) = world.csi.calls("ControllerPublishVolume")
    assert request.volume_id == VOLUME_ID
    assert request.node_id == NODE_ID
    assert request.readonly is False
    assert dict(request.volume_context) == {"type": "ssd"}
    assert dict(request.secrets) == {}
    assert request.volume_capability.mount.fs_type == "ext4"
    assert list(request.volume_capability.mount.mount_flags) == ["noatime", "discard"]
    assert request.volume_capability.access_mode.mode == Mode.SINGLE_NODE_WRITER
    pv_obj = world.get("persistentvolumes", "pv-1")
    va_obj = world.get("volumeattachments", "va-1")
    assert pv_obj is not None and va_obj is not None
    assert FINALIZER in pv_obj["metadata"]["finalizers"]
    assert va_obj["metadata"]["finalizers"] == [FINALIZER]
    assert va_obj["metadata"]["annotations"][ANN_VA_NODE_ID] == NODE_ID
    assert va_obj["status"] == {"attached": True, "attachmentMetadata": {"DevicePath": "/dev/vdb"}}
    # The PV finalizer is in place before the VA's, and both before the cloud call.
    order = [p for verb, p, _ in world.rest.calls if verb == "patch"]
    assert order[:2] == ["/api/v1/persistentvolumes/pv-1",
                         "/apis/storage.k8s.io/v1/volumeattachments/va-1"]
    assert world.sample("cinder_csi_attach_total", result="success") == 1
    assert world.rest.events == []


def test_a_stale_cache_copy_does_not_repeat_the_attach(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va())
    ctl = controller(world)
    ctl.sync_attach("va-1")
    # The informer has not yet delivered our own writes: the cache still says "not attached".
    ctl.sync_attach("va-1")
    assert len(world.csi.calls("ControllerPublishVolume")) == 1
    world.sync()
    ctl.sync_attach("va-1")
    assert len(world.csi.calls("ControllerPublishVolume")) == 1
    assert len(ctl.own_writes) == 0


def test_attached_va_is_left_alone_but_its_pv_finalizer_is_healed(world: World) -> None:
    world.add("persistentvolumes", pv())
    obj = va()
    obj["status"] = {"attached": True}
    world.add("volumeattachments", obj)
    ctl = controller(world)

    ctl.sync_attach("va-1")

    assert world.csi.calls("ControllerPublishVolume") == []
    pv_obj = world.get("persistentvolumes", "pv-1")
    assert pv_obj is not None and pv_obj["metadata"]["finalizers"] == [FINALIZER]


def test_readonly_only_with_publish_readonly_capability(world: World) -> None:
    world.add("persistentvolumes", pv(csi={"readOnly": True}, accessModes=["ReadOnlyMany"]))
    world.add("volumeattachments", va())
    controller(world).sync_attach("va-1")
    (request,) = world.csi.calls("ControllerPublishVolume")
    assert request.readonly is False
    assert request.volume_capability.access_mode.mode == Mode.MULTI_NODE_READER_ONLY

    other = World(caps={RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.PUBLISH_READONLY,
                        RPC.SINGLE_NODE_MULTI_WRITER})
    other.add("csinodes", csinode())
    other.add("persistentvolumes", pv(csi={"readOnly": True}))
    other.add("volumeattachments", va())
    controller(other).sync_attach("va-1")
    (request,) = other.csi.calls("ControllerPublishVolume")
    assert request.readonly is True
    assert request.volume_capability.access_mode.mode == Mode.SINGLE_NODE_MULTI_WRITER


def test_publish_secrets_are_passed_and_never_shown(world: World) -> None:
    world.add("persistentvolumes", pv(csi={"controllerPublishSecretRef": {
        "name": "creds", "namespace": "kube-system"}}))
    world.rest.put("/api/v1/namespaces/kube-system/secrets/creds",
                   secret("creds", "kube-system", password="hunter2-very-secret"))
    world.add("volumeattachments", va())
    world.csi.errors["ControllerPublishVolume"] = [
        RpcError(grpc.StatusCode.PERMISSION_DENIED, "password hunter2-very-secret refused")]
    ctl = controller(world)

    with pytest.raises(RetryAfter):
        ctl.sync_attach("va-1")

    (request,) = world.csi.calls("ControllerPublishVolume")
    assert dict(request.secrets) == {"password": "hunter2-very-secret"}
    error = attached(world)["attachError"]
    assert isinstance(error, dict)
    assert "hunter2" not in error["message"] and "***" in error["message"]
    assert all("hunter2" not in e["message"] for e in world.rest.events)


def test_failure_is_recorded_with_one_event_per_distinct_message(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va())
    world.csi.errors["ControllerPublishVolume"] = [
        RpcError(grpc.StatusCode.FAILED_PRECONDITION, "attached elsewhere"),
        RpcError(grpc.StatusCode.FAILED_PRECONDITION, "attached elsewhere"),
        RpcError(grpc.StatusCode.INTERNAL, "nova exploded"),
    ]
    ctl = controller(world)

    delays = []
    for _ in range(3):
        with pytest.raises(RetryAfter) as caught:
            ctl.sync_attach("va-1")
        delays.append(caught.value.delay)
        world.sync()

    assert delays == [1.0, 2.0, 4.0]  # the queue's exponential backoff
    error = attached(world)["attachError"]
    assert isinstance(error, dict)
    assert error["message"] == "rpc error: code = Internal desc = nova exploded"
    assert error["time"].endswith("Z")
    assert world.rest.event_reasons() == [("Warning", "FailedAttachVolume")] * 2
    assert world.sample("cinder_csi_attach_total", result="failure") == 3

    ctl.sync_attach("va-1")  # the driver recovers: attached, error cleared
    assert attached(world) == {"attached": True,
                               "attachmentMetadata": {"DevicePath": "/dev/vdb"}}


def test_maybe_in_progress_errors_come_back_sooner(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va())
    ctl = controller(world, in_progress_retry_cap=2.0)
    for _ in range(4):
        ctl.attach_queue.backoff.when("va-1")  # as if it had failed a few times already
    world.csi.errors["ControllerPublishVolume"] = [
        RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "still attaching")]
    with pytest.raises(RetryAfter) as caught:
        ctl.sync_attach("va-1")
    assert caught.value.delay == 2.0


def test_pv_being_deleted_is_refused(world: World) -> None:
    world.add("persistentvolumes", pv(**{}) | {
        "metadata": {"name": "pv-1", "deletionTimestamp": DELETED, "finalizers": ["x"]}})
    world.add("volumeattachments", va())
    with pytest.raises(RetryAfter):
        controller(world).sync_attach("va-1")
    assert world.csi.calls("ControllerPublishVolume") == []
    error = attached(world)["attachError"]
    assert isinstance(error, dict) and "marked for deletion" in error["message"]


def test_inline_volumes_are_refused_for_good(world: World) -> None:
    obj = va()
    obj["spec"]["source"] = {"inlineVolumeSpec": {"csi": {"driver": DRIVER,
                                                          "volumeHandle": VOLUME_ID}}}
    world.add("volumeattachments", obj)
    with pytest.raises(DoNotRetrySoon):
        controller(world).sync_attach("va-1")
    error = attached(world)["attachError"]
    assert isinstance(error, dict) and error["message"] == "inline volumes are not supported"


def test_attach_needs_the_csinode_and_does_not_trust_the_annotation(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va(node="node-2",
                                      annotations={ANN_VA_NODE_ID: "old-server"}))
    with pytest.raises(RetryAfter):
        controller(world).sync_attach("va-1")
    assert world.csi.calls("ControllerPublishVolume") == []
    error = attached(world)["attachError"]
    assert isinstance(error, dict) and "CSINode node-2 not found" in error["message"]


def test_other_attachers_are_ignored(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va(attacher="other.csi"))
    ctl = controller(world)
    world.informers.attachments.added(world.informers.attachments.cache.get("va-1") or {})
    assert len(ctl.attach_queue) == 0
    ctl.sync_attach("va-1")
    assert world.csi.requests == []


# ---- detach


def deleting_va(world: World, **kw: object) -> None:
    obj = va(**kw)  # type: ignore[arg-type]
    obj["metadata"].update(deletionTimestamp=DELETED, finalizers=[FINALIZER])
    obj["metadata"].setdefault("annotations", {})[ANN_VA_NODE_ID] = NODE_ID
    obj["status"] = {"attached": True, "attachmentMetadata": {"DevicePath": "/dev/vdb"}}
    world.add("volumeattachments", obj)


def test_detach_unpublishes_clears_status_then_drops_the_finalizer(world: World) -> None:
    world.add("persistentvolumes", pv() | {"metadata": {"name": "pv-1",
                                                        "finalizers": [FINALIZER]}})
    deleting_va(world)
    ctl = controller(world)

    ctl.sync_detach("va-1")

    (request,) = world.csi.calls("ControllerUnpublishVolume")
    assert (request.volume_id, request.node_id) == (VOLUME_ID, NODE_ID)
    path = "/apis/storage.k8s.io/v1/volumeattachments/va-1"
    status_patch, finalizer_patch = world.rest.patches(path + "/status"), world.rest.patches(path)
    assert status_patch == [{"status": {"attached": False, "attachmentMetadata": None,
                                        "detachError": None}}]
    assert finalizer_patch == [{"metadata": {"$deleteFromPrimitiveList/finalizers":
                                             [FINALIZER]}}]
    assert world.get("volumeattachments", "va-1") is None  # its last finalizer went
    assert world.sample("cinder_csi_detach_total", result="success") == 1
    # ... and the PV is checked for its finalizer.
    world.sync()
    assert ctl.pv_queue.get(timeout=0) == "pv-1"


def test_detach_of_a_node_without_csinode_uses_the_annotation(world: World) -> None:
    world.add("persistentvolumes", pv())
    deleting_va(world, node="gone-node")
    controller(world).sync_detach("va-1")
    (request,) = world.csi.calls("ControllerUnpublishVolume")
    assert request.node_id == NODE_ID
    assert world.get("volumeattachments", "va-1") is None


def test_detach_not_found_means_already_detached(world: World) -> None:
    world.add("persistentvolumes", pv())
    deleting_va(world)
    world.csi.errors["ControllerUnpublishVolume"] = [RpcError(grpc.StatusCode.NOT_FOUND)]
    controller(world).sync_detach("va-1")
    assert world.get("volumeattachments", "va-1") is None


def test_detach_failure_keeps_the_finalizer_and_says_why(world: World) -> None:
    world.add("persistentvolumes", pv())
    deleting_va(world)
    world.csi.errors["ControllerUnpublishVolume"] = [
        RpcError(grpc.StatusCode.UNAVAILABLE, "nova is down")]
    with pytest.raises(RetryAfter):
        controller(world).sync_detach("va-1")
    obj = world.get("volumeattachments", "va-1")
    assert obj is not None and obj["metadata"]["finalizers"] == [FINALIZER]
    assert obj["status"]["attached"] is True
    assert obj["status"]["detachError"]["message"] == \
        "rpc error: code = Unavailable desc = nova is down"
    assert world.rest.event_reasons() == [("Warning", "FailedDetachVolume")]


def test_detach_without_our_finalizer_does_nothing(world: World) -> None:
    world.add("persistentvolumes", pv())
    obj = va()
    obj["metadata"].update(deletionTimestamp=DELETED, finalizers=["someone-else"])
    world.add("volumeattachments", obj)
    controller(world).sync_detach("va-1")
    assert world.csi.requests == []


# ---- routing and the PV finalizer


def test_events_route_by_deletion_timestamp_and_skip_our_error_writes(world: World) -> None:
    world.add("persistentvolumes", pv())
    ctl = controller(world)
    plain, gone = va("a"), va("b")
    gone["metadata"]["deletionTimestamp"] = DELETED
    world.informers.attachments.added(plain)
    world.informers.attachments.added(gone)
    assert ctl.attach_queue.get(timeout=0) == "a"
    assert ctl.detach_queue.get(timeout=0) == "b"
    ctl.attach_queue.done("a")
    old = va("a", resourceVersion="1")
    new = va("a", resourceVersion="2")
    new["status"]["attachError"] = {"message": "x", "time": DELETED}
    world.informers.attachments.updated(old, new)
    assert len(ctl.attach_queue) == 0
    world.informers.attachments.updated(old, va("a", resourceVersion="1"))  # a resync
    assert len(ctl.attach_queue) == 1


def test_pv_finalizer_goes_when_no_attachment_names_the_pv(world: World) -> None:
    world.add("persistentvolumes", pv() | {"metadata": {"name": "pv-1",
                                                        "finalizers": [FINALIZER, "keep"]}})
    world.add("volumeattachments", va())
    ctl = controller(world)
    ctl.sync_pv("pv-1")
    pv_obj = world.get("persistentvolumes", "pv-1")
    assert pv_obj is not None and FINALIZER in pv_obj["metadata"]["finalizers"]

    del world.rest.objects["/apis/storage.k8s.io/v1/volumeattachments/va-1"]
    world.sync()
    ctl.sync_pv("pv-1")
    pv_obj = world.get("persistentvolumes", "pv-1")
    assert pv_obj is not None and pv_obj["metadata"]["finalizers"] == ["keep"]


def test_pv_finalizer_removal_is_guarded_by_resource_version(world: World) -> None:
    world.add("persistentvolumes", pv() | {"metadata": {"name": "pv-1",
                                                        "finalizers": [FINALIZER]}})
    ctl = controller(world)
    # The server moved on (say a new VA's attach touched the PV): our cache is stale.
    world.rest.put("/api/v1/persistentvolumes/pv-1",
                   pv() | {"metadata": {"name": "pv-1", "finalizers": [FINALIZER]}})
    with pytest.raises(Exception, match="409"):
        ctl.sync_pv("pv-1")


def test_a_pv_that_lost_its_finalizer_brings_its_attachments_back(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("volumeattachments", va())
    ctl = controller(world)
    world.informers.volumes.added(world.informers.volumes.cache.get("pv-1") or {})
    assert ctl.attach_queue.get(timeout=0) == "va-1"


def test_csinode_registration_retries_waiting_attachments(world: World) -> None:
    world.add("volumeattachments", va(node="node-2"))
    ctl = controller(world)
    world.informers.csi_nodes.added(csinode("node-2"))
    assert ctl.attach_queue.get(timeout=0) == "va-1"


# ---- reconcile


def test_reconcile_marks_lost_attachments_detached_and_requeues_them(world: World) -> None:
    world.add("persistentvolumes", pv())
    world.add("persistentvolumes", pv("pv-2", handle="vol-2"))
    for name, pv_name in (("va-1", "pv-1"), ("va-2", "pv-2")):
        obj = va(name, pv_name=pv_name)
        obj["status"] = {"attached": True, "attachmentMetadata": {"DevicePath": "/dev/vdb"}}
        world.add("volumeattachments", obj)
    world.csi.published("vol-0")
    world.csi.published("vol-2", "someone", NODE_ID)
    world.csi.published(VOLUME_ID, "another-node")  # pv-1 is attached elsewhere
    world.csi.page = 1
    ctl = controller(world)

    assert ctl.reconcile() == 1

    assert len(world.csi.calls("ListVolumes")) == 3  # paged through
    assert attached(world, "va-1")["attached"] is False
    assert attached(world, "va-2")["attached"] is True
    assert ctl.attach_queue.get(timeout=0) == "va-1"
    assert world.sample("cinder_csi_attach_lost_total") == 1
    world.sync()
    ctl.attach_queue.done("va-1")
    ctl.sync_attach("va-1")  # attached again
    assert attached(world, "va-1")["attached"] is True


def test_reconcile_is_free_without_attached_volumes_or_the_capability(world: World) -> None:
    ctl = controller(world)
    assert ctl.reconcile() == 0
    assert world.csi.calls("ListVolumes") == []
    world.csi.caps.discard(RPC.LIST_VOLUMES_PUBLISHED_NODES)
    blind = World(caps={RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES})
    obj = va()
    obj["status"] = {"attached": True}
    blind.add("volumeattachments", obj)
    assert controller(blind).reconcile() == 0
    assert blind.csi.calls("ListVolumes") == []


def test_reconcile_skips_attachments_that_changed_during_the_listing(world: World) -> None:
    world.add("persistentvolumes", pv())
    obj = va()
    obj["status"] = {"attached": True}
    world.add("volumeattachments", obj)
    ctl = controller(world)

    def touch(method: str) -> None:
        if method == "ListVolumes":
            world.rest.put("/apis/storage.k8s.io/v1/volumeattachments/va-1", obj)
            world.sync()

    world.csi.hook = touch
    assert ctl.reconcile() == 0
