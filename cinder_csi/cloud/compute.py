"""Nova servers and their volume attachments."""

from __future__ import annotations

from cinder_csi.cloud.models import Server, ServerAttachment
from cinder_csi.cloud.session import ServiceSession, none_if_missing
from cinder_csi.deadline import Deadline

# 2.60 lets Nova attach a multiattach volume to a second server.
MULTIATTACH_MICROVERSION = "2.60"


class ComputeApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def get_server(self, server_id: str, deadline: Deadline) -> Server:
        resp = self._session.request(
            "GET", f"/servers/{server_id}", what=f"server {server_id}", deadline=deadline
        )
        return Server.from_api(resp.body["server"])

    def find_server(self, server_id: str, deadline: Deadline) -> Server | None:
        return none_if_missing(lambda: self.get_server(server_id, deadline))

    def attach(self, server_id: str, volume_id: str, deadline: Deadline) -> ServerAttachment:
        resp = self._session.request(
            "POST", f"/servers/{server_id}/os-volume_attachments",
            what=f"attach volume {volume_id} to server {server_id}", deadline=deadline,
            json={"volumeAttachment": {"volumeId": volume_id}},
            microversion=MULTIATTACH_MICROVERSION,
        )
        return ServerAttachment.from_api(resp.body["volumeAttachment"])

    def detach(self, server_id: str, volume_id: str, deadline: Deadline) -> bool:
        """Ask Nova to detach; False when Nova knows no such attachment (or server)."""
        answer = none_if_missing(lambda: self._session.request(
            "DELETE", f"/servers/{server_id}/os-volume_attachments/{volume_id}",
            what=f"detach volume {volume_id} from server {server_id}", deadline=deadline,
        ))
        return answer is not None

    def attachments(self, server_id: str, deadline: Deadline) -> list[ServerAttachment]:
        resp = self._session.request(
            "GET", f"/servers/{server_id}/os-volume_attachments",
            what=f"volume attachments of server {server_id}", deadline=deadline,
        )
        return [ServerAttachment.from_api(a) for a in resp.body.get("volumeAttachments", ())]
