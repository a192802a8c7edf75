"""engine.interrupts: SIGINT held back during a cleanup, delivered after it."""

from __future__ import annotations

import signal
import threading

import pytest

from engine.interrupts import deferred_interrupts

pytestmark = pytest.mark.usefixtures("ctrl_c_raises")  # see tests/conftest.py


def test_an_interrupt_during_the_body_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the cleanup")
    assert done == ["rest of the cleanup"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_an_interrupt_nothing_is_raised_and_the_handler_is_back():
    with deferred_interrupts():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_it_changes_nothing():
    seen = []

    def worker():
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
