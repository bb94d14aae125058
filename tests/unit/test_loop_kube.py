"""cinder_csi.loop.kube.client: throttling, Retry-After handling and client construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cinder_csi.loop.kube.client import KubeOptions, ThrottledRest, build_clients, retry_after
from cinder_csi.loop.kube.throttle import TokenBucket


class FakeRaw:
    def __init__(self) -> None:
        self.released = False

    def drain_conn(self) -> None:
        pass

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        self.released = True


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.response = FakeRaw()


class FakeRest:
    def __init__(self, *responses: FakeResponse) -> None:
        self.responses = list(responses)
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> FakeResponse:
        self.calls.append((method, url))
        return self.responses.pop(0)

    def close(self) -> None:
        self.closed = True


class CountingBucket(TokenBucket):
    def __init__(self) -> None:
        super().__init__(0, 1)
        self.taken = 0

    def acquire(self, stop: Any = None) -> bool:
        self.taken += 1
        return True


def test_every_request_takes_a_token() -> None:
    inner = FakeRest(FakeResponse(200), FakeResponse(201))
    bucket = CountingBucket()
    rest = ThrottledRest(inner, bucket, max_retries=3)
    assert rest.request("GET", "http://x/api").status == 200
    assert rest.request("POST", "http://x/api").status == 201
    assert bucket.taken == 2


def test_429_is_retried_after_retry_after_with_a_new_token() -> None:
    first = FakeResponse(429, {"Retry-After": "0"})
    inner = FakeRest(first, FakeResponse(429, {"Retry-After": "0"}), FakeResponse(200))
    bucket = CountingBucket()
    rest = ThrottledRest(inner, bucket, max_retries=5)
    assert rest.request("PUT", "http://x/api/v1/x").status == 200
    assert len(inner.calls) == 3
    assert bucket.taken == 3
    assert first.response.released  # the connection of the discarded answer is reused


@pytest.mark.parametrize(("status", "headers", "retried"), [
    (503, {"Retry-After": "0"}, True),
    (500, {"Retry-After": "0"}, True),
    (500, {}, False),  # may have been processed: not ours to repeat
    (409, {}, False),
    (404, {"Retry-After": "0"}, False),
])
def test_which_answers_are_retried(status: int, headers: dict[str, str], retried: bool) -> None:
    inner = FakeRest(FakeResponse(status, headers), FakeResponse(200))
    rest = ThrottledRest(inner, CountingBucket(), max_retries=3)
    assert rest.request("GET", "http://x").status == (200 if retried else status)


def test_retries_are_bounded() -> None:
    inner = FakeRest(*[FakeResponse(429, {"Retry-After": "0"}) for _ in range(4)])
    rest = ThrottledRest(inner, CountingBucket(), max_retries=3)
    assert rest.request("GET", "http://x").status == 429
    assert len(inner.calls) == 4


def test_unparseable_retry_after_waits_a_second_not_forever() -> None:
    assert retry_after(FakeResponse(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 1
    assert retry_after(FakeResponse(429, {"Retry-After": "86400"})) == 30
    assert retry_after(FakeResponse(429)) == 1
    assert retry_after(FakeResponse(200)) is None


def test_build_clients_from_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    clients = build_clients(KubeOptions(kubeconfig=str(kubeconfig), qps=7, burst=9))
    try:
        assert clients.main.access.server == "http://127.0.0.1:1"
        assert clients.main.rest_client.limiter.qps == 7
        assert clients.main.rest_client.limiter.burst == 9
        # Leader election: another transport and pool, and no throttle.
        assert clients.leader_election.transport is not clients.main.transport
        assert (clients.leader_election.transport.pool_manager
                is not clients.main.transport.pool_manager)
        assert clients.leader_election.rest_client.limiter.unlimited
        assert clients.leader_election.rest_client.max_retries == 0
        assert clients.main.headers()["authorization"] == "Bearer abc"
        assert clients.leader_election.headers()["User-Agent"].endswith("-leader-election")
    finally:
        clients.close()


def test_a_stopping_client_hands_back_the_throttled_answer() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    inner = FakeRest(FakeResponse(429, {"Retry-After": "5"}), FakeResponse(200))
    rest = ThrottledRest(inner, CountingBucket(), max_retries=3, stop=stop)
    assert rest.request("GET", "http://x").status == 429
    assert len(inner.calls) == 1


class FakePool:
    """Stands in for the urllib3 pool KubeRest talks to directly."""

    def __init__(self, *answers: tuple[int, bytes, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def urlopen(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        status, data, headers = self.answers.pop(0)
        return type("Answer", (), {"status": status, "data": data, "headers": headers,
                                   "reason": "", "drain_conn": lambda self: None,
                                   "release_conn": lambda self: None})()


class FakePoolManager:
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.hosts: list[str] = []

    def connection_from_url(self, url: str) -> FakePool:
        self.hosts.append(url)
        return self.pool

    def close(self) -> None:
        pass


def direct_rest(pool: FakePool, host: str = "https://api.example:6443/prefix") -> Any:
    from cinder_csi.loop.kube.client import ApiConnection, KubeRest, Transport
    from cinder_csi.loop.kube.kubeconfig import ClusterAccess, StaticHeader

    access = ClusterAccess(server=host, credentials=StaticHeader("Bearer s3cret"))
    manager = FakePoolManager(pool)
    transport = Transport(access, pool_size=4, make_manager=lambda cert: manager)  # type: ignore[arg-type,return-value]
    conn = ApiConnection(access, ThrottledRest(transport, CountingBucket(), max_retries=3),
                         transport, "agent/1")
    rest = KubeRest(conn, timeout=7.0)
    rest.get("/healthz")  # the first request builds the pool
    assert manager.hosts == [host]
    pool.calls.clear()
    return rest


def test_direct_requests_carry_auth_agent_body_and_the_servers_path() -> None:
    pool = FakePool((200, b"", {}), (200, b'{"kind": "PersistentVolumeClaim"}', {}))
    rest = direct_rest(pool)
    answer = rest.patch("/api/v1/namespaces/ns/persistentvolumeclaims/c",
                        {"metadata": {"finalizers": ["x"]}},
                        content_type="application/strategic-merge-patch+json",
                        query={"fieldManager": "me"})
    assert answer == {"kind": "PersistentVolumeClaim"}
    [call] = pool.calls
    assert call["method"] == "PATCH"
    assert call["url"] == "/prefix/api/v1/namespaces/ns/persistentvolumeclaims/c?fieldManager=me"
    headers = call["headers"]
    assert headers["authorization"] == "Bearer s3cret"  # the client's own auth settings
    assert headers["User-Agent"] == "agent/1"
    assert headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert call["body"] == b'{"metadata": {"finalizers": ["x"]}}'
    assert call["timeout"].total == 7.0


def test_direct_requests_wait_out_429_and_raise_api_errors() -> None:
    from cinder_csi.loop.kube.apierror import ApiException

    pool = FakePool((200, b"", {}), (429, b"", {"Retry-After": "0"}),
                    (404, b'{"reason": "NotFound"}', {}))
    rest = direct_rest(pool)
    with pytest.raises(ApiException) as raised:
        rest.get("/api/v1/persistentvolumes/pv")
    assert raised.value.status == 404
    assert len(pool.calls) == 2  # the 429 was retried, under the limiter
    assert rest.connection.rest_client.limiter.taken == 3  # with direct_rest's first
