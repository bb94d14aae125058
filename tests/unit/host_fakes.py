"""Fakes shared by the unit tests of host/: a command runner that answers from a script."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from cinder_csi.deadline import Deadline
from cinder_csi.host.commands import CommandResult, CommandRunner, failure

Handler = Callable[[tuple[str, ...]], "CommandResult | tuple[int, str, str] | None"]


class FakeRunner(CommandRunner):
    """Records every argv; `handler` answers (None = success, empty output)."""

    def __init__(
        self,
        handler: Handler | None = None,
        available: Collection[str] = ("blkid", "mount", "umount", "losetup", "udevadm"),
    ) -> None:
        super().__init__()
        self.handler = handler
        self.available = set(available)
        self.calls: list[tuple[str, ...]] = []

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.available or "mkfs" in name else None

    def run(
        self,
        argv: Sequence[str],
        *,
        deadline: Deadline | None = None,
        timeout: float | None = None,
        ok_codes: Collection[int] = (0,),
        input_text: str | None = None,
    ) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        answer = self.handler(args) if self.handler else None
        if answer is None:
            answer = (0, "", "")
        if isinstance(answer, tuple):
            answer = CommandResult(args, *answer)
        if answer.returncode not in ok_codes:
            raise failure(answer)
        return answer

    def commands(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


class FakeDevTree:
    """A fake /dev, /dev/disk/by-id and /sys under a directory, for DeviceFinder."""

    def __init__(self, root: Path) -> None:
        self.dev = root / "dev"
        self.by_id = self.dev / "disk" / "by-id"
        self.sys = root / "sys"
        self.by_id.mkdir(parents=True)
        (self.sys / "block").mkdir(parents=True)

    def link(self, name: str, device: Path) -> Path:
        link = self.by_id / name
        link.symlink_to(device)
        return link
