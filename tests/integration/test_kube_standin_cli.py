"""``python -m cinder_csi.standins.kube`` on its own: kubeconfig, serving, clean exit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes import client

from cinder_csi.standins.kube.client import api_client, wait_until


def test_serves_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    node = "node-1:topology.cinder.csi.openstack.org/zone=nova"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cinder_csi.standins.kube", "--port", "0",
         "--kubeconfig", str(kubeconfig), "--node", node],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(kubeconfig.exists, timeout=20, what="the kubeconfig")
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        assert server.startswith("http://127.0.0.1:")
        api = api_client(kubeconfig)
        node = client.CoreV1Api(api).read_node("node-1")
        assert node.metadata.labels["topology.cinder.csi.openstack.org/zone"] == "nova"
        api.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
