"""Create or delete N claims from a process of its own, so that the benchmark's own process
holds only the stand-ins and its CPU is theirs. Prints one JSON line: seconds, CPU seconds.

    python -m bench.claimload create|delete --server http://127.0.0.1:PORT --count N
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "bench-claimload"


def claim_body(name: str, storage_class: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                     "resources": {"requests": {"storage": size}}}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=("create", "delete"))
    parser.add_argument("--server", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--storage-class", default="standard")
    parser.add_argument("--size", default="1Gi")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    url = urlsplit(args.server)
    base = f"/api/v1/namespaces/{args.namespace}/persistentvolumeclaims"
    local = threading.local()

    def one(index: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        name = f"{args.prefix}-{index}"
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if args.action == "create":
            body = json.dumps(claim_body(name, args.storage_class, args.size)).encode()
            conn.request("POST", base, body=body, headers=headers)
        else:
            conn.request("DELETE", f"{base}/{name}", headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status not in (200, 201, 202):
            raise RuntimeError(f"{args.action} {name}: {resp.status} {payload[:200]!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(args.connections) as pool:
        list(pool.map(one, range(args.count)))
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
