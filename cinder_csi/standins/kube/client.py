"""Helpers for tests that talk to the stand-in through the real ``kubernetes`` client."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

T = TypeVar("T")


def api_client(kubeconfig: str | Path) -> Any:
    """A ``kubernetes.client.ApiClient`` configured by the real kubeconfig loader."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; AssertionError on timeout.

    For tests only: the stand-in's controllers act within milliseconds, so a short fixed
    interval keeps tests fast without spinning.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
