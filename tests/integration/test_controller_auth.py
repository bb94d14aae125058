"""The controller authenticates however clouds.yaml says: password, application credential, or
a token with an endpoint override (no catalog lookup needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.config import load_cloud_config
from cinder_csi.controller.service import ControllerService
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi.identity import IdentityService
from cinder_csi.csi.server import CSIServer
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import start_controller
from tests.integration.csi_helpers import create_request


def write_clouds(tmp_path: Path, cloud: dict[str, Any]) -> Path:
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"test": cloud}}))
    return path


def create_through(clouds: Path | None, tmp_path: Path, name: str) -> str:
    config = load_cloud_config([], cloud="test",
                               clouds_file=str(clouds) if clouds is not None else None)
    cloud = Cloud(config.auth)
    server = CSIServer(f"unix://{tmp_path / 'auth.sock'}",
                       identity=IdentityService("cinder.csi.openstack.org", has_controller=True,
                                                probe=cloud.probe),
                       controller=ControllerService(cloud), grace_seconds=1)
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{tmp_path / 'auth.sock'}") as channel:
            stub = csi_pb2_grpc.ControllerStub(channel)
            return str(stub.CreateVolume(create_request(name), timeout=30).volume.volume_id)
    finally:
        server.stop(0)


def base(openstack: OpenStackStandIn) -> dict[str, Any]:
    return {"region_name": openstack.region, "identity_api_version": 3}


def test_password_from_clouds_yaml(openstack: OpenStackStandIn, tmp_path: Path) -> None:
    clouds = write_clouds(tmp_path, {**base(openstack), "auth": {
        "auth_url": openstack.auth_url, "username": "admin", "password": "secret",
        "project_name": "demo", "user_domain_name": "Default",
        "project_domain_name": "Default"}})
    assert create_through(clouds, tmp_path, "pvc-pw")


def test_application_credential_from_clouds_yaml(
    openstack: OpenStackStandIn, tmp_path: Path
) -> None:
    credential = openstack.add_application_credential("admin", "csi", "app-secret-1")
    clouds = write_clouds(tmp_path, {**base(openstack), "auth_type": "v3applicationcredential",
                                     "auth": {"auth_url": openstack.auth_url,
                                              "application_credential_id": credential,
                                              "application_credential_secret": "app-secret-1"}})
    assert create_through(clouds, tmp_path, "pvc-appcred")


def test_application_credential_from_cloud_conf(
    openstack: OpenStackStandIn, tmp_path: Path
) -> None:
    credential = openstack.add_application_credential("admin", "csi2", "app-secret-2")
    conf = tmp_path / "cloud.conf"
    conf.write_text(f"[Global]\nauth-url = {openstack.auth_url}\n"
                    f"application-credential-id = {credential}\n"
                    "application-credential-secret = app-secret-2\n"
                    f"region = {openstack.region}\n")
    server, handle = start_controller(conf, tmp_path / "ac.sock")
    try:
        assert handle.controller.CreateVolume(create_request("pvc-ac-conf"), timeout=30)
    finally:
        handle.channel.close()
        server.stop(0)


def test_token_with_endpoint_override(openstack: OpenStackStandIn, tmp_path: Path) -> None:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    answer = requests.post(f"{openstack.auth_url}/auth/tokens", json=body, timeout=10)
    assert answer.status_code == 201
    token = answer.headers["X-Subject-Token"]
    project = openstack.project_id("demo")
    clouds = write_clouds(tmp_path, {
        **base(openstack), "auth_type": "admin_token",
        "auth": {"token": token, "endpoint": f"{openstack.base_url}/volume/v3/{project}"},
        "block_storage_endpoint_override": f"{openstack.base_url}/volume/v3/{project}",
    })
    assert create_through(clouds, tmp_path, "pvc-token")


def test_wrong_password_is_not_ready_and_unavailable(
    openstack: OpenStackStandIn, tmp_path: Path
) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(openstack.cloud_conf().replace("password = secret", "password = wrong"))
    server, handle = start_controller(conf, tmp_path / "bad.sock")
    try:
        assert not handle.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value
        with pytest.raises(grpc.RpcError) as info:
            handle.controller.CreateVolume(create_request("pvc-bad"), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "wrong" not in info.value.details()
        assert "Keystone at http" in info.value.details()
    finally:
        handle.channel.close()
        server.stop(0)



def test_cloud_flag_finds_the_file_of_os_client_config_file(
    openstack: OpenStackStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--cloud NAME` with the file every openstacksdk user points OS_CLIENT_CONFIG_FILE at."""
    clouds = write_clouds(tmp_path, {**base(openstack), "auth": {
        "auth_url": openstack.auth_url, "username": "admin", "password": "secret",
        "project_name": "demo", "user_domain_name": "Default",
        "project_domain_name": "Default"}})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    assert create_through(None, tmp_path, "pvc-env")


def test_unknown_cloud_names_the_files_read(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = write_clouds(tmp_path, {"auth": {"auth_url": "http://k/v3"}})
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    cloud = Cloud(load_cloud_config([], cloud="missing").auth)
    with pytest.raises(errors.InvalidArgument) as info:
        cloud.connection()
    assert "missing" in info.value.message and str(clouds) in info.value.message
