"""The provisioner Secret a DeleteVolume is sent with, read by reference when it is needed.

When that Secret is gone (deleted with its class, say), the call is made without secrets and a
Warning Event says so: a driver that needs them refuses (and the deletion is retried, nothing
lost), one that does not (ours) deletes. Waiting for a Secret that may never come back would
keep the volume forever, which is a leak under another name.
"""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.objects import Obj, read_secret
from cinder_csi.loop.pvspec import SecretRef

REASON = "VolumeFailedDelete"


def deletion_secrets(ctx: LoopContext, about: Obj, ref: SecretRef | None,
                     volume: str) -> dict[str, str]:
    """The Secret's values; none (with a Warning Event on ``about``) when it is gone.
    Raises ApiException for any other failure to read it."""
    if ref is None:
        return {}
    try:
        values = read_secret(ctx.rest, ref.namespace, ref.name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        ctx.recorder.warning(about, REASON,
                             f'provisioner secret "{ref.namespace}/{ref.name}" is gone; '
                             f"deleting volume {volume} without secrets")
        return {}
    ctx.recorder.add_secrets(values.values())
    return values
