"""A stand-in for the Kubernetes API (and the cluster's volume controllers) over plain HTTP.

No real kube-apiserver runs on the test machines, so the provisioner's watch loops, the
``kubernetes`` client and ``kubectl`` are pointed at this instead. It is deliberately strict
(real status codes, reasons, resourceVersion conflicts, 410 on expired watches) so that it
surfaces the bugs a real cluster would.

    with KubeStandIn() as kube:
        kube.write_kubeconfig(tmp / "kubeconfig")
        kube.add_node("node-1", {"topology.cinder.csi.openstack.org/zone": "nova"})
        kube.store.create("storageclasses", {...})
        kube.faults.throttle(3, path="/persistentvolumeclaims")
        kube.add_kubelet("node-1", node_plugin_socket, tmp / "kubelet")

Run on its own: ``python -m cinder_csi.standins.kube --port 8080 --kubeconfig kc.yaml``.
"""

from cinder_csi.standins.kube.controllers.kubelet import PUBLISH_PATH_ANNOTATION, Kubelet
from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.faults import Faults
from cinder_csi.standins.kube.standin import CONTROLLERS, DEFAULT_CONTROLLERS, KubeStandIn
from cinder_csi.standins.kube.store import Store

__all__ = [
    "CONTROLLERS",
    "DEFAULT_CONTROLLERS",
    "PUBLISH_PATH_ANNOTATION",
    "ApiError",
    "Faults",
    "KubeStandIn",
    "Kubelet",
    "Store",
]
