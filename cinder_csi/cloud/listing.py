"""Cinder list paging shared by volumes and snapshots: oldest first, so markers stay stable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SORT = "created_at:asc,id:asc"


def page_params(
    limit: int | None, marker: str | None, filters: Mapping[str, str] | None
) -> dict[str, str]:
    params: dict[str, str] = {"sort": SORT}
    if limit is not None:
        params["limit"] = str(limit)
    if marker:
        params["marker"] = marker
    if filters:
        params.update(filters)
    return params


def has_next(body: Mapping[str, Any], links_key: str) -> bool:
    """Whether Cinder announced another page (a ``next`` link in ``<kind>_links``)."""
    return any(link.get("rel") == "next" for link in body.get(links_key) or ())
