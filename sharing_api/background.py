"""Background threads that give way to request handling."""

from __future__ import annotations

import contextlib
import os
import threading

# Linux schedules threads, and a thread's nice value is its own (threads it starts — delta-rs's
# tokio workers among them — inherit it). At 10 a busy background thread gets about a tenth of
# a core that a request worker also wants, and all of an idle one.
BACKGROUND_NICE = 10


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> None:
    """Make the calling thread (and the threads it starts from now on) yield the CPU."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: leave it as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
