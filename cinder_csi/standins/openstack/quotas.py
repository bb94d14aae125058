"""Cinder quota limits, usage and the 413 answers when a request would exceed them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ApiError, over_limit

# Cinder's own defaults are 10 volumes / 1000 GB / 10 snapshots; the stand-in is roomier so
# benchmarks and the sandbox do not trip over them. Tests tighten them with set_quota.
DEFAULTS: dict[str, int] = {
    "volumes": 1000,
    "gigabytes": 100_000,
    "snapshots": 1000,
    "backups": 10,
    "backup_gigabytes": 1000,
    "groups": 10,
    "per_volume_gigabytes": -1,
}
COUNTED = ("volumes", "gigabytes", "snapshots")


@dataclass(frozen=True)
class Usage:
    """One volume or snapshot's claim on quota."""

    project_id: str
    type_name: str
    gigabytes: int
    kind: str  # "volumes" or "snapshots"


class QuotaBook:
    """Limits per project; not thread-safe, the block store's lock guards it."""

    def __init__(self) -> None:
        self._limits: dict[str, dict[str, int]] = {}

    def limit(self, project_id: str, key: str) -> int:
        return self._limits.get(project_id, {}).get(key, DEFAULTS.get(key, -1))

    def set(self, project_id: str, values: Mapping[str, int]) -> None:
        self._limits.setdefault(project_id, {}).update(values)

    def keys(self, type_names: Iterable[str]) -> list[str]:
        keys = list(DEFAULTS)
        for name in type_names:
            keys += [f"{kind}_{name}" for kind in COUNTED]
        return keys


def in_use(usages: Iterable[Usage], project_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for usage in usages:
        if usage.project_id != project_id:
            continue
        for key in (usage.kind, f"{usage.kind}_{usage.type_name}"):
            totals[key] = totals.get(key, 0) + 1
        # Snapshots count against gigabytes too, as Cinder does by default.
        for key in ("gigabytes", f"gigabytes_{usage.type_name}"):
            totals[key] = totals.get(key, 0) + usage.gigabytes
    return totals


def check(
    book: QuotaBook,
    project_id: str,
    used: Mapping[str, int],
    reserved: Mapping[str, int],
    deltas: Mapping[str, int],
) -> None:
    """Raise 413 if adding `deltas` to usage (in_use + reserved) exceeds a limit."""
    per_volume = book.limit(project_id, "per_volume_gigabytes")
    size = deltas.get("gigabytes", 0)
    if per_volume >= 0 and deltas.get("volumes", 0) and size > per_volume:
        raise over_limit(
            f"VolumeSizeExceedsLimit: Requested volume size {size}G is larger than maximum "
            f"allowed limit {per_volume}G."
        )
    # Gigabytes first, then counts: the order Cinder reports an over-quota request in.
    ordered = sorted(deltas, key=lambda k: (not k.startswith("gigabytes"), k))
    for key in ordered:
        delta = deltas[key]
        limit = book.limit(project_id, key)
        if delta <= 0 or limit < 0:
            continue
        consumed = used.get(key, 0) + reserved.get(key, 0)
        if consumed + delta > limit:
            raise _exceeded(key, delta, limit, consumed)


def _exceeded(key: str, requested: int, limit: int, consumed: int) -> ApiError:
    if key.startswith("gigabytes"):
        return over_limit(
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
            f"{key} quota. Requested {requested}G, quota is {limit}G and {consumed}G has "
            "been consumed."
        )
    if key.startswith("snapshots"):
        return over_limit(
            f"SnapshotLimitExceeded: Maximum number of snapshots allowed ({limit}) exceeded"
        )
    return over_limit(
        f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for "
        f"quota '{key}'."
    )
