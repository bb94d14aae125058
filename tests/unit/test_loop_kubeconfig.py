"""cinder_csi.loop.kube.kubeconfig: every field and kind it reads, exec plugins, the fallback."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cinder_csi.loop.kube import kubeconfig as kc
from cinder_csi.loop.kube.kubeconfig import (
    ExecPlugin,
    KubeconfigError,
    TokenFile,
    from_kubeconfig,
    in_cluster,
)


def write(path: Path, *, cluster: dict[str, Any] | None = None,
          user: dict[str, Any] | None = None, current: str = "c",
          contexts: list[dict[str, Any]] | None = None) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://api:6443"}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": contexts or [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_token_and_cluster_fields(tmp_path: Path) -> None:
    access = from_kubeconfig(write(tmp_path / "config", cluster={
        "server": "https://api:6443/prefix", "certificate-authority-data": b64(b"CA PEM"),
        "tls-server-name": "api.internal", "proxy-url": "http://proxy:3128"},
        user={"token": "abc"}))
    assert access.server == "https://api:6443/prefix"
    assert access.tls.ca_data == b"CA PEM"
    assert access.tls.server_name == "api.internal"
    assert not access.tls.insecure
    assert access.proxy == "http://proxy:3128"
    assert access.credentials.headers() == {"authorization": "Bearer abc"}
    assert access.credentials.client_cert() is None
    assert "context c" in access.source


def test_relative_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    access = from_kubeconfig(write(tmp_path / "sub" / "config", cluster={
        "server": "https://api", "certificate-authority": "ca.crt",
        "insecure-skip-tls-verify": True},
        user={"client-certificate": "tls.crt", "client-key": "/abs/tls.key"}))
    assert access.tls.ca_file == str(tmp_path / "sub" / "ca.crt")
    assert access.tls.cert_file == str(tmp_path / "sub" / "tls.crt")
    assert access.tls.key_file == "/abs/tls.key"
    assert access.tls.insecure
    assert access.credentials.headers() == {}


def test_client_certificate_data(tmp_path: Path) -> None:
    access = from_kubeconfig(write(tmp_path / "config", user={
        "client-certificate-data": b64(b"CERT"), "client-key-data": b64(b"KEY")}))
    assert (access.tls.cert_data, access.tls.key_data) == (b"CERT", b"KEY")


def test_bad_base64_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="certificate-authority-data is not base64"):
        from_kubeconfig(write(tmp_path / "config", cluster={
            "server": "https://api", "certificate-authority-data": "not base64!"}))


def test_basic_auth(tmp_path: Path) -> None:
    access = from_kubeconfig(write(tmp_path / "config", user={"username": "me",
                                                               "password": "pw"}))
    assert access.credentials.headers() == {"authorization": f"Basic {b64(b'me:pw')}"}


def test_token_file_is_read_again_when_it_rotates(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    access = from_kubeconfig(write(tmp_path / "config", user={"tokenFile": "token"}))
    assert access.credentials.headers() == {"authorization": "Bearer one"}
    token.write_text("second\n")
    os.utime(token, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert access.credentials.headers() == {"authorization": "Bearer second"}
    token.unlink()  # briefly gone while being replaced: the last token still serves
    assert access.credentials.headers() == {"authorization": "Bearer second"}


def test_missing_token_file_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="cannot read token file"):
        TokenFile(str(tmp_path / "absent"))


def test_context_choice_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "config", contexts=[
        {"name": "c", "context": {"cluster": "k", "user": "u"}},
        {"name": "other", "context": {"cluster": "missing"}}])
    assert from_kubeconfig(path).server == "https://api:6443"
    with pytest.raises(KubeconfigError, match="no cluster named 'missing'"):
        from_kubeconfig(path, "other")
    with pytest.raises(KubeconfigError, match="no context named 'nope'"):
        from_kubeconfig(path, "nope")
    with pytest.raises(KubeconfigError, match="no current-context"):
        from_kubeconfig(write(tmp_path / "empty", current=""))
    with pytest.raises(KubeconfigError, match="does not exist"):
        from_kubeconfig(tmp_path / "absent")
    (tmp_path / "bad").write_text("- a list")
    with pytest.raises(KubeconfigError, match="not a mapping"):
        from_kubeconfig(tmp_path / "bad")
    with pytest.raises(KubeconfigError, match="has no server"):
        from_kubeconfig(write(tmp_path / "noserver", cluster={"insecure-skip-tls-verify": True}))


def test_kubeconfig_list_merges_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    first = write(tmp_path / "a", cluster={"server": "https://first"}, current="")
    second = write(tmp_path / "b", cluster={"server": "https://second"}, user={"token": "t"})
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(tmp_path / "gone"),
                                                      str(second)]))
    access = from_kubeconfig()
    assert access.server == "https://first"  # cluster k: the first file wins
    assert access.credentials.headers() == {}  # user u: also the first file's (empty)


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("CA")
    (tmp_path / "token").write_text("sa-token")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    access = in_cluster(env, tmp_path)
    assert access.server == "https://[fd00::1]:443"
    assert access.tls.ca_file == str(tmp_path / "ca.crt")
    assert access.credentials.headers() == {"authorization": "Bearer sa-token"}
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        in_cluster({}, tmp_path)
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(KubeconfigError, match=r"ca\.crt is missing"):
        in_cluster(env, tmp_path)


# ---- exec credential plugins


def plugin(tmp_path: Path, answer: dict[str, Any] | str, *, exit_code: int = 0) -> Path:
    """An executable that records its environment and prints ``answer``."""
    script = tmp_path / "bin" / "cred"
    script.parent.mkdir(exist_ok=True)
    text = answer if isinstance(answer, str) else json.dumps(answer)
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(tmp_path / 'runs')!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'info': os.environ.get("
        "'KUBERNETES_EXEC_INFO'), 'extra': os.environ.get('EXTRA')}) + '\\n')\n"
        f"sys.stdout.write({text!r})\nsys.stderr.write('first\\nlast words\\n')\n"
        f"sys.exit({exit_code})\n")
    script.chmod(0o755)
    return script


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "runs"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


V1 = "client.authentication.k8s.io/v1"


def credential(status: dict[str, Any], api_version: str = V1) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "ExecCredential", "status": status}


def exec_user(**extra: Any) -> dict[str, Any]:
    return {"exec": {"apiVersion": V1, "command": "./bin/cred", "args": ["get", "--x"],
                     "env": [{"name": "EXTRA", "value": "yes"}],
                     "interactiveMode": "Never", **extra}}


def test_exec_token_runs_once_until_it_expires(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    expiry = time.time() + 3600
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))
    plugin(tmp_path, credential({"token": "tok", "expirationTimestamp": soon}))
    access = from_kubeconfig(write(tmp_path / "config", cluster={
        "server": "https://api", "certificate-authority-data": b64(b"CA"),
        "extensions": [{"name": "client.authentication.k8s.io/exec",
                        "extension": {"audience": "x"}}]},
        user=exec_user(provideClusterInfo=True)))
    assert access.credentials.headers() == {"authorization": "Bearer tok"}
    assert access.credentials.headers() == {"authorization": "Bearer tok"}
    [run] = runs(tmp_path)
    assert run["argv"] == ["get", "--x"]
    assert run["extra"] == "yes"
    info = json.loads(run["info"])
    assert info["apiVersion"] == V1 and info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"] == {"server": "https://api",
                                       "certificate-authority-data": b64(b"CA"),
                                       "config": {"audience": "x"}}
    # Within the expiry margin (5 s): the plugin runs again.
    monkeypatch.setattr(kc.time, "time", lambda: expiry - 4)
    access.credentials.headers()
    assert len(runs(tmp_path)) == 2


def test_exec_without_expiry_runs_again_only_after_a_401(tmp_path: Path) -> None:
    plugin(tmp_path, credential({"token": "tok"}, "client.authentication.k8s.io/v1beta1"))
    plugin_user = exec_user(apiVersion="client.authentication.k8s.io/v1beta1")
    access = from_kubeconfig(write(tmp_path / "config", user=plugin_user))
    for _ in range(3):
        access.credentials.headers()
    assert len(runs(tmp_path)) == 1
    assert runs(tmp_path)[0]["info"] and "cluster" not in json.loads(runs(tmp_path)[0]["info"])[
        "spec"]
    access.credentials.invalidate()
    access.credentials.headers()
    assert len(runs(tmp_path)) == 2


def test_exec_client_certificate(tmp_path: Path) -> None:
    plugin(tmp_path, credential({"clientCertificateData": "CERT", "clientKeyData": "KEY"}))
    access = from_kubeconfig(write(tmp_path / "config", user=exec_user()))
    assert access.credentials.client_cert() == (b"CERT", b"KEY")
    assert access.credentials.headers() == {}


@pytest.mark.parametrize(("answer", "exit_code", "message"), [
    (credential({"token": "t"}, "client.authentication.k8s.io/v1beta1"), 0,
     "answered apiVersion client.authentication.k8s.io/v1beta1"),
    (credential({}), 0, "neither a token nor a client certificate"),
    (credential({"clientCertificateData": "CERT"}), 0, "without its key"),
    (credential({"token": "t", "expirationTimestamp": "tomorrow"}), 0, "not RFC 3339"),
    ({"kind": "Other"}, 0, "no ExecCredential"),
    ("not json", 0, "wrote no JSON"),
    (credential({"token": "t"}), 3, "exited 3: last words"),
])
def test_exec_bad_answers_are_clear_errors(tmp_path: Path, answer: Any, exit_code: int,
                                          message: str) -> None:
    plugin(tmp_path, answer, exit_code=exit_code)
    access = from_kubeconfig(write(tmp_path / "config", user=exec_user()))
    with pytest.raises(KubeconfigError, match=message):
        access.credentials.headers()


def test_exec_config_errors(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="not found \\(install it\\)"):
        ExecPlugin({"apiVersion": V1, "command": "no-such-plugin-xyz",
                    "installHint": "install it"}, base_dir=tmp_path).headers()
    with pytest.raises(KubeconfigError, match=r"apiVersion .*/v1alpha1"):
        ExecPlugin({"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"},
                   base_dir=tmp_path)
    with pytest.raises(KubeconfigError, match="interactive"):
        ExecPlugin({"apiVersion": V1, "command": "x", "interactiveMode": "Always"},
                   base_dir=tmp_path)
    with pytest.raises(KubeconfigError, match="without a command"):
        ExecPlugin({"apiVersion": V1}, base_dir=tmp_path)
    # A bare command name is looked up on PATH, not next to the kubeconfig.
    assert ExecPlugin({"apiVersion": V1, "command": "cred"}, base_dir=tmp_path).command == "cred"


# ---- the kubernetes package's loader


def test_auth_provider_falls_back_to_the_kubernetes_loader(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    id_token = f"{part({'alg': 'none'})}.{part({'exp': 4102444800, 'iss': 'x'})}.sig"
    path = write(tmp_path / "config", cluster={"server": "https://api:6443",
                                               "insecure-skip-tls-verify": True},
                 user={"auth-provider": {"name": "oidc", "config": {
                     "id-token": id_token, "idp-issuer-url": "https://issuer"}}})
    with caplog.at_level(logging.INFO, logger=kc.__name__):
        access = from_kubeconfig(path)
    assert [r.getMessage() for r in caplog.records if "auth-provider" in r.getMessage()]
    assert access.server == "https://api:6443"
    assert access.tls.insecure
    assert access.credentials.headers() == {"authorization": f"Bearer {id_token}"}
    assert "via the kubernetes package" in access.source
