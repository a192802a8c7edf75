"""`df.flexgen` and `series.flexgen`: registered by `import flexgen_wrangle`.

Every method validates first (columns, labels, schema, template), returns a NEW object and never
touches its input; a new DataFrame carries the run's stats in `attrs["flexgen_stats"]`. Result
columns are Arrow-backed (`pd.ArrowDtype`), so they are nullable and keep their types (int64,
date32, list<string>, struct, ...).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from flexgen_wrangle.columns import as_text_array, python_text
from flexgen_wrangle.errors import ColumnNotFoundError, ColumnTypeError
from flexgen_wrangle.jobs import ColumnJob
from flexgen_wrangle.template import Template


def _need_llm(llm: Any) -> Any:
    from flexgen_wrangle.llm import LLM

    if not isinstance(llm, LLM):
        raise ValueError(f"pass llm=fw.LLM(model_dir) (or fw.LLM.demo()), got {llm!r}")
    return llm


def to_pandas(array: pa.Array, index: pd.Index, name: str | None = None) -> pd.Series:
    return pd.Series(pd.arrays.ArrowExtensionArray(array), index=index, name=name, copy=False)


def _arrow_column(series: pd.Series, name: str) -> pa.Array:
    try:
        return pa.array(series, from_pandas=True)
    except UnicodeEncodeError:  # lone surrogates: repaired (U+FFFD) and warned about
        return python_text(series.tolist(), name)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise ColumnTypeError(f"cannot be read as Arrow data: {err}", column=name) from None


@pd.api.extensions.register_dataframe_accessor("flexgen")
class FlexgenFrameAccessor:
    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def classify(self, column: str, labels: list[str], llm: Any = None, into: str | None = None,
                 **kwargs: Any) -> pd.DataFrame:
        """Adds `into` (default "<column>_label") and `<into>_probability`."""
        return self._run(ColumnJob("classify", _need_llm(llm), column=column, into=into,
                                   labels=labels, **kwargs))

    def extract(self, column: str, schema: Any, llm: Any = None, prefix: str = "",
                **kwargs: Any) -> pd.DataFrame:
        """Adds one typed column per schema field, named `prefix + field`."""
        return self._run(ColumnJob("extract", _need_llm(llm), column=column, prefix=prefix,
                                   schema=schema, **kwargs))

    def generate(self, template: str, llm: Any = None, into: str = "generated",
                 **kwargs: Any) -> pd.DataFrame:
        """Adds `into`: free text after `template` filled from each row ("{title}: {body}")."""
        return self._run(ColumnJob("generate", _need_llm(llm), template=template, into=into,
                                   **kwargs))

    def _run(self, job: ColumnJob) -> pd.DataFrame:
        for name in job.input_columns:
            if name not in self._frame.columns:
                raise ColumnNotFoundError(
                    f"no such column; columns are {list(map(str, self._frame.columns))}",
                    column=name)
        table = pa.table({name: _arrow_column(self._frame[name], name)
                          for name in job.input_columns})
        arrays = job.run(table)
        out = self._frame.copy(deep=False)
        for field, array in zip(job.output_fields, arrays, strict=True):
            out[field.name] = to_pandas(array, self._frame.index)
        out.attrs = {**self._frame.attrs, "flexgen_stats": job.llm.last_stats.as_dict()}
        return out


@pd.api.extensions.register_series_accessor("flexgen")
class FlexgenSeriesAccessor:
    def __init__(self, series: pd.Series) -> None:
        self._series = series

    def _texts(self) -> pa.Array:
        name = str(self._series.name) if self._series.name is not None else None
        return as_text_array(_arrow_column(self._series, name or "series"), name)

    def classify(self, labels: list[str], llm: Any = None, **kwargs: Any) -> pd.DataFrame:
        """DataFrame {label, probability} aligned to the Series' index."""
        result = _need_llm(llm).classify(self._texts(), labels, **kwargs)
        return self._frame(result)

    def extract(self, schema: Any, llm: Any = None, **kwargs: Any) -> pd.DataFrame:
        """DataFrame with one typed column per schema field, aligned to the Series' index."""
        return self._frame(_need_llm(llm).extract(self._texts(), schema, **kwargs))

    def generate(self, template: str = "{text}", llm: Any = None, **kwargs: Any) -> pd.Series:
        """Free text per value; the template's one field stands for the Series' values."""
        parsed = Template.parse(template)
        if len(parsed.fields) != 1:
            raise ValueError(f"a Series template names exactly one field, got {parsed.fields}")
        texts = parsed.render({parsed.fields[0]: self._texts()})
        result = _need_llm(llm).generate(texts, prefix=parsed.head, **kwargs)
        return to_pandas(result, self._series.index, self._series.name)

    def _frame(self, result: pa.StructArray) -> pd.DataFrame:
        columns = {field.name: to_pandas(array, self._series.index)
                   for field, array in zip(result.type, result.flatten(), strict=True)}
        return pd.DataFrame(columns, index=self._series.index)

