"""The provisioning journal: the intents of claims in the making, many per write, in a ConfigMap.

Crash safety needs every intent recorded before its first CreateVolume (``loop/intent.py``).
Recorded on the claim, that costs two claim writes per claim (record, then clear), one more
than external-provisioner's whole provisioning (an Event, the PV, an Event). Here, intents
of many claims share one write and a clearing rides on the next one, so a burst of claims
costs little more than the PV and an Event each; the claim itself is not written at all.

One ConfigMap per driver (``<lease name>-provisioning``, next to the leader Lease), one key
per claim in the making: the CSI name ``pvc-<uid>``, whose value is the claim's namespace,
name and uid and the whole intent. Writes are JSON merge patches naming only the keys they
change, so they never conflict and never need the object read first.

Rules (keep them when optimising):

- ``record`` returns only once the write carrying the entry was answered 2xx: the caller may
  then call CreateVolume. Entries waiting together go out in one write (group commit).
- ``forget`` drops an entry from the view at once (the PV exists, or the volume is accounted
  for); its removal goes out with the next write, or ``FLUSH_AFTER`` seconds later at most.
  A crash before then leaves a stale entry, which the next run drops once it sees the PV.
- A claim deleted while its entry stands is finished from the entry alone (unprovisioned,
  ``loop/unprovision.py``): nothing holds the claim, the journal remembers it.
- The journal refuses (``record`` answers False) when it cannot be used: no RBAC for it, or
  ``MAX_BYTES`` reached (a ConfigMap holds at most 1 MiB). The caller then records on the
  claim, as before; both kinds of recording are honoured everywhere.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from cinder_csi.loop.errors import LoopError, RetryAfter
from cinder_csi.loop.intent import Intent
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import API_ERRORS, KubeRest, api_error_text
from cinder_csi.loop.kube.leader import lease_name
from cinder_csi.loop.protocol import in_flight, pv_name_for

log = logging.getLogger(__name__)

# Half of what a ConfigMap may hold (1 MiB), so concurrent writes never hit the limit; about
# 600 claims in the making at once (an intent is ~0.8 KB), six times the default workers.
MAX_BYTES = 512 * 1024
# How long a write waits for others to join it once the first entry is waiting: a share of
# how long a claim's provisioning has lately taken (recorded to done with), between a floor
# that batches a burst and a ceiling no user notices on a volume that takes seconds to make.
# With a slow cloud claims start one by one as creates finish; waiting a little lets several
# share a write at the cost of that share of their provisioning time.
BATCH_LINGER = 0.01
LINGER_SHARE = 0.05
LINGER_CEILING = 0.5
DURATION_WEIGHT = 0.1  # of the newest duration in the moving average
# A removal waits at most this long for a recording to ride on.
FLUSH_AFTER = 30.0
# After a failed write, before the next: the API server may be overloaded.
RETRY_PAUSE = 1.0
STOP_TIMEOUT = 5.0
_ABSENT = object()  # "no pending change" in _set_pending, where None means a removal


class JournalError(LoopError):
    """The write carrying an entry failed; the entry may or may not be on the server."""


def configmap_name(driver: str) -> str:
    return f"{lease_name(driver)}-provisioning"


@dataclass(frozen=True)
class JournalEntry:
    """One claim in the making: who it is, and everything its provisioning resolved."""

    namespace: str
    name: str
    uid: str
    intent: Intent

    @property
    def key(self) -> str:
        return self.intent.pv_name

    @property
    def claim_key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def claim_stub(self) -> dict[str, Any]:
        """What Events and messages need of the claim, which may be gone."""
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}

    def encode(self) -> str:
        return json.dumps({"claim": {"namespace": self.namespace, "name": self.name,
                                     "uid": self.uid},
                           "intent": self.intent.as_dict()},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, key: str, text: str) -> JournalEntry:
        """Raises ValueError for anything but an entry this version wrote under ``key``."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("claim"), dict):
            raise ValueError("not a journal entry")
        claim: Mapping[str, Any] = data["claim"]
        try:
            intent = Intent.from_dict(data.get("intent"))
        except json_format.ParseError as exc:
            raise ValueError(f"unreadable request: {exc}") from None
        entry = cls(str(claim["namespace"]), str(claim["name"]), str(claim["uid"]), intent)
        if entry.key != key or pv_name_for(entry.uid) != key:
            raise ValueError(f"the entry names {entry.key} for claim uid {entry.uid}")
        return entry


class IntentJournal:
    """The loop's view of the journal, and the one thread that writes it."""

    def __init__(self, rest: KubeRest, namespace: str, name: str, *,
                 linger: float = BATCH_LINGER, flush_after: float = FLUSH_AFTER,
                 max_bytes: int = MAX_BYTES) -> None:
        self.rest = rest
        self.namespace = namespace
        self.name = name
        self.linger = linger  # the floor; 0 writes at once
        self._started: dict[str, float] = {}  # key -> when it was recorded (monotonic)
        self._duration: float | None = None  # moving average, recorded to done with
        self.flush_after = flush_after
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer's; nobody else waits on it
        self._answered: dict[int, threading.Event] = {}  # write number -> set once answered
        self._entries: dict[str, JournalEntry] = {}  # the view: recorded, not forgotten
        self._by_claim: dict[str, set[str]] = {}  # claim key -> its keys in the view
        self._unreadable: set[str] = set()  # keys on the server this version cannot read
        self._on_server: dict[str, str] = {}  # key -> value, as the last answered writes left it
        self._sizes: dict[str, int] = {}  # bytes of each key that is or will be on the server
        self._total = 0  # their sum
        self._pending: dict[str, str | None] = {}  # to write: key -> value, None = remove
        self._recordings = 0  # values (not removals) among them
        self._removal_since: float | None = None  # when the oldest unwritten removal came
        self._next_batch = 1  # the number of the write that will carry what is pending now
        self._done = 0  # every write up to this number has been answered
        self._failures: dict[int, str] = {}  # write number -> why it failed (recent ones)
        self._usable = True
        self._stopping = False
        self._writer: threading.Thread | None = None

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"

    # ---- reading

    def load(self) -> None:
        """Read what earlier runs left (call before the duties start)."""
        try:
            current = self.rest.get(self.path)
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 403:
                with self._lock:
                    self._unusable(exc)
                return
            raise
        entries, unreadable = parse(current)
        with self._lock:
            for entry in entries.values():
                self._add_to_view(entry)
            self._unreadable |= unreadable
            for key, text in ((current or {}).get("data") or {}).items():
                self._on_server[str(key)] = str(text)
                self._resize(str(key), len(str(key)) + len(str(text)))
        if entries or unreadable:
            log.info("provisioning journal %s/%s: %d claims were in the making%s",
                     self.namespace, self.name, len(entries),
                     f", {len(unreadable)} entries unreadable" if unreadable else "")

    def get(self, key: str) -> JournalEntry | None:
        with self._lock:
            return self._entries.get(key)

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def entries(self) -> list[JournalEntry]:
        with self._lock:
            return list(self._entries.values())

    def entries_of(self, claim_key: str) -> list[JournalEntry]:
        with self._lock:
            return [self._entries[key] for key in sorted(self._by_claim.get(claim_key, ()))]

    def names_on_server(self) -> set[str]:
        """Every key of the ConfigMap as the API server has it now, with the view's (the
        orphan sweep's question: what may be in the making, by anyone)."""
        try:
            current = self.rest.get(self.path)
        except ApiException as exc:
            # 404: none yet. 403: this loop could never write it either (all its intents are
            # on the claims); what the view holds is what it knows.
            if exc.status not in (403, 404):
                raise
            current = {}
        with self._lock:
            return set((current or {}).get("data") or {}) | set(self._entries) | set(
                self._unreadable)

    # ---- writing

    def record(self, entry: JournalEntry) -> bool:
        """Write ``entry`` and wait until the server has it; False when the journal cannot be
        used (record on the claim instead). JournalError when the write failed."""
        value = entry.encode()
        key = entry.key
        with self._lock:
            if not self._usable:
                return False
            if self._on_server.get(key) == value and key not in self._pending:
                self._add_to_view(entry)
                return True  # on the server already
            size = len(key) + len(value)
            if self._total - self._sizes.get(key, 0) + size > self.max_bytes:
                log.warning("provisioning journal %s/%s is full (%d claims); recording on the "
                            "claim %s instead", self.namespace, self.name,
                            len(self._entries), entry.claim_key)
                return False
            self._add_to_view(entry)
            self._set_pending(key, value)
            self._resize(key, size)
            self._started.setdefault(key, time.monotonic())
            batch = self._next_batch
            answered = self._answered.setdefault(batch, threading.Event())
            self._ensure_writer()
            self._wake.notify()  # only the writer waits on it
        answered.wait()  # every recorder of this write wakes once, and no other
        with self._lock:
            if self._done < batch:
                raise RetryAfter(1.0, "the loop is stopping")
            why = self._failures.get(batch)
            if why is None:
                return True
            if not self._usable:
                return False
        raise JournalError(f"could not record claim {entry.claim_key} in the provisioning "
                           f"journal {self.namespace}/{self.name}: {why}")

    def _add_to_view(self, entry: JournalEntry) -> None:
        self._entries[entry.key] = entry
        self._by_claim.setdefault(entry.claim_key, set()).add(entry.key)

    def _drop_from_view(self, key: str) -> JournalEntry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._by_claim.get(entry.claim_key, set())
            keys.discard(key)
            if not keys:
                self._by_claim.pop(entry.claim_key, None)
        return entry

    def _set_pending(self, key: str, value: str | None) -> None:
        """``key`` goes out with the next write as ``value`` (None: removed). Lock held."""
        before = self._pending.get(key, _ABSENT)
        self._recordings += (value is not None) - (before is not _ABSENT and before is not None)
        self._pending[key] = value
        if value is None and self._removal_since is None:
            self._removal_since = time.monotonic()
            self._wake.notify()  # a flush deadline to wait for

    def _resize(self, key: str, size: int) -> None:
        """``key`` takes ``size`` bytes on the server from now on; 0: none (lock held)."""
        self._total += size - self._sizes.pop(key, 0)
        if size:
            self._sizes[key] = size

    def forget(self, key: str) -> JournalEntry | None:
        """The entry is done with: out of the view now, off the server with the next write.
        Returns the entry that was in the view, if any."""
        with self._lock:
            entry = self._drop_from_view(key)
            if entry is None and key not in self._unreadable:
                return None
            started = self._started.pop(key, None)
            if started is not None:
                took = time.monotonic() - started
                self._duration = took if self._duration is None else (
                    self._duration + DURATION_WEIGHT * (took - self._duration))
            self._unreadable.discard(key)
            if self._usable:
                self._set_pending(key, None)
                self._ensure_writer()
            return entry

    def stop(self, *, flush: bool = True) -> None:
        """Stop the writer; with ``flush``, after it wrote what is pending (best effort).
        Recorders still waiting are answered RetryAfter."""
        with self._lock:
            self._stopping = True
            if not flush:
                self._pending.clear()
                self._recordings = 0
            self._wake.notify()
            writer = self._writer
        if writer is not None:
            writer.join(STOP_TIMEOUT)
        with self._lock:
            for answered in self._answered.values():
                answered.set()

    # ---- the writer

    def _ensure_writer(self) -> None:
        if self._writer is None and not self._stopping:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name="provisioning-journal")
            self._writer.start()

    def linger_now(self) -> float:
        """How long the next write waits for others to join it."""
        with self._lock:
            duration = self._duration or 0.0
        return min(LINGER_CEILING, max(self.linger, LINGER_SHARE * duration))

    def _due(self) -> bool:
        """Something must be written now (called with the lock held)."""
        if self._recordings:
            return True
        if not self._pending:
            return False
        return self._stopping or (self._removal_since is not None
                                  and time.monotonic() - self._removal_since >= self.flush_after)

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._due():
                    if self._stopping:
                        return
                    wait = None
                    if self._removal_since is not None:
                        wait = max(0.0, self._removal_since + self.flush_after - time.monotonic())
                    self._wake.wait(wait)
                recording = self._recordings > 0
            if recording and self.linger > 0 and not self._stopping:
                time.sleep(self.linger_now())  # let others join this write
            with self._lock:
                batch, changes = self._next_batch, self._pending
                self._next_batch += 1
                self._pending = {}
                self._recordings = 0
                self._removal_since = None
            why = self._write(changes)
            with self._lock:
                self._settle(batch, changes, why)
                answered = self._answered.pop(batch, None)
            if answered is not None:
                answered.set()
            if why is not None:
                if self._stopping:
                    return
                time.sleep(RETRY_PAUSE)

    def _settle(self, batch: int, changes: Mapping[str, str | None], why: str | None) -> None:
        """What the write of ``changes`` left on the server (lock held)."""
        self._done = batch
        if why is None:
            for key, value in changes.items():
                if value is not None:
                    self._on_server[key] = value
                    continue
                self._on_server.pop(key, None)
                if key not in self._pending:  # not recorded again meanwhile
                    self._resize(key, 0)
            return
        self._failures[batch] = why
        self._failures.pop(batch - 100, None)
        for key, value in changes.items():  # it may or may not have reached the server
            self._on_server.pop(key, None)
            if value is None and self._usable and key not in self._pending:
                self._set_pending(key, None)  # again

    def _write(self, changes: Mapping[str, str | None]) -> str | None:
        """One merge patch carrying ``changes`` (creating the ConfigMap if needed); None when
        it was answered 2xx, else why not."""
        try:
            try:
                self.rest.patch(self.path, {"data": dict(changes)})
                return None
            except ApiException as exc:
                if exc.status != 404:
                    raise
            try:
                self.rest.create(self.path.rsplit("/", 1)[0], self._new_configmap(changes))
                return None
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.rest.patch(self.path, {"data": dict(changes)})  # created meanwhile
            return None
        except ApiException as exc:
            if exc.status in (403, 422):  # no RBAC; a ConfigMap made immutable or invalid
                with self._lock:
                    self._unusable(exc)
            return api_error_text(exc)
        except API_ERRORS as exc:
            return api_error_text(exc)

    def _new_configmap(self, changes: Mapping[str, str | None]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/component": "provisioning-journal"}},
                "data": {key: value for key, value in changes.items() if value is not None}}

    def _unusable(self, exc: ApiException) -> None:
        if self._usable:
            log.error("provisioning journal %s/%s cannot be used (%s): intents are recorded on "
                      "each claim instead, one more request per claim; grant the loop get, "
                      "create and patch on that ConfigMap (manifests/driver/rbac-controller.yaml)",
                      self.namespace, self.name, api_error_text(exc))
        self._usable = False


def parse(configmap: Mapping[str, Any] | None) -> tuple[dict[str, JournalEntry], set[str]]:
    """The readable entries of a journal ConfigMap, and the keys of the unreadable ones."""
    entries: dict[str, JournalEntry] = {}
    unreadable: set[str] = set()
    for key, text in (((configmap or {}).get("data")) or {}).items():
        try:
            entries[key] = JournalEntry.decode(key, str(text))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("provisioning journal: unreadable entry %s (%s); it is kept, and the "
                        "volume of that name is never taken for an orphan", key, exc)
            unreadable.add(key)
    return entries, unreadable


def in_the_making(claim: Mapping[str, Any], journal: IntentJournal | None) -> bool:
    """The claim's provisioning started and is not cleaned up: an intent is recorded for it,
    in the journal or on the claim."""
    if in_flight(claim):
        return True
    uid = (claim.get("metadata") or {}).get("uid")
    return journal is not None and uid is not None and journal.has(pv_name_for(str(uid)))
