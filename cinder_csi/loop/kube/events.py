"""Kubernetes Events (core/v1) for the objects the controllers work on.

What an operator sees with ``kubectl describe``: ``Normal``/``Warning`` events naming the
object, with repeats folded into one Event whose ``count`` and ``lastTimestamp`` move (a
claim failing every few seconds must not produce thousands of objects). Secret values are
replaced before a message leaves this module, then messages are cut to 1024 bytes.

Recording never raises into the caller and never blocks it on the API: after start(), a
background thread writes Events from a bounded queue and drops (and logs) on overflow, as
client-go does. Before start(), events are written synchronously by the caller's thread.

``deferred`` records an Event to be written only after a delay, unless cancelled first: news
that is stale by the time it would be read ("provisioning started", when provisioning is
already done) costs no API request.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import MERGE_PATCH, KubeRest
from cinder_csi.loop.kube.objects import timestamp

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"

MAX_MESSAGE_BYTES = 1024
MAX_NAME = 253
REDACTED = "***"

_RETRIES = (0.5, 1.0, 2.0)  # pauses between attempts on transient API errors
# Events waiting for the writer. The writer shares the client's rate limit with every worker,
# so while the loop is held by that limit it gets few turns: 1,000 claims at QPS 100 filled a
# 1,000-long queue and lost most ProvisioningSucceeded Events. A record is a few hundred bytes.
QUEUE_SIZE = 20_000
_STOP = object()
_WAKE = object()  # makes the writer look at its deferred events again


class Deferred:
    """A deferred Event; ``cancel()`` before it is due and it is never written."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """An ObjectReference for an object dict (only the fields that are set)."""
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind"),
        "apiVersion": obj.get("apiVersion"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {k: str(v) for k, v in ref.items() if v}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret; longest first so no fragment survives."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def truncate(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


@dataclass(frozen=True)
class _Record:
    ref: dict[str, str]
    type: str
    reason: str
    message: str
    when: datetime
    due: float = 0.0  # monotonic time before which a deferred record is not written
    handle: Deferred | None = None

    @property
    def cancelled(self) -> bool:
        return self.handle is not None and self.handle.cancelled


@dataclass
class _Seen:
    namespace: str
    name: str
    count: int
    last: float  # monotonic time of the last occurrence


class EventRecorder:
    def __init__(
        self,
        rest: KubeRest,
        component: str,
        *,
        host: str | None = None,
        secrets: Iterable[str] = (),
        redactor: Callable[[str], str] | None = None,
        aggregation_window: float = 600.0,
        queue_size: int = QUEUE_SIZE,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_pauses: tuple[float, ...] = _RETRIES,
    ) -> None:
        self.rest = rest
        self.component = component
        self.host = host or socket.gethostname()
        self._secrets: set[str] = {s for s in secrets if s}
        self._redactor = redactor
        self._window = aggregation_window
        self._clock = clock
        self._wall = wall_clock
        self._retry_pauses = retry_pauses
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self._cache_size = cache_size
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._last_suffix = 0
        self._stop = threading.Event()
        self._hurry = threading.Event()  # flushing: deferred records are due now
        self.dropped = 0

    # ---- recording

    def add_secrets(self, values: Iterable[str]) -> None:
        with self._lock:
            self._secrets.update(s for s in values if s)

    def redact(self, text: str, extra: Iterable[str] = ()) -> str:
        with self._lock:
            known = set(self._secrets)
        text = redact(text, known.union(extra))
        return self._redactor(text) if self._redactor is not None else text

    def normal(self, obj: Mapping[str, Any], reason: str, message: str,
               *, secrets: Iterable[str] = ()) -> None:
        self.event(obj, NORMAL, reason, message, secrets=secrets)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str,
                *, secrets: Iterable[str] = ()) -> None:
        self.event(obj, WARNING, reason, message, secrets=secrets)

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
              *, secrets: Iterable[str] = ()) -> None:
        """Record an Event about ``obj`` (a raw object dict). Never raises."""
        self._record(obj, type_, reason, message, secrets, 0.0, None)

    def deferred(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                 *, after: float, secrets: Iterable[str] = ()) -> Deferred:
        """Record an Event to be written ``after`` seconds from now unless the returned handle
        is cancelled first. It keeps the time it was recorded at, so it sorts where it
        happened. Before start() it is written at once, like every other Event."""
        handle = Deferred()
        self._record(obj, type_, reason, message, secrets, self._clock() + after, handle)
        return handle

    def _record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                secrets: Iterable[str], due: float, handle: Deferred | None) -> None:
        ref = object_reference(obj)
        if not ref.get("name"):
            log.warning("event %s about an object without a name dropped", reason)
            return
        record = _Record(ref, type_, reason, truncate(self.redact(message, secrets)),
                         self._wall(), due, handle)
        if self._thread is None:
            self._write(record)
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full; dropped %s %s for %s/%s", type_, reason,
                        ref.get("namespace", ""), ref["name"])

    # ---- lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="event-recorder",
                                            daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event, deferred ones included, has been written (or given
        up on, or cancelled)."""
        self._hurry.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._queue.unfinished_tasks == 0:
                    return True
                time.sleep(0.01)
            return self._queue.unfinished_tasks == 0
        finally:
            self._hurry.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _drain(self) -> None:
        later: list[tuple[float, int, _Record]] = []  # deferred records by due time
        order = itertools.count()
        while True:
            while later and (self._hurry.is_set() or later[0][0] <= self._clock()
                             or later[0][2].cancelled):
                self._finish(heapq.heappop(later)[2])
            timeout = max(0.0, later[0][0] - self._clock()) if later else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            if item is _STOP:
                while later:
                    self._finish(heapq.heappop(later)[2])
                self._queue.task_done()
                return
            if (isinstance(item, _Record) and item.due > self._clock()
                    and not self._hurry.is_set() and not item.cancelled):
                heapq.heappush(later, (item.due, next(order), item))  # done once written
                continue
            if isinstance(item, _Record):
                self._finish(item)
            else:
                self._queue.task_done()

    def _finish(self, record: _Record) -> None:
        """Write a record taken from the queue (unless cancelled), and mark it done."""
        try:
            if not record.cancelled:
                self._write(record)
        finally:
            self._queue.task_done()

    # ---- writing

    def _write(self, record: _Record) -> None:
        ref = record.ref
        key = (ref.get("uid") or f"{ref.get('kind')}/{ref.get('namespace')}/{ref['name']}",
               record.type, record.reason, record.message)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
        if seen is not None and now - seen.last < self._window:
            patch = {"count": seen.count + 1, "lastTimestamp": timestamp(record.when)}
            path = f"/api/v1/namespaces/{seen.namespace}/events/{seen.name}"
            status = self._call(lambda: self.rest.patch(path, patch, content_type=MERGE_PATCH),
                                record)
            if status is None:
                with self._lock:
                    seen.count += 1
                    seen.last = now
                    self._seen.move_to_end(key)
                return
            if status != 404:  # the event aged out of the API server: start a new one
                return
        namespace = ref.get("namespace") or "default"
        name = self._event_name(ref["name"])
        ts = timestamp(record.when)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref,
            "reason": record.reason,
            "message": record.message,
            "type": record.type,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        path = f"/api/v1/namespaces/{namespace}/events"
        if self._call(lambda: self.rest.create(path, body), record) is None:
            with self._lock:
                self._seen[key] = _Seen(namespace, name, 1, now)
                self._seen.move_to_end(key)
                while len(self._seen) > self._cache_size:
                    self._seen.popitem(last=False)

    def _call(self, request: Callable[[], object], record: _Record) -> int | None:
        """Run ``request`` with retries on transient errors; None on success, else a status."""
        status, detail = 0, ""
        for pause in (*self._retry_pauses, None):
            try:
                request()
                return None
            except ApiException as exc:
                status = int(exc.status or 0)
                transient = status == 429 or status >= 500
                detail = f"{exc.status} {exc.reason}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                status, transient, detail = 0, True, str(exc)
            if not transient or status == 404 or pause is None or self._stop.wait(pause):
                break
        if status != 404:
            log.warning("could not record event %s %s for %s %s/%s: %s", record.type,
                        record.reason, record.ref.get("kind", ""),
                        record.ref.get("namespace", ""), record.ref["name"], detail)
        return status

    def _event_name(self, object_name: str) -> str:
        # client-go names events <object>.<unix nanoseconds in hex>; bump so that two events
        # within one clock tick still get distinct names.
        with self._lock:
            suffix = max(time.time_ns(), self._last_suffix + 1)
            self._last_suffix = suffix
        hexa = f"{suffix:x}"
        return f"{object_name[: MAX_NAME - len(hexa) - 1]}.{hexa}"
