"""The verbs Cinder gives each of its listed resources (snapshots, backups): show, look up,
list one page oldest first, delete, and wait for a status or for the deletion."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from cinder_csi.cloud.listing import has_next, page_params
from cinder_csi.cloud.models import Page
from cinder_csi.cloud.session import ServiceSession, none_if_missing
from cinder_csi.cloud.waits import until_deleted, until_status
from cinder_csi.deadline import Deadline


class Record(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...


R = TypeVar("R", bound=Record)


class CinderCollection(Generic[R]):
    def __init__(
        self,
        session: ServiceSession,
        *,
        kind: str,  # "snapshot": the path is /snapshots, the body key "snapshot"
        parse: Callable[[dict[str, Any]], R],
        failures: frozenset[str],
        microversion: str | None = None,
    ) -> None:
        self._session = session
        self._kind = kind
        self._parse = parse
        self._failures = failures
        self._microversion = microversion

    def get(self, item_id: str, deadline: Deadline) -> R:
        resp = self._session.request(
            "GET", f"/{self._kind}s/{item_id}", what=f"{self._kind} {item_id}",
            deadline=deadline, microversion=self._microversion,
        )
        return self._parse(resp.body[self._kind])

    def find(self, item_id: str, deadline: Deadline) -> R | None:
        return none_if_missing(lambda: self.get(item_id, deadline))

    def find_by_name(self, name: str, deadline: Deadline) -> list[R]:
        page = self.list_page(deadline=deadline, limit=1000, filters={"name": name})
        return [item for item in page.items if item.name == name]

    def list_page(
        self,
        *,
        deadline: Deadline,
        limit: int | None,
        marker: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> Page[R]:
        resp = self._session.request(
            "GET", f"/{self._kind}s/detail", what=f"{self._kind} list", deadline=deadline,
            params=page_params(limit, marker, filters), microversion=self._microversion,
        )
        items = tuple(self._parse(b) for b in resp.body.get(f"{self._kind}s", ()))
        more = has_next(resp.body, f"{self._kind}s_links")
        return Page(items=items, next_marker=items[-1].id if items and more else None)

    def delete(self, item_id: str, deadline: Deadline) -> None:
        """Ask Cinder to delete; one already gone counts as deleted."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/{self._kind}s/{item_id}", what=f"delete {self._kind} {item_id}",
            deadline=deadline,
        ))

    def wait_for_status(self, item_id: str, status: str, deadline: Deadline) -> R:
        return until_status(lambda: self.get(item_id, deadline), f"{self._kind} {item_id}",
                            (status,), deadline, failures=self._failures)

    def wait_for_delete(self, item_id: str, deadline: Deadline) -> None:
        until_deleted(lambda: self.find(item_id, deadline), f"{self._kind} {item_id}", deadline)
