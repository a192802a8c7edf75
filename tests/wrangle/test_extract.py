"""Extract: constrained decoding gives outputs that parse into the declared types, always."""

from __future__ import annotations

import datetime as dt
import enum

import pyarrow as pa
import pydantic
import pytest

import flexgen_wrangle as fw
from flexgen_wrangle.schema import make_schema

INVOICE = "Invoice from Acme Ltd, total $12.50, dated 2024-03-05."
TEXTS = [INVOICE, None, "Paid 3 euros to Bob on Monday.", "nothing here", INVOICE]
FULL = {"vendor": "string", "total": "float", "date": "date", "count": "int", "paid": "bool",
        "tags": "list[string]", "currency": ["USD", "EUR"], "address": {"city": "string"}}
FULL_TYPE = pa.struct([
    ("vendor", pa.string()), ("total", pa.float64()), ("date", pa.date32()),
    ("count", pa.int64()), ("paid", pa.bool_()), ("tags", pa.list_(pa.string())),
    ("currency", pa.string()), ("address", pa.struct([("city", pa.string())])),
])


def test_every_row_parses_into_declared_types(wrangle_llm):
    result = fw.extract(TEXTS, FULL, llm=wrangle_llm, max_string_length=6)
    assert result.type == FULL_TYPE
    stats = wrangle_llm.last_stats
    assert stats.parse_failures == 0, stats.failures
    rows = result.to_pylist()
    assert rows[1] is None  # NULL in, NULL out
    assert rows[0] == rows[4]  # identical inputs, identical outputs
    for row in (rows[0], rows[2], rows[3]):
        assert isinstance(row["vendor"], str) and len(row["vendor"]) <= 6
        assert isinstance(row["total"], float) and isinstance(row["count"], int)
        assert isinstance(row["date"], dt.date) and isinstance(row["paid"], bool)
        assert all(isinstance(tag, str) for tag in row["tags"])
        assert row["currency"] in ("USD", "EUR") and isinstance(row["address"]["city"], str)


class Currency(enum.Enum):
    usd = "USD"
    eur = "EUR"


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=5)


class Invoice(pydantic.BaseModel):
    vendor: str = pydantic.Field(max_length=5)
    total: float = pydantic.Field(ge=0, le=1000)
    when: dt.date
    currency: Currency
    address: Address
    note: str | None = pydantic.Field(default=None, max_length=3)


def test_pydantic_schema(wrangle_llm):
    result = fw.extract(TEXTS[:3], Invoice, llm=wrangle_llm)
    assert result.type == pa.struct([
        ("vendor", pa.string()), ("total", pa.float64()), ("when", pa.date32()),
        ("currency", pa.string()), ("address", pa.struct([("city", pa.string())])),
        ("note", pa.string()),
    ])
    assert wrangle_llm.last_stats.parse_failures == 0, wrangle_llm.last_stats.failures
    for row in result.to_pylist():
        if row is not None:
            Invoice.model_validate({**row, "when": row["when"].isoformat()})


def test_json_schema_with_optional_field(wrangle_llm):
    schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "maxLength": 4},
        "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 99}}}
    result = fw.extract(TEXTS[:3], schema, llm=wrangle_llm)
    assert result.type == pa.struct([("name", pa.string()), ("age", pa.int64())])
    assert wrangle_llm.last_stats.parse_failures == 0


def test_schema_text_shown_to_the_model():
    assert make_schema({"vendor": "string", "total": "float"}).prompt_text == \
        '{"vendor":"string","total":"float"}'
    assert make_schema(Invoice).prompt_text.startswith('{"vendor":"string","total":"float",'
                                                        '"when":"date","currency":["USD","EUR"]')


def test_cut_output_is_null_and_counted(wrangle_llm):
    result = fw.extract(TEXTS, FULL, llm=wrangle_llm, max_new_tokens=3)
    assert result.to_pylist() == [None] * len(TEXTS)
    stats = wrangle_llm.last_stats
    assert stats.parse_failures == 4  # every non-NULL input row, duplicates included
    assert stats.null_rows == 1 and stats.computed_rows == 3
    assert "cut" in stats.failures[0][1]


def test_impossible_date_does_not_parse():
    schema = make_schema({"date": "date"})
    assert schema.parse('{"date":"2024-02-29"}') == {"date": dt.date(2024, 2, 29)}
    with pytest.raises(fw.ParseError, match="date"):
        schema.parse('{"date":"2023-02-29"}')
    with pytest.raises(fw.ParseError, match="invalid JSON"):
        schema.parse('{"date":')


@pytest.mark.parametrize("schema", [
    {}, {"a": "strang"}, {"a": []}, {"a": ["x", "x"]}, {"a": 3}, "not json",
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
    {"type": "object", "properties": {"a": {"type": "array"}}},
])
def test_invalid_schema_raises_before_model_work(wrangle_model_dir, schema):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    with pytest.raises(fw.SchemaError):
        fw.extract(["x"], schema, llm=llm)
    assert llm._engine is None


def test_grammar_mask_of_a_whole_step_equals_row_by_row(wrangle_llm):
    """The batched mask (one kernel over rows at different points of their JSON, some ended)
    gives every row exactly what masking it alone gives."""
    import torch

    task = wrangle_llm.extract_task({"ok": "bool", "n": "int"})
    row_by_row = task._constraints.processor(task._grammar)
    batched = task._constraints.processor(task._grammar)
    vocab, stop = task._constraints.vocab_size, task._constraints.stop_ids[0]
    row_ids = [5, 2, 9, 0]
    generated: list[list[int]] = [[] for _ in row_ids]
    ended_seen = False
    for step in range(40):
        logits = torch.randn(len(row_ids), vocab, generator=torch.Generator().manual_seed(step))
        logits[:, stop] += 2.0 * row_ids.index(9)  # rows end at different steps
        want = torch.stack([row_by_row(row_id, ids, row.clone()) for row_id, ids, row
                            in zip(row_ids, generated, logits, strict=True)])
        got = batched.process_batch(row_ids, generated, logits.clone())
        assert torch.equal(got, want)
        ended_seen |= bool(((~torch.isinf(want)).sum(-1) == 1).any())
        for ids, row in zip(generated, want, strict=True):
            ids.append(int(row.argmax()))
    assert ended_seen and all(stop in ids for ids in generated)
