"""Cinder quotas: what the project may still create, for GetCapacity."""

from __future__ import annotations

from typing import Any

from cinder_csi.cloud.models import QuotaUsage
from cinder_csi.cloud.session import ServiceSession
from cinder_csi.deadline import Deadline


class QuotaApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def usage(self, project_id: str, deadline: Deadline) -> dict[str, QuotaUsage]:
        """Quota resources by name (``gigabytes``, ``volumes``, ``gigabytes_<type>``, ...)."""
        resp = self._session.request(
            "GET", f"/os-quota-sets/{project_id}", what=f"quota of project {project_id}",
            deadline=deadline, params={"usage": "True"},
        )
        quota: dict[str, Any] = resp.body.get("quota_set", {})
        result: dict[str, QuotaUsage] = {}
        for name, value in quota.items():
            if isinstance(value, dict) and "limit" in value:
                result[name] = QuotaUsage(
                    limit=int(value.get("limit", -1)),
                    in_use=int(value.get("in_use", 0)),
                    reserved=int(value.get("reserved", 0)),
                )
        return result
