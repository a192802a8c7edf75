#!/usr/bin/env bash
# ETL with the `flexgen-wrangle` CLI: invoice fields out of a Parquet table, resumably.
#
#   bash examples/etl_invoices.sh                      # the demo model on the demo table
#   MODEL=/models/Llama-3.2-1B-Instruct ROWS=1000 bash examples/etl_invoices.sh
#
# The output is written block by block: stop it half way (Ctrl-C, a crash, a reboot) and run
# the same command again; `--resume` keeps the blocks already written and does the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FW="$(dirname "$PY")/flexgen-wrangle"
MODEL=${MODEL:-examples/demo_model}
ROWS=${ROWS:-300}
WORK=${WORK:-/tmp/flexgen-etl}
mkdir -p "$WORK"

# extract: the invoice rows of the demo table, and the schema of the fields to pull out
"$PY" - "$WORK" "$ROWS" <<'PYTHON'
import json, sys
import pandas as pd
work, rows = sys.argv[1], int(sys.argv[2])
table = pd.read_parquet("examples/demo_table.parquet")
invoices = table[table["kind"] == "invoice"].head(rows)[["id", "text"]]
invoices.to_parquet(f"{work}/invoices.parquet", index=False)
schema = {"vendor": "string", "total": "float", "currency": "string", "date": "date"}
with open(f"{work}/schema.json", "w") as handle:
    json.dump(schema, handle)
PYTHON

# transform: one typed column per field, NULL where a row's output did not parse
"$FW" run "$WORK/invoices.parquet" --column text --extract "$WORK/schema.json" \
    --model "$MODEL" --output "$WORK/invoice_fields.parquet" --block-rows 64 --resume

# load: here, a look at the result
"$PY" -c "import pandas as pd; print(pd.read_parquet('$WORK/invoice_fields.parquet').head(8).to_string(max_colwidth=50))"
