"""Nova v2.1 over HTTP: servers and their volume attachments (which drive the block store)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from . import layout, timefmt
from .block_store import BlockStore
from .errors import bad_request, not_found
from .identity import Identity
from .microversion import NOVA
from .models import Attachment
from .servers import Server, Servers
from .wire import Request, Response, Router

# The server list filters Nova knows (others are refused from 2.102 on).
_SERVER_QUERY = frozenset({
    "name", "status", "availability_zone", "all_tenants", "limit", "marker", "sort_key",
    "sort_dir", "changes-since", "changes-before", "image", "flavor", "ip", "ip6", "host",
    "node", "project_id", "tenant_id", "user_id", "tags", "tags-any", "not-tags",
    "not-tags-any", "locked", "deleted", "reservation_id", "key_name", "description",
    "config_drive", "hostname", "launched_at", "terminated_at", "power_state", "task_state",
    "vm_state", "uuid", "access_ip_v4", "access_ip_v6", "created_at", "updated_at",
    "progress", "pinned_availability_zone",
})
_FLAVOR = {"vcpus": 2, "ram": 4096, "disk": 40, "ephemeral": 0, "swap": 0,
           "original_name": "m1.medium", "extra_specs": {}}


class ComputeApi:
    def __init__(self, servers: Servers, store: BlockStore, identity: Identity) -> None:
        self.servers = servers
        self.store = store
        self.identity = identity
        self.router = self._routes()

    def handle(self, request: Request) -> Response:
        """`request.path` is relative to /compute."""
        root = f"{request.base_url}{layout.COMPUTE_V21}/"
        path = request.path.rstrip("/")
        if path == "":
            return Response(300, {"versions": [NOVA.document(root)]})
        if path == "/v2.1":
            return Response(200, {"version": NOVA.document(root)})
        if not path.startswith("/v2.1/"):
            raise not_found("The resource could not be found.")
        auth = self.identity.validate(request.headers.get("x-auth-token"))
        segments = path[len("/v2.1/"):].split("/")
        if segments[0] == auth.project_id:  # legacy URLs carry the project id
            segments = segments[1:]
        return self.router.serve(request, auth, NOVA, segments,
                                 service_url=f"{request.base_url}{layout.COMPUTE_V21}")

    def _routes(self) -> Router:
        r = Router()
        r.add("GET", "/servers", lambda q: self._list(q, detail=False))
        r.add("GET", "/servers/detail", lambda q: self._list(q, detail=True))
        r.add("GET", "/servers/{id}", self._show)
        r.add("GET", "/servers/{id}/os-volume_attachments", self._list_attachments)
        r.add("POST", "/servers/{id}/os-volume_attachments", self._attach)
        r.add("GET", "/servers/{id}/os-volume_attachments/{volume}", self._show_attachment)
        r.add("DELETE", "/servers/{id}/os-volume_attachments/{volume}", self._detach)
        r.add("GET", "/os-availability-zone", self._zones)
        return r

    def _server(self, request: Request) -> Server:
        assert request.auth is not None
        server = self.servers.get(request.params["id"])
        if server is None or (server.project_id != request.project_id
                              and not request.auth.is_admin):
            raise not_found(f"Instance {request.params['id']} could not be found.")
        return server

    def _list(self, request: Request, *, detail: bool) -> Response:
        assert request.auth is not None
        unknown = sorted(set(request.query) - _SERVER_QUERY)
        if unknown and request.at_least(2, 102):
            raise bad_request(f"Invalid input for query parameters {unknown[0]}. Additional "
                              f"properties are not allowed ('{unknown[0]}' was unexpected)")
        everyone = request.auth.is_admin and request.arg("all_tenants") is not None
        found = [s for s in self.servers.all() if everyone or s.project_id == request.project_id]
        name = request.arg("name")
        if name:
            try:
                pattern = re.compile(name)
            except re.error:
                raise bad_request(f"Invalid regular expression {name!r}.") from None
            # Nova filters names by regular expression, not equality.
            found = [s for s in found if pattern.search(s.name)]
        zone = request.arg("availability_zone")
        if zone:
            found = [s for s in found if s.availability_zone == zone]
        status = request.arg("status")
        if status and status.upper() != "ACTIVE":
            found = []
        if detail:
            return Response(200, {"servers": [self._view(request, s) for s in found]})
        return Response(200, {"servers": [
            {"id": s.id, "name": s.name, "links": self._links(request, s)} for s in found
        ]})

    def _show(self, request: Request) -> Response:
        return Response(200, {"server": self._view(request, self._server(request))})

    def _list_attachments(self, request: Request) -> Response:
        server = self._server(request)
        return Response(200, {"volumeAttachments": [
            self._attachment_view(request, a, server) for a in self.store.attachments(server.id)
        ]})

    def _attach(self, request: Request) -> Response:
        server = self._server(request)
        body = request.json_object("volumeAttachment")
        volume_id = body.get("volumeId")
        if not isinstance(volume_id, str) or not volume_id:
            raise bad_request("Invalid input for field/attribute volumeAttachment. "
                              "'volumeId' is a required property")
        attachment = self.store.attach(volume_id, server,
                                       multiattach_allowed=request.at_least(2, 60))
        if request.at_least(2, 101):
            return Response(202)  # from 2.101 Nova accepts the attach without a body
        return Response(200, {"volumeAttachment": self._attachment_view(request, attachment,
                                                                        server)})

    def _find_attachment(self, request: Request, server: Server) -> Attachment:
        volume_id = request.params["volume"]
        found = next((a for a in self.store.attachments(server.id) if a.volume_id == volume_id),
                     None)
        if found is None:
            raise not_found(f"Instance {server.id} is not attached to volume {volume_id}")
        return found

    def _show_attachment(self, request: Request) -> Response:
        server = self._server(request)
        attachment = self._find_attachment(request, server)
        return Response(200, {"volumeAttachment": self._attachment_view(request, attachment,
                                                                        server)})

    def _detach(self, request: Request) -> Response:
        server = self._server(request)
        attachment = self._find_attachment(request, server)
        self.store.detach(attachment.volume_id, server.id, server.project_id)
        return Response(202)

    def _zones(self, request: Request) -> Response:
        zones = sorted({s.availability_zone for s in self.servers.all()})
        return Response(200, {"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": None} for z in zones
        ]})

    # --- views ----------------------------------------------------------------------------

    def _links(self, request: Request, server: Server) -> list[dict[str, str]]:
        href = f"{request.service_url}/servers/{server.id}"
        return [{"rel": "self", "href": href}, {"rel": "bookmark", "href": href}]

    def _attachment_view(self, request: Request, attachment: Attachment,
                         server: Server) -> dict[str, Any]:
        view: dict[str, Any] = {"serverId": server.id, "volumeId": attachment.volume_id,
                                "device": attachment.device}
        if not request.at_least(2, 89):
            view["id"] = attachment.volume_id  # dropped in 2.89 for attachment_id/bdm_uuid
        if request.at_least(2, 70):
            view["tag"] = None
        if request.at_least(2, 79):
            view["delete_on_termination"] = False
        if request.at_least(2, 89):
            view["attachment_id"] = attachment.id
            view["bdm_uuid"] = str(uuid.uuid5(uuid.NAMESPACE_OID, attachment.id))
        return view

    def _view(self, request: Request, server: Server) -> dict[str, Any]:
        attached = [{"id": a.volume_id, "delete_on_termination": False}
                    for a in self.store.attachments(server.id)]
        view: dict[str, Any] = {
            "id": server.id,
            "name": server.name,
            "status": "ACTIVE",
            "tenant_id": server.project_id,
            "user_id": server.user_id,
            "metadata": {},
            "hostId": uuid.uuid5(uuid.NAMESPACE_DNS, server.availability_zone).hex,
            "image": "",
            "flavor": dict(_FLAVOR),
            "created": timefmt.nova(server.created_at),
            "updated": timefmt.nova(server.created_at),
            "addresses": {},
            "accessIPv4": "",
            "accessIPv6": "",
            "links": self._links(request, server),
            "OS-EXT-AZ:availability_zone": server.availability_zone,
            "OS-EXT-STS:vm_state": "active",
            "OS-EXT-STS:task_state": None,
            "OS-EXT-STS:power_state": 1,
            "os-extended-volumes:volumes_attached": attached,
            "config_drive": "",
            "key_name": None,
            "progress": 0,
            "security_groups": [{"name": "default"}],
            "locked": False,
        }
        if request.at_least(2, 3):
            view["OS-EXT-SRV-ATTR:hostname"] = server.name.lower()
        if request.at_least(2, 19):
            view["description"] = None
        if request.at_least(2, 26):
            view["tags"] = []
        if request.at_least(2, 96):
            view["pinned_availability_zone"] = None
        if request.at_least(2, 100):
            view["scheduler_hints"] = {}
        return view
