"""Nova's servers: the VMs volumes get attached to."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    availability_zone: str
    project_id: str
    user_id: str
    created_at: float
    by_id_dir: Path | None = None  # where attached volumes get their virtio-<id> link


class Servers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, Server] = {}

    def add(self, name: str, availability_zone: str, project_id: str, user_id: str,
            by_id_dir: Path | None) -> Server:
        server = Server(str(uuid.uuid4()), name, availability_zone, project_id, user_id,
                        time.time(), by_id_dir)
        with self._lock:
            self._servers[server.id] = server
        return server

    def remove(self, server_id: str) -> Server | None:
        with self._lock:
            return self._servers.pop(server_id, None)

    def get(self, server_id: str) -> Server | None:
        with self._lock:
            return self._servers.get(server_id)

    def all(self) -> list[Server]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: (s.created_at, s.id))
