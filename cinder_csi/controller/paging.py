"""ListVolumes tokens that survive the deletion of the volume they point at.

Cinder pages with a marker (a volume id) and fails when that volume is gone. Our token also
carries the entry's sort key (created_at, id), so a listing whose marker vanished resumes
right after that key instead of failing; the CSI spec asks for exactly that.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cinder_csi.cloud.models import Page, Volume
from cinder_csi.csi.validation import is_uuid
from cinder_csi.errors import InvalidToken

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Token:
    volume_id: str
    created_at: datetime

    def encode(self) -> str:
        raw = json.dumps({"id": self.volume_id, "at": self.created_at.isoformat()})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Token:
        try:
            padded = text + "=" * (-len(text) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            volume_id, at = str(data["id"]), datetime.fromisoformat(str(data["at"]))
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
            volume_id, at = "", None
        # Only what encode() makes: the id goes into a query, the time is compared with
        # Cinder's (aware) times.
        if at is None or at.tzinfo is None or not is_uuid(volume_id):
            shown = text if len(text) <= 80 else text[:60] + "..."
            raise InvalidToken(f"starting_token {shown!r} is not one this driver issued")
        return cls(volume_id, at)

    @classmethod
    def after(cls, volume: Volume) -> Token:
        return cls(volume.id, volume.created_at or _EPOCH)


def sort_key(volume: Volume) -> tuple[datetime, str]:
    return (volume.created_at or _EPOCH, volume.id)


def resume_after(
    token: Token, limit: int, fetch: Callable[[str | None], Page[Volume]]
) -> tuple[list[Volume], Token | None]:
    """The ``limit`` volumes sorted after ``token``, walking Cinder's pages from the start.

    ``fetch(marker)`` returns one page in (created_at, id) order. Only used when the token's
    own marker is gone, so the full walk is rare.
    """
    key = (token.created_at, token.volume_id)
    collected: list[Volume] = []
    marker: str | None = None
    while True:
        page = fetch(marker)
        for volume in page.items:
            if sort_key(volume) > key:
                collected.append(volume)
                if len(collected) > limit:
                    return collected[:limit], Token.after(collected[limit - 1])
        if not page.next_marker:
            return collected, None
        marker = page.next_marker
