"""Cinder user messages (API 3.3+): what Cinder tells a user about an operation that failed."""

from __future__ import annotations

from cinder_csi.cloud.session import ServiceSession
from cinder_csi.deadline import Deadline

MESSAGES_MICROVERSION = "3.3"


class MessageApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def for_volume(self, volume_id: str, deadline: Deadline) -> list[str]:
        """The user messages Cinder left about a volume, in the order it lists them."""
        resp = self._session.request(
            "GET", "/messages", what=f"messages of volume {volume_id}", deadline=deadline,
            params={"resource_uuid": volume_id}, microversion=MESSAGES_MICROVERSION,
        )
        messages = (resp.body or {}).get("messages") or []
        return [str(m.get("user_message")) for m in messages if m.get("user_message")]
