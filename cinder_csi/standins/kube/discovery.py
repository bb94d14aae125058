"""Discovery documents: /api, /apis, group versions and /version, as kubectl reads them."""

from __future__ import annotations

from typing import Any

from cinder_csi.standins.kube.resources import RESOURCES, VERBS, ResourceType, groups

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group(name: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, version) for name, version in groups()],
    }


def api_group(name: str) -> dict[str, Any] | None:
    for group, version in groups():
        if group == name:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, version)}
    return None


def _entry(rt: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(VERBS),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def _sub(rt: ResourceType, sub: str, kind: str, verbs: list[str]) -> dict[str, Any]:
    return {
        "name": f"{rt.plural}/{sub}",
        "singularName": "",
        "namespaced": rt.namespaced,
        "kind": kind,
        "verbs": verbs,
    }


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    served = [rt for rt in RESOURCES if rt.group == group and rt.version == version]
    if not served:
        return None
    entries: list[dict[str, Any]] = []
    for rt in served:
        entries.append(_entry(rt))
        if rt.has_status:
            entries.append(_sub(rt, "status", rt.kind, ["get", "patch", "update"]))
        if rt.kind == "Pod":
            entries.append(_sub(rt, "binding", "Binding", ["create"]))
        if rt.kind == "Namespace":
            entries.append(_sub(rt, "finalize", "Namespace", ["update"]))
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}
