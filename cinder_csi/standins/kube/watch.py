"""Watch streams, independent of HTTP: a generator of ``{"type", "object"}`` events.

Semantics follow the real watch cache: no resourceVersion (or "0") starts with a synthetic ADDED
per existing object; an explicit one replays everything after it or ends at once with a 410
ERROR event when it is older than the retained log; an object that starts or stops matching the
selector appears as ADDED or DELETED; bookmarks carry the version the stream has caught up to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.resources import ResourceType
from cinder_csi.standins.kube.selectors import Matcher
from cinder_csi.standins.kube.store import (
    ADDED,
    DELETED,
    MODIFIED,
    Change,
    Store,
    parse_resource_version,
)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_POLL = 0.5  # how often an idle stream looks at its deadline and the stop flag


@dataclass(frozen=True)
class WatchRequest:
    resource: ResourceType
    namespace: str | None
    match: Matcher
    resource_version: str | None = None
    allow_bookmarks: bool = False
    send_initial_events: bool = False
    timeout: float | None = None


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return event("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})


def stream(
    store: Store,
    req: WatchRequest,
    *,
    stop: threading.Event,
    bookmark_interval: float,
) -> Iterator[dict[str, Any]]:
    """Events until the timeout, ``stop`` or store close; ends after a 410 ERROR event."""
    rt = req.resource
    deadline = time.monotonic() + req.timeout if req.timeout else None
    if req.send_initial_events or req.resource_version in (None, "", "0"):
        snapshot = store.list(rt, namespace=req.namespace)
        for obj in snapshot.items:
            if req.match(obj):
                yield event(ADDED, obj)
        last = snapshot.resource_version
        if req.send_initial_events and req.allow_bookmarks:
            yield bookmark(rt, last, initial_end=True)
    else:
        last = parse_resource_version(req.resource_version)
    next_bookmark = time.monotonic() + bookmark_interval
    while not stop.is_set() and not store.closed:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        wait = min(_POLL, next_bookmark - now if req.allow_bookmarks else _POLL)
        if deadline is not None:
            wait = min(wait, deadline - now)
        try:
            changes = store.changes_after(last, max(wait, 0.0))
        except ApiError as exc:
            yield event("ERROR", exc.status())
            return
        for change in changes:
            last = change.rv
            out = _translate(change, req)
            if out is not None:
                yield out
        if req.allow_bookmarks and time.monotonic() >= next_bookmark:
            yield bookmark(rt, last)
            next_bookmark = time.monotonic() + bookmark_interval


def _translate(change: Change, req: WatchRequest) -> dict[str, Any] | None:
    if change.resource is not req.resource:
        return None
    if req.namespace is not None and change.key[0] != req.namespace:
        return None
    if change.type == DELETED:
        return event(DELETED, change.object) if req.match(change.object) else None
    now_matches = req.match(change.object)
    was_matching = (
        change.type == MODIFIED and change.previous is not None and req.match(change.previous)
    )
    if now_matches:
        return event(MODIFIED if was_matching else ADDED, change.object)
    if was_matching:
        return event(DELETED, change.object)
    return None
