"""``python -m bench <name> [options]``: run one benchmark (``python -m bench`` lists them)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "provision": "bench.provision",
    "attach": "bench.attach",
    "rpc": "bench.rpc",
    "stage": "bench.stage",
    "memory": "bench.memory",
    "kube_standin": "bench.kube_standin",
    "create": "bench.create_throughput",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m bench <name> [options]; <name> --help for its options\n")
        for name, module in BENCHMARKS.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
            print(f"  {name:<13} {doc[0] if doc else ''}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    code: int = module.main(argv[1:])
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
