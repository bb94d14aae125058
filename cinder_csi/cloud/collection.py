"""The verbs Cinder gives each of its listed resources (volumes, snapshots, backups): show,
look up, list one page oldest first, delete, and wait for a status or for the deletion."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Kind(Generic[R]):
    """What tells one kind of Cinder resource apart."""

    name: str  # "snapshot": the path is /snapshots, the body key "snapshot"
    parse: Callable[[dict[str, Any]], R]
    failures: frozenset[str]  # statuses a wait for another status ends on
    microversion: str | None = None  # the one its fields are shown with


class CinderCollection(Generic[R]):
    kind: Kind[R]  # each subclass says which

    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def get(self, item_id: str, deadline: Deadline) -> R:
        resp = self._session.request(
            "GET", f"/{self.kind.name}s/{item_id}", what=f"{self.kind.name} {item_id}",
            deadline=deadline, microversion=self.kind.microversion,
        )
        return self.kind.parse(resp.body[self.kind.name])

    def find(self, item_id: str, deadline: Deadline) -> R | None:
        return none_if_missing(lambda: self.get(item_id, deadline))

    def find_by_name(self, name: str, deadline: Deadline) -> list[R]:
        """Every item with exactly this name, over all pages (Cinder's filter may be a prefix
        match)."""
        page = self.list_page(deadline=deadline, filters={"name": name}, limit=None)
        return [item for item in page.items if item.name == name]

    def list_page(
        self,
        *,
        deadline: Deadline,
        limit: int | None,
        marker: str | None = None,
        filters: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[R]:
        """One page, oldest first so markers stay stable while items are added; with no
        ``limit`` every page, 1000 at a time."""
        params = page_params(limit, marker, filters)
        if metadata:
            params["metadata"] = json.dumps(dict(metadata), sort_keys=True)
        if limit is None:
            return self._all_pages(params, deadline)
        return self._fetch_page(params, deadline)

    def _all_pages(self, params: dict[str, str], deadline: Deadline) -> Page[R]:
        collected: list[R] = []
        marker: str | None = None
        while True:
            query = dict(params, limit="1000")
            if marker:
                query["marker"] = marker
            page = self._fetch_page(query, deadline)
            collected.extend(page.items)
            if page.next_marker is None:
                return Page(items=tuple(collected), next_marker=None)
            marker = page.next_marker

    def _fetch_page(self, params: dict[str, str], deadline: Deadline) -> Page[R]:
        resp = self._session.request(
            "GET", f"/{self.kind.name}s/detail", what=f"{self.kind.name} list", deadline=deadline,
            params=params, microversion=self.kind.microversion,
        )
        items = tuple(self.kind.parse(b) for b in resp.body.get(f"{self.kind.name}s", ()))
        more = has_next(resp.body, f"{self.kind.name}s_links")
        return Page(items=items, next_marker=items[-1].id if items and more else None)

    def delete(self, item_id: str, deadline: Deadline) -> None:
        """Ask Cinder to delete; one already gone counts as deleted."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/{self.kind.name}s/{item_id}", what=f"delete {self.kind.name} {item_id}",
            deadline=deadline,
        ))

    def wait_for_status(
        self,
        item_id: str,
        statuses: tuple[str, ...],
        deadline: Deadline,
        *,
        what: str | None = None,
    ) -> R:
        """The item once its status is one of ``statuses``; one of the collection's failure
        states ends the wait with FailedPrecondition, the deadline with Timeout (see
        cloud/waits.py)."""
        return until_status(lambda: self.get(item_id, deadline), f"{self.kind.name} {item_id}",
                            statuses, deadline, failures=self.kind.failures, what=what)

    def wait_for_delete(self, item_id: str, deadline: Deadline) -> None:
        until_deleted(lambda: self.find(item_id, deadline), f"{self.kind.name} {item_id}", deadline)
