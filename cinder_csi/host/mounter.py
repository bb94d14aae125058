"""Mount, bind-mount, remount read-only, unmount, and format-then-mount; all idempotent.

Idempotent means a retried call finds its own earlier work and succeeds without redoing it:
the same source already at the target with the same fstype and read-only-ness is a no-op,
while anything else at the target is FailedPrecondition, never a mount on top of it.
Callers serialise calls per volume (the node's per-volume guard); this module does not lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cinder_csi.deadline import Deadline
from cinder_csi.errors import (
    CinderCSIError,
    CommandFailed,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    Timeout,
)
from cinder_csi.host.commands import CommandRunner
from cinder_csi.host.filesystems import Filesystems, cache_kept, check_fstype
from cinder_csi.host.mountcall import MountCall, try_mount
from cinder_csi.host.mountinfo import MountInfo, MountTable, device_number, normalize
from cinder_csi.host.parallel import all_of
from cinder_csi.host.refusals import MOUNT_FAILURE, MOUNT_REASONS, explaining

log = logging.getLogger(__name__)

# Per-mount-point flags the kernel shows in mountinfo's options; others can't be compared.
_VFS_FLAGS = frozenset({"nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime"})
# Options that would turn a plain mount into another operation.
_FORBIDDEN_OPTIONS = frozenset({"bind", "rbind", "remount", "move"})
# Mounts stacked at one target that unmount will peel off before giving up.
_MAX_STACKED = 16


class Mounter:
    def __init__(
        self,
        runner: CommandRunner | None = None,
        table: MountTable | None = None,
        filesystems: Filesystems | None = None,
        sys_root: Path = Path("/sys"),
        *,
        syscall: bool = True,
    ) -> None:
        self.runner = runner or CommandRunner()
        self.table = table or MountTable()
        self.filesystems = filesystems or Filesystems(self.runner)
        self.sys_root = sys_root
        # mount(2) for the plain mounts it can express (host/mountcall.py); else the program.
        self.mount_call = MountCall.load() if syscall else None

    # ---- mount ---------------------------------------------------------------------------

    def mount(
        self,
        device: Path,
        target: Path,
        fstype: str,
        options: Sequence[str] = (),
        deadline: Deadline | None = None,
    ) -> None:
        _check_options(options)
        top = self._top(target)
        if top is not None:
            self._check_already_mounted(top, device, target, fstype, options)
            return
        self._mount_now(device, target, fstype, options, deadline)

    def _check_already_mounted(
        self, top: MountInfo, device: Path, target: Path, fstype: str, options: Sequence[str]
    ) -> None:
        """A retried call finds its own earlier mount (fine), or anything else (refused)."""
        if not self._same_device(top, device):
            raise FailedPrecondition(f"{target} already has {top.source} mounted, not {device}")
        if top.fstype != fstype:
            raise FailedPrecondition(
                f"{device} is already mounted at {target} as {top.fstype}, not {fstype}"
            )
        self._check_flags(top, target, "ro" in options, options)
        log.debug("%s already mounted at %s", device, target)

    def _mount_now(
        self, device: Path, target: Path, fstype: str, options: Sequence[str],
        deadline: Deadline | None,
    ) -> None:
        _check_mount_point(target)
        if try_mount(self.mount_call, device, target, fstype, options):
            log.info("mounted %s at %s (%s, %s; mount(2))", device, target, fstype,
                     ",".join(options) or "-")
            return
        argv = ["mount", "-t", fstype]
        if options:
            argv += ["-o", ",".join(options)]
        with explaining(doing=f"mount {device} ({fstype}) at {target}", device=device,
                        fstype=fstype, reasons=MOUNT_REASONS, refusal_codes=(MOUNT_FAILURE,)):
            self.runner.run([*argv, str(device), str(target)], deadline=deadline)
        log.info("mounted %s at %s (%s, %s)", device, target, fstype, ",".join(options) or "-")

    def bind_mount(
        self,
        source: Path,
        target: Path,
        readonly: bool = False,
        deadline: Deadline | None = None,
    ) -> None:
        """Bind `source` (directory or device node) at `target`; read-only if asked."""
        if not os.path.exists(source):
            raise NotFound(f"bind source {source} does not exist")
        top = self._top(target)
        if top is not None:
            if not self._is_bind_of(top, source):
                raise FailedPrecondition(
                    f"{target} already has {top.source}:{top.root} mounted, not {source}"
                )
            if top.readonly and not readonly:
                raise FailedPrecondition(
                    f"{source} is already bind-mounted read-only at {target}, not read-write"
                )
            if readonly and not top.readonly:
                # An earlier call died between bind and remount: finish its work.
                self._remount_bind_ro(target, deadline)
            return
        _check_mount_point(target)
        self.runner.run(["mount", "--bind", str(source), str(target)], deadline=deadline)
        if readonly:
            try:
                self._remount_bind_ro(target, deadline)
            except CinderCSIError:
                # Never leave a writable bind where a read-only one was asked for.
                self._undo_bind(target)
                raise
        log.info("bind-mounted %s at %s%s", source, target, " read-only" if readonly else "")

    def _undo_bind(self, target: Path) -> None:
        try:
            self.runner.run(["umount", str(target)])
        except (InternalError, Timeout) as exc:
            log.error("could not undo writable bind mount at %s: %s", target, exc)

    def remount_readonly(self, target: Path, deadline: Deadline | None = None) -> None:
        """Make the mount at `target` read-only (this mount point only, not the superblock)."""
        top = self._top(target)
        if top is None:
            raise FailedPrecondition(f"nothing is mounted at {target}")
        if not top.readonly:
            self._remount_bind_ro(target, deadline)

    def _remount_bind_ro(self, target: Path, deadline: Deadline | None) -> None:
        self.runner.run(["mount", "-o", "remount,bind,ro", str(target)], deadline=deadline)
        top = self._top(target)
        if top is None or not top.readonly:
            raise InternalError(f"remount of {target} read-only did not take effect")

    # ---- unmount -------------------------------------------------------------------------

    def unmount(self, target: Path, deadline: Deadline | None = None) -> None:
        """Unmount everything at `target`; nothing mounted is success."""
        for _ in range(_MAX_STACKED):
            top = self._top(target)
            if top is None:
                return
            try:
                self.runner.run(["umount", str(target)], deadline=deadline)
            except CommandFailed as exc:
                if self._top(target) is None:
                    return  # someone else unmounted it meanwhile
                if not self._device_vanished(top):
                    raise FailedPrecondition(
                        f"cannot unmount {target} (is it in use?): {exc.message}"
                    ) from exc
                # The volume was detached under us; a lazy unmount at least frees the path.
                log.warning(
                    "device %s behind %s is gone and umount failed (%s); detaching lazily",
                    top.source,
                    target,
                    exc.stderr.strip(),
                )
                self.runner.run(["umount", "-l", str(target)], deadline=deadline)
            log.info("unmounted %s", target)
        raise InternalError(f"{target} still mounted after {_MAX_STACKED} unmounts")

    def _device_vanished(self, mount: MountInfo) -> bool:
        if not mount.source.startswith("/dev/"):
            return False
        return not (self.sys_root / "dev" / "block" / mount.major_minor).exists()

    # ---- format and mount ----------------------------------------------------------------

    def format_and_mount(
        self,
        device: Path,
        target: Path,
        fstype: str,
        mount_options: Sequence[str],
        deadline: Deadline,
        *,
        proof: Callable[[], object] | None = None,
    ) -> None:
        """Mount `device` at `target`, creating a filesystem first only if the device is blank.
        Bad input is refused before anything is written; the mount table is read once.

        `proof` is the caller's proof that `device` is the volume it means, raising if it is
        not. It runs alongside the blank check, which only reads (host/parallel.py), and
        nothing is formatted or mounted unless both passed."""
        check_fstype(fstype)
        _check_options(mount_options)
        top = self._top(target)
        if top is not None:
            if proof is not None:
                proof()
            self._check_already_mounted(top, device, target, fstype, mount_options)
            return
        with cache_kept(device):
            if proof is None:
                found = self.filesystems.probe(device, deadline)
            else:
                _, found = all_of(proof, lambda: self.filesystems.probe(device, deadline))
            if found.blank:
                self.filesystems.make(device, fstype, deadline, probed=found)
            elif found.fstype != fstype:
                raise FailedPrecondition(
                    f"device {device} holds {found.describe()}, but {fstype} was requested; "
                    "it will not be reformatted"
                )
        self._mount_now(device, target, fstype, mount_options, deadline)

    # ---- helpers -------------------------------------------------------------------------

    def _top(self, target: Path) -> MountInfo | None:
        mounts = self.table.mounts_at(target)
        return mounts[-1] if mounts else None

    @staticmethod
    def _same_device(mount: MountInfo, device: Path) -> bool:
        number = device_number(device)
        if number is not None:
            return mount.major_minor == number
        return mount.source in (normalize(device), os.path.realpath(device))

    def _is_bind_of(self, mount: MountInfo, source: Path) -> bool:
        holder = self.table.containing(source)
        if holder is None:
            return False
        rel = os.path.relpath(normalize(source), holder.mount_point)
        expected_root = os.path.normpath(os.path.join(holder.root, rel))
        return mount.major_minor == holder.major_minor and mount.root == expected_root

    @staticmethod
    def _check_flags(
        mount: MountInfo, target: Path, readonly: bool, options: Sequence[str]
    ) -> None:
        if mount.readonly != readonly:
            have = "read-only" if mount.readonly else "read-write"
            raise FailedPrecondition(f"{target} is already mounted {have}")
        missing = [o for o in options if o in _VFS_FLAGS and o not in mount.options]
        if missing:
            raise FailedPrecondition(
                f"{target} is already mounted without option(s) {', '.join(missing)}"
            )


def _check_options(options: Sequence[str]) -> None:
    bad = _FORBIDDEN_OPTIONS.intersection(options)
    if bad:
        raise InvalidArgument(f"mount option(s) {', '.join(sorted(bad))} are not allowed")


def _check_mount_point(target: Path) -> None:
    if not os.path.exists(target):
        raise NotFound(f"mount point {target} does not exist")
