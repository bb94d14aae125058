"""The leak measured in issue 10, on the stand-ins: kill -9 while Cinder creates, delete the
StorageClass and every claim while the controller is down, restart, audit.

Before the fix all 30 volumes stayed in Cinder with nothing that would ever delete them: the
restarted loop re-resolved the (deleted) StorageClass, called that a final error, and dropped
the intent of every terminating claim as if no volume could exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster_env import STANDARD, ClusterEnv, cluster_env, wait_until
from tests.reliability.harness import (
    LoopProcess,
    audit,
    claims_left,
    create_claims,
    delete,
    live_volumes,
    wait_clean,
)

CLAIMS = 30


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, real_devices=False) as made:
        yield made


def test_class_and_claims_deleted_while_down_leak_nothing(env: ClusterEnv) -> None:
    env.openstack.faults.slow("create", 4.0)  # Cinder holds each volume in 'creating' a while
    controller = LoopProcess(env).start()
    try:
        names = [f"data-{i:02d}" for i in range(CLAIMS)]
        create_claims(env, names)
        wait_until(lambda: len(live_volumes(env)) >= CLAIMS // 2, timeout=60,
                   what="Cinder creating the first volumes")
        controller.kill9()
        # Cinder goes on with the requests it accepted; the cluster moves on without us.
        assert delete(env, "storageclasses", STANDARD)
        for name in names:
            delete(env, "persistentvolumeclaims", name, namespace="default")
        created = {v["name"] for v in live_volumes(env)}
        assert created, "the kill came too late: no volume was being created"

        controller.start()
        result = wait_clean(env, timeout=90, until=lambda: not claims_left(env))
        assert claims_left(env) == [], "claims held by the loop's intent were never released"
        assert result.clean, str(result)
        assert live_volumes(env) == [] or audit(env).leaked == []
    finally:
        controller.stop()
