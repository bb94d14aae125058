"""The shape every in-process cluster controller shares: store changes -> keys -> reconcile.

Like a real controller, each one maps a change to the keys it affects, de-duplicates them in a
work set and reconciles a key from the current state (level-triggered), so it is correct whatever
order changes arrive in. It reads the store's own change stream, never HTTP.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar

from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.store import Change, Obj, Store

log = logging.getLogger(__name__)

_RETRY_CONFLICT = 0.02  # another writer won; re-read soon
_RETRY_ERROR = 0.5


class Controller:
    name: ClassVar[str] = "controller"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[Hashable, None] = {}
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._sub = store.subscribe()

    # ------------------------------------------------------------ for subclasses

    def _write_status(self, resource: str, name: str, fields: dict[str, Any]) -> None:
        """Set these status fields of one object, a falsy value removing its field; no write
        when they already are so (absent, empty and falsy count as the same)."""

        def change(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            if all((status.get(k) or None) == (v or None) for k, v in fields.items()):
                return False
            for key, value in fields.items():
                if value:
                    status[key] = value
                else:
                    status.pop(key, None)
            return True

        self.store.mutate(resource, name, change, subresource="status")

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        raise NotImplementedError

    def initial_keys(self) -> Iterable[Hashable]:
        return ()

    def reconcile(self, key: Hashable) -> float | None:
        """Bring ``key`` to its desired state; return a delay to look again, or None."""
        raise NotImplementedError

    def install(self) -> None:
        """Hook up anything besides the change stream (admission plugins)."""

    def uninstall(self) -> None:
        pass

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        installed = False
        try:
            self.install()
            installed = True
        finally:
            if not installed:
                self._sub.close()  # nobody will ever read it
        for key in self.initial_keys():
            self._pending[key] = None
        self._thread = threading.Thread(target=self._run, name=f"kube-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._sub.close()
        self.uninstall()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def enqueue(self, key: Hashable, delay: float = 0.0) -> None:
        """Schedule a key from outside the change stream (only from the controller's thread)."""
        heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wait_for_work()
            while self._pending and not self._stop.is_set():
                key = next(iter(self._pending))
                del self._pending[key]
                delay = self._reconcile_one(key)
                if delay is not None:
                    self.enqueue(key, delay)
                self._drain()

    def _wait_for_work(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._pending[heapq.heappop(self._delayed)[2]] = None
        if self._pending:
            self._drain()
            return
        timeout = self._delayed[0][0] - now if self._delayed else 1.0
        change = self._sub.get(timeout=max(0.0, min(timeout, 1.0)))
        if change is not None:
            self._add(change)
        self._drain()

    def _drain(self) -> None:
        while True:
            change = self._sub.get(timeout=0)
            if change is None:
                return
            self._add(change)

    def _add(self, change: Change) -> None:
        for key in self.keys_for(change):
            self._pending[key] = None

    def _reconcile_one(self, key: Hashable) -> float | None:
        try:
            return self.reconcile(key)
        except ApiError as exc:
            if exc.code == 404:
                return None  # the object went away; its deletion is a change of its own
            if exc.code == 409:
                return _RETRY_CONFLICT
            log.warning("%s: reconciling %s failed: %s", self.name, key, exc.message)
            return _RETRY_ERROR
