"""KubeRest over real TLS: server verification by CA data, client certificates, tls-server-name.

The Kubernetes stand-in speaks plain HTTP, so these run a small HTTPS server of their own.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cinder_csi.loop.kube.client import KubeOptions, build_clients


def issue(name: str, issuer: tuple[Any, Any] | None = None, *, ca: bool = False,
          sans: list[Any] | None = None) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def pem(cert: Any, key: Any) -> tuple[bytes, bytes]:
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class Server:
    def __init__(self, tmp: Path) -> None:
        self.ca = issue("test-ca", ca=True)
        server = issue("api.internal", self.ca, sans=[
            x509.DNSName("api.internal"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.client = pem(*issue("loop", self.ca))
        self.ca_pem = pem(*self.ca)[0]
        cert, key = pem(*server)
        (tmp / "server.pem").write_bytes(cert + key)
        (tmp / "ca.pem").write_bytes(self.ca_pem)
        seen = self.seen = []  # (client certificate CN, authorization header)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                seen.append((cn, self.headers.get("authorization")))
                body = json.dumps({"kind": "Namespace"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "server.pem")
        ctx.load_verify_locations(tmp / "ca.pem")
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.close()


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({
        "current-context": "c", "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def get(path: str) -> dict[str, Any]:
    clients = build_clients(KubeOptions(kubeconfig=path))
    try:
        return clients.rest().get("/api/v1/namespaces/default")
    finally:
        clients.close()


def test_client_certificate_data_and_ca_data(server: Server, tmp_path: Path) -> None:
    cert, key = server.client
    assert get(kubeconfig(tmp_path / "kc", {
        "server": server.url, "certificate-authority-data": b64(server.ca_pem)},
        {"client-certificate-data": b64(cert), "client-key-data": b64(key)})) == {
        "kind": "Namespace"}
    assert server.seen == [("loop", None)]


def test_client_certificate_files_token_and_server_name(server: Server, tmp_path: Path
                                                        ) -> None:
    cert, key = server.client
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    get(kubeconfig(tmp_path / "kc", {
        "server": server.url.replace("127.0.0.1", "localhost"),
        "certificate-authority": "ca.pem", "tls-server-name": "api.internal"},
        {"client-certificate": "tls.crt", "client-key": "tls.key", "token": "abc"}))
    assert server.seen == [("loop", "Bearer abc")]


def test_an_unknown_ca_is_refused_unless_verification_is_skipped(server: Server,
                                                                 tmp_path: Path) -> None:
    import urllib3

    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        get(kubeconfig(tmp_path / "kc", {"server": server.url}, {"token": "abc"}))
    assert server.seen == []
    get(kubeconfig(tmp_path / "kc2", {"server": server.url, "insecure-skip-tls-verify": True},
                   {"token": "abc"}))
    assert server.seen == [(None, "Bearer abc")]
