"""Cinder-style list queries: sort, marker, limit and the `<collection>_links` next link."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from .errors import bad_request, not_found
from .wire import Request

T = TypeVar("T")

MAX_LIMIT = 1000  # osapi_max_limit
PAGING_KEYS = frozenset({"limit", "marker", "sort", "sort_key", "sort_dir", "offset",
                         "with_count", "all_tenants", "project_id"})


def parse_dict(raw: str, what: str) -> dict[str, str]:
    """Cinder takes dict filters as a JSON (or Python literal) text in one query value."""
    try:
        value = json.loads(raw)
    except ValueError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, dict):
        raise bad_request(f"Invalid input received: {what} must be a dict, got {raw!r}.")
    return {str(k): str(v) for k, v in value.items()}


def check_filters(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(k for k in request.query
                     if k not in allowed and k not in PAGING_KEYS
                     and k.rstrip("~") not in allowed)
    if unknown:
        raise bad_request(f"Invalid filters {', '.join(unknown)} are found in query options.")


def _sort_spec(request: Request, allowed: frozenset[str]) -> list[tuple[str, bool]]:
    """[(key, descending)], from `sort=k1:dir,k2` or `sort_key`/`sort_dir`."""
    spec: list[tuple[str, bool]] = []
    if request.arg("sort"):
        for item in str(request.arg("sort")).split(","):
            key, _, direction = item.strip().partition(":")
            spec.append((key, (direction or "desc").lower() == "desc"))
    elif request.arg("sort_key"):
        spec.append((str(request.arg("sort_key")),
                     (request.arg("sort_dir") or "desc").lower() == "desc"))
    else:
        spec.append(("created_at", True))
    for key, _ in spec:
        if key not in allowed:
            raise bad_request("Invalid input received: Invalid sort key")
    return spec


def page(
    request: Request,
    items: Sequence[T],
    *,
    field: Callable[[T, str], Any],
    item_id: Callable[[T], str],
    sort_keys: frozenset[str],
    collection: str,
) -> tuple[list[T], dict[str, Any]]:
    """Sort, apply marker and limit; return the page and the extra body keys (links, count)."""
    spec = _sort_spec(request, sort_keys)
    ordered = list(items)
    # Stable sorts from the least significant key; id breaks ties like the database does.
    ordered.sort(key=item_id, reverse=spec[-1][1])
    for key, descending in reversed(spec):
        ordered.sort(key=_by(field, key), reverse=descending)
    extra: dict[str, Any] = {}
    if request.arg("with_count") and request.at_least(3, 45):
        extra["count"] = len(ordered)
    marker = request.arg("marker")
    if marker:
        ids = [item_id(item) for item in ordered]
        if marker not in ids:
            # Cinder looks the marker up as the item itself.
            raise not_found(f"{collection[:-1].capitalize()} {marker} could not be found.")
        ordered = ordered[ids.index(marker) + 1:]
    offset = _int_arg(request, "offset", 0)
    ordered = ordered[offset:]
    limit = _int_arg(request, "limit", MAX_LIMIT)
    limit = min(limit, MAX_LIMIT)
    result = ordered[:limit]
    if result and len(result) == limit:
        query = {k: v[-1] for k, v in request.query.items() if k not in ("marker", "offset")}
        query.update(limit=str(limit), marker=item_id(result[-1]))
        path = request.path.rstrip("/")
        extra[f"{collection}_links"] = [
            {"rel": "next", "href": f"{request.service_url}{path}?{urlencode(query)}"}
        ]
    return result, extra


def _int_arg(request: Request, name: str, default: int) -> int:
    raw = request.arg(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} param must be an integer") from None
    if value < 0:
        raise bad_request(f"{name} param must be positive")
    return value


def _by(field: Callable[[T, str], Any], key: str) -> Callable[[T], tuple[bool, Any]]:
    return lambda item: _sortable(field(item, key))


def _sortable(value: Any) -> tuple[bool, Any]:
    # None sorts first and never gets compared with a real value.
    return (value is not None, value if value is not None else 0)
