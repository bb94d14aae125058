"""SignalStop: a SIGTERM sets the Event from a watcher thread, never inside the handler."""

from __future__ import annotations

import os
import signal
import threading
import time

from cinder_csi.signals import SignalStop


class RecordingEvent(threading.Event):
    """Remembers which thread set it: a signal handler runs in the main thread."""

    setter: threading.Thread | None = None

    def set(self) -> None:
        self.setter = threading.current_thread()
        super().set()


def test_sigterm_sets_the_event_from_another_thread_than_the_handler() -> None:
    event = RecordingEvent()
    previous = signal.getsignal(signal.SIGTERM)
    stop = SignalStop(event)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert event.wait(5)
        assert stop.received is signal.SIGTERM
        assert event.setter is not None and event.setter is not threading.main_thread()
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_signal_arriving_while_the_main_thread_waits_on_the_event_wakes_it() -> None:
    event = threading.Event()
    stop = SignalStop(event, (signal.SIGUSR1,))
    try:
        sender = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        sender.start()
        began = time.monotonic()
        assert event.wait(10), "the main thread was not woken"
        assert time.monotonic() - began < 10
        assert stop.received is signal.SIGUSR1
    finally:
        stop.restore()


def test_restore_without_a_signal_leaves_the_event_clear() -> None:
    event = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    SignalStop(event, (signal.SIGINT,)).restore()
    assert not event.is_set()
    assert signal.getsignal(signal.SIGINT) is previous
