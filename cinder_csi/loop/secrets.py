"""The Secrets a CSI call of the loop is sent with, read by reference when the call is made.

``call_secrets``: the publish or expand Secret a PV names (``spec.csi.<field>``); failing to
read it fails the attempt, whose message the caller words as its sidecar does.

``deletion_secrets``: the provisioner Secret a DeleteVolume is sent with. When that Secret is
gone (deleted with its class, say), the call is made without secrets and a Warning Event says
so: a driver that needs them refuses (and the deletion is retried, nothing lost), one that does
not (ours) deletes. Waiting for a Secret that may never come back would keep the volume
forever, which is a leak under another name.
"""

from __future__ import annotations

from collections.abc import Callable

from cinder_csi.loop.capabilities import secret_ref
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import AttemptFailed
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import API_ERRORS, api_error_text
from cinder_csi.loop.kube.objects import Obj, read_secret
from cinder_csi.loop.pvspec import SecretRef

REASON = "VolumeFailedDelete"


def call_secrets(ctx: LoopContext, pv: Obj, field: str,
                 failure: Callable[[str, str], str]) -> dict[str, str]:
    """The values of the Secret ``spec.csi.<field>`` of ``pv`` names ({} when none), registered
    for redaction. A failed read raises AttemptFailed with ``failure(namespace, name)`` followed
    by the API's words."""
    ref = secret_ref(pv, field)
    if ref is None:
        return {}
    try:
        values = read_secret(ctx.rest, *ref)
    except API_ERRORS as exc:
        raise AttemptFailed(f"{failure(*ref)}: {api_error_text(exc)}") from None
    ctx.recorder.add_secrets(values.values())
    return values


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
