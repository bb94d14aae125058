"""Secrets never reach a log line, an Event or an error (issue 10, build 8).

One run of ``cinder-csi controller --with-provisioner`` (first with a password, then with an
application credential; a Kubernetes bearer token in its kubeconfig), our node plugin and
kubelets, and a StorageClass naming a Secret for every CSI operation (provisioner,
controller-publish, node-stage, node-publish, controller-expand, node-expand) with
recognisable random values. Claims are provisioned, attached, mounted, expanded and deleted,
and some fail (over quota), so error paths run too.

Then everything is scanned: every line every process wrote (log files and stderr), every log
record of this test process (node plugin, kubelets, stand-ins), every object in the Kubernetes
stand-in but the Secrets themselves (Events, claim conditions, attachment errors, ...). None
may hold a password, an application-credential secret, a token (the bearer token, and any
Keystone token: 64 URL-safe characters) or a CSI secret value.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cinder_csi.standins.openstack.standin import ADMIN_PROJECT
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.reliability.harness import LoopProcess, live_volumes

pytestmark = pytest.mark.root

OPERATIONS = ("provisioner", "controller-publish", "node-stage", "node-publish",
              "controller-expand", "node-expand")
KEYSTONE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{64}(?![A-Za-z0-9_-])")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


class Records(logging.Handler):
    """Every log record of this process, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def secret_values(env: ClusterEnv) -> dict[str, str]:
    """A Secret per CSI operation with values no code could make up; the class naming them."""
    values = {}
    params = {}
    for operation in OPERATIONS:
        value = f"{operation}-value-{secrets.token_hex(12)}"
        values[f"CSI {operation} secret"] = value
        env.kube.store.create("secrets", {
            "metadata": {"name": f"{operation}-creds", "namespace": "default"},
            "stringData": {"key": value, "other": f"also-{value}"}}, namespace="default")
        params[f"csi.storage.k8s.io/{operation}-secret-name"] = f"{operation}-creds"
        params[f"csi.storage.k8s.io/{operation}-secret-namespace"] = "default"
    env.create_class("guarded", parameters=params)
    return values


def credentials(env: ClusterEnv) -> dict[str, str]:
    """A user with a password and an application credential, and the cloud.conf of each."""
    password = f"pw-{secrets.token_urlsafe(18)}"
    app_secret = f"appcred-{secrets.token_urlsafe(18)}"
    env.openstack.add_user("guarded-user", password, ADMIN_PROJECT)
    app_id = env.openstack.add_application_credential("guarded-user", "loop", app_secret)
    auth = f"[Global]\nauth-url = {env.openstack.auth_url}\nregion = {env.openstack.region}\n"
    (env.tmp_path / "password.conf").write_text(
        auth + f"username = guarded-user\npassword = {password}\n"
        f"tenant-name = {ADMIN_PROJECT}\ndomain-name = Default\n")
    (env.tmp_path / "appcred.conf").write_text(
        auth + f"application-credential-id = {app_id}\n"
        f"application-credential-secret = {app_secret}\n")
    return {"password": password, "application-credential secret": app_secret}


def token_kubeconfig(env: ClusterEnv) -> tuple[Path, str]:
    token = f"kube-token-{secrets.token_urlsafe(24)}"
    config = env.kube.kubeconfig()
    config["users"][0]["user"] = {"token": token}
    path = env.tmp_path / "token.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, token


def scan(texts: dict[str, str], values: dict[str, str]) -> list[str]:
    found = []
    for where, text in texts.items():
        for what, value in values.items():
            if value in text:
                found.append(f"{what} in {where}")
        for match in KEYSTONE_TOKEN.finditer(text):
            if not re.fullmatch(r"[0-9a-f]{64}", match.group()):  # hashes are not tokens
                found.append(f"a Keystone-like token in {where}: {match.group()[:8]}...")
    return found


def test_no_secret_reaches_a_log_event_or_error(env: ClusterEnv) -> None:
    records = Records()
    logging.getLogger().addHandler(records)
    try:
        values = {**secret_values(env), **credentials(env)}
        kubeconfig, token = token_kubeconfig(env)
        values["Kubernetes token"] = token
        for node in ("node-0", "node-1"):
            env.add_kubelet(node)
        env.openstack.set_quota(ADMIN_PROJECT, volumes=4)  # the fifth claim fails
        processes = []
        for conf in ("password.conf", "appcred.conf"):
            process = LoopProcess(env, name=f"guarded-{conf.split('.')[0]}",
                                  cloud_config=env.tmp_path / conf, kubeconfig=kubeconfig)
            processes.append(process)
            exercise(env, process, conf.split(".")[0])
        texts = {f"{p.name} output": p.output() for p in processes}
        texts["this process's log records"] = "\n".join(records.lines)
        for resource in ("events", "persistentvolumeclaims", "persistentvolumes",
                         "volumeattachments", "pods", "nodes", "csinodes", "storageclasses"):
            texts[resource] = json.dumps(env.kube.store.view(resource))
        assert sum(len(t) for t in texts.values()) > 10_000  # there was something to scan
        planted = {"planted": f"x {values['password']} y {secrets.token_urlsafe(48)} z"}
        assert len(scan(planted, values)) == 2  # the scan does find a password and a token
        assert scan(texts, values) == []
    finally:
        logging.getLogger().removeHandler(records)


def exercise(env: ClusterEnv, process: LoopProcess, prefix: str) -> None:
    """Provision (one over quota), expand, attach, mount, detach, delete."""
    process.start()
    try:
        claims = [f"{prefix}-{i}" for i in range(5)]
        for claim in claims:
            env.create_claim(claim, storage_class="guarded")

        def bound() -> list[str]:
            return [c for c in claims
                    if ((env.claim(c) or {}).get("status") or {}).get("phase") == "Bound"]

        wait_until(lambda: len(bound()) == 4, timeout=60, what="four claims Bound")
        [over] = set(claims) - set(bound())
        env.wait_event(over, "ProvisioningFailed", timeout=60)  # the fifth is over quota
        claims.remove(over)
        claims.append(over)
        # Grown first (controller-expand secret), then mounted: the node grows the filesystem
        # at stage (node-stage, node-expand and node-publish secrets).
        env.kube.store.patch("persistentvolumeclaims", claims[0],
                             {"spec": {"resources": {"requests": {"storage": "2Gi"}}}},
                             namespace="default")
        pv = env.claim(claims[0])["spec"]["volumeName"]  # type: ignore[index]
        wait_until(lambda: ((env.pv(pv) or {}).get("spec") or {}).get("capacity", {}).get(
            "storage") == "2Gi", timeout=60, what="volume grown")
        env.create_pod(f"{prefix}-app", [claims[0]])
        wait_until(lambda: ((env.kube.store.peek("pods", f"{prefix}-app",
                                                 namespace="default") or {}).get("status")
                            or {}).get("phase") == "Running", timeout=60, what="pod running")
        wait_until(lambda: ((env.claim(claims[0]) or {}).get("status") or {}).get(
            "capacity", {}).get("storage") == "2Gi", timeout=60, what="filesystem grown")
        env.kube.store.delete("pods", f"{prefix}-app", namespace="default")
        wait_until(lambda: not env.kube.store.view("volumeattachments"), timeout=60,
                   what="detached")
        for claim in claims:
            env.kube.store.delete("persistentvolumeclaims", claim, namespace="default")
        wait_until(lambda: not live_volumes(env) and not env.kube.store.view(
            "persistentvolumeclaims", namespace="default"), timeout=60, what="all deleted")
    finally:
        process.stop()
