"""The staging pool reuses buffers by kind, keeps its charges until trim, and is aligned."""

from __future__ import annotations

from engine.storage import Ledger
from engine.storage.disk import ALIGN
from engine.storage.pool import BufferPool


def test_buffers_are_reused_by_kind_and_charged_until_trim() -> None:
    ledger = Ledger({"device": 1 << 20, "host": 0, "disk": 0})
    pool = BufferPool(ledger)
    first = pool.take(5000, "a", ("q", (50, 25)))
    assert first.numel() == 2 * ALIGN and first.data_ptr() % ALIGN == 0
    assert ledger.used["device"] == 2 * ALIGN
    pool.give(first)
    assert ledger.used["device"] == 2 * ALIGN  # idle, still held and charged
    again = pool.take(5000, "b", ("q", (50, 25)))
    assert again.data_ptr() == first.data_ptr()  # the next layer's tensor of that kind
    other = pool.take(5000, "c", ("k", (25, 50)))  # same size, another kind: a buffer of its own
    assert other.data_ptr() != again.data_ptr()
    assert ledger.used["device"] == 4 * ALIGN
    pool.give(again)
    pool.give(other)
    pool.trim()
    assert ledger.used["device"] == 0


def test_kinds_no_take_used_since_the_last_token_are_dropped() -> None:
    """A KV cache that lost rows or grew has a new shape, so a new kind: its old kind's idle
    buffers go after the next token instead of staying charged until the block ends."""
    ledger = Ledger({"device": 1 << 20, "host": 0, "disk": 0})
    pool = BufferPool(ledger)
    old = pool.take(5000, "cache", ((2, 4, 8), "f32"))
    pool.give(old)
    pool.drop_unused()  # the token that used it
    assert ledger.used["device"] == 2 * ALIGN
    new = pool.take(3000, "cache", ((2, 3, 8), "f32"))  # a row finished
    pool.give(new)
    pool.drop_unused()  # the old kind was not used during this token
    assert ledger.used["device"] == ALIGN
    assert pool.take(3000, "cache", ((2, 3, 8), "f32")).data_ptr() == new.data_ptr()
