"""An OpenStack stand-in (Keystone v3, Cinder v3, Nova v2.1, metadata) over real HTTP.

The real openstacksdk talks to it unmodified. Used in-process by tests, benchmarks and
``cinder-csi sandbox``; on its own::

    python -m cinder_csi.standins.openstack --port 5000 --state-dir /tmp/os \\
        --servers node-0:az-a,node-1:az-b
"""

from cinder_csi.standins.openstack.faults import Faults
from cinder_csi.standins.openstack.standin import OpenStackStandIn

__all__ = ["Faults", "OpenStackStandIn"]
