"""The deployment artefacts: kustomize builds of manifests/, their schemas and contents, the
cloud.conf template, and the Dockerfile (hadolint).

Everything here reads files and runs `kubectl kustomize` / `hadolint`; nothing talks to a
cluster. Tests that need a tool that is not installed are skipped with the reason.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cinder_csi import cli
from cinder_csi.config import load_cloud_config
from cinder_csi.sandbox.environment import manifest_objects, manifests_dir
from tests.tools import require_tools

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAY = MANIFESTS / "overlays" / "upstream-sidecars"
DOCKERFILE = ROOT / "Dockerfile"

DRIVER = "cinder.csi.openstack.org"
NAMESPACE = "cinder-csi"
REGISTRY_NAMESPACE = "openshift-image-registry"
TOPOLOGY_KEY = "topology.cinder.csi.openstack.org/zone"
COMMON_LABELS = {"app.kubernetes.io/name": "cinder-csi", "app.kubernetes.io/part-of": "cinder-csi"}
# The oldest Kubernetes schema the manifests must validate against; the tests use the newest
# schema the installed kubernetes-validate ships, which must not be older than this.
MIN_SCHEMA = (1, 32)

SIDECAR_IMAGES = {
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v5.2.0",
    "csi-attacher": "registry.k8s.io/sig-storage/csi-attacher:v4.8.1",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v1.13.2",
    "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.2.1",
}
REGISTRAR_IMAGE = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"

CONTROLLER_ARGS = [
    "controller",
    "--endpoint=unix:///csi/csi.sock",
    "--cloud-config=/etc/config/cloud.conf",
    "--cloud-config=/etc/cinder-csi/cloud.conf",
    "--cluster=$(CLUSTER_NAME)",
    "--with-provisioner",
    "--leader-election",
    "--http-endpoint=:8080",
    "--registry",
]
NODE_ARGS = [
    "node",
    "--endpoint=unix:///csi/csi.sock",
    "--cloud-config=/etc/cinder-csi/cloud.conf",
    "--kubelet-root=/var/lib/kubelet",
    "--http-endpoint=:9838",
]

# (apiGroup, resource) -> verbs. The controller component's ClusterRole, exactly.
CONTROLLER_GRANTS: dict[tuple[str, str], set[str]] = {
    ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "patch", "create"},
    ("", "persistentvolumeclaims/status"): {"patch"},
    ("storage.k8s.io", "storageclasses"): {"list", "watch"},
    ("storage.k8s.io", "volumeattachments"): {"list", "watch", "patch"},
    ("storage.k8s.io", "volumeattachments/status"): {"patch"},
    ("storage.k8s.io", "csinodes"): {"list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("", "namespaces"): {"get"},
    ("", "secrets"): {"get"},
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get"},
}
LEASE_GRANTS = {("coordination.k8s.io", "leases"): {"get", "create", "update"},
                # the provisioning journal beside the Lease (loop/journal.py)
                ("", "configmaps"): {"get", "create", "patch"}}
# What the overlay changes: the sidecars' additions, and the registry duty's grant removed.
SIDECAR_EXTRA_GRANTS: dict[tuple[str, str], set[str]] = {
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {
        "get", "list", "watch", "update", "patch",
    },
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
    ("storage.k8s.io", "volumeattributesclasses"): {"get", "list", "watch"},
    # The sidecars Update where our loop patches, and Get single objects where it lists.
    ("", "persistentvolumes"): {"update"},
    ("", "persistentvolumeclaims"): {"update"},
    ("", "persistentvolumeclaims/status"): {"update"},
    ("storage.k8s.io", "volumeattachments"): {"get", "update"},
    ("storage.k8s.io", "volumeattachments/status"): {"update"},
    ("storage.k8s.io", "storageclasses"): {"get"},
    ("storage.k8s.io", "csinodes"): {"get"},
}

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# helpers


def kustomize(path: Path) -> list[Obj]:
    require_tools("kubectl")  # its built-in kustomize
    done = subprocess.run(
        ["kubectl", "kustomize", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj, name: str) -> Obj:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {name}"
    return found[0]


def all_containers(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            spec = pod_spec(obj)
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", c


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of a Role/ClusterRole, merged over its rules."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def volume_by_mount(workload: Obj, c: Obj, mount_path: str) -> tuple[Obj, Obj]:
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == mount_path]
    assert len(mounts) == 1, f"{c['name']}: nothing mounted at {mount_path}"
    volumes = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1
    return mounts[0], volumes[0]


def identity(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def secret_cloud_conf(objs: list[Obj]) -> str:
    secret = find(objs, "Secret", "cinder-csi-cloud-config")
    text: str = secret["stringData"]["cloud.conf"]
    return text


def settings_cloud_conf(objs: list[Obj]) -> str:
    text: str = find(objs, "ConfigMap", "cinder-csi-config")["data"]["cloud.conf"]
    return text


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return kustomize(MANIFESTS)


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="module", params=["base", "overlay"])
def build(request: pytest.FixtureRequest) -> list[Obj]:
    objs: list[Obj] = request.getfixturevalue(request.param)
    return objs


# --------------------------------------------------------------------------------------------
# both builds: schema, labels, namespaces, images


def test_the_sandbox_applies_this_checkouts_manifests() -> None:
    assert manifests_dir() == MANIFESTS
    kinds = {str(obj["kind"]) for obj in manifest_objects(MANIFESTS)}
    assert {"CSIDriver", "StorageClass"} <= kinds


def test_every_object_validates_against_the_kubernetes_schema(build: list[Obj]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    version: str = kv.latest_version()
    assert tuple(int(p) for p in version.split(".")[:2]) >= MIN_SCHEMA, (
        f"kubernetes-validate {kv.__version__} only knows Kubernetes {version}; "
        f"install a newer one (pyproject's test extra)"
    )
    errors = []
    for obj in build:
        try:
            kv.validate(obj, version, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_no_custom_resources_in_the_builds(build: list[Obj]) -> None:
    groups = {o["apiVersion"].rpartition("/")[0] for o in build}
    assert groups <= {"", "apps", "rbac.authorization.k8s.io", "storage.k8s.io"}, groups


def test_every_object_carries_the_common_labels(build: list[Obj]) -> None:
    for obj in build:
        labels = obj["metadata"].get("labels", {})
        assert COMMON_LABELS.items() <= labels.items(), identity(obj)
    for obj in build:
        if obj["kind"] in ("Deployment", "DaemonSet"):
            assert COMMON_LABELS.items() <= obj["spec"]["template"]["metadata"]["labels"].items()


def test_namespaced_objects_are_in_the_driver_namespace(build: list[Obj]) -> None:
    cluster_scoped = {"Namespace", "CSIDriver", "StorageClass", "ClusterRole",
                      "ClusterRoleBinding"}
    for obj in build:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert ns is None, identity(obj)
        elif obj["kind"] == "PersistentVolumeClaim":
            assert ns == REGISTRY_NAMESPACE, identity(obj)
        else:
            assert ns == NAMESPACE, identity(obj)
    namespaces = {o["metadata"]["name"] for o in build if o["kind"] == "Namespace"}
    assert namespaces == {NAMESPACE, REGISTRY_NAMESPACE}


def test_the_driver_namespace_admits_the_privileged_node_plugin(build: list[Obj]) -> None:
    labels = find(build, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_every_image_is_pinned(build: list[Obj]) -> None:
    seen = []
    for where, c in all_containers(build):
        image: str = c["image"]
        name, _, tag = image.rpartition("/")[2].partition(":")
        tag = tag.partition("@")[0]  # a digest may follow the tag
        assert name and tag, f"{where}: image {image!r} has no tag"
        assert tag != "latest", f"{where}: {image!r} uses :latest"
        assert c.get("imagePullPolicy") != "Always", where
        seen.append(image)
    assert seen


def test_the_cinder_csi_image_is_the_same_everywhere(build: list[Obj]) -> None:
    ours = {c["image"] for _, c in all_containers(build) if c["name"] == "cinder-csi"}
    assert len(ours) == 1
    assert next(iter(ours)).endswith("/cinder-csi:0.1.0")


def test_container_ports_are_unique_per_pod(build: list[Obj]) -> None:
    for obj in build:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        ports = [p for c in pod_spec(obj)["containers"] for p in c.get("ports", [])]
        assert len({p["containerPort"] for p in ports}) == len(ports), identity(obj)
        assert len({p["name"] for p in ports}) == len(ports), identity(obj)


# --------------------------------------------------------------------------------------------
# base


def test_the_base_holds_exactly_these_objects(base: list[Obj]) -> None:
    kinds_names = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds_names == sorted([
        ("CSIDriver", DRIVER),
        ("ClusterRole", "cinder-csi-controller"),
        ("ClusterRoleBinding", "cinder-csi-controller"),
        ("ConfigMap", "cinder-csi-config"),
        ("DaemonSet", "cinder-csi-node"),
        ("Deployment", "cinder-csi-controller"),
        ("Namespace", NAMESPACE),
        ("Namespace", REGISTRY_NAMESPACE),
        ("PersistentVolumeClaim", "image-registry-storage"),
        ("Role", "cinder-csi-controller-leader-election"),
        ("RoleBinding", "cinder-csi-controller-leader-election"),
        ("Secret", "cinder-csi-cloud-config"),
        ("ServiceAccount", "cinder-csi-controller"),
        ("ServiceAccount", "cinder-csi-node"),
        ("StorageClass", "standard"),
        ("StorageClass", "standard-retain"),
        ("StorageClass", "topology-aware"),
    ])


def test_csidriver(base: list[Obj]) -> None:
    spec = find(base, "CSIDriver", DRIVER)["spec"]
    assert spec == {
        "attachRequired": True,
        "podInfoOnMount": True,
        "fsGroupPolicy": "File",
        "volumeLifecycleModes": ["Persistent"],
        "requiresRepublish": False,
        "storageCapacity": False,
    }


def test_controller_runs_unprivileged(base: list[Obj]) -> None:
    deploy = find(base, "Deployment", "cinder-csi-controller")
    spec = pod_spec(deploy)
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert all("hostPath" not in v for v in spec["volumes"])
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged"), c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, c["name"]


def test_controller_deployment(base: list[Obj]) -> None:
    deploy = find(base, "Deployment", "cinder-csi-controller")
    spec = pod_spec(deploy)
    assert deploy["spec"]["replicas"] == 2
    assert spec["serviceAccountName"] == "cinder-csi-controller"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert [c["name"] for c in spec["containers"]] == ["cinder-csi"]
    c = container(deploy, "cinder-csi")
    assert c["args"] == CONTROLLER_ARGS
    env = {e["name"]: e for e in c["env"]}
    assert env["CLUSTER_NAME"]["value"]  # $(CLUSTER_NAME) in the args resolves
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8080
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    assert "memory" in c["resources"]["limits"]
    mount, volume = volume_by_mount(deploy, c, "/etc/config")
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "cinder-csi-cloud-config"
    mount, volume = volume_by_mount(deploy, c, "/etc/cinder-csi")
    assert mount["readOnly"] is True and volume["configMap"]["name"] == "cinder-csi-config"
    _, socket = volume_by_mount(deploy, c, "/csi")
    assert "emptyDir" in socket


def test_node_daemonset(base: list[Obj]) -> None:
    ds = find(base, "DaemonSet", "cinder-csi-node")
    spec = pod_spec(ds)
    assert spec["serviceAccountName"] == "cinder-csi-node"
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    # Upstream's choice: the metadata service is reachable whatever the CNI does.
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"},
    }

    plugin = container(ds, "cinder-csi")
    assert plugin["args"] == NODE_ARGS
    sc = plugin["securityContext"]
    assert sc["privileged"] is True
    assert sc["runAsUser"] == 0
    probe = plugin["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in plugin["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 9838

    mount, volume = volume_by_mount(ds, plugin, "/var/lib/kubelet")
    assert mount["mountPropagation"] == "Bidirectional"
    assert volume["hostPath"]["path"] == "/var/lib/kubelet"
    for path in ("/dev", "/sys"):
        _, volume = volume_by_mount(ds, plugin, path)
        assert volume["hostPath"]["path"] == path
    _, socket = volume_by_mount(ds, plugin, "/csi")
    assert socket["hostPath"]["path"] == f"/var/lib/kubelet/plugins/{DRIVER}"
    mount, volume = volume_by_mount(ds, plugin, "/etc/cinder-csi")
    assert mount["readOnly"] is True and volume["configMap"]["name"] == "cinder-csi-config"

    registrar = container(ds, "node-driver-registrar")
    assert registrar["image"] == REGISTRAR_IMAGE
    assert "--csi-address=/csi/csi.sock" in registrar["args"]
    assert (f"--kubelet-registration-path=/var/lib/kubelet/plugins/{DRIVER}/csi.sock"
            in registrar["args"])
    assert not registrar["securityContext"].get("privileged")
    _, reg_socket = volume_by_mount(ds, registrar, "/csi")
    assert reg_socket["name"] == socket["name"]
    _, registration = volume_by_mount(ds, registrar, "/registration")
    assert registration["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"


def test_the_node_plugin_gets_no_cloud_credentials(base: list[Obj], tmp_path: Path) -> None:
    """A compromised node must not expose the project's credentials: no Secret in its pod,
    and what it reads holds no credentials, yet is all the node plugin needs."""
    ds = find(base, "DaemonSet", "cinder-csi-node")
    spec = pod_spec(ds)
    assert all("secret" not in v and "projected" not in v for v in spec["volumes"])
    for c in spec["containers"]:
        assert "envFrom" not in c
        assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in c.get("env", []))
    settings = settings_cloud_conf(base)
    assert "[Global" not in settings and "password" not in settings
    path = tmp_path / "node.conf"
    path.write_text(settings, encoding="utf-8")
    config = load_cloud_config([path], require_auth=False)
    assert config.clouds == {}
    assert config.metadata.search_order == ("configDrive", "metadataService")


def test_the_credentials_secret_holds_credentials_only(base: list[Obj]) -> None:
    text = secret_cloud_conf(base)
    sections = re.findall(r"^\s*\[([A-Za-z]+)", text, re.MULTILINE)
    assert sections and set(sections) == {"Global"}


def test_manifest_args_parse_with_the_cli(base: list[Obj]) -> None:
    parser = cli.build_parser()
    unknown: list[str] = []
    for kind, name in (("Deployment", "cinder-csi-controller"), ("DaemonSet", "cinder-csi-node")):
        c = container(find(base, kind, name), "cinder-csi")
        args = [a.replace("$(CLUSTER_NAME)", "kubernetes") for a in c["args"]]
        _, rest = parser.parse_known_args(args)
        unknown += rest
    assert unknown == [], f"the CLI rejects manifest flags: {unknown}"


def test_controller_rbac(base: list[Obj]) -> None:
    roles = [o for o in base if o["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in roles] == ["cinder-csi-controller"]
    assert grants(roles[0]) == CONTROLLER_GRANTS

    binding = find(base, "ClusterRoleBinding", "cinder-csi-controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "cinder-csi-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cinder-csi-controller",
                                    "namespace": NAMESPACE}]

    role = find(base, "Role", "cinder-csi-controller-leader-election")
    assert grants(role) == LEASE_GRANTS
    rb = find(base, "RoleBinding", "cinder-csi-controller-leader-election")
    assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "cinder-csi-controller",
                               "namespace": NAMESPACE}]


def test_node_service_account_has_no_api_access(base: list[Obj]) -> None:
    for obj in base:
        for subject in obj.get("subjects", []):
            assert subject["name"] != "cinder-csi-node", identity(obj)
    assert find(base, "ServiceAccount", "cinder-csi-node")["automountServiceAccountToken"] is False


def test_storage_classes(base: list[Obj]) -> None:
    classes = {o["metadata"]["name"]: o for o in base if o["kind"] == "StorageClass"}
    default_key = "storageclass.kubernetes.io/is-default-class"
    defaults = [n for n, sc in classes.items()
                if sc["metadata"].get("annotations", {}).get(default_key) == "true"]
    assert defaults == ["standard"]
    for name, sc in classes.items():
        assert sc["provisioner"] == DRIVER, name
        assert sc["allowVolumeExpansion"] is True, name
        assert sc["parameters"]["csi.storage.k8s.io/fstype"] == "ext4", name
        assert set(sc["parameters"]) <= {"type", "availability", "csi.storage.k8s.io/fstype"}
    standard = classes["standard"]
    assert standard["reclaimPolicy"] == "Delete"
    assert standard["volumeBindingMode"] == "Immediate"
    assert classes["standard-retain"]["reclaimPolicy"] == "Retain"
    topo = classes["topology-aware"]
    assert topo["volumeBindingMode"] == "WaitForFirstConsumer"
    keys = {e["key"] for term in topo["allowedTopologies"] for e in term["matchLabelExpressions"]}
    assert keys == {TOPOLOGY_KEY}
    assert "availability" not in topo["parameters"]


def test_registry_claim(base: list[Obj]) -> None:
    pvc = find(base, "PersistentVolumeClaim", "image-registry-storage")
    assert pvc["metadata"]["namespace"] == REGISTRY_NAMESPACE
    assert pvc["metadata"]["annotations"]["imageregistry.openshift.io"] == "true"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert pvc["spec"]["storageClassName"] == "standard"


def test_cloud_conf_template_parses_and_documents_every_key(
    base: list[Obj], tmp_path: Path,
) -> None:
    secret, settings = tmp_path / "cloud.conf", tmp_path / "settings.conf"
    secret.write_text(secret_cloud_conf(base), encoding="utf-8")
    settings.write_text(settings_cloud_conf(base), encoding="utf-8")
    config = load_cloud_config([secret, settings])  # as the controller reads them
    assert config.auth.options["auth_url"].startswith("https://")
    text = secret_cloud_conf(base) + settings_cloud_conf(base)
    upstream = {
        "auth-url", "username", "user-id", "password", "tenant-id", "tenant-name",
        "project-id", "project-name", "domain-id", "domain-name", "user-domain-name",
        "user-domain-id", "project-domain-name", "project-domain-id", "tenant-domain-name",
        "tenant-domain-id", "region", "application-credential-id",
        "application-credential-name", "application-credential-secret", "trust-id", "ca-file",
        "trustee-id", "trustee-password", "os-endpoint-type", "bs-version", "trust-device-path",
        "cert-file", "key-file", "tls-insecure", "use-clouds", "clouds-file", "cloud",
        "node-volume-attach-limit", "rescan-on-resize", "ignore-volume-az",
        "ignore-volume-microversion", "search-order", "request-timeout",
    }
    missing = {k for k in upstream if not re.search(rf"(?<![a-z-]){k}(?![a-z-])", text)}
    assert not missing, f"cloud.conf template does not mention {sorted(missing)}"


def test_cloud_conf_template_holds_only_placeholders(base: list[Obj]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(secret_cloud_conf(base))
    glob = parser["Global"]
    assert "CHANGE-ME" in glob["password"]
    assert "CHANGE-ME" in glob["username"]
    assert glob["auth-url"].split("/")[2].split(":")[0].endswith((".invalid", ".example"))
    for section in parser.sections():
        for key, value in parser[section].items():
            if "secret" in key or "password" in key:
                assert "CHANGE-ME" in value, (section, key)


# --------------------------------------------------------------------------------------------
# upstream-sidecars overlay


def test_overlay_holds_the_same_objects_as_the_base(base: list[Obj], overlay: list[Obj]) -> None:
    assert sorted(map(identity, overlay)) == sorted(map(identity, base))
    # Only the controller's pod and ClusterRole differ.
    changed = {identity(o) for o in overlay} - {identity(o) for o in base if o in overlay}
    assert {(kind, name) for _, kind, _, name in changed} == {
        ("Deployment", "cinder-csi-controller"), ("ClusterRole", "cinder-csi-controller"),
    }


def test_overlay_controller_runs_the_upstream_sidecars(overlay: list[Obj]) -> None:
    deploy = find(overlay, "Deployment", "cinder-csi-controller")
    names = [c["name"] for c in pod_spec(deploy)["containers"]]
    assert sorted(names) == sorted(["cinder-csi", *SIDECAR_IMAGES])

    ours = container(deploy, "cinder-csi")
    assert "--with-provisioner=false" in ours["args"]
    assert "--with-provisioner" not in ours["args"]
    assert not any(a.startswith("--leader-election") for a in ours["args"])
    assert ours["args"] == [
        "controller",
        "--endpoint=unix:///csi/csi.sock",
        "--cloud-config=/etc/config/cloud.conf",
        "--cloud-config=/etc/cinder-csi/cloud.conf",
        "--cluster=$(CLUSTER_NAME)",
        "--with-provisioner=false",
        "--http-endpoint=:8080",
    ]
    _, socket = volume_by_mount(deploy, ours, "/csi")

    for name, image in SIDECAR_IMAGES.items():
        c = container(deploy, name)
        assert c["image"] == image
        args = c["args"]
        for flag in ("--csi-address=/csi/csi.sock", "--leader-election", "--timeout=3m"):
            assert flag in args, (name, flag)
        assert any(a.startswith("--http-endpoint=:") for a in args), name
        _, vol = volume_by_mount(deploy, c, "/csi")
        assert vol["name"] == socket["name"], name
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False, name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz/leader-election", name

    provisioner = container(deploy, "csi-provisioner")["args"]
    for flag in ("--extra-create-metadata", "--feature-gates=Topology=true",
                 "--default-fstype=ext4"):
        assert flag in provisioner, flag


def test_overlay_rbac(overlay: list[Obj]) -> None:
    roles = [o for o in overlay if o["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in roles] == ["cinder-csi-controller"]
    expected = {k: set(v) for k, v in CONTROLLER_GRANTS.items()}
    expected[("", "persistentvolumeclaims")].discard("create")  # no registry duty...
    del expected[("", "namespaces")]  # ...nor its namespace check
    for key, verbs in SIDECAR_EXTRA_GRANTS.items():
        expected.setdefault(key, set()).update(verbs)
    assert grants(roles[0]) == expected
    assert grants(find(overlay, "Role", "cinder-csi-controller-leader-election")) == LEASE_GRANTS


# --------------------------------------------------------------------------------------------
# Dockerfile


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        require_tools("hadolint")
        return
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "builder" and stages[1][1] == ""
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    final = text.split("\nFROM ")[-1]
    apt = re.search(r"apt-get install ([^\n]+)", final)
    assert apt is not None
    packages = set(apt.group(1).split()) - {"-y", "--no-install-recommends", "\\"}
    assert "--no-install-recommends" in apt.group(1)
    assert packages == {"e2fsprogs", "xfsprogs", "util-linux", "udev"}
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert re.search(r"^USER 10001$", final, flags=re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["cinder-csi"\]$', final, flags=re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert entry in ignored, entry
