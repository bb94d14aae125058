"""py-spy around a benchmark phase (only the thread holding the GIL is sampled, so the samples
show where the process spends CPU, not where its threads wait): the samples as collapsed
stacks, and a text summary (the functions that hold the most samples, self and inclusive)."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


class PySpy:
    """``py-spy record`` attached to ``pid`` from ``start()`` until ``stop()``."""

    def __init__(self, pid: int, out: Path, *, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
             "--output", str(self.out), "--nonblocking", "--gil"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> Path:
        if self._process is None:
            return self.out
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        return self.out


def summarise(collapsed: Path, top: int = 25) -> str:
    """Text summary of a collapsed-stack file: idle waits left out, busiest functions first."""
    self_count: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("thread ")]
        if not frames or _idle(frames[-1]):
            continue
        total += count
        self_count[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    lines = [f"busy samples: {total}", "", "self (leaf) share:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_count.most_common(top)]
    lines += ["", "inclusive share:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


_IDLE = ("wait (threading.py", "select (selectors.py", "_wait_for_tstate_lock",
         "acquire (<built-in>", "sleep (<built-in>", "poll (", "get (queue.py", "readinto (socket",
         "recv_into", "accept (socket", "_recv_into")


def _idle(frame: str) -> bool:
    return any(marker in frame for marker in _IDLE)


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"
