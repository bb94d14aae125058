from __future__ import annotations

from pathlib import Path

import pytest

from cinder_csi import errors
from cinder_csi.config import DEFAULT_NODE_VOLUME_ATTACH_LIMIT, load_cloud_config

UPSTREAM_CONF = """
[Global]
auth-url = "https://keystone.example:5000/v3"
username = admin
password = "s3cr3t-value"
tenant-name = demo
domain-name = Default
region = RegionOne
tls-insecure = true

[BlockStorage]
node-volume-attach-limit = 60
rescan-on-resize = true
ignore-volume-az = yes

[Metadata]
search-order = metadataService,configDrive
request-timeout = 500ms
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_upstream_keys_are_read(tmp_path: Path) -> None:
    config = load_cloud_config([write(tmp_path, "cloud.conf", UPSTREAM_CONF)])
    assert config.auth.options["auth_url"] == "https://keystone.example:5000/v3"
    assert config.auth.options["project_name"] == "demo"
    assert config.auth.region == "RegionOne" and config.auth.tls_insecure
    assert config.block_storage.node_volume_attach_limit == 60
    assert config.block_storage.rescan_on_resize and config.block_storage.ignore_volume_az
    assert config.metadata.search_order == ("metadataService", "configDrive")
    assert config.metadata.request_timeout == pytest.approx(0.5)


def test_later_files_override_earlier_keys(tmp_path: Path) -> None:
    first = write(tmp_path, "a.conf", UPSTREAM_CONF)
    second = write(tmp_path, "b.conf", "[Global]\nregion = RegionTwo\n")
    config = load_cloud_config([first, second])
    assert config.auth.region == "RegionTwo"
    assert config.auth.options["username"] == "admin"


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    config = load_cloud_config([write(tmp_path, "cloud.conf", UPSTREAM_CONF)])
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.auth)


def test_application_credentials(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", "[Global]\nauth-url=http://k/v3\n"
                 "application-credential-id=abc\napplication-credential-secret=xyz\n")
    config = load_cloud_config([conf])
    assert config.auth.options["application_credential_id"] == "abc"
    assert "xyz" not in repr(config)


def test_defaults_are_sound(tmp_path: Path) -> None:
    config = load_cloud_config([write(tmp_path, "c.conf", "[Global]\nauth-url=http://k/v3\n")])
    assert config.block_storage.node_volume_attach_limit == DEFAULT_NODE_VOLUME_ATTACH_LIMIT > 0
    assert config.metadata.search_order == ("configDrive", "metadataService")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[Global]\nauth-url=x\nbogus-key=1\n", "bogus-key"),
        ("[Global]\nauth-url=x\n[BlockStorage]\nnode-volume-attach-limit=lots\n", "integer"),
        ("[Global]\nauth-url=x\n[Metadata]\nsearch-order=crystalBall\n", "crystalBall"),
        ("[Global]\nusername=x\n", "no credentials"),
        ("not ini at all", "not valid INI"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=needle):
        load_cloud_config([write(tmp_path, "bad.conf", text)])


def test_clouds_yaml_selected_by_flag(tmp_path: Path) -> None:
    config = load_cloud_config([], cloud="sandbox", clouds_file=str(tmp_path / "clouds.yaml"))
    assert config.auth.cloud == "sandbox"


def test_node_needs_no_credentials(tmp_path: Path) -> None:
    conf = write(tmp_path, "n.conf", "[BlockStorage]\nnode-volume-attach-limit=12\n")
    config = load_cloud_config([conf], require_auth=False)
    assert config.block_storage.node_volume_attach_limit == 12
