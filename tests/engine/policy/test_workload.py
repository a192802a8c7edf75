"""Workload validation and the prompt lengths it implies."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Workload


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": 0, "prompt_len": 8, "gen_len": 4}, "rows"),
        ({"rows": -3, "prompt_len": 8, "gen_len": 4}, "rows"),
        ({"rows": 2.5, "prompt_len": 8, "gen_len": 4}, "rows"),
        ({"rows": True, "prompt_len": 8, "gen_len": 4}, "rows"),
        ({"rows": 10, "prompt_len": -1, "gen_len": 4}, "prompt lengths"),
        ({"rows": 10, "prompt_len": 0, "gen_len": 4}, "prompt lengths"),
        ({"rows": 10, "prompt_len": 8, "gen_len": 0}, "gen_len"),
        ({"rows": 10, "prompt_len": 8, "gen_len": -2}, "gen_len"),
        ({"rows": 10, "prompt_len": 8, "gen_len": 4, "shared_prefix": -1}, "shared_prefix"),
        ({"rows": 10, "prompt_len": {8: 3, -4: 1}, "gen_len": 4}, "prompt lengths"),
        ({"rows": 10, "prompt_len": {8: -3}, "gen_len": 4}, "histogram"),
        ({"rows": 10, "prompt_len": {8: 0}, "gen_len": 4}, "histogram"),
        ({"rows": 10, "prompt_len": [16, 8, 32], "gen_len": 4}, "decrease"),
        ({"rows": 10, "prompt_len": [], "gen_len": 4}, "empty"),
        ({"rows": 10, "prompt_len": "32", "gen_len": 4}, "prompt_len"),
    ],
)
def test_nonsense_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Workload(**kwargs)


def test_lengths_are_longest_first():
    assert Workload(3, 7, 2).lengths().tolist() == [7, 7, 7]
    quantiles = Workload(5, [4, 8, 40], 2).lengths()
    assert quantiles.tolist() == [40, 24, 8, 6, 4]
    histogram = Workload(10, {10: 1, 20: 3}, 2).lengths()  # 1:3 scaled to 10 rows
    assert histogram.tolist() == [20] * 8 + [10] * 2


def test_a_rare_longest_prompt_is_kept():
    lengths = Workload(4, {500: 1, 10: 999}, 2).lengths()
    assert lengths[0] == 500 and len(lengths) == 4


def test_from_lengths_is_the_exact_histogram():
    column = [5, 9, 9, 30, 5, 5]
    workload = Workload.from_lengths(column, gen_len=3, shared_prefix=4)
    assert workload.rows == 6 and workload.shared_prefix == 4
    assert np.array_equal(workload.lengths(), sorted(column, reverse=True))
    assert workload.max_prompt_len == 30
