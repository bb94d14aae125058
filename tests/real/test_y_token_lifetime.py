"""The session's controller outlives its Keystone token with no failed call.

Keystone here issues tokens with a short lifetime on purpose (the rig's TOKEN_TTL, 300 s), and
the session's controller process runs from the first test to the last. This module runs near
the end, so in a full run the process has already served calls across a whole token lifetime;
in a shorter run the test keeps calling until it has (at most one lifetime). A controller that
pinned its first token would fail every call from then on.

Why not something cheaper: a 20 s TOKEN_TTL means restarting the whole rig, and with lifetimes
under keystoneauth's 120 s renewal margin every request re-authenticates, so no token ever
expires in a client's hands; revoking the controller's token instead is hidden by
keystonemiddleware's in-process validation cache (token_cache_time, 300 s).
"""

from __future__ import annotations

import time

import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import create_request, mount_cap
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger, Session
from tests.real.controller_process import ControllerProcess
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

MARGIN_S = 15.0
CALL_EVERY_S = 20.0
CALL_S = 180


def token_lifetime(cloud: Cloud) -> float:
    """Seconds between issue and expiry of a token Keystone gives the same user now."""
    access = cloud.user.session.auth.get_access(cloud.user.session)
    return (access.expires - access.issued).total_seconds()


@pytest.mark.timeout(900)
def test_calls_keep_working_past_the_token_lifetime(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv,
        session: Session) -> None:
    lifetime = token_lifetime(cloud)
    assert 0 < lifetime <= 3600, f"token lifetime {lifetime}s"
    until = session.first_token_at + lifetime + MARGIN_S
    while time.monotonic() < until:
        listed = controller.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=1),
                                                   timeout=CALL_S)
        assert listed.entries
        time.sleep(min(CALL_EVERY_S, max(0.0, until - time.monotonic())))
    assert time.monotonic() - session.first_token_at > lifetime

    # Past the first token's expiry: Cinder, Nova and the quota (project id) still answer.
    server = real.server_id("node-1")
    volume = controller.controller.CreateVolume(create_request(ledger.name("late"), 1),
                                                timeout=CALL_S).volume
    volume_id = ledger.track(volume.volume_id)
    controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=server, volume_capability=mount_cap()), timeout=CALL_S)
    assert volume_id in cloud.server_volume_ids(server)
    controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=server), timeout=CALL_S)
    controller.controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=CALL_S)
    controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                       timeout=CALL_S)
    assert cloud.volume(volume_id) is None

    log = controller.log_text()
    assert controller.starts == 1, "the session's controller was restarted"
    failed = [line for line in log.splitlines()
              if '"code": "UNAVAILABLE"' in line or "Keystone" in line]
    assert failed == [], "a call failed to reach or authenticate to the cloud"
