"""Why mount or a filesystem grow refused, told to the operator instead of answered INTERNAL.

A mount of a damaged filesystem, a grow the kernel refuses, a device that fails its reads:
these are states of the node and the volume, not bugs of ours. Each becomes FailedPrecondition
naming the device, the filesystem, what the refusal most likely means and the command's own
words, and saying that nothing on the device was changed.

Why FAILED_PRECONDITION: the CSI spec's error tables for NodeStageVolume and NodeExpandVolume
have no row for "the filesystem on the volume is damaged", so the gRPC meaning decides, and
FAILED_PRECONDITION is "the system is not in the state the operation needs; do not retry until
it is fixed", which is what an fsck or xfs_repair by an operator does. A CO handles it well:
kubelet takes it as a final answer (the volume is not staged; no uncertain mount to clean up),
shows the message in the pod's events and retries with back-off, and for NodeExpandVolume it is
the code the spec gives to "cannot expand in this state", so the expansion is tried again at the
next staging instead of in a loop. DATA_LOSS would claim data is lost, which we do not know (a
wrong mount option draws the same words from mount), and no CO treats it specially; INTERNAL
says "a bug of the plugin" and sends the operator to the wrong place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cinder_csi.errors import CommandFailed, FailedPrecondition

# mount(8): exit status 32 is "mount failure", i.e. the kernel (or a mount helper) refused.
MOUNT_FAILURE = 32


@dataclass(frozen=True)
class Reason:
    words: tuple[str, ...]  # lower-case fragments of what the command printed
    meaning: str  # may name {fstype}, {device} and {repair}


MOUNT_REASONS = (
    Reason(("can't read superblock", "input/output error"),
           "the device cannot be read (I/O error): the disk may be failing or detached"),
    Reason(("wrong fs type", "bad superblock", "probably corrupted", "structure needs cleaning",
            "bad message"),
           "the kernel refused the {fstype} filesystem on it: the filesystem may be damaged "
           "(check and repair it with `{repair}`), or a mount option may be wrong"),
    Reason(("unknown filesystem type", "no such device"),
           "this node's kernel cannot mount {fstype} (a missing module?)"),
    Reason(("permission denied", "operation not permitted", "must be superuser"),
           "the node plugin is not allowed to mount (does its container run privileged?)"),
    Reason(("read-only file system", "write-protected"), "the device is read-only"),
)
GROW_REASONS = (
    Reason(("e2fsck", "fsck", "structure needs cleaning", "bad magic", "corrupt"),
           "the {fstype} filesystem must be checked before it can grow (`{repair}`, with the "
           "volume unmounted)"),
    Reason(("permission denied", "operation not permitted"),
           "the kernel refused to grow the mounted {fstype} filesystem: it may have recorded "
           "errors (check it with `{repair}`, unmounted), or the plugin lacks the privilege"),
    Reason(("read-only file system",), "the filesystem is mounted or marked read-only"),
    Reason(("input/output error",),
           "the device cannot be read or written (I/O error): the disk may be failing"),
    Reason(("no space left",), "the filesystem has no room for the metadata of its growth"),
    # xfs_growfs cannot read the geometry of an xfs that shut down after an error.
    Reason(("not a mounted xfs filesystem",),
           "the xfs filesystem is not mounted there, or has shut down after an error (see the "
           "kernel log; `{repair}` once it is unmounted)"),
)


def repair_command(fstype: str, device: Path) -> str:
    return f"xfs_repair {device}" if fstype == "xfs" else f"e2fsck -f {device}"


def _said(error: CommandFailed) -> str:
    """The command's own words: the line(s) of stderr (else stdout) CommandFailed kept."""
    text = (error.stderr or error.stdout).strip()
    return " ".join(text.split()) or f"(nothing; exit code {error.returncode})"


def refusal(
    error: CommandFailed, *, doing: str, device: Path, fstype: str, reasons: Sequence[Reason],
    refusal_codes: Collection[int] = (),
) -> FailedPrecondition | None:
    """FailedPrecondition when the command's words match a known reason (or it exited with one
    of `refusal_codes`); None for a failure nobody foresaw, which stays INTERNAL."""
    said = _said(error)
    lowered = said.lower()
    meaning = next((r.meaning for r in reasons if any(w in lowered for w in r.words)), None)
    if meaning is None and error.returncode not in refusal_codes:
        return None
    explained = (meaning or "it was refused").format(
        fstype=fstype, device=device, repair=repair_command(fstype, device))
    return FailedPrecondition(
        f"cannot {doing}: {explained}. {error.argv[0]} said: {said[-600:]}. Nothing on "
        f"{device} was changed."
    )


@contextmanager
def explaining(
    *, doing: str, device: Path, fstype: str, reasons: Sequence[Reason],
    refusal_codes: Collection[int] = (),
) -> Iterator[None]:
    """Around running a command: its foreseeable refusals become FailedPrecondition."""
    try:
        yield
    except CommandFailed as exc:
        explained = refusal(exc, doing=doing, device=device, fstype=fstype, reasons=reasons,
                            refusal_codes=refusal_codes)
        if explained is None:
            raise
        raise explained from exc
