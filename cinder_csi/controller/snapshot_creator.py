"""Create a Cinder snapshot for a CSI name exactly once, by the rules volumes follow
(create_or_adopt.py): the name is looked up first; a POST still awaiting its answer is
joined, never repeated (pending.py); a snapshot that ended in ``error`` is deleted, and
reported deleted only once it is gone; one found being deleted is waited out, then made anew.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import Snapshot
from cinder_csi.controller.pending import PendingPosts
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

# Wait this long for "available"; after it, answer ready_to_use=false (the snapshotter asks
# again while not ready).
READY_WAIT_S = 60.0
DISCARD_WAIT_S = 30.0


def ready_window(deadline: Deadline, seconds: float) -> Deadline:
    """How long to wait for an object to become ready: at most ``seconds``, and leaving a
    fifth of the call's time to read its status and answer "not ready yet"."""
    return deadline.shorter(min(seconds, deadline.remaining() * 0.8))


class SnapshotCreator:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.pending: PendingPosts[Snapshot] = PendingPosts()

    def ensure(
        self, name: str, source_id: str, *, metadata: Mapping[str, str], force: bool,
        deadline: Deadline,
    ) -> Snapshot:
        snapshot = self._adopt(name, source_id, deadline)
        if snapshot is None:
            if self.cloud.volumes.find(source_id, deadline) is None:
                raise errors.NotFound(f"source volume {source_id} does not exist")
            snapshot, _ = self.pending.run(
                name, lambda answer_by: self.cloud.snapshots.create(
                    volume_id=source_id, name=name, deadline=answer_by, metadata=metadata,
                    force=force,
                ), deadline, what=f"the create of snapshot {name}",
            )
        return self._until_ready(snapshot, deadline)

    def _adopt(self, name: str, source_id: str, deadline: Deadline) -> Snapshot | None:
        existing = self.cloud.snapshots.find_by_name(name, deadline)
        if not existing:
            return None
        snapshot = existing[0]
        if snapshot.volume_id != source_id:
            raise errors.AlreadyExists(
                f"snapshot {name} already exists ({snapshot.id}) of volume "
                f"{snapshot.volume_id}, not of {source_id}"
            )
        if snapshot.status == "deleting":
            self.cloud.snapshots.wait_for_delete(snapshot.id, deadline)
            return None
        if snapshot.status == "error":
            self._fail(snapshot, deleted=self._delete_failed(snapshot, deadline), retry=True)
            return None
        return snapshot

    def _until_ready(self, snapshot: Snapshot, deadline: Deadline) -> Snapshot:
        if snapshot.status == "available":
            return snapshot
        try:
            return self.cloud.snapshots.wait_for_status(
                snapshot.id, "available", ready_window(deadline, READY_WAIT_S)
            )
        except errors.Timeout:
            return self.cloud.snapshots.get(snapshot.id, deadline)  # ready_to_use=false
        except errors.NotFound:
            raise errors.CloudUnavailable(
                f"snapshot {snapshot.name} ({snapshot.id}) was deleted while it was being "
                "created; a retry creates it again"
            ) from None
        except errors.FailedPrecondition:
            self._fail(snapshot, deleted=self._delete_failed(snapshot, deadline), retry=False)
            raise  # not reached: _fail raises

    def _delete_failed(self, snapshot: Snapshot, deadline: Deadline) -> bool:
        try:
            self.cloud.snapshots.delete(snapshot.id, deadline)
            self.cloud.snapshots.wait_for_delete(snapshot.id, deadline.shorter(DISCARD_WAIT_S))
        except errors.CinderCSIError as exc:
            log.error("could not delete failed snapshot %s yet: %s; the next CreateSnapshot "
                      "of %s tries again", snapshot.id, exc, snapshot.name)
            return False
        return True

    @staticmethod
    def _fail(snapshot: Snapshot, *, deleted: bool, retry: bool) -> None:
        """Raise unless a failed snapshot found by a retry is gone (then it is made anew)."""
        if deleted and retry:
            return
        message = f"Cinder could not create snapshot {snapshot.name} ({snapshot.id})"
        if deleted:
            raise errors.CloudUnavailable(message + "; it was deleted, a retry starts clean")
        raise errors.CloudUnavailable(
            message + "; deleting it has not finished yet, a retry finishes it and creates "
            "the snapshot again"
        )
