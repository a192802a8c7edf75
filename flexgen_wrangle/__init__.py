"""Run language models over whole table columns with a FlexGen-style offloading engine.

    import flexgen_wrangle as fw
    llm = fw.LLM("path/to/model")
    fw.classify(texts, ["positive", "negative"], llm=llm)   # -> pa.StructArray {label, probability}
    df.flexgen.extract("body", {"vendor": "string", "total": "float"}, llm=llm)
    fw.register_duckdb(con, llm)       # SQL: flexgen_classify(text, ['a', 'b']), ...

Importing the package registers the `.flexgen` accessor on pandas DataFrames and Series when
pandas is installed. The DuckDB entry points import duckdb on first use, never before.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flexgen_wrangle.errors import (
    ColumnNotFoundError,
    ColumnTypeError,
    LabelsError,
    ParseError,
    SchemaError,
    TemplateError,
    WrangleError,
)
from flexgen_wrangle.llm import LLM
from flexgen_wrangle.pipeline import PipelineOptions
from flexgen_wrangle.stats import RunStats
from flexgen_wrangle.template import Template

__all__ = [
    "LLM", "ColumnNotFoundError", "ColumnTypeError", "LabelsError", "ParseError",
    "PipelineOptions", "RunStats", "SchemaError", "Template", "TemplateError", "WrangleError",
    "classify", "duckdb_apply", "extract", "generate", "map_reader", "register_duckdb",
    "register_duckdb_extractor",
]


def _need_llm(llm: LLM | None) -> LLM:
    if not isinstance(llm, LLM):
        raise ValueError(f"pass llm=fw.LLM(model_dir) (or fw.LLM.demo()), got {llm!r}")
    return llm


def classify(texts: Any, labels: list[str], llm: LLM | None = None, **kwargs: Any) -> pa.StructArray:
    """Struct {label, probability} per text; NULL texts give NULL."""
    return _need_llm(llm).classify(texts, labels, **kwargs)


def extract(texts: Any, schema: Any, llm: LLM | None = None, **kwargs: Any) -> pa.StructArray:
    """One typed struct field per schema field; rows that fail to parse are NULL (counted)."""
    return _need_llm(llm).extract(texts, schema, **kwargs)


def generate(prompts: Any, llm: LLM | None = None, max_new_tokens: int = 64,
             **kwargs: Any) -> pa.StringArray:
    """Free text after each prompt."""
    return _need_llm(llm).generate(prompts, max_new_tokens=max_new_tokens, **kwargs)


def map_reader(*args: Any, **kwargs: Any) -> pa.RecordBatchReader:
    """`udfs.arrow_stream.map_reader`: a RecordBatchReader with result columns appended."""
    from udfs.arrow_stream import map_reader as _map_reader

    return _map_reader(*args, **kwargs)


def register_duckdb(con: Any, llm: LLM, **kwargs: Any) -> Any:
    """`udfs.duckdb_udf.register_duckdb`: flexgen_classify / _extract / _generate in SQL."""
    from udfs.duckdb_udf import register_duckdb as _register_duckdb

    return _register_duckdb(con, llm, **kwargs)


def register_duckdb_extractor(con: Any, name: str, schema: Any, llm: LLM, **kwargs: Any) -> Any:
    """`udfs.duckdb_udf.register_duckdb_extractor`: `name(text)` -> a typed STRUCT."""
    from udfs.duckdb_udf import register_duckdb_extractor as _register_extractor

    return _register_extractor(con, name, schema, llm, **kwargs)


def duckdb_apply(con: Any, query: str, task: str, llm: LLM | None = None, **kwargs: Any) -> Any:
    """`udfs.duckdb_udf.duckdb_apply`: a query's rows streamed through the pipeline."""
    from udfs.duckdb_udf import duckdb_apply as _duckdb_apply

    return _duckdb_apply(con, query, task, llm=llm, **kwargs)


def _register_pandas() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return
    import udfs.pandas_accessor  # noqa: F401  (registers .flexgen)


_register_pandas()


def __getattr__(name: str) -> Any:
    """`fw.ray`: the Ray Data adapter (`udfs.ray_data`), imported on first use: the package
    imports without Ray; the adapter needs the `ray` extra."""
    if name == "ray":
        import udfs.ray_data

        return udfs.ray_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
