"""Requests, responses and a small path router shared by every service."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, bad_request, not_found
from .microversion import ApiVersions


@dataclass
class Auth:
    """Who a validated token speaks for."""

    token: str
    user_id: str
    user_name: str
    project_id: str | None
    project_name: str | None
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass
class Request:
    method: str
    path: str  # relative to the service root, e.g. "/volumes/detail"
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any
    base_url: str  # scheme://host:port
    service_url: str  # absolute URL of the service root, for links
    request_id: str
    params: dict[str, str] = field(default_factory=dict)
    microversion: tuple[int, int] = (0, 0)
    auth: Auth | None = None
    project_id: str | None = None  # project named in the URL (Cinder)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json_object(self, key: str | None = None) -> dict[str, Any]:
        """The body (or body[key]) as a dict, else 400 like the services' schema checks."""
        body = self.body
        if key is not None:
            body = body.get(key) if isinstance(body, dict) else None
        if not isinstance(body, dict):
            raise bad_request(f"Missing required element '{key or 'body'}' in request body.")
        return body

    def at_least(self, major: int, minor: int) -> bool:
        return self.microversion >= (major, minor)

    def owner(self) -> str | None:
        """The project whose resources this request may touch (None: any, for an admin)."""
        assert self.auth is not None
        return None if self.auth.is_admin else self.project_id

    def scope(self) -> str | None:
        """The project whose resources a listing shows (None: all, for admins who ask)."""
        assert self.auth is not None
        if self.auth.is_admin and self.arg("all_tenants") in ("1", "true", "True"):
            return self.arg("project_id")
        return self.project_id


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def version_root(request: Request, versions: ApiVersions, service_root: str, version_path: str,
                 *, listed: bool) -> Response | None:
    """The version documents a service answers at its root ("": 300) and at its versioned root
    (``version_path``, "/v3": a list when ``listed``, else the one); None for a path below the
    versioned root, which the API serves; 404 for any other."""
    path = request.path.rstrip("/")
    document = versions.document(f"{request.base_url}{service_root}/")
    if path == "":
        return Response(300, {"versions": [document]})
    if path == version_path:
        return Response(200, {"versions": [document]} if listed else {"version": document})
    if not path.startswith(version_path + "/"):
        raise not_found("The resource could not be found.")
    return None


class Router:
    """Maps (method, path template) to handlers; first match wins, so order specific first."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.rstrip("/"))
        self._routes.append((method, re.compile(f"^{pattern}/?$"), handler))

    def serve(self, request: Request, auth: Auth, versions: ApiVersions, segments: list[str],
              service_url: str) -> Response:
        """Dispatch an authenticated request to a versioned API on the path below the project
        (``segments``), with its negotiated microversion echoed on the answer and on an error."""
        request.auth = auth
        request.microversion = versions.negotiate(request.headers)
        headers = versions.response_headers(request.microversion)
        request.project_id = auth.project_id
        request.service_url = service_url
        request.path = "/" + "/".join(segments)
        try:
            response = self.dispatch(request)
        except ApiError as error:
            error.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    def dispatch(self, request: Request) -> Response:
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            request.params = match.groupdict()
            return handler(request)
        if path_matched:
            raise ApiError(405, f"The method {request.method} is not allowed for this resource.")
        raise not_found("The resource could not be found.")
