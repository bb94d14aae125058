"""Authentication as users configure it, against real Keystone: an application credential made
through Keystone's API by the member user, used from cloud.conf (by id, and by name) and from
clouds.yaml (--cloud, and cloud.conf's use-clouds). Password auth is what every other test's
controller uses (the rig's cloud.conf)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import create_request, mount_cap
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger, Session
from tests.real.controller_process import running_controller
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

CALL_S = 180


@dataclass(frozen=True)
class AppCredential:
    id: str
    name: str
    secret: str
    auth_url: str
    region: str
    username: str
    user_domain: str


@pytest.fixture(scope="module")
def app_credential(cloud: Cloud, session: Session) -> Iterator[AppCredential]:
    """Made by the member user through Keystone's identity API; deleted afterwards."""
    identity = cloud.user.identity
    user_id = cloud.user.current_user_id
    made = identity.create_application_credential(
        user=user_id, name=f"{session.tag}-csi", secret=secrets.token_urlsafe(24),
        description="cinder-csi real tier")
    auth = cloud.user.config.config["auth"]
    try:
        yield AppCredential(
            id=str(made.id), name=str(made.name), secret=str(made.secret),
            auth_url=str(auth["auth_url"]), region=str(cloud.user.config.region_name),
            username=str(auth["username"]), user_domain=str(auth["user_domain_name"]))
    finally:
        identity.delete_application_credential(user_id, made.id, ignore_missing=True)


def write_conf(path: Path, lines: dict[str, str]) -> Path:
    path.write_text("[Global]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items()))
    return path


def round_trip(args: list[str], workdir: Path, cloud: Cloud, ledger: Ledger, real: RealEnv,
               label: str) -> None:
    """Probe, create, publish through Nova, unpublish, delete; Cinder and Nova agree."""
    server = real.server_id("node-0")
    with running_controller(workdir, args, name=label) as controller:
        probe = controller.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
        assert probe.ready.value, controller.log_tail()
        volume = controller.controller.CreateVolume(
            create_request(ledger.name(label), 1), timeout=CALL_S).volume
        volume_id = ledger.track(volume.volume_id)
        found = cloud.volume(volume_id)
        assert found is not None and found.status == "available"
        assert found.project_id == cloud.project_id
        controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=server, volume_capability=mount_cap()), timeout=CALL_S)
        assert volume_id in cloud.server_volume_ids(server)
        controller.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=server),
            timeout=CALL_S)
        controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                           timeout=CALL_S)
        assert cloud.volume(volume_id) is None
        log = controller.log_text()
    assert "UNAVAILABLE" not in log


@pytest.mark.parametrize("by", ["id", "name"])
def test_application_credential_in_cloud_conf(
        by: str, app_credential: AppCredential, cloud: Cloud, ledger: Ledger, real: RealEnv,
        session: Session, tmp_path: Path) -> None:
    identify = ({"application-credential-id": app_credential.id} if by == "id" else {
        "username": app_credential.username, "user-domain-name": app_credential.user_domain,
        "application-credential-name": app_credential.name})
    conf = write_conf(tmp_path / "cloud.conf", {
        "auth-url": app_credential.auth_url, **identify,
        "application-credential-secret": app_credential.secret,
        "region": app_credential.region,
    })
    label = f"appcred-{by}"
    round_trip(["--cloud-config", str(conf), "--cluster", session.cluster], tmp_path, cloud,
               ledger, real, label)
    log = (tmp_path / f"{label}.log").read_text()
    assert app_credential.secret not in log, "the secret reached the log"


def clouds_yaml(path: Path, name: str, app_credential: AppCredential) -> Path:
    entry: dict[str, Any] = {
        "auth_type": "v3applicationcredential",
        "auth": {"auth_url": app_credential.auth_url,
                 "application_credential_id": app_credential.id,
                 "application_credential_secret": app_credential.secret},
        "region_name": app_credential.region,
        "identity_api_version": "3",
    }
    path.write_text(yaml.safe_dump({"clouds": {name: entry}}))
    return path


def test_application_credential_in_clouds_yaml(
        app_credential: AppCredential, cloud: Cloud, ledger: Ledger, real: RealEnv,
        session: Session, tmp_path: Path) -> None:
    clouds = clouds_yaml(tmp_path / "clouds.yaml", "csi", app_credential)
    round_trip(["--cloud", "csi", "--clouds-file", str(clouds), "--cluster", session.cluster],
               tmp_path, cloud, ledger, real, "clouds-flag")


def test_use_clouds_in_cloud_conf(
        app_credential: AppCredential, cloud: Cloud, ledger: Ledger, real: RealEnv,
        session: Session, tmp_path: Path) -> None:
    clouds = clouds_yaml(tmp_path / "clouds.yaml", "csi", app_credential)
    conf = write_conf(tmp_path / "cloud.conf", {
        "use-clouds": "true", "clouds-file": str(clouds), "cloud": "csi"})
    round_trip(["--cloud-config", str(conf), "--cluster", session.cluster], tmp_path, cloud,
               ledger, real, "use-clouds")
