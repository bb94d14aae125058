"""Informer: list + watch one resource type into an indexed local cache, and tell handlers.

Two threads per informer. The *reflector* lists (paged), then watches from the list's
resourceVersion with bookmarks, applies each event to the cache and queues a notification
while holding the cache lock, so the notification order is the cache's order. The
*dispatcher* hands notifications to the handlers one at a time, and queues a resync of the
whole cache every ``resync_period``; a slow handler delays only the dispatcher, never the
watch.

Objects are the raw JSON dicts the server sent (``_preload_content=False``), so unknown
fields survive. Treat them as read-only; copy before changing: decoding
(:class:`~cinder_csi.loop.kube.compact.Compactor`) shares keys, short values and whole equal
subtrees between the objects of one informer, and drops ``metadata.managedFields`` and
kubectl's last-applied-configuration annotation, which the loop never reads.

Exactly-once per resourceVersion: an event whose object has the resourceVersion already in
the cache is dropped (a replay after a reconnect), and the watch always resumes from the last
version applied, so nothing is skipped. After 410 Gone the reflector relists and emits the
difference: adds, updates for changed versions, and deletes for objects that vanished while
it was not looking.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.compact import Compactor
from cinder_csi.loop.kube.objects import Obj, object_key, resource_version
from cinder_csi.loop.kube.throttle import ItemBackoff

log = logging.getLogger(__name__)

IndexFunc = Callable[[Obj], Iterable[str]]
ListFunc = Callable[..., Any]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
BOOKMARK, ERROR = "BOOKMARK", "ERROR"
class EventHandler(Protocol):
    def on_add(self, obj: Obj) -> None: ...
    def on_update(self, old: Obj, new: Obj) -> None: ...
    def on_delete(self, obj: Obj) -> None: ...


@dataclass(frozen=True)
class Handlers:
    """An :class:`EventHandler` from plain functions; any of them may be left out."""

    on_add_func: Callable[[Obj], None] | None = None
    on_update_func: Callable[[Obj, Obj], None] | None = None
    on_delete_func: Callable[[Obj], None] | None = None

    def on_add(self, obj: Obj) -> None:
        if self.on_add_func is not None:
            self.on_add_func(obj)

    def on_update(self, old: Obj, new: Obj) -> None:
        if self.on_update_func is not None:
            self.on_update_func(old, new)

    def on_delete(self, obj: Obj) -> None:
        if self.on_delete_func is not None:
            self.on_delete_func(obj)


class Cache:
    """Objects by key plus named secondary indexes. Callers hold no lock; each call is atomic."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self.lock = threading.RLock()
        self._items: dict[str, Obj] = {}
        self._indexers = dict(indexers or {})
        # value -> the keys of the objects it indexes: one key as a str, more as a set (most
        # values index one object: a set each would cost 200 bytes per object).
        self._indices: dict[str, dict[str, str | set[str]]] = {n: {} for n in self._indexers}
        # key -> the values it is indexed under: one as a str, more as a tuple.
        self._values: dict[str, dict[str, str | tuple[str, ...]]] = {
            n: {} for n in self._indexers}

    # ---- reads

    def get(self, key: str) -> Obj | None:
        with self.lock:
            return self._items.get(key)

    def get_by_name(self, namespace: str | None, name: str) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace else name)

    def objects(self) -> list[Obj]:
        with self.lock:
            return list(self._items.values())

    def keys(self) -> list[str]:
        with self.lock:
            return list(self._items)

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)

    def index_keys(self, index: str, value: str) -> list[str]:
        with self.lock:
            return self._members(index, value)

    def by_index(self, index: str, value: str) -> list[Obj]:
        with self.lock:
            return [self._items[k] for k in self._members(index, value)]

    def _members(self, index: str, value: str) -> list[str]:
        members = self._indices[index].get(value)
        if members is None:
            return []
        return [members] if members.__class__ is str else sorted(members)

    def index_values(self, index: str) -> list[str]:
        with self.lock:
            return list(self._indices[index])

    # ---- writes: the informer's own. A controller that wrote here would make the matching
    # watch event look like a replay, and handlers would never see it.

    def put(self, key: str, obj: Obj) -> Obj | None:
        with self.lock:
            old = self._items.get(key)
            self._items[key] = obj
            self._reindex(key, obj)
            return old

    def pop(self, key: str) -> Obj | None:
        with self.lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._reindex(key, None)
            return old

    def _reindex(self, key: str, obj: Obj | None) -> None:
        for name, func in self._indexers.items():
            index = self._indices[name]
            before = self._values[name].pop(key, ())
            for value in (before,) if before.__class__ is str else before:
                members = index.get(value)
                if members is None:
                    continue
                if members.__class__ is str:
                    if members == key:
                        del index[value]
                else:
                    assert isinstance(members, set)
                    members.discard(key)
                    if len(members) == 1:
                        index[value] = members.pop()
            if obj is None:
                continue
            values = tuple(dict.fromkeys(func(obj)))
            if values:
                self._values[name][key] = values[0] if len(values) == 1 else values
                for value in values:
                    members = index.get(value)
                    if members is None:
                        index[value] = key
                    elif members.__class__ is str:
                        if members != key:
                            index[value] = {members, key}
                    else:
                        assert isinstance(members, set)
                        members.add(key)


@dataclass(frozen=True)
class _Note:
    kind: str  # ADDED / MODIFIED / DELETED
    old: Obj | None
    new: Obj
    resync: bool = False


_SYNCED = object()
_STOP = object()


class _Gone(Exception):
    """The server no longer has our resourceVersion: relist."""


class _WatchFailed(Exception):
    """An ERROR event other than 410."""


class Informer:
    """List+watch of one resource type; see the module docstring for the guarantees.

    ``list_func`` is ``KubeRest.lister(path)`` (or anything taking the keywords of the
    generated client's list methods); it is called with ``_preload_content=False`` for both
    the list and the watch, and answers an unread ``urllib3`` response.
    """

    def __init__(
        self,
        name: str,
        list_func: ListFunc,
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        resync_period: float = 0.0,
        page_size: int = 500,
        watch_timeout: int = 300,
        request_timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.name = name
        self.cache = Cache(indexers)
        self._list = list_func
        self._resync_period = resync_period
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._backoff = ItemBackoff(backoff_base, backoff_cap)
        self._decoder = json.JSONDecoder(object_pairs_hook=Compactor())
        self._handlers: list[EventHandler] = []
        self._notes: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._rv = ""
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        self._progress = False  # the last watch delivered events (even if it then broke)
        self._threads: list[threading.Thread] = []
        self.relists = 0  # how many times the reflector listed (1 = initial list only)

    # ---- public

    def add_handler(self, handler: EventHandler) -> None:
        if self._threads:
            raise RuntimeError("add handlers before start(); a late handler would miss objects")
        self._handlers.append(handler)

    def start(self) -> None:
        if self._threads:
            return
        self._threads = [
            threading.Thread(target=self._reflect, name=f"informer-{self.name}", daemon=True),
            threading.Thread(target=self._dispatch, name=f"dispatch-{self.name}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop both threads; True when they ended within ``timeout``."""
        self._stop.set()
        self._notes.put(_STOP)
        self._abort_watch()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def has_synced(self) -> bool:
        """True once handlers have been given every object of the first list."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion the cache is known to be current at."""
        return self._rv

    # ---- reflector

    def _reflect(self) -> None:
        need_list = True
        gone_before = False
        while not self._stop.is_set():
            gone = False
            self._progress = False
            level, why = logging.WARNING, ""
            try:
                if need_list:
                    self._list_and_replace()
                    need_list = False
                if self._watch():
                    self._backoff.forget(self.name)
                    gone_before = False
                    continue
                level, why = logging.DEBUG, "watch ended at once"
            except _Gone:
                log.info("%s: resourceVersion %s is gone; relisting", self.name, self._rv)
                need_list = gone = True
            except ApiException as exc:
                need_list = need_list or exc.status == 410
                why = f"list/watch failed: {exc.status} {exc.reason}"
            except urllib3.exceptions.ProtocolError as exc:
                # A cut connection (API server restart, load balancer): routine, resume.
                level, why = logging.INFO, f"watch connection broke: {exc}"
            except (_WatchFailed, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                why = f"list/watch failed: {exc}"
            if self._stop.is_set():
                return
            # Relist at once after a 410, but back off if the fresh watch is gone again.
            # A watch that delivered events before it broke resumes at once: the sooner it
            # is back, the less history the server must still hold for it.
            if (gone and not gone_before) or self._progress:
                delay = 0.0
                self._backoff.forget(self.name)
            else:
                delay = self._backoff.when(self.name)
            gone_before = gone
            if why:
                log.log(level, "%s: %s; retry in %.1fs", self.name, why, delay)
            if delay > 0:
                self._stop.wait(delay)

    def _list_and_replace(self) -> None:
        items: list[Obj] = []
        token: str | None = None
        rv = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size}
            if token:
                kwargs["_continue"] = token
            body = self._read_json(self._list(
                _preload_content=False, _request_timeout=self._request_timeout, **kwargs
            ))
            meta = body.get("metadata") or {}
            kind = str(body.get("kind", ""))
            item_kind = sys.intern(kind[: -len("List")]) if kind.endswith("List") else None
            api_version = body.get("apiVersion")
            for item in body.get("items") or []:
                # List items carry no kind/apiVersion; add them so every cached object looks
                # like a watched one (Events and owner references need them).
                if item_kind:
                    item.setdefault("kind", item_kind)
                if api_version:
                    item.setdefault("apiVersion", api_version)
                items.append(item)
            rv = str(meta.get("resourceVersion") or rv)
            token = meta.get("continue") or None
            if not token or self._stop.is_set():
                break
        self._replace(items, rv)
        self.relists += 1

    def _replace(self, items: list[Obj], rv: str) -> None:
        fresh = {object_key(obj): obj for obj in items}
        with self.cache.lock:
            for key, obj in fresh.items():
                old = self.cache.get(key)
                if old is None:
                    self.cache.put(key, obj)
                    self._notes.put(_Note(ADDED, None, obj))
                elif resource_version(old) != resource_version(obj):
                    self.cache.put(key, obj)
                    self._notes.put(_Note(MODIFIED, old, obj))
                # same version: handlers already saw exactly this object
            for key in set(self.cache.keys()) - fresh.keys():
                vanished = self.cache.pop(key)
                if vanished is not None:
                    self._notes.put(_Note(DELETED, vanished, vanished))
            self._rv = rv
        if not self._synced.is_set():
            self._notes.put(_SYNCED)

    def _watch(self) -> bool:
        """One watch request; True if it did useful work (so no backoff before the next)."""
        started = time.monotonic()
        timeout = int(self._watch_timeout * (1 + random.random()))  # spread reconnects
        resp = self._list(
            watch=True,
            resource_version=self._rv,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(self._request_timeout, timeout + 30),
        )
        with self._resp_lock:
            self._resp = resp
        events = 0
        try:
            if self._stop.is_set():
                return True
            for line in _lines(resp):
                if self._stop.is_set():
                    return True
                self._apply(self._decode(line))
                events += 1
        finally:
            self._progress = events > 0
            with self._resp_lock:
                self._resp = None
            # Close rather than reuse: a cut or aborted stream leaves the socket mid-chunk.
            resp.close()
            resp.release_conn()
        return events > 0 or time.monotonic() - started >= 1.0

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {event!r:.200}")
        if kind == ERROR:
            if obj.get("code") == 410:
                raise _Gone(obj.get("message", "gone"))
            raise _WatchFailed(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = resource_version(obj)
        if kind == BOOKMARK:
            if rv:
                self._rv = rv
            return
        if kind not in (ADDED, MODIFIED, DELETED):
            raise ValueError(f"unknown watch event type {kind!r}")
        key = object_key(obj)
        with self.cache.lock:
            old = self.cache.get(key)
            if kind == DELETED:
                if old is not None:
                    self.cache.pop(key)
                    self._notes.put(_Note(DELETED, old, obj))
            elif old is None:
                self.cache.put(key, obj)
                self._notes.put(_Note(ADDED, None, obj))
            elif resource_version(old) != rv:
                self.cache.put(key, obj)
                self._notes.put(_Note(MODIFIED, old, obj))
            # else: a replay of the version we already have; handlers saw it once.
            if rv:
                self._rv = rv

    def _read_json(self, resp: Any) -> Obj:
        try:
            data: Obj = self._decode(resp.data)
        finally:
            resp.release_conn()
        return data

    def _decode(self, data: bytes) -> Any:
        return self._decoder.decode(data.decode("utf-8"))

    def _abort_watch(self) -> None:
        """Unblock a reader waiting on an idle watch so stop() is prompt."""
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        try:
            resp.shutdown()
        except (ValueError, RuntimeError, OSError, AttributeError):
            resp.close()

    # ---- dispatcher

    def _dispatch(self) -> None:
        next_resync = time.monotonic() + self._resync_period if self._resync_period > 0 else None
        while not self._stop.is_set():
            timeout = None
            if next_resync is not None:
                timeout = next_resync - time.monotonic()
                if timeout <= 0:
                    self._queue_resync()
                    next_resync = time.monotonic() + self._resync_period
                    continue
            try:
                item = self._notes.get(timeout=timeout)
            except queue.Empty:
                continue
            if item is _STOP or self._stop.is_set():
                return
            if item is _SYNCED:
                self._synced.set()
            elif isinstance(item, _Note):
                self._deliver(item)

    def _queue_resync(self) -> None:
        if not self._synced.is_set():
            return
        with self.cache.lock:
            for obj in self.cache.objects():
                self._notes.put(_Note(MODIFIED, obj, obj, resync=True))

    def _deliver(self, note: _Note) -> None:
        for handler in self._handlers:
            try:
                if note.kind == ADDED:
                    handler.on_add(note.new)
                elif note.kind == MODIFIED:
                    handler.on_update(note.old or note.new, note.new)
                else:
                    handler.on_delete(note.new)
            # A handler is outside code: its bug must not stop the informer or the other
            # handlers, so this one boundary catches everything and logs it with a trace.
            except Exception:
                log.exception("%s: %s handler failed for %s", self.name, note.kind,
                              object_key(note.new))


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a streaming response, as each line arrives."""
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return  # a partial trailing line is an unfinished event; the rewatch resends it
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            if line.strip():
                yield line
