"""Attach a Cinder volume to a Nova server, and detach it, until both services agree.

Nova's POST only starts an attach; the volume is usable once Cinder lists the attachment for
that server and the volume is ``in-use``. Detach likewise ends when Cinder no longer lists it.
"""

from __future__ import annotations

import logging

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Volume
from cinder_csi.deadline import Deadline
from cinder_csi.waiting import wait_for

log = logging.getLogger(__name__)

DEVICE_PATH_KEY = "DevicePath"  # the publish_context key upstream uses
# Records a read-only publication, so a later publish with another readonly flag is refused.
# No "/" in it: the key goes into a URL path when it is removed.
READONLY_KEY_PREFIX = "cinder-csi-readonly-on-"
# States from which an attach can start or is already under way.
_ATTACHABLE = frozenset({"available", "in-use", "attaching", "reserved"})
# An attach Nova started: "reserved" first, then "attaching"; Cinder lists the attachment
# only once it is attached.
_UNDER_WAY = frozenset({"reserved", "attaching"})
# The longest pause between two looks at an attach or detach under way (the poll starts at
# 0.1 s and backs off to this): a pod waits at most this long after Cinder says "in-use".
# Capped low because an attach takes seconds and each look is one GET.
POLL_MAX_S = 0.4


class Attacher:
    """Attaches a volume to a server through Nova, and detaches it, until Cinder agrees."""

    def __init__(self, cloud: Cloud, *, attach_limit: int | None = None) -> None:
        self.cloud = cloud
        # [BlockStorage] node-volume-attach-limit: the node reports it to the scheduler, and we
        # enforce it too, for COs (and races) that do not count.
        self.attach_limit = attach_limit

    def attach(
        self, volume_id: str, server_id: str, *, readonly: bool, deadline: Deadline
    ) -> dict[str, str]:
        volume = self.cloud.volumes.get(volume_id, deadline)
        server = self.cloud.compute.find_server(server_id, deadline)
        if server is None:
            raise errors.NotFound(f"node {server_id} is not a Nova server of this project")
        if server_id in volume.attached_servers:
            self._check_readonly(volume, server_id, readonly)
            return self._context(self._until_attached(volume_id, server_id, deadline), server_id)
        others = [s for s in volume.attached_servers if s != server_id]
        if others and not volume.multiattach:
            raise errors.FailedPrecondition(
                f"volume {volume_id} is attached to server {others[0]}; it must be detached "
                "there first (is a pod on that node still using it?)"
            )
        if volume.status == "creating":
            volume = self.cloud.volumes.wait_for_status(volume_id, ("available",), deadline)
        if volume.status not in _ATTACHABLE:
            raise errors.FailedPrecondition(
                f"volume {volume_id} cannot be attached while its status is {volume.status!r}"
            )
        self._check_attach_limit(server_id, deadline)
        if readonly:
            self._set_readonly_mark(volume_id, server_id, deadline)
        try:
            self.cloud.compute.attach(server_id, volume_id, deadline)
        except (errors.FailedPrecondition, errors.InvalidArgument) as exc:
            # Nova refuses (400 "already attached to instances") while an attach it accepted
            # earlier (ours before a crash, or another caller's) is still reserved/attaching;
            # Cinder lists the attachment only once it is in-use, Nova lists it from the start.
            if not self._under_way(volume_id, server_id, deadline):
                raise errors.FailedPrecondition(
                    f"Nova refused to attach volume {volume_id} to {server_id}: {exc.message}"
                ) from None
            log.info("attach of %s to %s already under way", volume_id, server_id)
        return self._context(self._until_attached(volume_id, server_id, deadline), server_id)

    def _under_way(self, volume_id: str, server_id: str, deadline: Deadline) -> bool:
        if server_id in self.cloud.volumes.get(volume_id, deadline).attached_servers:
            return True
        return any(a.volume_id == volume_id
                   for a in self.cloud.compute.attachments(server_id, deadline))

    def _check_attach_limit(self, server_id: str, deadline: Deadline) -> None:
        if not self.attach_limit:
            return
        attached = self.cloud.compute.attachments(server_id, deadline)
        if len(attached) >= self.attach_limit:
            raise errors.QuotaExceeded(
                f"node {server_id} already has {len(attached)} volumes attached, the limit "
                f"(node-volume-attach-limit) is {self.attach_limit}; schedule the pod elsewhere"
            )

    def detach(self, volume_id: str, server_id: str, deadline: Deadline) -> None:
        volume = self.cloud.volumes.find(volume_id, deadline)
        if volume is None or server_id not in volume.attached_servers:
            if volume is not None and volume.status in _UNDER_WAY:
                # An attach to this server may still land; wait it out, then detach.
                volume = self._settle(volume_id, deadline)
                if server_id not in volume.attached_servers:
                    return
            else:
                return
        if not self.cloud.compute.detach(server_id, volume_id, deadline):
            self._forget_gone_server(volume, server_id, deadline)
        self._until_detached(volume_id, server_id, deadline)
        if READONLY_KEY_PREFIX + server_id in volume.metadata:
            self._clear_readonly_mark(volume_id, server_id, deadline)

    def _forget_gone_server(self, volume: Volume, server_id: str, deadline: Deadline) -> None:
        """Nova answered 404 to the detach. When the server itself is gone, nothing will ever
        detach on Nova's side, yet Cinder still lists the attachment (Nova's clean-up failed):
        remove Cinder's record, or the detach would wait for its deadline on every retry."""
        if self.cloud.compute.find_server(server_id, deadline) is not None:
            return  # Nova knows the server; its own detach is under way or done
        for attachment in volume.attachments:
            if attachment.server_id == server_id and attachment.attachment_id:
                log.warning(
                    "server %s is gone from Nova but Cinder still lists attachment %s of "
                    "volume %s; removing it in Cinder", server_id, attachment.attachment_id,
                    volume.id,
                )
                self.cloud.volumes.remove_attachment(
                    volume.id, attachment.attachment_id, deadline
                )

    def _until_attached(self, volume_id: str, server_id: str, deadline: Deadline) -> Volume:
        def probe() -> Volume | None:
            volume = self.cloud.volumes.get(volume_id, deadline)
            if volume.status == "in-use" and server_id in volume.attached_servers:
                return volume
            if volume.status in VOLUME_ERROR_STATES:
                raise errors.FailedPrecondition(
                    f"volume {volume_id} went to {volume.status!r} while attaching to {server_id}"
                )
            return None

        return wait_for(probe, deadline, what=f"volume {volume_id} to attach to {server_id}",
                        maximum=POLL_MAX_S)

    def _until_detached(self, volume_id: str, server_id: str, deadline: Deadline) -> None:
        def probe() -> bool | None:
            volume = self.cloud.volumes.find(volume_id, deadline)
            if volume is None:
                return True
            if server_id not in volume.attached_servers and volume.status != "detaching":
                return True
            if volume.status in VOLUME_ERROR_STATES:
                raise errors.FailedPrecondition(
                    f"volume {volume_id} went to {volume.status!r} while detaching"
                )
            return None

        wait_for(probe, deadline, what=f"volume {volume_id} to detach from {server_id}",
                 maximum=POLL_MAX_S)

    def _settle(self, volume_id: str, deadline: Deadline) -> Volume:
        return self.cloud.volumes.wait_for_status(
            volume_id, ("available", "in-use"), deadline,
            what=f"volume {volume_id} to finish attaching",
        )

    @staticmethod
    def _context(volume: Volume, server_id: str) -> dict[str, str]:
        for attachment in volume.attachments:
            if attachment.server_id == server_id and attachment.device:
                return {DEVICE_PATH_KEY: attachment.device}
        return {}

    @staticmethod
    def _check_readonly(volume: Volume, server_id: str, readonly: bool) -> None:
        published_readonly = volume.metadata.get(READONLY_KEY_PREFIX + server_id) == "true"
        if published_readonly != readonly:
            raise errors.AlreadyExists(
                f"volume {volume.id} is already published to node {server_id} with "
                f"readonly={str(published_readonly).lower()}; unpublish it first"
            )

    def _set_readonly_mark(self, volume_id: str, server_id: str, deadline: Deadline) -> None:
        self.cloud.volumes.set_metadata(
            volume_id, {READONLY_KEY_PREFIX + server_id: "true"}, deadline
        )

    def _clear_readonly_mark(self, volume_id: str, server_id: str, deadline: Deadline) -> None:
        self.cloud.volumes.delete_metadata(volume_id, READONLY_KEY_PREFIX + server_id, deadline)
