"""The Nova metadata service, one URL per server so each node plugin can use its own."""

from __future__ import annotations

from .errors import not_found
from .servers import Server, Servers
from .wire import Request, Response, Router


class MetadataApi:
    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.router = Router()
        self.router.add("GET", "/{server}/openstack/latest/meta_data.json", self._meta_data)
        self.router.add("GET", "/{server}/openstack", self._versions)

    def handle(self, request: Request) -> Response:
        """`request.path` is relative to /metadata."""
        return self.router.dispatch(request)

    def _versions(self, request: Request) -> Response:
        self._server(request)
        return Response(200, ["latest"])

    def _meta_data(self, request: Request) -> Response:
        server = self._server(request)
        return Response(200, {
            "uuid": server.id,
            "name": server.name,
            "hostname": server.name.lower(),
            "availability_zone": server.availability_zone,
            "project_id": server.project_id,
            "launch_index": 0,
            "meta": {},
            "devices": [],
        })

    def _server(self, request: Request) -> Server:
        server = self.servers.get(request.params["server"])
        if server is None:
            raise not_found(f"Instance {request.params['server']} could not be found.")
        return server
