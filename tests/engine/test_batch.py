"""How a block's rows are cut into GPU batches: bounded rows, bounded left padding."""

from __future__ import annotations

import random

from engine.batch import MIN_FILL, cut_batches


def test_cut_batches_starts_a_batch_where_padding_would_grow() -> None:
    lengths = [100, 90, 76, 74, 50, 10, 9]
    assert cut_batches(list(range(7)), lengths, batch_size=3) == [[0, 1, 2], [3], [4], [5, 6]]


def test_cut_batches_keeps_every_row_once_in_order_with_bounded_padding() -> None:
    rnd = random.Random(0)
    lengths = sorted((int(rnd.lognormvariate(4, 0.8)) + 1 for _ in range(500)), reverse=True)
    rows = list(range(100, 600))
    batches = cut_batches(rows, lengths, batch_size=32)
    assert [row for batch in batches for row in batch] == rows
    length_of = dict(zip(rows, lengths, strict=True))
    for batch in batches:
        assert 1 <= len(batch) <= 32
        assert all(length_of[row] >= MIN_FILL * length_of[batch[0]] for row in batch)
    uniform = cut_batches(rows, [7] * len(rows), batch_size=32)
    assert [len(batch) for batch in uniform] == [32] * 15 + [20]
