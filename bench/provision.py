"""Claims provisioned (and deleted) per second by the watch loop, with the loop's own cost.

Everything runs on the sandbox's stand-ins (``Sandbox(loop=False)``, i.e. ``cinder-csi sandbox
--no-loop``) in this process; the controller and node plugin are its child processes; the loop
is a process of its own (``cinder-csi provisioner --csi-address <controller socket>``), so its
CPU time and memory are read apart from everything else in /proc; the claims are created and
deleted by another child (``bench.claimload``), so this process's CPU is the stand-ins'.

For each cloud (``instant``: creates and deletes take no time; ``2s``: each takes 2 s and at most
20 run at once, so the ideal is ceil(N/20) * 2 s) and each loop profile, N claims are created at
once; the run ends when all are Bound. Then all are deleted; that run ends when every PV is gone.
Reported: claims per second, p50/p99 time from claim to Bound (and from delete to PV gone), the
ratio to the ideal, the loop's CPU ms and API requests per claim (counted at the Kubernetes
stand-in by the loop's User-Agent), its peak RSS, and the stand-ins' CPU and how busy they were.

Usage: python -m bench provision [--claims 100,1000] [--clouds instant,2s]
           [--profiles defaults,qps100] [--runs 2] [--py-spy]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.milestones import Milestones, any_change, claim_of_volume, deleting, gone, phase_is
from bench.processes import start_loop
from bench.procstat import sample
from bench.profiling import PySpy, summarise
from bench.results import GO_SIDECAR, RESULTS_DIR, Report, mean, percentile, spread
from cinder_csi.sandbox.environment import Sandbox

LOOP_USER_AGENT = "cinder-csi-provisioner"
PREFIX = "bench"


@dataclass(frozen=True)
class Cloud:
    name: str
    seconds: float  # how long one create (and one delete) takes in Cinder
    concurrency: int | None  # how many may run at once

    def ideal(self, claims: int) -> float:
        if self.seconds == 0:
            return 0.0
        waves = math.ceil(claims / self.concurrency) if self.concurrency else 1
        return waves * self.seconds


CLOUDS = {"instant": Cloud("instant", 0.0, None), "2s": Cloud("2s", 2.0, 20)}
PROFILES: dict[str, list[str]] = {
    "defaults": [],  # what `cinder-csi provisioner` runs with when given no flags
    "qps100": ["--kube-api-qps", "100", "--kube-api-burst", "200"],  # the Go sidecar's config
    "qps1000": ["--kube-api-qps", "1000", "--kube-api-burst", "2000"],  # client limit out of play
}
# Worker pools against the same unthrottled client, to choose the default from.
for _workers in (8, 16, 32):
    PROFILES[f"qps1000-w{_workers}"] = [*PROFILES["qps1000"], "--worker-threads", str(_workers)]


@dataclass
class Phase:
    """One phase (provision or delete) of one run."""

    seconds: float = 0.0
    per_s: float = 0.0
    p50_s: float = 0.0
    p99_s: float = 0.0
    loop_cpu_ms: float = 0.0  # per claim
    controller_cpu_ms: float = 0.0
    standin_cpu_ms: float = 0.0
    standin_busy: float = 0.0  # stand-in CPU seconds / wall seconds (1.0 = one core flat out)
    loop_requests: float = 0.0  # per claim
    requests_by_verb: dict[str, float] = field(default_factory=dict)
    loader_s: float = 0.0  # how long the loader took to send all requests

    @property
    def all_cpu_ms(self) -> float:
        """Per claim, of the loop, the controller and the stand-ins together."""
        return self.loop_cpu_ms + self.controller_cpu_ms + self.standin_cpu_ms


@dataclass
class Run:
    claims: int
    cloud: str
    profile: str
    provision: Phase
    delete: Phase
    loop_peak_rss_mb: float
    loop_rss_after_mb: float
    leftover_volumes: int
    events_dropped: int  # the loop's Event queue overflowed: these were never written


class Meters:
    """CPU of the loop, the controller and this process (the stand-ins) over one phase, and
    the loop's API requests."""

    def __init__(self, sandbox: Sandbox, loop_pid: int) -> None:
        assert sandbox.kube is not None
        self.sandbox = sandbox
        self.kube = sandbox.kube
        self.loop_pid = loop_pid
        self.controller_pid = sandbox.children["controller"].pid

    def quiet(self, still: float = 1.0, limit: float = 60.0) -> tuple[
            float, float, float, Counter[str]]:
        """A reading once the loop has sent no request for ``still`` seconds: its work for
        the claims (clearing intents, Events) may go on a moment after the last one is Bound."""
        deadline = time.monotonic() + limit
        last = self.read()
        while time.monotonic() < deadline:
            time.sleep(still)
            now = self.read()
            if now[3] == last[3]:
                return now
            last = now
        return last

    def read(self) -> tuple[float, float, float, Counter[str]]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counts: Counter[str] = Counter()
        for (agent, method, what), n in self.kube.request_counts().items():
            if agent == LOOP_USER_AGENT:
                counts[f"{method} {what}"] += n
        return (sample(self.loop_pid).cpu_s, sample(self.controller_pid).cpu_s,
                usage.ru_utime + usage.ru_stime, counts)


def finish_phase(phase: Phase, claims: int, before: tuple[float, float, float, Counter[str]],
                 after: tuple[float, float, float, Counter[str]], seconds: float,
                 latencies: list[float]) -> None:
    phase.seconds = seconds
    phase.per_s = claims / seconds
    phase.p50_s = percentile(latencies, 0.5)
    phase.p99_s = percentile(latencies, 0.99)
    phase.loop_cpu_ms = 1000 * (after[0] - before[0]) / claims
    phase.controller_cpu_ms = 1000 * (after[1] - before[1]) / claims
    phase.standin_cpu_ms = 1000 * (after[2] - before[2]) / claims
    phase.standin_busy = (after[2] - before[2]) / seconds
    requests = after[3] - before[3]
    phase.loop_requests = sum(requests.values()) / claims
    phase.requests_by_verb = {k: v / claims for k, v in sorted(requests.items())}


def load_claims(sandbox: Sandbox, action: str, claims: int) -> subprocess.Popen[bytes]:
    assert sandbox.kube is not None
    return subprocess.Popen(
        [sys.executable, "-m", "bench.claimload", action, "--server", sandbox.kube.url,
         "--count", str(claims), "--prefix", PREFIX],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)


def loader_seconds(process: subprocess.Popen[bytes]) -> float:
    out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"claim loader failed ({process.returncode})")
    return float(json.loads(out.decode().strip().splitlines()[-1])["seconds"])


def run_once(claims: int, cloud: Cloud, profile: str, *, duties: str, controller_log: str,
             loop_log: str, spy: Path | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        sandbox = Sandbox(Path(tmp), nodes=1, loop=False, log_level=controller_log)
        loop = None
        try:
            sandbox.start()
            assert sandbox.openstack is not None and sandbox.kube is not None
            # Cinder's default of 1,000 volumes per project would stop the big runs.
            sandbox.openstack.set_quota("demo", volumes=-1, gigabytes=-1)
            faults = sandbox.openstack.faults
            for operation in ("create", "delete"):
                faults.slow(operation, cloud.seconds)
                if cloud.concurrency:
                    faults.limit(operation, cloud.concurrency)
            loop = start_loop(sandbox.state_dir / "logs", sandbox.controller_socket,
                              sandbox.kubeconfig, "--cluster", "sandbox", "--duties", duties,
                              *PROFILES[profile], log_level=loop_log)
            marks = Milestones(sandbox.kube, {
                "created": ("persistentvolumeclaims", any_change),
                "bound": ("persistentvolumeclaims", phase_is("Bound")),
                "deleting": ("persistentvolumeclaims", deleting),
                "pv gone": ("persistentvolumes", gone),
            }, name_of=claim_of_volume)
            meters = Meters(sandbox, loop.pid)
            timeout = 120 + claims * 0.5 + cloud.ideal(claims) * 2
            spies = []
            if spy is not None:  # the loop, and this process: the stand-ins
                spies = [PySpy(loop.pid, spy).start(),
                         PySpy(os.getpid(), spy.with_name("standins-" + spy.name)).start()]
                time.sleep(3)  # py-spy takes a moment to attach to a process of 100+ threads

            def phase(action: str, start: str, end: str) -> Phase:
                """Create or delete every claim; measured until each reached ``end``."""
                measured = Phase()
                before = meters.read()
                loader = load_claims(sandbox, action, claims)
                marks.wait(end, claims, timeout)
                after = meters.quiet()
                measured.loader_s = loader_seconds(loader)
                finish_phase(measured, claims, before, after, marks.span(start, end),
                             marks.durations(start, end))
                return measured

            provision = phase("create", "created", "bound")
            for spying in spies:
                spying.stop()
            peak = sample(loop.pid).peak_rss_mb
            rss = sample(loop.pid).rss_mb
            delete = phase("delete", "deleting", "pv gone")
            peak = max(peak, sample(loop.pid).peak_rss_mb)
            marks.close()
            leftovers = [v for v in sandbox.openstack.volumes()
                         if str(v.get("name") or "").startswith("pvc-")
                         and v.get("status") != "deleting"]
            dropped = loop.log.read_text(errors="replace").count("event queue full")
            return Run(claims, cloud.name, profile, provision, delete, peak, rss, len(leftovers),
                       dropped)
        finally:
            if loop is not None:
                loop.stop()
            sandbox.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench provision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", default="100,1000", help="comma-separated claim counts")
    parser.add_argument("--clouds", default="instant,2s")
    parser.add_argument("--profiles", default="defaults,qps100")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duties", default="claims,volumes",
                        help="the loop's duties (external-provisioner's share by default)")
    parser.add_argument("--controller-log-level", default="INFO")
    parser.add_argument("--loop-log-level", default="INFO")
    parser.add_argument("--py-spy", action="store_true",
                        help="record the loop's provisioning phase with py-spy (first run of "
                             "each configuration); collapsed stacks and a text summary go to "
                             "bench/results/")
    args = parser.parse_args(argv)
    report = Report("provision", [
        "claims", "cloud", "loop", "Bound/s (runs)", "p50 / p99 to Bound s", "ratio to ideal",
        "loop CPU ms/claim", "API req/claim", "loop peak RSS MB", "stand-in CPU ms/claim",
        "stand-in share", "stand-in busy", "deleted/s (runs)", "delete p50 / p99 s",
        "delete: loop CPU ms, req",
    ])
    runs: list[Run] = []
    for claims in [int(x) for x in args.claims.split(",")]:
        for cloud_name in args.clouds.split(","):
            cloud = CLOUDS[cloud_name]
            for profile in args.profiles.split(","):
                these: list[Run] = []
                for index in range(args.runs):
                    spy = None
                    if args.py_spy and index == 0:
                        stamp = time.strftime("%Y%m%dT%H%M%S")
                        spy = RESULTS_DIR / "profiles" / (
                            f"provision-{claims}-{cloud.name}-{profile}-{stamp}.collapsed")
                    run = run_once(claims, cloud, profile, duties=args.duties,
                                   controller_log=args.controller_log_level,
                                   loop_log=args.loop_log_level, spy=spy)
                    these.append(run)
                    print(f"  {claims} claims, {cloud.name}, {profile}: "
                          f"{run.provision.per_s:.1f} Bound/s, "
                          f"{run.provision.loop_cpu_ms:.1f} loop CPU ms/claim, "
                          f"{run.provision.loop_requests:.2f} req/claim "
                          f"{run.provision.requests_by_verb}; deleted "
                          f"{run.delete.per_s:.1f}/s; leftovers {run.leftover_volumes}; "
                          f"events dropped {run.events_dropped}",
                          flush=True)
                    for path in (spy, spy.with_name("standins-" + spy.name)) if spy else ():
                        if path.exists():
                            text = summarise(path)
                            path.with_suffix(".txt").write_text(text + "\n")
                            print(f"    {path.name}:")
                            print("\n".join("    " + line for line in text.splitlines()[:24]))
                runs += these
                p, d = [r.provision for r in these], [r.delete for r in these]
                ideal = cloud.ideal(claims)
                ratio = (f"{max(x.seconds for x in p) / ideal:.2f}x" if ideal else "-")
                report.add(
                    claims, cloud.name, profile, spread([x.per_s for x in p]),
                    f"{mean([x.p50_s for x in p]):.2f} / {mean([x.p99_s for x in p]):.2f}",
                    ratio, spread([x.loop_cpu_ms for x in p]),
                    spread([x.loop_requests for x in p]),
                    spread([r.loop_peak_rss_mb for r in these]),
                    mean([x.standin_cpu_ms for x in p]),
                    f"{mean([x.standin_cpu_ms / x.all_cpu_ms for x in p]):.0%}",
                    f"{max(x.standin_busy for x in p):.0%}",
                    spread([x.per_s for x in d]),
                    f"{mean([x.p50_s for x in d]):.2f} / {mean([x.p99_s for x in d]):.2f}",
                    f"{mean([x.loop_cpu_ms for x in d]):.1f}, "
                    f"{mean([x.loop_requests for x in d]):.2f}",
                )
    report.figures = {"runs": [asdict(r) for r in runs], "reference": GO_SIDECAR}
    low, high = GO_SIDECAR["claims_bound_per_s"]
    report.note(f"reference (not re-run here): {GO_SIDECAR['name']}: {low} - {high} Bound/s, "
                f"~{GO_SIDECAR['cpu_ms_per_claim']} CPU ms/claim, "
                f"{GO_SIDECAR['rss_mb_after_run']} MB RSS after 300 claims")
    report.note(f"loop duties: {args.duties}; {args.runs} runs per row, spread shown as "
                "min - max; ratio to ideal uses the slowest run (ideal = ceil(N/20) * 2 s)")
    report.note("stand-in share = the stand-ins' CPU over the loop's, the controller's and "
                "theirs; stand-in busy = their CPU seconds / wall seconds (100% = one core "
                "flat out: the stand-in would be the limit)")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
