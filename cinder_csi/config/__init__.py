"""Configuration: the upstream driver's cloud.conf (and clouds.yaml selection) as settings.

    keys.py      every section and key upstream or the in-tree provider accepts; which we use
    ini.py       the file format, read as gcfg (upstream's Go reader) reads it
    settings.py  the settings: clouds, [BlockStorage], [Metadata]; secrets kept out of repr
"""

from cinder_csi.config.settings import (
    DEFAULT_CLOUD,
    DEFAULT_METADATA_SEARCH_ORDER,
    DEFAULT_NODE_VOLUME_ATTACH_LIMIT,
    SECRET_KEYS,
    AuthSettings,
    BlockStorageSettings,
    CloudConfig,
    MetadataSettings,
    load_cloud_config,
)

__all__ = [
    "DEFAULT_CLOUD",
    "DEFAULT_METADATA_SEARCH_ORDER",
    "DEFAULT_NODE_VOLUME_ATTACH_LIMIT",
    "SECRET_KEYS",
    "AuthSettings",
    "BlockStorageSettings",
    "CloudConfig",
    "MetadataSettings",
    "load_cloud_config",
]
