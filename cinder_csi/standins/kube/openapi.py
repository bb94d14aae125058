"""Just enough OpenAPI v3 for kubectl ``apply``/``create`` with default validation.

kubectl checks, per group-version document, that the PATCH operation of the kind accepts the
``fieldValidation`` query parameter; if so it leaves validation to the server (no need for
``--validate=false``). The PATCH request bodies deliberately list no strategic-merge-patch media
type: kubectl then computes its client-side-apply patch from the Go types compiled into it (the
real patch strategies) instead of from schemas, which this stand-in does not carry.
/openapi/v2 is not served (404), which kubectl tolerates once v3 answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cinder_csi.standins.kube.discovery import SERVER_VERSION
from cinder_csi.standins.kube.resources import RESOURCES, ResourceType, groups


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _hash(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:32].upper()


def root() -> dict[str, Any]:
    paths = {}
    for group, version in [("", "v1"), *groups()]:
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(path)}"}
    return {"paths": paths}


def _object_path(rt: ResourceType) -> str:
    base = "/" + _gv_path(rt.group, rt.version)
    if rt.namespaced:
        base += "/namespaces/{namespace}"
    return f"{base}/{rt.plural}/{{name}}"


def _patch_operation(rt: ResourceType) -> dict[str, Any]:
    body_schema = {"schema": {"type": "object"}}
    return {
        "operationId": f"patch{rt.kind}",
        "parameters": [
            {
                "name": "fieldValidation",
                "in": "query",
                "schema": {"type": "string", "uniqueItems": True},
            },
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {
                "name": "fieldManager",
                "in": "query",
                "schema": {"type": "string", "uniqueItems": True},
            },
        ],
        "requestBody": {
            "content": {
                "application/json-patch+json": body_schema,
                "application/merge-patch+json": body_schema,
            },
            "required": True,
        },
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {
            "group": rt.group,
            "version": rt.version,
            "kind": rt.kind,
        },
    }


def group_version(group: str, version: str) -> dict[str, Any] | None:
    served = [rt for rt in RESOURCES if rt.group == group and rt.version == version]
    if not served:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": {_object_path(rt): {"patch": _patch_operation(rt)} for rt in served},
        "components": {"schemas": {}},
    }


def document(parts: list[str]) -> dict[str, Any] | None:
    """The document for /openapi/<parts...>, or None for 404."""
    if parts == ["v3"]:
        return root()
    if len(parts) == 3 and parts[:2] == ["v3", "api"]:
        return group_version("", parts[2])
    if len(parts) == 4 and parts[:2] == ["v3", "apis"]:
        return group_version(parts[2], parts[3])
    return None
