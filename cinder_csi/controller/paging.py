"""ListVolumes tokens that survive the deletion of the volume they point at.

Cinder pages with a marker (a volume id) and fails when that volume is gone. Our token also
carries the entry's sort key (created_at, id), so a listing whose marker vanished resumes
right after that key instead of failing; the CSI spec asks for exactly that. With several
clouds ([Global "name"] sections) the listing walks them in name order and the token names the
cloud it is in; a token without a volume id starts that cloud's first page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cinder_csi.cloud.models import Page, Volume
from cinder_csi.csi.validation import is_uuid, shown
from cinder_csi.errors import InvalidToken

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Token:
    volume_id: str  # "" : the start of ``cloud``
    created_at: datetime
    cloud: str = ""

    def encode(self) -> str:
        data = {"id": self.volume_id, "at": self.created_at.isoformat()}
        if self.cloud:
            data["cloud"] = self.cloud
        raw = json.dumps(data)
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Token:
        try:
            padded = text + "=" * (-len(text) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            volume_id, at = str(data["id"]), datetime.fromisoformat(str(data["at"]))
            cloud = str(data.get("cloud", ""))
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
            volume_id, at, cloud = "", None, ""
        # Only what encode() makes: the id ("" for the start of a cloud) goes into a query,
        # the time is compared with Cinder's (aware) times.
        if at is None or at.tzinfo is None or (volume_id and not is_uuid(volume_id)):
            raise InvalidToken(f"starting_token {shown(text)} is not one this driver issued")
        return cls(volume_id, at, cloud)

    @classmethod
    def after(cls, volume: Volume, cloud: str = "") -> Token:
        return cls(volume.id, volume.created_at or _EPOCH, cloud)

    @classmethod
    def start_of(cls, cloud: str) -> Token:
        return cls("", _EPOCH, cloud)


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


def list_clouds(
    clouds: list[str],
    token: Token | None,
    limit: int,
    list_one: Callable[[str, Token | None, int], tuple[list[Volume], Token | None]],
) -> tuple[list[tuple[str, Volume]], Token | None]:
    """Up to ``limit`` volumes across ``clouds`` (in that order) from ``token`` on.

    ``list_one(cloud, token, limit)`` lists one cloud from a token of that cloud (None: from
    its start) and returns the next token within it, or None when the cloud is done.
    """
    start = token.cloud if token is not None else clouds[0]
    if start not in clouds:
        raise InvalidToken(f"starting_token names cloud {start!r}, which is not configured")
    entries: list[tuple[str, Volume]] = []
    within = token if token is not None and token.volume_id else None
    for index in range(clouds.index(start), len(clouds)):
        cloud = clouds[index]
        volumes, following = list_one(cloud, within, limit - len(entries))
        entries += [(cloud, v) for v in volumes]
        within = None
        if following is not None:
            return entries, following
        if len(entries) >= limit:
            more = index + 1 < len(clouds)
            return entries, Token.start_of(clouds[index + 1]) if more else None
    return entries, None
