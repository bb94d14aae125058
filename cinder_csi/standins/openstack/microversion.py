"""Microversion negotiation and the version documents keystoneauth discovers them from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True)
class ApiVersions:
    header_name: str  # service name used in "OpenStack-API-Version: <name> <x.y>"
    version_id: str  # id in the version document, e.g. "v3.0"
    minimum: tuple[int, int]
    maximum: tuple[int, int]
    media_type: str
    legacy_header: str | None = None  # Nova still honours X-OpenStack-Nova-API-Version

    def negotiate(self, headers: dict[str, str]) -> tuple[int, int]:
        """The microversion a request asked for; the minimum when it asked for none."""
        requested = None
        for item in headers.get("openstack-api-version", "").split(","):
            parts = item.split()
            if len(parts) == 2 and parts[0].lower() == self.header_name:
                requested = parts[1]
        if requested is None and self.legacy_header:
            requested = headers.get(self.legacy_header)
        if requested is None:
            return self.minimum
        if requested.lower() == "latest":
            return self.maximum
        match = _VERSION.match(requested.strip())
        if match is None:
            raise bad_request(
                f"API Version String {requested} is of invalid format. "
                "Must be of format MajorNum.MinorNum."
            )
        version = (int(match.group(1)), int(match.group(2)))
        if not self.minimum <= version <= self.maximum:
            # The services echo the version they were asked for, even when refusing it.
            raise ApiError(
                406,
                f"Version {requested} is not supported by the API. Minimum is "
                f"{_text(self.minimum)} and maximum is {_text(self.maximum)}.",
                headers=self.response_headers(version),
            )
        return version

    def response_headers(self, version: tuple[int, int]) -> dict[str, str]:
        headers = {
            "OpenStack-API-Version": f"{self.header_name} {_text(version)}",
            "Vary": "OpenStack-API-Version",
        }
        if self.legacy_header:
            headers["X-OpenStack-Nova-API-Version"] = _text(version)
            headers["Vary"] += ", X-OpenStack-Nova-API-Version"
        return headers

    def document(self, href: str) -> dict[str, Any]:
        """One entry of a version document; href is the versioned root ending in '/'."""
        return {
            "id": self.version_id,
            "status": "CURRENT",
            "version": _text(self.maximum),
            "min_version": _text(self.minimum),
            "updated": "2023-01-01T00:00:00Z",
            "links": [
                {"rel": "self", "href": href},
                {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            ],
            "media-types": [{"base": "application/json", "type": self.media_type}],
        }


def _text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


CINDER = ApiVersions(
    header_name="volume",
    version_id="v3.0",
    minimum=(3, 0),
    maximum=(3, 71),  # what Cinder 29 announces
    media_type="application/vnd.openstack.volume+json;version=3",
)

NOVA = ApiVersions(
    header_name="compute",
    version_id="v2.1",
    minimum=(2, 1),
    maximum=(2, 104),  # what Nova 34 announces
    media_type="application/vnd.openstack.compute+json;version=2.1",
    legacy_header="x-openstack-nova-api-version",
)
