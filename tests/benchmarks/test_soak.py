"""The soak (issue 16): its arithmetic on made-up samples (fast), and the soak itself, 200,000
rows through the pandas accessor and `flexgen-wrangle run` on the demo model (slow: ~40 min on
a 2-core box). The slow tests assert every row, in order, equal to rows classified one by one;
throughput that does not fall off; a peak RSS within the engine's budgets; and RSS that levels
off (its high-water growth over the last half of the rows at most a quarter of its growth after
warm-up), which does not hold yet (xfail, measured in docs/reliability.md)."""

from __future__ import annotations

import pytest

from benchmarks import soak


def _samples(rss_of_rows, rows_per_s: float = 100.0, total: int = 10_000) -> list[dict]:
    rows = list(range(0, total + 1, 500))
    return [{"s": row / rows_per_s, "rss_mb": rss_of_rows(row), "rows": row} for row in rows]


def test_rss_slope_is_mb_per_10000_rows_after_warm_up():
    flat = _samples(lambda row: 900.0 if row >= 1000 else 100.0)
    assert soak.rss_slope_mb_per_10k(flat, 10_000) == pytest.approx(0.0, abs=1e-9)
    leaking = _samples(lambda row: 500.0 + row * 0.002)  # 2 KB per row: 20 MB per 10k rows
    assert soak.rss_slope_mb_per_10k(leaking, 10_000) == pytest.approx(20.0)


def test_throughput_drift_compares_the_last_third_with_the_first():
    steady = soak.throughput_drift(_samples(lambda row: 0.0), 10_000)
    assert steady["drift"] == pytest.approx(0.0, abs=1e-9)
    assert steady["first_rows_per_s"] == pytest.approx(100.0)
    slowing = [{"s": row / 100 + (row / 10_000) ** 2 * 50, "rss_mb": 0.0, "rows": row}
               for row in range(0, 10_001, 500)]
    assert soak.throughput_drift(slowing, 10_000)["drift"] < -0.3


def test_growth_share_of_the_last_half():
    levelling = _samples(lambda row: min(row, 4000) * 0.1)
    assert soak.late_growth_share(levelling, 10_000) == pytest.approx(0.0, abs=1e-9)
    linear = _samples(lambda row: row * 0.1)
    assert soak.late_growth_share(linear, 10_000) == pytest.approx(5000 / 9000, rel=0.05)


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return soak.soak(200_000, ["pandas", "cli"], 3.0, 4096, tmp_path_factory.mktemp("soak"))


@pytest.mark.slow
def test_soak_output_is_complete_in_order_and_throughput_holds(soaked):
    for path in ("pandas", "cli"):
        checks = soaked["checks"][path]
        assert checks["rows"] == 200_000 and checks["ids_in_order"]
        assert checks["null_labels"] == 0
        assert checks["sample_matches"] == checks["sample_rows"]
    for summary in soaked["summary"]:
        assert summary["drift"] > -0.5, summary  # throughput does not fall off
        assert summary["peak_rss_mb"] < 12 * 1024, summary


@pytest.mark.slow
@pytest.mark.xfail(reason="after engine/native_memory.py the CLI path levels off (0.15) but "
                          "the one-call pandas path still grows 0.33 GB over 200,000 rows, 70% "
                          "of it in the last half (docs/reliability.md, Soak)", strict=False)
def test_soak_rss_levels_off(soaked):
    for summary in soaked["summary"]:
        assert summary["late_growth_share"] < 0.25, summary
