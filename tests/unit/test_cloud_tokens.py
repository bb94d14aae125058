"""The token keeper (cloud/tokens.py): one Keystone fetch at a time, off the callers'
threads; every caller waits only until its own deadline."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity.base import BaseIdentityPlugin

from cinder_csi import errors
from cinder_csi.cloud.tokens import TokenKeeper
from cinder_csi.deadline import Deadline


class Token:
    def __init__(self, expires_in: float) -> None:
        self.expires_at = time.monotonic() + expires_in

    def will_expire_soon(self, seconds: float) -> bool:
        return time.monotonic() + seconds >= self.expires_at


class Keystone(BaseIdentityPlugin):
    """An auth plugin whose fetches block until released, and count themselves."""

    def __init__(self) -> None:
        super().__init__(auth_url="http://keystone")
        self.fetches = 0
        self.release = threading.Event()
        self.failures: list[Exception] = []

    def get_auth_ref(self, session: Any) -> Any:
        self.fetches += 1
        self.release.wait(30)
        if self.failures:
            raise self.failures.pop(0)
        return Token(expires_in=3600)


def keeper(plugin: Keystone) -> TokenKeeper:
    return TokenKeeper(lambda: SimpleNamespace(auth=plugin))


def test_a_fresh_token_is_used_without_a_fetch() -> None:
    plugin = Keystone()
    plugin.auth_ref = Token(expires_in=3600)  # type: ignore[assignment]
    assert keeper(plugin).ensure(Deadline.after(1)) is plugin.auth_ref
    assert plugin.fetches == 0


def test_callers_share_one_fetch_and_give_up_at_their_own_deadlines() -> None:
    plugin, results = Keystone(), []
    tokens = keeper(plugin)

    def call() -> None:
        started = time.monotonic()
        with pytest.raises(errors.Timeout):
            tokens.ensure(Deadline.after(0.3))
        results.append(time.monotonic() - started)

    callers = [threading.Thread(target=call) for _ in range(5)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(5)
    assert len(results) == 5 and max(results) < 2.0  # Keystone hangs; no caller does
    assert plugin.fetches == 1
    assert (tokens.fetching_for() or 0) > 0
    plugin.release.set()
    assert tokens.ensure(Deadline.after(5)) is plugin.auth_ref is not None
    assert plugin.fetches == 1 and tokens.fetching_for() is None


def test_an_expiring_token_is_renewed_ahead_of_keystoneauth() -> None:
    plugin = Keystone()
    plugin.release.set()
    plugin.auth_ref = Token(expires_in=150)  # type: ignore[assignment]  # within 120 s + 60 s
    keeper(plugin).ensure(Deadline.after(5))
    assert plugin.fetches == 1


def test_a_rejected_token_is_replaced_once_for_all_who_saw_it_rejected() -> None:
    plugin = Keystone()
    plugin.release.set()
    tokens = keeper(plugin)
    old = tokens.ensure(Deadline.after(5))
    new = tokens.renew(old, Deadline.after(5))
    assert new is not old
    assert tokens.renew(old, Deadline.after(5)) is new  # a second 401 on the old token
    assert plugin.fetches == 2


def test_a_failed_fetch_that_began_before_the_caller_is_tried_again() -> None:
    plugin = Keystone()
    plugin.failures.append(ks_exc.ConnectFailure("Keystone went away"))
    tokens = keeper(plugin)
    failed: list[str] = []

    def early() -> None:
        with pytest.raises(errors.CloudUnavailable) as info:
            tokens.ensure(Deadline.after(5))
        failed.append(str(info.value))

    first = threading.Thread(target=early)
    first.start()
    time.sleep(0.1)  # the failing fetch is under way when the latecomer arrives
    late: list[object] = []
    latecomer = threading.Thread(target=lambda: late.append(tokens.ensure(Deadline.after(5))))
    latecomer.start()
    time.sleep(0.1)
    plugin.release.set()
    first.join(5)
    latecomer.join(5)
    assert failed and "Keystone went away" in failed[0]
    assert late and late[0] is not None
    assert plugin.fetches == 2


def test_wrong_credentials_are_named() -> None:
    plugin = Keystone()
    plugin.release.set()
    plugin.failures.append(ks_exc.Unauthorized("The request you have made requires auth"))
    with pytest.raises(errors.CloudUnavailable, match="refused the credentials"):
        keeper(plugin).ensure(Deadline.after(5))
