"""each_listed: a whole collection a page at a time, holding one page at once."""

from __future__ import annotations

from typing import Any, cast

import pytest

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import KubeRest
from cinder_csi.loop.kube.objects import each_listed


class PagedServer:
    def __init__(self, count: int, *, expire_after: int | None = None) -> None:
        self.objects = [{"metadata": {"name": f"o{i}"}} for i in range(count)]
        self.queries: list[dict[str, Any]] = []
        self.expire_after = expire_after

    def get(self, path: str, *, query: dict[str, Any]) -> dict[str, Any]:
        self.queries.append(dict(query))
        if self.expire_after is not None and len(self.queries) > self.expire_after:
            raise ApiException(status=410, reason="Expired")
        start = int(query.get("continue") or 0)
        end = start + int(query["limit"])
        more = end < len(self.objects)
        return {"items": self.objects[start:end],
                "metadata": {"continue": str(end) if more else ""}}


def test_every_object_in_order_a_page_at_a_time() -> None:
    server = PagedServer(7)
    listed = each_listed(cast(KubeRest, server), "/api/v1/persistentvolumes", page_size=3)
    first = next(listed)
    assert first["metadata"]["name"] == "o0" and len(server.queries) == 1  # lazily
    rest = [o["metadata"]["name"] for o in listed]
    assert rest == [f"o{i}" for i in range(1, 7)]
    assert server.queries == [{"limit": 3}, {"limit": 3, "continue": "3"},
                              {"limit": 3, "continue": "6"}]


def test_an_expired_snapshot_ends_the_listing_with_its_error() -> None:
    server = PagedServer(7, expire_after=1)
    with pytest.raises(ApiException) as info:
        list(each_listed(cast(KubeRest, server), "/api/v1/persistentvolumes", page_size=3))
    assert info.value.status == 410
