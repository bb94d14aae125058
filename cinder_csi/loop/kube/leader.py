"""Leader election on a coordination.k8s.io/v1 Lease, compatible with client-go's.

One candidate holds the Lease and renews ``renewTime`` every ``retry_period``; the others
read it every ``retry_period`` and take it over once it has expired. Writes are optimistic
(the Lease's resourceVersion), so two candidates can never both win the same round.

When is a Lease someone else holds expired? Only the local monotonic clock counts, as in
client-go: expired once the record has not changed for ``leaseDurationSeconds`` since this
process saw it change (or first saw it). Wall clocks of different replicas are never compared
(``renewTime`` is written for people, not read): a candidate whose clock runs ahead used to
take a live lease over after one retry period of silence (issue 10). The cost is that a fresh
process waits a whole lease even when the holder died an hour ago; a clean stop releases the
Lease so that a successor does not wait.

Fencing: the leader may start a CreateVolume, DeleteVolume or ControllerPublish only while
``Fence.check`` passes, that is, until ``renew_deadline`` after the START of its last
successful renewal, by its own monotonic clock. A candidate saw that renewal land after it
started, and waits ``lease_duration`` after seeing it, so with ``renew_deadline <
lease_duration`` the old leader has stopped starting calls before anyone may take over, however
far apart the replicas' clocks are and even if this process's renewal thread is stuck. The
leader also steps down when it cannot renew within ``renew_deadline`` or sees another holder;
``on_stopped_leading`` is called at once.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import urllib3

from cinder_csi.loop.errors import Fenced
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import KubeRest
from cinder_csi.loop.kube.objects import Obj

log = logging.getLogger(__name__)


_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_JITTER = 1.2  # candidates wait retry_period * [1, 1.2) so they do not move in lockstep


def lease_name(driver_name: str) -> str:
    """external-provisioner's Lease name: every char outside [a-zA-Z0-9-] becomes '-'."""
    return re.sub(r"[^a-zA-Z0-9-]", "-", driver_name)


def default_identity() -> str:
    """Hostname (the pod name in a cluster) plus a random suffix, unique per process."""
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


def default_namespace(fallback: str = "default") -> str:
    """POD_NAMESPACE, else the service account's namespace, else ``fallback``."""
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or fallback
    except OSError:
        return fallback


def micro_time(when: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 in UTC with exactly six fraction digits."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> datetime: ...
    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if ``stop`` was set."""
        ...


class SystemClock:
    """The host's clocks; ``skew`` shifts the wall clock only (a seam for tests that give one
    replica a clock running ahead or behind: the Lease must not care)."""

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = timedelta(seconds=skew)

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(0.0, seconds))


class LeaseStore(Protocol):
    """Reads and writes one Lease as a raw dict; errors are ApiException / urllib3 / OSError."""

    def get(self, timeout: float) -> Obj | None: ...
    def create(self, lease: Obj, timeout: float) -> Obj: ...
    def replace(self, lease: Obj, timeout: float) -> Obj: ...


class KubeLeaseStore:
    def __init__(self, rest: KubeRest, namespace: str, name: str) -> None:
        self.rest = rest
        self.namespace = namespace
        self.name = name
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def get(self, timeout: float) -> Obj | None:
        try:
            return self.rest.get(f"{self._path}/{self.name}", timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, lease: Obj, timeout: float) -> Obj:
        return self.rest.create(self._path, lease, timeout=timeout)

    def replace(self, lease: Obj, timeout: float) -> Obj:
        return self.rest.replace(f"{self._path}/{self.name}", lease, timeout=timeout)


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period * _JITTER > 0:
            raise ValueError(
                "need lease_duration > renew_deadline > 1.2 * retry_period > 0, got "
                f"{self.lease_duration}/{self.renew_deadline}/{self.retry_period}"
            )



class Fence:
    """Whether this replica can still prove it holds the lease (see the module docstring).

    Open until ``window`` (the renew deadline) after the start of the last successful renewal,
    by the local monotonic clock; closed for good once leadership ends. Checked when a call is
    about to start, so it holds even if the thread that renews is stuck."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._until = float("-inf")

    def renewed(self, attempt_started: float) -> None:
        with self._lock:
            self._until = max(self._until, attempt_started + self.window)

    def close(self) -> None:
        with self._lock:
            self._until = float("-inf")

    def remaining(self) -> float:
        with self._lock:
            return self._until - self._clock()

    def check(self) -> None:
        """Raise Fenced unless the lease is proven held right now."""
        if self.remaining() <= 0:
            raise Fenced("this replica cannot prove that it still holds the leader lease; "
                         "no CreateVolume, DeleteVolume or ControllerPublish starts")


class Attempt(enum.Enum):
    LEADING = "leading"  # we hold the lease now
    HELD = "held"  # someone else holds a valid lease
    FAILED = "failed"  # could not tell (API error, lost a write race)


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        config: LeaderElectionConfig,
        *,
        on_started_leading: Callable[[threading.Event], None],
        on_stopped_leading: Callable[[], None],
        on_new_leader: Callable[[str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self.clock: Clock = clock or SystemClock()
        self.fence = Fence(config.renew_deadline, self.clock.monotonic)
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.leader = ""  # holder identity last observed

    @property
    def identity(self) -> str:
        return self.config.identity

    def is_leader(self) -> bool:
        return self._leading.is_set()

    # ---- lifecycle

    def start(self) -> None:
        """run() in a background thread until stop() or until leadership is lost."""
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="leader-election", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, and return once leadership ends (lost, or ``stop`` set).

        Like external-provisioner, a leader that lost the lease does not campaign again:
        the caller should exit, since state built while leading may be stale.
        """
        if not self._acquire(stop):
            return
        leading_stop = threading.Event()
        self._leading.set()
        log.info("%s became leader of lease %s/%s", self.identity, self.config.namespace,
                 self.config.name)
        worker = threading.Thread(target=self._on_started, args=(leading_stop,),
                                  name="leading", daemon=True)
        worker.start()
        lost = True
        try:
            lost = self._renew_until_lost(stop)
        finally:
            self.fence.close()
            leading_stop.set()
            self._leading.clear()
            try:
                self._on_stopped()
            finally:
                if not lost and self.config.release_on_cancel:
                    # Let the leader's work wind down first so the successor does not overlap.
                    worker.join(self.config.renew_deadline)
                    self.release()

    def _acquire(self, stop: threading.Event) -> bool:
        log.info("%s campaigning for lease %s/%s", self.identity, self.config.namespace,
                 self.config.name)
        while not stop.is_set():
            if self.try_acquire_or_renew(self.config.renew_deadline) is Attempt.LEADING:
                return True
            if self.clock.wait(stop, self._jittered()):
                return False
        return False

    def _renew_until_lost(self, stop: threading.Event) -> bool:
        """True when leadership was lost, False when ``stop`` ended it."""
        deadline = self.config.renew_deadline
        last_renew = self.clock.monotonic()
        while True:
            if self.clock.wait(stop, self.config.retry_period):
                return False
            left = last_renew + deadline - self.clock.monotonic()
            outcome = self.try_acquire_or_renew(max(0.5, min(left, deadline)))
            if outcome is Attempt.LEADING:
                last_renew = self.clock.monotonic()
                continue
            if outcome is Attempt.HELD:
                log.error("%s lost lease %s/%s to %s", self.identity, self.config.namespace,
                          self.config.name, self.leader)
                return True
            if self.clock.monotonic() - last_renew >= deadline:
                log.error("%s could not renew lease %s/%s within %.0fs; stepping down",
                          self.identity, self.config.namespace, self.config.name, deadline)
                return True

    def _jittered(self) -> float:
        return self.config.retry_period * (1 + (_JITTER - 1) * random.random())

    # ---- one round

    def try_acquire_or_renew(self, timeout: float) -> Attempt:
        started = self.clock.monotonic()  # before the request: the fence counts from here
        for _ in range(2):  # a 409 means the record moved under us: read it again once
            try:
                outcome = self._attempt(timeout)
                if outcome is Attempt.LEADING:
                    self.fence.renewed(started)
                return outcome
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("lease %s/%s: %s %s", self.config.namespace, self.config.name,
                                exc.status, exc.reason)
                    return Attempt.FAILED
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("lease %s/%s: %s", self.config.namespace, self.config.name, exc)
                return Attempt.FAILED
        return Attempt.FAILED

    def _attempt(self, timeout: float) -> Attempt:
        now = self.clock.now()
        lease = self.store.get(timeout)
        if lease is None:
            created = self.store.create(self._new_lease(now), timeout)
            self._observe(created)
            return Attempt.LEADING
        spec: Obj = lease.get("spec") or {}
        self._observe(lease)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec):
            return Attempt.HELD
        renewed = dict(spec)
        if holder != self.identity:
            renewed["acquireTime"] = micro_time(now)
            renewed["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        renewed.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=math.ceil(self.config.lease_duration),
            renewTime=micro_time(now),
        )
        # resourceVersion stays in metadata: the PUT fails with 409 if anyone wrote since.
        updated = self.store.replace({**lease, "spec": renewed}, timeout)
        self._observe(updated)
        return Attempt.LEADING

    def _new_lease(self, now: datetime) -> Obj:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": math.ceil(self.config.lease_duration),
                "acquireTime": micro_time(now),
                "renewTime": micro_time(now),
                "leaseTransitions": 0,
            },
        }

    def _observe(self, lease: Obj) -> None:
        spec = lease.get("spec") or {}
        record = tuple(spec.get(k) for k in (
            "holderIdentity", "renewTime", "acquireTime", "leaseDurationSeconds",
            "leaseTransitions"))
        if record == self._record:
            return
        self._record = record
        self._observed_at = self.clock.monotonic()
        holder = str(spec.get("holderIdentity") or "")
        if holder != self.leader:
            self.leader = holder
            if holder and self._on_new_leader is not None:
                self._on_new_leader(holder)

    def _expired(self, spec: Obj) -> bool:
        """Unchanged for a whole lease since we saw it change, by our monotonic clock only."""
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
        return self.clock.monotonic() - self._observed_at >= duration

    # ---- release

    def release(self) -> bool:
        """Clear holderIdentity if we hold the lease, so the next candidate need not wait."""
        timeout = self.config.renew_deadline
        for _ in range(2):
            try:
                lease = self.store.get(timeout)
                spec: Obj = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return False
                now = micro_time(self.clock.now())
                released = {k: v for k, v in spec.items() if k != "holderIdentity"}
                released.update(leaseDurationSeconds=1, renewTime=now, acquireTime=now)
                self.store.replace({**lease, "spec": released}, timeout)
                log.info("%s released lease %s/%s", self.identity, self.config.namespace,
                         self.config.name)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("releasing lease %s/%s failed: %s %s", self.config.namespace,
                                self.config.name, exc.status, exc.reason)
                    return False
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("releasing lease %s/%s failed: %s", self.config.namespace,
                            self.config.name, exc)
                return False
        return False
