"""cloud.conf as settings: the clouds ([Global] sections), [BlockStorage] and [Metadata].

Several files may be given; later files override earlier ones key by key, as upstream's gcfg
reader does. ``[Global]`` is the default cloud; each ``[Global "name"]`` is another cloud that a
CSI request selects with the secret ``cloud: name`` (upstream's multi-cloud). With
``use-clouds = true`` (or ``--cloud``/OS_CLOUD for the default cloud) the credentials come
from clouds.yaml, and keys set in the section take precedence over the clouds.yaml entry.

Secrets (password, application-credential secret) are kept out of every repr so that the
settings can be logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cinder_csi.config import keys
from cinder_csi.config.ini import Entry, SectionHeader, read_files
from cinder_csi.errors import InvalidArgument

log = logging.getLogger(__name__)

# [Global] keys, upstream spelling -> openstacksdk auth option.
_AUTH_OPTIONS: dict[str, str] = {
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
SECRET_KEYS = frozenset({"password", "application_credential_secret", "token"})
# gophercloud's endpoint availabilities, which are keystoneauth's interfaces.
_INTERFACES = ("public", "internal", "admin")
DEFAULT_CLOUD = ""  # the plain [Global] section

# Nova's libvirt driver runs out of PCI slots for virtio disks near this count; upstream
# reports 0 ("unlimited") when unset, which lets the scheduler overfill a node. 256 is the
# upstream maximum for the setting; we default lower, to what a q35/i440fx guest can attach.
DEFAULT_NODE_VOLUME_ATTACH_LIMIT = 25
DEFAULT_METADATA_SEARCH_ORDER = ("configDrive", "metadataService")


@dataclass(frozen=True)
class AuthSettings:
    """How to reach one cloud; ``options`` are openstacksdk auth options (secrets unprinted)."""

    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    region: str | None = None
    ca_file: str | None = None
    tls_insecure: bool = False
    cloud: str | None = None  # clouds.yaml entry, when used
    clouds_file: str | None = None
    name: str = DEFAULT_CLOUD  # the [Global "name"] it came from
    interface: str | None = None  # os-endpoint-type
    cert_file: str | None = None
    key_file: str | None = None

    def redacted(self) -> dict[str, str]:
        return {k: ("***" if k in SECRET_KEYS else v) for k, v in self.options.items()}

    def section(self) -> str:
        return f'[Global "{self.name}"]' if self.name else "[Global]"

    def __repr__(self) -> str:
        return (
            f"AuthSettings(section={self.section()!r}, options={self.redacted()!r}, "
            f"region={self.region!r}, cloud={self.cloud!r}, clouds_file={self.clouds_file!r}, "
            f"interface={self.interface!r})"
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
    clouds: Mapping[str, AuthSettings] = field(default_factory=dict)
    block_storage: BlockStorageSettings = field(default_factory=BlockStorageSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    # "[Section] key" of every key that was set but has no effect in this driver
    ignored: tuple[str, ...] = ()

    @property
    def auth(self) -> AuthSettings:
        """The default cloud (plain [Global], or the clouds.yaml entry of --cloud)."""
        return self.clouds.get(DEFAULT_CLOUD) or AuthSettings()


def load_cloud_config(
    paths: Iterable[Path],
    *,
    cloud: str | None = None,
    clouds_file: str | None = None,
    cloud_names: Sequence[str] | None = None,
    require_auth: bool = True,
) -> CloudConfig:
    """Read cloud.conf files.

    ``cloud`` (the --cloud flag or OS_CLOUD) selects a clouds.yaml entry for the default
    cloud. ``cloud_names`` (upstream's --cloud-name) restricts the clouds to those sections;
    by default every [Global] section is a cloud. The node plugin passes
    ``require_auth=False``: it needs only [BlockStorage] and [Metadata].
    """
    headers, entries = read_files(paths)
    sections = _merge(headers, entries)
    ignored = _check_and_find_ignored(sections)
    if ignored:
        log.warning("cloud.conf: %s have no effect in this driver and are ignored",
                    ", ".join(ignored))
    globals_ = {sub or DEFAULT_CLOUD: values for (name, sub), values in sections.items()
                if name == "global"}
    clouds = _clouds(globals_, cloud, clouds_file, cloud_names, require_auth)
    return CloudConfig(
        clouds=clouds,
        block_storage=_block_storage_settings(_values(sections.get(("blockstorage", None)))),
        metadata=_metadata_settings(_values(sections.get(("metadata", None)))),
        ignored=tuple(ignored),
    )


# -- reading ---------------------------------------------------------------------------------

Sections = dict[tuple[str, str | None], dict[str, Entry]]


def _merge(headers: list[SectionHeader], entries: list[Entry]) -> Sections:
    """Section -> key -> last entry; sections that appear without keys are kept too."""
    merged: Sections = {}
    for header in headers:
        _check_section(header)
        merged.setdefault((header.section, header.subsection), {})
    for entry in entries:
        merged.setdefault((entry.section, entry.subsection), {})[entry.key] = entry
    return merged


def _check_section(header: SectionHeader) -> None:
    section = keys.SECTIONS.get(header.section)
    if section is None:
        raise InvalidArgument(
            f"cloud config {header.where}: unknown section [{header.section}]; "
            f"{keys.unknown_section_hint(header.section)}"
        )
    if header.subsection is not None and not section.named:
        raise InvalidArgument(
            f'cloud config {header.where}: [{section.name} "{header.subsection}"]: '
            f"[{section.name}] takes no name"
        )
    if header.subsection is None and not section.unnamed:
        raise InvalidArgument(
            f'cloud config {header.where}: [{section.name}] needs a name: '
            f'[{section.name} "name"]'
        )


def _check_and_find_ignored(sections: Sections) -> list[str]:
    """Refuse keys neither upstream nor the in-tree provider knows (all of them at once, each
    with a suggestion); return the known ones we do not use."""
    problems: list[str] = []
    ignored: list[str] = []
    for (name, _sub), values in sections.items():
        section = keys.SECTIONS[name]
        for key, entry in values.items():
            if key not in section.keys:
                problems.append(f"{entry.where}: unknown key {key!r} in [{section.name}]; "
                                f"{keys.unknown_key_hint(section, key)}")
            elif key not in section.used:
                label = f"[{section.name}] {key}"
                if label not in ignored:
                    ignored.append(label)
    if problems:
        raise InvalidArgument("cloud config: " + "; ".join(problems))
    return ignored


def _values(section: Mapping[str, Entry] | None) -> dict[str, Entry]:
    return dict(section or {})


# -- values ------------------------------------------------------------------------------------


def _parse_bool(entry: Entry) -> bool:
    lowered = entry.value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise InvalidArgument(f"cloud config {entry.where}: {entry.key} = {entry.value!r} is not "
                          "a boolean (true or false)")


def _bool(values: Mapping[str, Entry], key: str) -> bool:
    entry = values.get(key)
    return _parse_bool(entry) if entry is not None else False


def _parse_int(entry: Entry, *, minimum: int) -> int:
    try:
        number = int(entry.value.strip())
    except ValueError:
        raise InvalidArgument(f"cloud config {entry.where}: {entry.key} = {entry.value!r} is "
                              "not an integer") from None
    if number < minimum:
        raise InvalidArgument(f"cloud config {entry.where}: {entry.key} = {number} is below "
                              f"{minimum}")
    return number


def _parse_duration(entry: Entry) -> float:
    """Go-style durations as upstream writes them ("5s", "500ms", "1m"), or plain seconds."""
    text = entry.value.strip().lower()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"cloud config {entry.where}: {entry.key} = {entry.value!r} is "
                              "not a duration (e.g. 5s, 500ms)") from None


def _text(values: Mapping[str, Entry], key: str) -> str | None:
    entry = values.get(key)
    return entry.value if entry is not None and entry.value else None


# -- clouds ------------------------------------------------------------------------------------


def _clouds(
    globals_: Mapping[str, Mapping[str, Entry]],
    cloud_flag: str | None,
    clouds_file_flag: str | None,
    cloud_names: Sequence[str] | None,
    require_auth: bool,
) -> dict[str, AuthSettings]:
    names = list(dict.fromkeys(cloud_names)) if cloud_names else list(globals_)
    if cloud_flag and DEFAULT_CLOUD not in names and not cloud_names:
        names.insert(0, DEFAULT_CLOUD)
    missing = [n for n in names if n not in globals_ and not (n == DEFAULT_CLOUD and cloud_flag)]
    if missing:
        have = ", ".join(f'"{n}"' for n in globals_) or "none"
        raise InvalidArgument(
            "cloud config has no " + ", ".join(
                '[Global]' if n == DEFAULT_CLOUD else f'[Global "{n}"]' for n in missing)
            + f" section (clouds it has: {have})"
        )
    clouds = {}
    for name in names:
        flag = cloud_flag if name == DEFAULT_CLOUD else None
        flag_file = clouds_file_flag if name == DEFAULT_CLOUD else None
        clouds[name] = _auth_settings(name, globals_.get(name, {}), flag, flag_file,
                                      require_auth)
    if require_auth and not clouds:
        raise InvalidArgument(
            "no credentials: give [Global] auth-url and a user or application credential in "
            "cloud.conf, or a clouds.yaml cloud with --cloud / OS_CLOUD / use-clouds"
        )
    return clouds


def _auth_settings(
    name: str, values: Mapping[str, Entry], cloud_flag: str | None,
    clouds_file_flag: str | None, require_auth: bool,
) -> AuthSettings:
    options = {_AUTH_OPTIONS[k]: e.value for k, e in values.items()
               if k in _AUTH_OPTIONS and e.value}
    if options.get("trust_id"):
        # Upstream (and manila's legacy auth): the trustee's own credentials, when given.
        if _text(values, "trustee-id"):
            options["user_id"] = str(_text(values, "trustee-id"))
            options.pop("username", None)
        if _text(values, "trustee-password"):
            options["password"] = str(_text(values, "trustee-password"))
    use_clouds = _bool(values, "use-clouds")
    cloud_name = cloud_flag or (_text(values, "cloud") if use_clouds else None)
    if use_clouds and not cloud_name:
        cloud_name = os.environ.get("OS_CLOUD", "openstack")
    label = f'[Global "{name}"]' if name else "[Global]"
    if require_auth and cloud_name is None and "auth_url" not in options:
        raise InvalidArgument(
            f"no credentials in cloud config {label}: give auth-url and a user or application "
            "credential, or use-clouds = true with a clouds.yaml cloud"
            + (" (or --cloud / OS_CLOUD)" if not name else "")
        )
    cert, key = _text(values, "cert-file"), _text(values, "key-file")
    if bool(cert) != bool(key):
        raise InvalidArgument(f"cloud config {label}: cert-file and key-file go together "
                              "(client TLS needs both)")
    return AuthSettings(
        options=options,
        region=_text(values, "region"),
        ca_file=_text(values, "ca-file"),
        tls_insecure=_bool(values, "tls-insecure"),
        cloud=cloud_name,
        clouds_file=clouds_file_flag or _text(values, "clouds-file"),
        name=name,
        interface=_interface(values.get("os-endpoint-type")),
        cert_file=cert,
        key_file=key,
    )


def _interface(entry: Entry | None) -> str | None:
    if entry is None or not entry.value:
        return None
    text = entry.value.strip().lower()
    text = text[: -len("url")] if text.endswith("url") else text  # publicURL, as v2 wrote it
    if text not in _INTERFACES:
        raise InvalidArgument(f"cloud config {entry.where}: os-endpoint-type = {entry.value!r}; "
                              f"use one of {', '.join(_INTERFACES)}")
    return text


def _block_storage_settings(bs: Mapping[str, Entry]) -> BlockStorageSettings:
    limit = bs.get("node-volume-attach-limit")
    return BlockStorageSettings(
        node_volume_attach_limit=(
            _parse_int(limit, minimum=1) if limit is not None and limit.value
            else DEFAULT_NODE_VOLUME_ATTACH_LIMIT
        ),
        rescan_on_resize=_bool(bs, "rescan-on-resize"),
        ignore_volume_az=_bool(bs, "ignore-volume-az"),
        ignore_volume_microversion=_bool(bs, "ignore-volume-microversion"),
    )


def _metadata_settings(md: Mapping[str, Entry]) -> MetadataSettings:
    order_entry = md.get("search-order")
    order: tuple[str, ...] = ()
    if order_entry is not None:
        order = tuple(s.strip() for s in order_entry.value.split(",") if s.strip())
        for source in order:
            if source not in DEFAULT_METADATA_SEARCH_ORDER:
                raise InvalidArgument(
                    f"cloud config {order_entry.where}: search-order: unknown source "
                    f"{source!r} (use configDrive and/or metadataService)"
                )
    timeout = md.get("request-timeout")
    return MetadataSettings(
        search_order=order or DEFAULT_METADATA_SEARCH_ORDER,
        request_timeout=_parse_duration(timeout) if timeout is not None and timeout.value
        else 5.0,
    )
