"""Keystone v3: users, projects, application credentials, tokens and the service catalog."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import layout, timefmt
from .errors import bad_request, not_found, unauthorized
from .wire import Auth, Request, Response, Router

DEFAULT_DOMAIN_ID = "default"
DEFAULT_DOMAIN_NAME = "Default"
_DOMAIN = {"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME}


@dataclass
class Project:
    id: str
    name: str


@dataclass
class User:
    id: str
    name: str
    password: str
    default_project_id: str
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # project id -> roles


@dataclass
class AppCredential:
    id: str
    name: str
    secret: str
    user_id: str
    project_id: str


@dataclass
class Token:
    id: str
    user_id: str
    project_id: str | None
    methods: list[str]
    issued_at: float
    expires_at: float
    audit_id: str
    app_cred_id: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    type: str
    name: str
    url: str  # may contain {project_id}
    service: str  # the stand-in service it belongs to, for faults.hide_from_catalog


class Identity:
    def __init__(
        self,
        *,
        region: str,
        token_ttl: float,
        catalog: Callable[[], list[CatalogEntry]],
    ) -> None:
        self._lock = threading.Lock()
        self.region = region
        self.token_ttl = token_ttl
        self._catalog = catalog
        self._projects: dict[str, Project] = {}
        self._users: dict[str, User] = {}
        self._app_creds: dict[str, AppCredential] = {}
        self._tokens: dict[str, Token] = {}

    # --- administration (Python API) ---------------------------------------------------

    def ensure_project(self, name: str) -> Project:
        with self._lock:
            for project in self._projects.values():
                if project.name == name:
                    return project
            project = Project(uuid.uuid4().hex, name)
            self._projects[project.id] = project
            return project

    def project_by_name(self, name: str) -> Project | None:
        with self._lock:
            return next((p for p in self._projects.values() if p.name == name), None)

    def project(self, project_id: str) -> Project | None:
        with self._lock:
            return self._projects.get(project_id)

    def add_user(self, name: str, password: str, project: str, roles: tuple[str, ...]) -> str:
        home = self.ensure_project(project)
        with self._lock:
            if any(u.name == name for u in self._users.values()):
                raise ValueError(f"user {name!r} exists")
            user = User(uuid.uuid4().hex, name, password, home.id, {home.id: roles})
            self._users[user.id] = user
            return user.id

    def add_application_credential(
        self, user: str, name: str, secret: str, project: str | None = None
    ) -> str:
        with self._lock:
            owner = self._users.get(user) or next(
                (u for u in self._users.values() if u.name == user), None
            )
            if owner is None:
                raise ValueError(f"no user {user!r}")
            project_id = owner.default_project_id
            if project is not None:
                project_id = next(p.id for p in self._projects.values() if p.name == project)
            cred = AppCredential(uuid.uuid4().hex, name, secret, owner.id, project_id)
            self._app_creds[cred.id] = cred
            return cred.id

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # --- tokens -------------------------------------------------------------------------

    def validate(self, token_id: str | None) -> Auth:
        with self._lock:
            token = self._tokens.get(token_id or "")
            if token is None or token.expires_at <= time.time():
                raise unauthorized()
            user = self._users[token.user_id]
            project = self._projects.get(token.project_id or "")
            return Auth(
                token=token.id,
                user_id=user.id,
                user_name=user.name,
                project_id=project.id if project else None,
                project_name=project.name if project else None,
                roles=user.roles.get(project.id, ()) if project else (),
            )

    # --- HTTP ---------------------------------------------------------------------------

    def routes(self) -> Router:
        router = Router()
        router.add("GET", "/", self._versions)
        router.add("GET", "/v3", self._version)
        router.add("POST", "/v3/auth/tokens", self._issue)
        router.add("GET", "/v3/auth/tokens", self._check)
        router.add("HEAD", "/v3/auth/tokens", self._check)
        router.add("DELETE", "/v3/auth/tokens", self._revoke)
        return router

    def _version_doc(self, request: Request) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{request.base_url}{layout.IDENTITY}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def _versions(self, request: Request) -> Response:
        return Response(300, {"versions": {"values": [self._version_doc(request)]}})

    def _version(self, request: Request) -> Response:
        return Response(200, {"version": self._version_doc(request)})

    def _issue(self, request: Request) -> Response:
        auth = request.json_object("auth")
        identity = auth.get("identity")
        if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
            raise bad_request("Expecting to find identity in auth.")
        methods: list[str] = identity["methods"]
        scope = auth.get("scope")
        with self._lock:
            if "password" in methods:
                user = self._password_user(identity.get("password"))
                project_id = self._scope(user, scope)
                app_cred_id = None
            elif "application_credential" in methods:
                if scope:
                    raise unauthorized("Application credentials cannot request a scope.")
                cred = self._app_cred(identity.get("application_credential"))
                user, project_id, app_cred_id = self._users[cred.user_id], cred.project_id, cred.id
            elif "token" in methods:
                old = self._token_of(identity.get("token"))
                user, app_cred_id = self._users[old.user_id], old.app_cred_id
                project_id = old.project_id if app_cred_id else self._scope(user, scope)
            else:
                raise unauthorized()
            now = time.time()
            token = Token(
                id=secrets.token_urlsafe(48),
                user_id=user.id,
                project_id=project_id,
                methods=methods,
                issued_at=now,
                expires_at=now + self.token_ttl,
                audit_id=secrets.token_urlsafe(16),
                app_cred_id=app_cred_id,
            )
            self._tokens[token.id] = token
            body = self._token_body(token)
        return Response(201, body, {"X-Subject-Token": token.id})

    def _check(self, request: Request) -> Response:
        self.validate(request.headers.get("x-auth-token"))
        with self._lock:
            token = self._tokens.get(request.headers.get("x-subject-token", ""))
            if token is None or token.expires_at <= time.time():
                raise not_found("Could not find token.")
            body = self._token_body(token)
        return Response(200, body if request.method == "GET" else None,
                        {"X-Subject-Token": token.id})

    def _revoke(self, request: Request) -> Response:
        self.validate(request.headers.get("x-auth-token"))
        with self._lock:
            if self._tokens.pop(request.headers.get("x-subject-token", ""), None) is None:
                raise not_found("Could not find token.")
        return Response(204)

    # --- helpers (caller holds the lock) -------------------------------------------------

    def _password_user(self, password: Any) -> User:
        spec = password.get("user") if isinstance(password, dict) else None
        if not isinstance(spec, dict):
            raise bad_request("Expecting to find user in password.")
        user = self._find_user(spec)
        if user is None or not secrets.compare_digest(user.password, str(spec.get("password"))):
            raise unauthorized()
        return user

    def _find_user(self, spec: dict[str, Any]) -> User | None:
        if "id" in spec:
            return self._users.get(str(spec["id"]))
        if not _is_default_domain(spec.get("domain")):
            return None
        return next((u for u in self._users.values() if u.name == spec.get("name")), None)

    def _app_cred(self, spec: Any) -> AppCredential:
        if not isinstance(spec, dict):
            raise bad_request("Expecting to find application_credential in identity.")
        cred: AppCredential | None
        if "id" in spec:
            cred = self._app_creds.get(str(spec["id"]))
        else:
            owner = self._find_user(spec.get("user") or {})
            cred = next(
                (c for c in self._app_creds.values()
                 if owner and c.user_id == owner.id and c.name == spec.get("name")),
                None,
            )
        if cred is None or not secrets.compare_digest(cred.secret, str(spec.get("secret"))):
            raise unauthorized()
        return cred

    def _token_of(self, spec: Any) -> Token:
        token = self._tokens.get(str(spec.get("id"))) if isinstance(spec, dict) else None
        if token is None or token.expires_at <= time.time():
            raise unauthorized()
        return token

    def _scope(self, user: User, scope: Any) -> str | None:
        if scope is None:
            # Keystone scopes to the user's default project when the request names none.
            return user.default_project_id if user.default_project_id in user.roles else None
        if scope == "unscoped":
            return None
        spec = scope.get("project") if isinstance(scope, dict) else None
        if not isinstance(spec, dict):
            raise bad_request("The stand-in supports project scope only.")
        project: Project | None
        if "id" in spec:
            project = self._projects.get(str(spec["id"]))
        elif _is_default_domain(spec.get("domain")):
            project = next((p for p in self._projects.values() if p.name == spec.get("name")),
                           None)
        else:
            project = None
        if project is None or project.id not in user.roles:
            raise unauthorized()
        return project.id

    def _token_body(self, token: Token) -> dict[str, Any]:
        user = self._users[token.user_id]
        body: dict[str, Any] = {
            "methods": token.methods,
            "user": {"id": user.id, "name": user.name, "domain": dict(_DOMAIN),
                     "password_expires_at": None},
            "audit_ids": [token.audit_id],
            "issued_at": timefmt.keystone(token.issued_at),
            "expires_at": timefmt.keystone(token.expires_at),
        }
        project = self._projects.get(token.project_id or "")
        if project is not None:
            body["project"] = {"id": project.id, "name": project.name, "domain": dict(_DOMAIN)}
            body["is_domain"] = False
            body["roles"] = [{"id": _role_id(r), "name": r} for r in user.roles[project.id]]
            body["catalog"] = self._catalog_body(project.id)
        if token.app_cred_id:
            cred = self._app_creds[token.app_cred_id]
            body["application_credential"] = {"id": cred.id, "name": cred.name,
                                              "restricted": True}
        return {"token": body}

    def _catalog_body(self, project_id: str) -> list[dict[str, Any]]:
        out = []
        for entry in self._catalog():
            url = entry.url.format(project_id=project_id)
            out.append({
                "id": uuid.uuid5(uuid.NAMESPACE_URL, entry.type).hex,
                "type": entry.type,
                "name": entry.name,
                "endpoints": [
                    {"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{entry.type}/{iface}").hex,
                     "interface": iface, "region": self.region, "region_id": self.region,
                     "url": url}
                    for iface in ("public", "internal")
                ],
            })
        return out


def _is_default_domain(domain: Any) -> bool:
    if not isinstance(domain, dict):
        return False
    if "id" in domain:
        return str(domain["id"]).lower() == DEFAULT_DOMAIN_ID
    return str(domain.get("name", "")).lower() == DEFAULT_DOMAIN_NAME.lower()


def _role_id(name: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"role.{name}").hex
