"""The attacher's periodic check against the driver: attachments it no longer reports published.

The attacher hands in the VolumeAttachments it believes attached, each resolved to its volume
and node (a ``Publication``). One paged ListVolumes (when the driver has LIST_VOLUMES and
LIST_VOLUMES_PUBLISHED_NODES) says which of them the driver no longer reports published on
that node. A VolumeAttachment whose resourceVersion moved while the listing ran is left out:
it may have been attached after the driver answered.

It reads the shared informer cache and the driver and writes nothing: the attacher acts on
the answer (counts, logs, re-attaches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import listed_volumes
from cinder_csi.loop.kube.objects import resource_version


@dataclass(frozen=True)
class Publication:
    """An attachment the attacher believes in: which VolumeAttachment, at which version."""

    attachment: str  # the VolumeAttachment's name
    resource_version: str  # its version when it was resolved
    volume_id: str
    node_id: str


class LostAttachments:
    """Finds the attachments the driver no longer reports published (one pass per ``find``)."""

    def __init__(self, ctx: LoopContext, *, page_size: int) -> None:
        self.ctx = ctx
        self.page_size = page_size

    def find(self, attached: Sequence[Publication]) -> list[Publication]:
        """The publications of ``attached`` the driver does not report; [] when it cannot say.

        Raises grpc.RpcError when the driver cannot be asked.
        """
        caps = self.ctx.capabilities.get()
        if RPC.LIST_VOLUMES not in caps or RPC.LIST_VOLUMES_PUBLISHED_NODES not in caps:
            return []
        if not attached:
            return []
        published: dict[str, set[str]] = {}
        for entry in listed_volumes(self.ctx.csi, page_size=self.page_size, stop=self.ctx.stop):
            published.setdefault(entry.volume.volume_id, set()).update(
                entry.status.published_node_ids)
        cache = self.ctx.informers.attachments.cache
        lost = []
        for publication in attached:
            current = cache.get(publication.attachment)
            if current is None or resource_version(current) != publication.resource_version:
                continue  # changed while the driver was listing: its answer may be older
            if publication.node_id not in published.get(publication.volume_id, ()):
                lost.append(publication)
        return lost
