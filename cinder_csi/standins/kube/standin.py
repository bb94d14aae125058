"""``KubeStandIn``: the store, the HTTP server and the switchable cluster controllers together."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from cinder_csi.standins.kube.controllers.attach_detach import AttachDetachController
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.controllers.kubelet import Kubelet
from cinder_csi.standins.kube.controllers.namespace import NamespaceController
from cinder_csi.standins.kube.controllers.protection import ProtectionController
from cinder_csi.standins.kube.controllers.pv import PVController
from cinder_csi.standins.kube.controllers.scheduler import Scheduler
from cinder_csi.standins.kube.faults import Faults
from cinder_csi.standins.kube.http import ApiServer, SeenRequest
from cinder_csi.standins.kube.store import Obj, Store

CONTROLLERS: dict[str, type[Controller]] = {
    "pv": PVController,
    "protection": ProtectionController,
    "scheduler": Scheduler,
    "attach_detach": AttachDetachController,
    "namespace": NamespaceController,
}
DEFAULT_CONTROLLERS = ("pv", "protection", "scheduler", "attach_detach", "namespace")


class KubeStandIn:
    """A Kubernetes API server stand-in on 127.0.0.1 with the volume-related controllers.

    ``controllers`` names which cluster behaviours run (see ``CONTROLLERS``); ``event_window`` is
    how many changes are kept for watches and paged lists (older resourceVersions get 410);
    ``bookmark_interval`` is how often watches that allow bookmarks get one.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        controllers: Iterable[str] = DEFAULT_CONTROLLERS,
        event_window: int = 1000,
        bookmark_interval: float = 1.0,
    ) -> None:
        names = tuple(controllers)
        unknown = [n for n in names if n not in CONTROLLERS]
        if unknown:
            raise ValueError(f"unknown controllers {unknown}; known: {sorted(CONTROLLERS)}")
        self._host = host
        self._port = port
        self._controller_names = names
        self._bookmark_interval = bookmark_interval
        self.store = Store(event_window=event_window)
        self.faults = Faults()
        self.controllers: dict[str, Controller] = {}
        self.kubelets: dict[str, Kubelet] = {}
        self._server: ApiServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> KubeStandIn:
        if self._server is not None or self.store.closed:
            raise RuntimeError("a KubeStandIn starts once (make a new one after stop())")
        self._server = ApiServer(
            (self._host, self._port),
            self.store,
            self.faults,
            bookmark_interval=self._bookmark_interval,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kube-standin-http",
            daemon=True,
        )
        self._thread.start()
        for name in self._controller_names:
            controller = CONTROLLERS[name](self.store)
            controller.start()
            self.controllers[name] = controller
        return self

    def stop(self) -> None:
        for kubelet in list(self.kubelets.values()):
            kubelet.stop()
        self.kubelets.clear()
        for controller in reversed(list(self.controllers.values())):
            controller.stop()
        self.controllers.clear()
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        self.store.close()
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins every request thread
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> KubeStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ access

    def requests(self) -> list[SeenRequest]:
        """Every request the API server received so far, oldest first (none once stopped)."""
        return self._server.requests() if self._server is not None else []

    def request_counts(self) -> dict[tuple[str, str, str], int]:
        """Requests so far by (User-Agent, method, resource[/subresource]); never truncated,
        unlike ``requests()``, so a benchmark can count a long run's traffic per client."""
        return self._server.request_counts() if self._server is not None else {}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": "default"},
                }
            ],
            "current-context": "standin",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".tmp")
        partial.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        partial.chmod(0o600)
        partial.replace(target)  # readers polling for the file never see half of it
        return target

    def controller(self, name: str) -> Controller:
        return self.controllers[name]

    # ------------------------------------------------------------ cluster members

    def add_node(
        self, name: str, labels: dict[str, str] | None = None, *, ready: bool = True
    ) -> Obj:
        """A Node, Ready by default (there is no node lifecycle controller to change that)."""
        now = self.store.now()
        node = self.store.create(
            "nodes",
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        **(labels or {}),
                    },
                },
                "spec": {},
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "False",
                            "reason": "KubeletReady" if ready else "KubeletNotReady",
                            "message": "kubelet is posting ready status"
                            if ready
                            else "stand-in node",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                    "addresses": [{"type": "Hostname", "address": name}],
                    "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "nodeInfo": {
                        "machineID": name,
                        "systemUUID": name,
                        "bootID": name,
                        "kernelVersion": "6.1.0",
                        "osImage": "stand-in",
                        "containerRuntimeVersion": "containerd://1.7.0",
                        "kubeProxyVersion": "v1.32.0",
                        "kubeletVersion": "v1.32.0",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                },
            },
        )
        return node

    def add_kubelet(
        self,
        node_name: str,
        csi_socket: str | Path,
        kubelet_root: str | Path,
        *,
        rpc_timeout: float = 30.0,
        register_timeout: float = 10.0,
    ) -> Kubelet:
        """Start a kubelet for ``node_name`` driving the node plugin at ``csi_socket``.

        Returns once the plugin is registered (CSINode, topology labels); the Node is created
        first if it does not exist. ``register_timeout`` bounds the wait for the socket.
        """
        if node_name in self.kubelets:
            raise ValueError(f"node {node_name} already has a kubelet")
        if self.store.peek("nodes", node_name) is None:
            self.add_node(node_name)
        kubelet = Kubelet(
            self.store,
            node_name,
            Path(csi_socket),
            Path(kubelet_root),
            rpc_timeout=rpc_timeout,
            register_timeout=register_timeout,
        )
        kubelet.start()
        self.kubelets[node_name] = kubelet
        return kubelet
