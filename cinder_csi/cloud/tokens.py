"""Keystone tokens, fetched so that a hung Keystone cannot wedge every cloud call.

keystoneauth fetches a missing or expiring token inside whichever request needs it, holding
the auth plugin's lock: while Keystone hangs, that request and every other one queue behind
the lock, far past their callers' deadlines. So tokens are fetched here instead, ahead of
time and one fetch at a time, in a thread of its own bounded by the session timeout, while
each caller waits only until its own deadline. Requests then always find a token
keystoneauth considers fresh, and never fetch one themselves (they are sent with
``allow_reauth=False``; a 401 comes back here through `renew`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1.identity.base import BaseIdentityPlugin
from openstack import exceptions as os_exc

from cinder_csi import errors
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

# Renew this long before keystoneauth itself would (it renews tokens that expire within
# BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS), so it never has to, inline, under its lock.
RENEW_AHEAD_S = 60.0


def keystone_refusal(what: str, exc: ks_exc.Unauthorized) -> errors.CloudUnavailable:
    """keystoneauth raises Unauthorized only for Keystone's own 401 (a service's 401 is
    re-authenticated, or comes back as a status), so name Keystone and the URL it answered."""
    where = f" at {exc.url}" if getattr(exc, "url", None) else ""
    return errors.CloudUnavailable(
        f"Keystone{where} refused the credentials while reaching {what}: {exc}; check the "
        "user, password or application credential in cloud.conf / clouds.yaml"
    )


class _Fetch:
    """One token fetch running in its own thread."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: errors.CinderCSIError | None = None


class TokenKeeper:
    """Keeps the session's token fresh; see the module docstring."""

    def __init__(self, session: Callable[[], Any]) -> None:
        self._session = session  # the keystoneauth Session (built lazily by the caller)
        self._lock = threading.Lock()
        self._fetch: _Fetch | None = None

    def ensure(self, deadline: Deadline) -> object | None:
        """Return once the session holds a fresh token, waiting at most until `deadline`.

        Returns the token's AccessInfo (to hand back to `renew` if the cloud rejects it), or
        None for auth plugins that are not Keystone's (nothing to keep fresh then)."""
        plugin = self._plugin()
        if plugin is None:
            return None
        ref: object | None = plugin.auth_ref
        if ref is not None and not plugin.auth_ref.will_expire_soon(self._renew_within(plugin)):
            return ref
        self._join(force=False, deadline=deadline)
        fresh: object | None = plugin.auth_ref
        return fresh

    def renew(self, rejected: object | None, deadline: Deadline) -> object | None:
        """The cloud answered 401 to `rejected` (from `ensure`): fetch a new token, unless
        another caller already did, and wait for it until `deadline`."""
        plugin = self._plugin()
        if plugin is None:
            return None
        current: object | None = plugin.auth_ref
        if current is not None and current is not rejected:
            return current
        self._join(force=True, deadline=deadline)
        fresh: object | None = plugin.auth_ref
        return fresh

    def fetching_for(self) -> float | None:
        """Seconds the current fetch has been running, None when there is none."""
        with self._lock:
            fetch = self._fetch
        if fetch is None or fetch.done.is_set():
            return None
        return time.monotonic() - fetch.started

    # ---- internals -----------------------------------------------------------------------

    def _plugin(self) -> Any:
        plugin = getattr(self._session(), "auth", None)
        return plugin if isinstance(plugin, BaseIdentityPlugin) else None

    @staticmethod
    def _renew_within(plugin: Any) -> float:
        return float(getattr(plugin, "MIN_TOKEN_LIFE_SECONDS", 120)) + RENEW_AHEAD_S

    def _start(self, *, force: bool) -> _Fetch:
        with self._lock:
            if self._fetch is not None and not self._fetch.done.is_set():
                return self._fetch  # one fetch at a time; everyone waits for the same one
            if not force and self._fetch is not None and self._fetch.error is None:
                plugin = self._plugin()
                ref = plugin.auth_ref if plugin is not None else None
                if ref is not None and not ref.will_expire_soon(self._renew_within(plugin)):
                    return self._fetch  # a fetch finished just now
            fetch = _Fetch()
            self._fetch = fetch
        thread = threading.Thread(target=self._run, args=(fetch,), name="keystone-token",
                                  daemon=True)
        thread.start()
        return fetch

    def _run(self, fetch: _Fetch) -> None:
        session = self._session()
        plugin = self._plugin()
        try:
            if plugin is not None:
                # A new AccessInfo replaces the old in one assignment: requests in flight keep
                # using the old token, none sees "no token" and fetches one itself.
                plugin.auth_ref = plugin.get_auth_ref(session)
        except ks_exc.Unauthorized as exc:
            fetch.error = keystone_refusal("the cloud", exc)
        except (ks_exc.ClientException, os_exc.SDKException) as exc:
            fetch.error = errors.CloudUnavailable(f"cannot get a Keystone token: {exc}")
        finally:
            fetch.done.set()
        if fetch.error is not None:
            log.warning("%s", fetch.error)

    def _join(self, *, force: bool, deadline: Deadline) -> None:
        """Wait for a fetch; one that was already running when we came and then failed is
        not our answer (Keystone may be back by now): we try once more ourselves."""
        arrived = time.monotonic()
        fetch = self._start(force=force)
        try:
            self._wait(fetch, deadline)
        except errors.CloudUnavailable:
            if fetch.started >= arrived or deadline.expired():
                raise
            self._wait(self._start(force=True), deadline)

    @staticmethod
    def _wait(fetch: _Fetch, deadline: Deadline) -> None:
        if not fetch.done.wait(deadline.remaining()):
            raise errors.Timeout(
                f"Keystone has not answered a token request for "
                f"{time.monotonic() - fetch.started:.0f}s; gave up waiting at the call's deadline"
            )
        if fetch.error is not None:
            raise fetch.error
