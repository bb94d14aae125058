"""What cloud.conf's transport keys become in the openstacksdk connection (no network I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cinder_csi.cloud.connection import clouds_yaml_files, connect
from cinder_csi.config import AuthSettings

PASSWORD = {"auth_url": "http://keystone.invalid/v3", "username": "u", "password": "p",
            "project_name": "demo"}


def test_endpoint_type_region_and_tls_keys_reach_the_connection() -> None:
    conn = connect(AuthSettings(options=PASSWORD, region="RegionTwo", interface="internal",
                                ca_file="/etc/ca.crt", cert_file="/etc/c.crt",
                                key_file="/etc/c.key"))
    config = conn.config.config
    assert conn.config.get_interface("block-storage") == "internal"
    assert (config["region_name"], config["cacert"]) == ("RegionTwo", "/etc/ca.crt")
    assert (config["cert"], config["key"]) == ("/etc/c.crt", "/etc/c.key")


def test_section_keys_win_over_the_clouds_yaml_entry(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"mine": {
        "auth": {**PASSWORD, "username": "from-yaml"}, "region_name": "YamlRegion"}}}))
    conn = connect(AuthSettings(options={"username": "from-cloud-conf"}, cloud="mine",
                                clouds_file=str(clouds), interface="admin"))
    auth = conn.config.config["auth"]
    assert auth["username"] == "from-cloud-conf" and auth["password"] == "p"
    assert conn.config.get_interface("compute") == "admin"
    assert conn.config.config["region_name"] == "YamlRegion"


def test_clouds_yaml_search_follows_openstacksdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "env.yaml"))
    found = clouds_yaml_files(AuthSettings(cloud="x"))
    assert found[0] == str(tmp_path / "env.yaml")
    assert any(f.endswith("/etc/openstack/clouds.yaml") for f in found[1:])
    explicit = clouds_yaml_files(AuthSettings(cloud="x", clouds_file="/etc/o/clouds.yaml"))
    assert explicit == ["/etc/o/clouds.yaml"]
