"""The API server's non-2xx answer as an exception, without the ``kubernetes`` package.

Its constructor and attributes match ``kubernetes.client.exceptions.ApiException`` (status,
reason, body, headers), so code and tests written against that class read it the same way;
importing the package for this one class would cost the watch loop some 20 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiException(Exception):
    """An answer of the Kubernetes API other than 2xx."""

    def __init__(self, status: int | None = None, reason: str | None = None,
                 http_resp: Any = None, *, body: str | None = None, data: Any = None) -> None:
        if http_resp is not None:
            status = int(http_resp.status) if status is None else status
            reason = http_resp.reason if reason is None else reason
            headers: Mapping[str, str] | None = http_resp.headers
        else:
            headers = None
        self.status = status
        self.reason = reason
        self.body = body
        self.data = data
        self.headers = headers
        super().__init__(status, reason)

    @classmethod
    def from_response(cls, *, http_resp: Any, body: str | None = None,
                      data: Any = None) -> ApiException:
        return cls(http_resp=http_resp, body=body, data=data)

    def __str__(self) -> str:
        text = f"({self.status})\nReason: {self.reason}\n"
        if self.headers:
            text += f"HTTP response headers: {dict(self.headers)}\n"
        if self.body:
            text += f"HTTP response body: {self.body}\n"
        return text
