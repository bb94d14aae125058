"""Configuration: the upstream driver's cloud.conf keys, clouds.yaml, and one Settings object.

cloud.conf is INI with the sections of the upstream Go driver ([Global], [BlockStorage],
[Metadata]); several files may be given and later files override earlier ones key by key, as
upstream's gcfg reader does. With ``use-clouds = true`` (or ``--cloud``/OS_CLOUD) the
credentials come from clouds.yaml instead, and [Global] keys may still override the region.

Secrets (password, application-credential secret, token) are kept out of every repr so that a
Settings object can be logged.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cinder_csi.errors import InvalidArgument

# [Global] keys, upstream spelling -> openstacksdk connect() keyword.
_GLOBAL_AUTH_KEYS: dict[str, str] = {
    "auth-url": "auth_url",
    "username": "username",
    "user-id": "user_id",
    "password": "password",
    "tenant-id": "project_id",
    "tenant-name": "project_name",
    "project-id": "project_id",
    "project-name": "project_name",
    "domain-id": "domain_id",
    "domain-name": "domain_name",
    "tenant-domain-id": "project_domain_id",
    "tenant-domain-name": "project_domain_name",
    "project-domain-id": "project_domain_id",
    "project-domain-name": "project_domain_name",
    "user-domain-id": "user_domain_id",
    "user-domain-name": "user_domain_name",
    "trust-id": "trust_id",
    "application-credential-id": "application_credential_id",
    "application-credential-name": "application_credential_name",
    "application-credential-secret": "application_credential_secret",
}
_GLOBAL_OTHER_KEYS = {
    "region",
    "ca-file",
    "tls-insecure",
    "use-clouds",
    "clouds-file",
    "cloud",
    "cert-file",
    "key-file",
}
_BLOCK_STORAGE_KEYS = {
    "node-volume-attach-limit",
    "rescan-on-resize",
    "ignore-volume-az",
    "ignore-volume-microversion",
}
_METADATA_KEYS = {"search-order", "request-timeout"}
SECRET_KEYS = frozenset({"password", "application_credential_secret", "token"})

# Nova's libvirt driver runs out of PCI slots for virtio disks near this count; upstream
# reports 0 ("unlimited") when unset, which lets the scheduler overfill a node. 256 is the
# upstream maximum for the setting; we default lower, to what a q35/i440fx guest can attach.
DEFAULT_NODE_VOLUME_ATTACH_LIMIT = 25
DEFAULT_METADATA_SEARCH_ORDER = ("configDrive", "metadataService")


@dataclass(frozen=True)
class AuthSettings:
    """Keyword arguments for openstacksdk; secrets excluded from repr."""

    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    region: str | None = None
    ca_file: str | None = None
    tls_insecure: bool = False
    cloud: str | None = None  # clouds.yaml entry, when used
    clouds_file: str | None = None

    def redacted(self) -> dict[str, str]:
        return {k: ("***" if k in SECRET_KEYS else v) for k, v in self.options.items()}

    def __repr__(self) -> str:
        return (
            f"AuthSettings(options={self.redacted()!r}, region={self.region!r}, "
            f"cloud={self.cloud!r}, clouds_file={self.clouds_file!r})"
        )


@dataclass(frozen=True)
class BlockStorageSettings:
    node_volume_attach_limit: int = DEFAULT_NODE_VOLUME_ATTACH_LIMIT
    rescan_on_resize: bool = False
    ignore_volume_az: bool = False
    ignore_volume_microversion: bool = False


@dataclass(frozen=True)
class MetadataSettings:
    search_order: tuple[str, ...] = DEFAULT_METADATA_SEARCH_ORDER
    request_timeout: float = 5.0


@dataclass(frozen=True)
class CloudConfig:
    auth: AuthSettings = field(default_factory=AuthSettings)
    block_storage: BlockStorageSettings = field(default_factory=BlockStorageSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)


def _parse_bool(value: str, key: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise InvalidArgument(f"cloud.conf key {key!r}: {value!r} is not a boolean")


def _parse_int(value: str, key: str, *, minimum: int = 0) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidArgument(f"cloud.conf key {key!r}: {value!r} is not an integer") from None
    if number < minimum:
        raise InvalidArgument(f"cloud.conf key {key!r}: {number} is below {minimum}")
    return number


def _parse_duration(value: str, key: str) -> float:
    """Go-style durations as upstream writes them ("5s", "500ms", "1m"), or plain seconds."""
    text = value.strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, scale in units:
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"cloud.conf key {key!r}: {value!r} is not a duration") from None


def _read_ini(paths: Iterable[Path]) -> dict[str, dict[str, str]]:
    """Merge INI files; section and key names are matched case-insensitively."""
    merged: dict[str, dict[str, str]] = {}
    for path in paths:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise InvalidArgument(f"cannot read cloud config {path}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise InvalidArgument(f"cloud config {path} is not valid INI: {exc}") from None
        for section in parser.sections():
            values = merged.setdefault(section.lower(), {})
            for key, value in parser.items(section):
                values[key] = _unquote(value)
    return merged


def _unquote(value: str) -> str:
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _check_keys(section: str, values: Mapping[str, str], known: Iterable[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidArgument(f"cloud.conf [{section}] has unknown keys: {', '.join(unknown)}")


def load_cloud_config(
    paths: Iterable[Path],
    *,
    cloud: str | None = None,
    clouds_file: str | None = None,
    require_auth: bool = True,
) -> CloudConfig:
    """Read cloud.conf files; ``cloud`` (flag or OS_CLOUD) selects a clouds.yaml entry.

    The node plugin passes ``require_auth=False``: it needs only [BlockStorage] and [Metadata].
    """
    sections = _read_ini(paths)
    return CloudConfig(
        auth=_auth_settings(sections.get("global", {}), cloud, clouds_file, require_auth),
        block_storage=_block_storage_settings(sections.get("blockstorage", {})),
        metadata=_metadata_settings(sections.get("metadata", {})),
    )


def _auth_settings(
    glob: Mapping[str, str], cloud: str | None, clouds_file: str | None, require_auth: bool
) -> AuthSettings:
    _check_keys("Global", glob, set(_GLOBAL_AUTH_KEYS) | _GLOBAL_OTHER_KEYS)
    options = {_GLOBAL_AUTH_KEYS[k]: v for k, v in glob.items() if k in _GLOBAL_AUTH_KEYS and v}
    use_clouds = _parse_bool(glob.get("use-clouds", "false"), "use-clouds")
    cloud_name = cloud or (glob.get("cloud") if use_clouds else None)
    if use_clouds and not cloud_name:
        cloud_name = os.environ.get("OS_CLOUD", "openstack")
    if require_auth and cloud_name is None and "auth_url" not in options:
        raise InvalidArgument(
            "no credentials: give [Global] auth-url and a user or application credential in "
            "cloud.conf, or a clouds.yaml cloud with --cloud / OS_CLOUD / use-clouds"
        )
    return AuthSettings(
        options=options,
        region=glob.get("region") or None,
        ca_file=glob.get("ca-file") or None,
        tls_insecure=_parse_bool(glob.get("tls-insecure", "false"), "tls-insecure"),
        cloud=cloud_name,
        clouds_file=clouds_file or glob.get("clouds-file") or None,
    )


def _block_storage_settings(bs: Mapping[str, str]) -> BlockStorageSettings:
    _check_keys("BlockStorage", bs, _BLOCK_STORAGE_KEYS)
    limit = bs.get("node-volume-attach-limit")
    return BlockStorageSettings(
        node_volume_attach_limit=(
            _parse_int(limit, "node-volume-attach-limit", minimum=1)
            if limit
            else DEFAULT_NODE_VOLUME_ATTACH_LIMIT
        ),
        rescan_on_resize=_parse_bool(bs.get("rescan-on-resize", "false"), "rescan-on-resize"),
        ignore_volume_az=_parse_bool(bs.get("ignore-volume-az", "false"), "ignore-volume-az"),
        ignore_volume_microversion=_parse_bool(
            bs.get("ignore-volume-microversion", "false"), "ignore-volume-microversion"
        ),
    )


def _metadata_settings(md: Mapping[str, str]) -> MetadataSettings:
    _check_keys("Metadata", md, _METADATA_KEYS)
    order = tuple(s.strip() for s in md.get("search-order", "").split(",") if s.strip())
    for source in order:
        if source not in DEFAULT_METADATA_SEARCH_ORDER:
            raise InvalidArgument(
                f"cloud.conf [Metadata] search-order: unknown source {source!r} "
                f"(use configDrive and/or metadataService)"
            )
    timeout = md.get("request-timeout")
    return MetadataSettings(
        search_order=order or DEFAULT_METADATA_SEARCH_ORDER,
        request_timeout=_parse_duration(timeout, "request-timeout") if timeout else 5.0,
    )
