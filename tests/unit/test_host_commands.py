from __future__ import annotations

import time

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import (
    CommandFailed,
    CommandNotFound,
    CommandTimedOut,
    FailedPrecondition,
    InternalError,
    Timeout,
)
from cinder_csi.host.commands import CommandRunner
from tests.unit.host_fakes import FakeRunner


def test_success_captures_output() -> None:
    result = CommandRunner().run(["echo", "hello"])
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert result.argv == ("echo", "hello")


def test_failure_message_names_command_exit_code_and_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        CommandRunner().run(["sh", "-c", "echo boom >&2; exit 3"])
    err = info.value
    assert isinstance(err, InternalError)
    assert err.returncode == 3
    assert "sh -c" in str(err) and "exit code 3" in str(err) and "boom" in str(err)


def test_long_stderr_is_trimmed() -> None:
    with pytest.raises(CommandFailed) as info:
        CommandRunner().run(["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x >&2; exit 1"])
    assert len(str(info.value)) < 800
    assert len(info.value.stderr) == 5000  # the full text stays available to the caller


def test_accepted_exit_codes() -> None:
    assert CommandRunner().run(["sh", "-c", "exit 2"], ok_codes=(0, 2)).returncode == 2


def test_arguments_are_never_shell_interpreted(tmp_path: object) -> None:
    result = CommandRunner().run(["echo", "$(id)", ";", "rm", "-rf", "/"])
    assert result.stdout == "$(id) ; rm -rf /\n"


def test_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(CommandNotFound, match=r"no-such-tool-xyz.*not found on PATH") as info:
        CommandRunner().run(["no-such-tool-xyz", "--help"])
    assert isinstance(info.value, FailedPrecondition)


def test_timeout_kills_the_command() -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimedOut, match="sleep 10") as info:
        CommandRunner().run(["sleep", "10"], timeout=0.2)
    assert isinstance(info.value, Timeout)
    assert time.monotonic() - start < 2


def test_deadline_bounds_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimedOut):
        CommandRunner().run(["sleep", "10"], timeout=60, deadline=Deadline.after(0.2))
    assert time.monotonic() - start < 2


def test_expired_deadline_runs_nothing() -> None:
    with pytest.raises(CommandTimedOut, match="no time left"):
        CommandRunner().run(["true"], deadline=Deadline.after(0))


def test_c_locale_and_stdin_closed() -> None:
    result = CommandRunner().run(["sh", "-c", 'echo "$LC_ALL"; cat'])
    assert result.stdout == "C\n"  # cat got EOF at once rather than waiting on our stdin


def test_fake_runner_raises_like_the_real_one() -> None:
    fake = FakeRunner(lambda argv: (1, "", "nope"))
    with pytest.raises(CommandFailed, match="nope"):
        fake.run(["mount", "x"])
    assert fake.commands() == ["mount x"]
