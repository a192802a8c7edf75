"""Cleanup that a second Ctrl-C cannot cut short.

A user who presses Ctrl-C often presses it again. The engine's cleanup after an interrupted
call (cancel the I/O, free every home and file of the block, restore the ledger) must run to
its end, or files and charges are left behind; `deferred_interrupts` holds SIGINT back while
it runs and delivers it afterwards. Signals reach only the main thread, so elsewhere (a
DuckDB worker thread) it does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the body with SIGINT recorded instead of raised; an interrupt that arrived meanwhile
    is delivered (to the handler that was in place) when the body is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived and callable(previous):
            previous(signal.SIGINT, arrived[0])
        elif arrived and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
