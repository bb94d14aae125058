from __future__ import annotations

import logging
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
        ("[Global]\nauth-url=x\nos-endpoint-type=sideways\n", "os-endpoint-type"),
        ("[Global]\nauth-url=x\ncert-file=/c\n", "cert-file and key-file"),
        ("[Global]\nauth-url=x\n[BlockStorage]\nrescan-on-resize=perhaps\n", "boolean"),
        ('[Global]\nauth-url=x\n[BlockStorage "x"]\n', "takes no name"),
        ("[Global]\nauth-url=x\n[LoadBalancerClass]\n", "needs a name"),
        ("[Global]\nauth-url=x\n[BlockStorage]\nnode-volume-attach-limit=lots\n", "integer"),
        ("[Global]\nauth-url=x\n[Metadata]\nsearch-order=crystalBall\n", "crystalBall"),
        ("[Global]\nusername=x\n", "no credentials"),
        ("not ini at all", "before any \\[section\\]"),
        ("[Global]\nauth-url = \"x\n", "unterminated quote"),
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


# -- drop-in compatibility with upstream's cloud.conf ---------------------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upstream-cloud.conf"


def test_upstream_documented_config_loads(caplog: pytest.LogCaptureFixture) -> None:
    """Every key of upstream's docs and examples: ours take effect, the rest are ignored."""
    with caplog.at_level(logging.WARNING, logger="cinder_csi.config"):
        config = load_cloud_config([FIXTURE])
    default = config.auth
    assert default.options["auth_url"] == "https://keystone.example.invalid:5000/v3"
    assert default.options["project_domain_name"] == "Default"
    assert default.interface == "public"
    assert (default.cert_file, default.key_file) == ("/etc/config/client.crt",
                                                      "/etc/config/client.key")
    assert config.block_storage.node_volume_attach_limit == 256
    assert set(config.clouds) == {"", "zone-one"}
    assert config.clouds["zone-one"].region == "one"
    assert config.clouds["zone-one"].section() == '[Global "zone-one"]'
    for key in ("[BlockStorage] bs-version", "[BlockStorage] trust-device-path",
                "[LoadBalancer] lb-method", "[Networking] public-network-name",
                "[Route] router-id", "[Global] secret-name", "[LoadBalancerClass] subnet-id"):
        assert key in config.ignored
    assert not any("auth-url" in k or "node-volume" in k for k in config.ignored)
    # Logged once, naming each key; the secret of the config never.
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 1 and "[BlockStorage] bs-version" in warnings[0]
    assert "upstream-pa55word" not in caplog.text and "upstream-pa55word" not in repr(config)


def test_in_tree_provider_keys_no_longer_stop_the_driver(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", "[Global]\nauth-url=http://k/v3\nos-endpoint-type=internal\n"
                 "trustee-id=t1\ntrustee-password=trustee-s3cret\ntrust-id=tr\ntoken=abc\n"
                 "[BlockStorage]\nbs-version=v2\ntrust-device-path=false\n")
    config = load_cloud_config([conf])
    assert config.auth.interface == "internal"
    assert config.auth.options["trust_id"] == "tr"
    # Upstream authenticates a trust with the trustee's credentials when they are given.
    assert config.auth.options["user_id"] == "t1"
    assert config.auth.options["password"] == "trustee-s3cret"
    assert "[Global] token" in config.ignored
    assert "trustee-s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[Global]\nauth-url=x\nauth-ulr=y\n", "did you mean 'auth-url'"),
        ("[Global]\nauth-url=x\n[BlockStorage]\nnode-volume-attach-limt=3\n",
         "did you mean 'node-volume-attach-limit'"),
        ("[Global]\nauth-url=x\nsearch-order=configDrive\n", "belongs in [Metadata]"),
        ("[Global]\nauth-url=x\n[Block Storage]\n", "did you mean [BlockStorage]"),
        ("[Global]\nauth-url=x\n[Blockstorage-opts]\n", "did you mean [BlockStorage]"),
        ("[Global]\nauth-url=x\n[Metdata]\n", "did you mean [Metadata]"),
    ],
)
def test_unknown_key_or_section_suggests_the_nearest(tmp_path: Path, text: str, hint: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        load_cloud_config([write(tmp_path, "typo.conf", text)])
    assert hint in info.value.message
    assert "typo.conf:" in info.value.message  # names the file and line


def test_all_unknown_keys_are_reported_at_once(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", "[Global]\nauth-url=x\nfoo=1\nbar=2\n")
    with pytest.raises(errors.InvalidArgument) as info:
        load_cloud_config([conf])
    assert "'foo'" in info.value.message and "'bar'" in info.value.message


def test_named_global_sections_are_clouds(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", '[Global]\nauth-url=http://a/v3\n'
                 '[Global "east"]\nauth-url=http://e/v3\nregion=East\n'
                 '[Global "West"]\nauth-url=http://w/v3\n')
    config = load_cloud_config([conf])
    assert set(config.clouds) == {"", "east", "West"}  # subsection names keep their case
    only = load_cloud_config([conf], cloud_names=["east"])
    assert set(only.clouds) == {"east"}
    with pytest.raises(errors.InvalidArgument, match='no \\[Global "north"\\]'):
        load_cloud_config([conf], cloud_names=["north"])


def test_named_cloud_without_credentials_is_refused(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", '[Global]\nauth-url=http://a/v3\n[Global "x"]\nregion=R\n')
    with pytest.raises(errors.InvalidArgument, match='\\[Global "x"\\]'):
        load_cloud_config([conf])


def test_use_clouds_keeps_section_keys(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", '[Global "c"]\nuse-clouds=true\ncloud=mine\n'
                 "clouds-file=/etc/o/clouds.yaml\nusername=override\n")
    auth = load_cloud_config([conf]).clouds["c"]
    assert (auth.cloud, auth.clouds_file) == ("mine", "/etc/o/clouds.yaml")
    assert auth.options["username"] == "override"


def test_gcfg_syntax(tmp_path: Path) -> None:
    conf = write(tmp_path, "c.conf", (
        "; comment\n"
        "  [global]  \n"
        '    auth-url = "http://k/v3" ; trailing comment\n'
        '  password = "a;b#c \\"q\\" \\\\"\n'
        "username = plain value # comment\n"
        "tls-insecure\n"
        "region = Region\\\n"
        "One\n"
    ))
    auth = load_cloud_config([conf]).auth
    assert auth.options["auth_url"] == "http://k/v3"
    assert auth.options["password"] == 'a;b#c "q" \\'
    assert auth.options["username"] == "plain value"
    assert auth.tls_insecure  # a bare name is true
    assert auth.region == "RegionOne"
