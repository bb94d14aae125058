"""Fixtures of the real tier: the real cloud (tests/real/env.py), our controller process
against it, and per-test bookkeeping that removes every volume and snapshot a test made.

Everything a session makes is named ``rt-<session>-...`` and tagged with the cluster id
``rt-<session>``; leftovers of an earlier, killed session (``rt-`` prefix) are removed when a
session starts. The last test (test_zz_audit.py) checks that nothing of this session is left.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cinder_csi.csi import csi_pb2
from tests.real import env as real_env
from tests.real.cloud_check import Cloud, connect
from tests.real.controller_process import ControllerProcess

log = logging.getLogger(__name__)

STALE_PREFIX = "rt-"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_env.requested():
        return
    skip = pytest.mark.skip(reason=real_env.SKIP_REASON)
    for item in items:
        if "real" in item.keywords:
            item.add_marker(skip)


@dataclass
class Session:
    """What this pytest session made, and what the cloud held before it began."""

    tag: str
    workdir: Path
    baseline_volumes: frozenset[str]
    swept_at_start: list[str]
    first_token_at: float = 0.0  # when the session's controller first reached the cloud
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def cluster(self) -> str:
        return self.tag


@pytest.fixture(scope="session")
def real() -> real_env.RealEnv:
    try:
        return real_env.load()
    except real_env.RealEnvError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def cloud(real: real_env.RealEnv) -> Cloud:
    return Cloud(user=connect(str(real.clouds_yaml), real.cloud),
                 admin=connect(str(real.clouds_yaml), real.admin_cloud))


@pytest.fixture(scope="session")
def session(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    cloud.wait_schedulable()
    swept = cloud.sweep(prefixes=(STALE_PREFIX,))
    if swept:
        log.warning("removed leftovers of an earlier real-tier run: %s", swept)
    made = Session(
        tag=f"{STALE_PREFIX}{secrets.token_hex(3)}",
        workdir=tmp_path_factory.mktemp("real"),
        baseline_volumes=frozenset(v.id for v in cloud.volumes()),
        swept_at_start=swept,
    )
    yield made
    # A safety net for the rig: the audit test has already judged what was left.
    cloud.sweep(prefixes=(made.tag,))


@pytest.fixture(scope="session")
def controller(real: real_env.RealEnv, session: Session) -> Iterator[ControllerProcess]:
    """The session's controller: cloud.conf as users write it, one process for every test, so
    it also lives through token renewals (test_y_token_lifetime.py)."""
    process = ControllerProcess(
        session.workdir, ["--cloud-config", str(real.cloud_conf), "--cluster", session.cluster])
    process.start()
    # Probe asks Cinder, so the process holds its first Keystone token from here on.
    ready = process.identity.Probe(csi_pb2.ProbeRequest(), timeout=60).ready.value
    assert ready, f"the controller is not ready on the real cloud:\n{process.log_tail()}"
    session.first_token_at = time.monotonic()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Ledger:
    """One test's names and ids; everything recorded here is removed after the test."""

    prefix: str
    ids: set[str] = field(default_factory=set)

    def name(self, label: str) -> str:
        return f"{self.prefix}{label}"

    def track(self, object_id: str) -> str:
        self.ids.add(object_id)
        return object_id


@pytest.fixture
def ledger(session: Session, cloud: Cloud) -> Iterator[Ledger]:
    made = Ledger(prefix=f"{session.tag}-{next(session.counter)}-")
    try:
        yield made
    finally:
        cloud.sweep(prefixes=(made.prefix,), ids=made.ids)
