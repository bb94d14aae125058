"""Where each service lives under the stand-in's base URL (devstack's layout)."""

IDENTITY = "/identity"
VOLUME = "/volume"
COMPUTE = "/compute"
METADATA = "/metadata"

VOLUME_V3 = f"{VOLUME}/v3"
COMPUTE_V21 = f"{COMPUTE}/v2.1"
