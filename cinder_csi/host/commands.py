"""Run external programs: argv lists only (never a shell), always with a timeout.

Every failure becomes a project error whose message names the command, its exit code and the
tail of its stderr, so an operator reading one log line knows what ran and why it failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cinder_csi.deadline import Deadline
from cinder_csi.errors import CommandFailed, CommandNotFound, CommandTimedOut, InternalError

log = logging.getLogger(__name__)

# Long enough for mkfs.xfs on a large volume; the caller's Deadline usually cuts it shorter.
DEFAULT_COMMAND_TIMEOUT_S = 120.0
# Enough stderr to explain a failure without flooding a log line or a gRPC status.
_STDERR_TAIL = 600


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def format_argv(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _tail(text: str) -> str:
    text = text.strip()
    if len(text) <= _STDERR_TAIL:
        return text
    return "..." + text[-_STDERR_TAIL:]


def failure(result: CommandResult) -> CommandFailed:
    """The error for a command that exited with a code its caller did not accept."""
    return CommandFailed(
        f"command {format_argv(result.argv)!r} failed with exit code {result.returncode}: "
        f"{_tail(result.stderr) or _tail(result.stdout) or '(no output)'}",
        argv=result.argv, returncode=result.returncode, stdout=result.stdout,
        stderr=result.stderr,
    )


class CommandRunner:
    """Runs commands found by name on PATH. Tests replace it with a subclass that fakes `run`."""

    def __init__(
        self, *, default_timeout: float = DEFAULT_COMMAND_TIMEOUT_S, path: str | None = None
    ) -> None:
        self.default_timeout = default_timeout
        self._path = path

    def which(self, name: str) -> str | None:
        """Absolute path of `name` on PATH, or None."""
        return shutil.which(name, path=self._path)

    def has(self, name: str) -> bool:
        return self.which(name) is not None

    def run(
        self,
        argv: Sequence[str],
        *,
        deadline: Deadline | None = None,
        timeout: float | None = None,
        ok_codes: Collection[int] = (0,),
        input_text: str | None = None,
    ) -> CommandResult:
        """Run `argv` and return its result; raise unless the exit code is in `ok_codes`.

        The time limit is the shorter of `timeout` (default: the runner's) and what is left of
        `deadline`. A command that outlives it is killed and CommandTimedOut raised.
        """
        if not argv:
            raise InternalError("empty command")
        limit = self.default_timeout if timeout is None else timeout
        if deadline is not None:
            limit = min(limit, deadline.remaining())
        if limit <= 0:
            raise CommandTimedOut(f"no time left to run {format_argv(argv)!r}")
        binary = self.which(argv[0])
        if binary is None:
            raise CommandNotFound(
                f"command {argv[0]!r} not found on PATH; the node image must provide it"
            )
        # C locale: messages we match on (and log) are the untranslated ones.
        env = dict(os.environ, LC_ALL="C")
        log.debug("running %s (timeout %.1fs)", format_argv(argv), limit)
        try:
            proc = subprocess.run(
                [binary, *argv[1:]],
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=limit,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimedOut(
                f"command {format_argv(argv)!r} did not finish within {limit:.1f}s and was killed"
            ) from exc
        except OSError as exc:  # found on PATH but not executable, say
            raise CommandNotFound(f"cannot run {format_argv(argv)!r}: {exc}") from exc
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if proc.returncode not in ok_codes:
            raise failure(result)
        return result
