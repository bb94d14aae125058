"""Which real cloud the real tier talks to, read from the environment.

``hack/real-openstack env`` prints these for the realstack rig:

    CINDER_CSI_REAL_CLOUD_CONF    cloud.conf the controller runs with (a member user)
    CINDER_CSI_REAL_CLOUDS_YAML   clouds.yaml the tests check Cinder and Nova with
    CINDER_CSI_REAL_NODES         "<node name> <Nova server id>" per line (the CSI node IDs)
    CINDER_CSI_REAL_CLOUD         clouds.yaml entry of the same user (default realstack)
    CINDER_CSI_REAL_ADMIN_CLOUD   clouds.yaml entry of a cloud admin (default realstack-admin)

Without CINDER_CSI_REAL_CLOUD_CONF the tier is skipped; with it, a missing companion file is
an error, not a skip, so a misconfigured CI cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLOUD_CONF = "CINDER_CSI_REAL_CLOUD_CONF"
CLOUDS_YAML = "CINDER_CSI_REAL_CLOUDS_YAML"
NODES = "CINDER_CSI_REAL_NODES"
CLOUD = "CINDER_CSI_REAL_CLOUD"
ADMIN_CLOUD = "CINDER_CSI_REAL_ADMIN_CLOUD"

SKIP_REASON = (
    f"real tier: {CLOUD_CONF} is not set (bring the realstack rig up and export its "
    f'settings: eval "$(hack/real-openstack up)")'
)


class RealEnvError(Exception):
    """The real tier was asked for but its settings are incomplete."""


@dataclass(frozen=True)
class RealEnv:
    cloud_conf: Path
    clouds_yaml: Path
    nodes: dict[str, str]  # node name -> Nova server id
    cloud: str
    admin_cloud: str

    def server_id(self, node: str) -> str:
        return self.nodes[node]


def requested(environ: Mapping[str, str] | None = None) -> bool:
    return bool((environ if environ is not None else os.environ).get(CLOUD_CONF))


def _existing(environ: Mapping[str, str], name: str) -> Path:
    value = environ.get(name)
    if not value:
        raise RealEnvError(f"{CLOUD_CONF} is set but {name} is not; set both (see tests/real)")
    path = Path(value)
    if not path.is_file():
        raise RealEnvError(f"{name}={value}: no such file")
    return path


def parse_nodes(text: str) -> dict[str, str]:
    nodes: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            nodes[fields[0]] = fields[1]
    return nodes


def load(environ: Mapping[str, str] | None = None) -> RealEnv:
    env = environ if environ is not None else os.environ
    cloud_conf = _existing(env, CLOUD_CONF)
    nodes_file = _existing(env, NODES)
    nodes = parse_nodes(nodes_file.read_text())
    if "node-0" not in nodes:
        raise RealEnvError(f"{nodes_file} names no node-0 (expected '<node> <server id>' lines)")
    return RealEnv(
        cloud_conf=cloud_conf,
        clouds_yaml=_existing(env, CLOUDS_YAML),
        nodes=nodes,
        cloud=env.get(CLOUD) or "realstack",
        admin_cloud=env.get(ADMIN_CLOUD) or "realstack-admin",
    )
