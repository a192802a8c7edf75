"""benchmarks.wrangle_peers: vLLM's texts become labels / field dicts, accuracy counts only
full matches, the grammar given to vLLM is our extraction's (a space, then compact JSON), and
the summary's rows/s with load includes the load."""

from __future__ import annotations

import pytest

from benchmarks import wrangle_peers as wp

CLASSIFY = {"name": "reviews", "task": "classify", "known": ["positive", "negative"]}
EXTRACT = {"name": "invoices", "task": "extract",
           "known": [{"vendor": "A", "total": 1.5, "date": "2025-01-02"},
                     {"vendor": "B", "total": 2.0, "date": "2025-03-04"}]}


def test_vllm_texts_become_values_and_accuracy_counts_full_matches():
    assert wp.vllm_values(CLASSIFY, [" positive", " neutral"]) == ["positive", "neutral"]
    assert wp.accuracy(CLASSIFY, ["positive", "neutral"]) == 0.5
    texts = [' {"vendor":"A","total":1.50,"date":"2025-01-02"}', '{"vendor":"B","total":2.0']
    values = wp.vllm_values(EXTRACT, texts)
    assert values[1] is None  # cut before the JSON was complete
    assert wp.accuracy(EXTRACT, values) == 0.5
    wrong_total = [{"vendor": "A", "total": "1.51", "date": "2025-01-02"}, None]
    assert wp.accuracy(EXTRACT, wrong_total) == 0.0


def test_the_grammar_is_a_space_then_compact_json_of_the_schema():
    testing = pytest.importorskip("xgrammar.testing")
    schema = {"type": "object", "properties": {"vendor": {"type": "string"}},
              "required": ["vendor"]}
    grammar = wp.json_grammar(schema, " ")
    assert testing._is_grammar_accept_string(grammar, ' {"vendor":"A"}')
    assert not testing._is_grammar_accept_string(grammar, '{"vendor":"A"}')
    assert not testing._is_grammar_accept_string(grammar, ' {"vendor": "A"}')


def test_summary_and_table_include_the_load():
    result = {"load_s": 8.0, "columns": [
        {"name": "reviews", "seconds": 1.0, "rows": 2, "values": ["positive", "negative"]}]}
    summary = wp.summarize(result, [CLASSIFY])
    assert summary["columns"]["reviews"] == {"rows_per_s": 2.0, "seconds": 1.0, "accuracy": 1.0}
    assert summary["rows_per_s_with_load"] == pytest.approx(2 / 9.0)
    record = {"runs": {"ours": [{"raw": {}, "summary": summary}],
                       "vllm_cpu": [{"raw": {"error": "rc=1: boom"}, "summary": None}]}}
    table = wp.render(record)
    assert "| ours | 8.0 |" in table and "failed: rc=1: boom" in table
