"""Cinder user messages: what Cinder tells a user about an operation that failed."""

from __future__ import annotations

from cinder_csi.cloud.session import ServiceSession
from cinder_csi.deadline import Deadline

# Messages exist from 3.3, but Cinder filters them by resource only from 3.5: earlier it lists
# the whole project's, which would blame one volume's failure on another's message.
MESSAGES_MICROVERSION = "3.5"


class MessageApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def for_volume(self, volume_id: str, deadline: Deadline) -> list[str]:
        """The user messages Cinder left about a volume, oldest first."""
        resp = self._session.request(
            "GET", "/messages", what=f"messages of volume {volume_id}", deadline=deadline,
            params={"resource_uuid": volume_id}, microversion=MESSAGES_MICROVERSION,
        )
        messages = sorted(
            (m for m in (resp.body or {}).get("messages") or ()
             if m.get("resource_uuid") == volume_id and m.get("user_message")),
            key=lambda m: str(m.get("created_at") or ""),
        )
        return [str(m["user_message"]) for m in messages]
