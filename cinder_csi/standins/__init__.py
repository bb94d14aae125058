"""Stand-ins for the services the driver talks to, for tests, benchmarks and the sandbox.

They import nothing of the driver, so they say what a real service would, not what we expect.

    openstack/  Keystone, Cinder, Nova and the metadata service over HTTP
                (`OpenStackStandIn`; `python -m cinder_csi.standins.openstack`)
    kube/       the Kubernetes API and the cluster's volume controllers and kubelets over HTTP
                (`KubeStandIn`; `python -m cinder_csi.standins.kube`)
"""
