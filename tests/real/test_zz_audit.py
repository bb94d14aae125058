"""Runs last (by name): nothing this session made is left in Cinder.

Every test removes what it made (tests/real/conftest.py's ledger); this checks that they did,
and that no volume was made behind the ledger's back: Cinder now holds exactly the volumes it
held when the session began.
"""

from __future__ import annotations

import pytest

from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from tests.real.cloud_check import Cloud
from tests.real.conftest import Session

pytestmark = pytest.mark.real


def test_no_test_volume_or_snapshot_is_left_in_cinder(cloud: Cloud, session: Session) -> None:
    volumes = cloud.volumes()
    new = sorted(f"{v.name} ({v.id}, {v.status})" for v in volumes
                 if v.id not in session.baseline_volumes)
    assert new == [], "volumes made during this session are still in Cinder"
    tagged = [v.id for v in volumes
              if (v.metadata or {}).get(CLUSTER_METADATA_KEY, "").startswith(session.tag)]
    assert tagged == []
    snapshots = [s.name for s in cloud.snapshots() if (s.name or "").startswith(session.tag)]
    assert snapshots == []
