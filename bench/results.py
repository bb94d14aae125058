"""What every benchmark prints and keeps: a table, and its figures as JSON under bench/results/
with the date, the commit and the machine (CPU count and model, load average before and after),
so that a figure is never read without knowing how busy the machine was."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# The reference: last week's side-by-side measurement on this 2-core machine, same stand-ins
# and controller (`cinder-csi sandbox --no-loop`), 300 claims at once, instant cloud. The Go
# binaries cannot be built here (no Go module proxy), so they are quoted, not re-run.
GO_SIDECAR = {
    "name": "Go external-provisioner v5.2, QPS 100 / burst 200 (measured last week, quoted)",
    "claims_bound_per_s": (33.5, 41.4),
    "cpu_ms_per_claim": 3.3,  # 1 CPU second for 300 claims
    "rss_mb_after_run": 57.0,
    "go_csi_rpc_p50_ms": 0.63,
}


def load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "cinder_csi"],
            capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p50 = median of odd counts); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> str:
    """'min - max' of repeated runs, for the table."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} - {fmt(high)}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass
class Report:
    """One benchmark's output: rows of figures, printed as a table and saved as JSON."""

    name: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    load_before: tuple[float, float, float] = field(default_factory=load)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self) -> str:
        cells = [self.columns] + [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(str(row[i])) for row in cells) for i in range(len(self.columns))]
        lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                 + " |" for row in cells]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    def finish(self) -> Path:
        """Print the table and notes; write the JSON; return its path."""
        after = load()
        print(f"\n## {self.name}\n")
        print(self.table())
        for text in self.notes:
            print(f"- {text}")
        stamp = datetime.datetime.now(datetime.UTC)
        doc = {
            "benchmark": self.name,
            "date": stamp.isoformat(timespec="seconds"),
            "commit": commit(),
            "machine": machine(),
            "load_average_before": self.load_before,
            "load_average_after": after,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
            "figures": self.figures,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"- load average before {self.load_before[0]:.2f}, after {after[0]:.2f} "
              f"(1 min); {machine()['cpus']} CPUs; figures in {path.relative_to(ROOT)}")
        return path
