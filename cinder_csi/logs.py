"""Where the process's log lines go, and which libraries may speak below WARNING."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# keystoneauth and openstacksdk log request headers and bodies at DEBUG (tokens are hashed,
# but bodies can carry passwords); keep them quiet unless asked for.
NOISY_LOGGERS = ("keystoneauth", "openstack", "urllib3", "stevedore")


def setup_logging(level: str, log_file: Path | None) -> None:
    """One handler on the root logger: `log_file` (its folder made), else stderr."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
