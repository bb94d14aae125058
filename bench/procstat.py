"""CPU time and memory of one process, read from /proc (no psutil): the figures a benchmark
attributes to the loop, the stand-ins or a plugin, each running as its own process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    cpu_s: float  # user + system seconds since the process started
    rss_mb: float  # resident set now
    peak_rss_mb: float  # VmHWM: the most it ever held


def sample(pid: int) -> Sample:
    """One reading of ``pid``; raises FileNotFoundError once the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (comm) may hold spaces; everything after its closing parenthesis splits cleanly.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    status = _status(pid)
    return Sample(
        cpu_s=(utime + stime) / _TICKS,
        rss_mb=status.get("VmRSS", 0) / 1024,
        peak_rss_mb=status.get("VmHWM", 0) / 1024,
    )


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return out


class CpuMeter:
    """CPU seconds a process spends between ``start()`` and ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = 0.0
        self.seconds = 0.0

    def start(self) -> CpuMeter:
        self._start = sample(self.pid).cpu_s
        return self

    def stop(self) -> float:
        self.seconds = sample(self.pid).cpu_s - self._start
        return self.seconds
