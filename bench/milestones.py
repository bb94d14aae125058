"""When each object first reached each milestone, read from the Kubernetes stand-in's own
change stream (in-process, so no API request is spent and nothing is missed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.store import Change

# A milestone: which resource, and whether a change reaches it. ``name_of`` picks the name
# a milestone is recorded under (default: the object's own name).
Rule = tuple[str, Callable[[Change], bool]]


class Milestones:
    def __init__(self, kube: KubeStandIn, rules: Mapping[str, Rule], *,
                 name_of: Callable[[Change], str] | None = None) -> None:
        self._sub = kube.store.subscribe()
        self._rules = dict(rules)
        self._name_of = name_of or (lambda change: str(change.object["metadata"]["name"]))
        self.seen: dict[str, dict[str, float]] = {label: {} for label in self._rules}
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="bench-milestones", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            change = self._sub.get()
            if change is None:
                return
            now = time.monotonic()
            with self.changed:
                for label, (plural, reached) in self._rules.items():
                    if change.resource.plural == plural and reached(change):
                        self.seen[label].setdefault(self._name_of(change), now)
                self.changed.notify_all()

    def count(self, label: str) -> int:
        return len(self.seen[label])

    def wait(self, label: str, count: int, timeout: float) -> None:
        """Until ``count`` objects reached ``label``; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.seen[label]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self.seen[label])} of {count} reached "
                                       f"{label} in {timeout:.0f} s")
                self.changed.wait(min(left, 1.0))

    def durations(self, start: str, end: str) -> list[float]:
        """Seconds from ``start`` to ``end`` for every object that reached both."""
        with self.changed:
            begun, done = self.seen[start], self.seen[end]
            return [done[name] - begun[name] for name in done if name in begun]

    def span(self, start: str, end: str) -> float:
        """Seconds from the first ``start`` to the last ``end``."""
        with self.changed:
            return max(self.seen[end].values()) - min(self.seen[start].values())

    def close(self) -> None:
        self._sub.close()
        self._thread.join(timeout=10)


def phase_is(phase: str) -> Callable[[Change], bool]:
    return lambda change: (change.object.get("status") or {}).get("phase") == phase


def deleting(change: Change) -> bool:
    return change.type == "DELETED" or bool(change.object["metadata"].get("deletionTimestamp"))


def gone(change: Change) -> bool:
    return change.type == "DELETED"


def any_change(change: Change) -> bool:
    return True


def claim_of_volume(change: Change) -> str:
    """A PV's change recorded under its claim's name; other objects under their own."""
    if change.resource.plural == "persistentvolumes":
        ref: Any = (change.object.get("spec") or {}).get("claimRef") or {}
        return str(ref.get("name") or change.object["metadata"]["name"])
    return str(change.object["metadata"]["name"])
