"""Cinder's user messages: why an asynchronous operation failed (API 3.3+, filters from 3.5).

A create that no backend can take ends in ``error`` with nothing in the volume itself to say
why; the reason is only here, as ``<action>:<detail>`` with an event id built from both codes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from . import timefmt

# (code, words) pairs as Cinder's message_field names them.
Part = tuple[str, str]
SCHEDULE_ALLOCATE_VOLUME: Part = ("001", "schedule allocate volume")
EXTEND_VOLUME: Part = ("007", "extend volume")
CREATE_VOLUME_FROM_BACKEND: Part = ("008", "create volume from backend storage")
NO_BACKEND_AVAILABLE: Part = ("003", "Could not find any available weighted backend.")
DRIVER_FAILED_EXTEND: Part = ("010", "Volume Driver failed to extend volume.")
DRIVER_FAILED_CREATE: Part = ("012", "Driver failed to create the volume.")

KEEP_S = 30 * 24 * 3600  # Cinder's message_ttl default: messages are guaranteed 30 days


@dataclass(frozen=True)
class Message:
    id: str
    project_id: str
    resource_uuid: str
    event_id: str
    user_message: str
    request_id: str
    created_at: float
    resource_type: str = "VOLUME"
    message_level: str = "ERROR"

    def view(self, service_url: str) -> dict[str, object]:
        href = f"{service_url}/messages/{self.id}"
        return {
            "id": self.id,
            "event_id": self.event_id,
            "user_message": self.user_message,
            "message_level": self.message_level,
            "created_at": timefmt.cinder(self.created_at),
            "guaranteed_until": timefmt.cinder(self.created_at + KEEP_S),
            "request_id": self.request_id,
            "links": [{"rel": "self", "href": href}, {"rel": "bookmark", "href": href}],
            "resource_type": self.resource_type,
            "resource_uuid": self.resource_uuid,
        }


class MessageBook:
    """Messages per project; not thread-safe, the block store's lock guards it."""

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}

    def add(self, project_id: str, resource_uuid: str, action: Part, detail: Part,
            request_id: str | None) -> Message:
        message = Message(
            id=str(uuid.uuid4()), project_id=project_id, resource_uuid=resource_uuid,
            event_id=f"VOLUME_VOLUME_{action[0]}_{detail[0]}",
            user_message=f"{action[1]}:{detail[1]}",
            request_id=request_id or f"req-{uuid.uuid4()}", created_at=time.time(),
        )
        self._messages[message.id] = message
        return message

    def of_project(self, project_id: str | None) -> list[Message]:
        """Newest first, as Cinder lists them."""
        found = [m for m in self._messages.values()
                 if project_id is None or m.project_id == project_id]
        return sorted(found, key=lambda m: m.created_at, reverse=True)

    def get(self, message_id: str, project_id: str | None) -> Message | None:
        message = self._messages.get(message_id)
        if message is None or (project_id is not None and message.project_id != project_id):
            return None
        return message

    def pop(self, message_id: str, project_id: str | None) -> Message | None:
        message = self.get(message_id, project_id)
        if message is not None:
            del self._messages[message_id]
        return message
