"""SIGTERM and SIGINT turned into a threading.Event, without a lock in the signal handler.

A Python signal handler runs in the main thread between two bytecodes. If it called
``Event.set()`` while the main thread was inside that same Event's ``wait()`` (holding the
Event's lock, which is not reentrant), the process would hang for good: a SIGTERM arriving just
as the main thread starts waiting would never stop it. So the handler only writes the signal's
number to a pipe; a watcher thread reads it and sets the Event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalStop:
    """While installed, the first of ``signals`` sets ``event``; ``received`` names it.

    Install from the main thread (Python's rule for signal handlers); ``restore()`` puts the
    previous handlers back.
    """

    def __init__(self, event: threading.Event,
                 signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.event = event
        self.received: signal.Signals | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # a handler must never block
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        self._watcher = threading.Thread(target=self._watch, name="signals", daemon=True)
        self._watcher.start()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._write_fd, bytes([signum]))

    def _watch(self) -> None:
        data = os.read(self._read_fd, 1)
        if not data:  # restored: the write end was closed
            return
        self.received = signal.Signals(data[0])
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)
        self._watcher.join(timeout=5)
        os.close(self._read_fd)
