"""Seeded synthetic corpus for the demo model: product reviews, support tickets and invoices.

Pure python (`random.Random(seed)`), so a seed always gives the same rows. Reviews carry a
sentiment label, tickets a category, invoices the fields vendor / total / date / currency.
Templates, vocabularies, distractors (subtotals, tax, invoice numbers, line items) and noise
(typos, lower-casing, punctuation) make the tasks learnable but not trivial.

    python -m examples.demo_data --out examples/demo_table.parquet --rows 3000 --seed 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from typing import Any

from examples import demo_vocab as vocab

SENTIMENT_LABELS = ("positive", "negative", "neutral")
CATEGORY_LABELS = ("billing", "technical", "shipping", "account")
# The amount's currency right after it: the model reads both from the same place in the text.
INVOICE_SCHEMA = {"vendor": "string", "total": "float", "currency": "string", "date": "date"}
KINDS = ("review", "ticket", "invoice")
COLUMNS = ("id", "kind", "text", "label", "vendor", "total", "date", "currency")
TABLE_SEED = 1  # seed B: the bundled demo table; training uses other seeds

Record = dict[str, Any]


# -- noise ---------------------------------------------------------------------------------


def _typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent letters inside one longer word."""
    words = text.split(" ")
    candidates = [idx for idx, word in enumerate(words) if len(word) >= 5 and word.isalpha()]
    if not candidates:
        return text
    word_idx = rng.choice(candidates)
    word = words[word_idx]
    pos = rng.randrange(1, len(word) - 2)
    words[word_idx] = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
    return " ".join(words)


def _noisy(rng: random.Random, text: str) -> str:
    """Free-text noise: a typo, lower case, a missing final period, shouting."""
    if rng.random() < 0.15:
        text = _typo(rng, text)
    roll = rng.random()
    if roll < 0.12:
        text = text.lower()
    elif roll < 0.2 and text.endswith("."):
        text = text[:-1]
    elif roll < 0.26 and text.endswith("."):
        text = text[:-1] + "!"
    return text


def _fill(rng: random.Random, template: str) -> str:
    """Fill {placeholders} from the shared slot vocabularies."""
    slots = {name: rng.choice(values) for name, values in vocab.SLOTS.items()}
    slots["n"] = str(rng.randint(2, 12))
    slots["order"] = f"{rng.randint(10000, 999999)}"
    slots["amount"] = f"${rng.randint(5, 300)}.{rng.randint(0, 99):02d}"
    slots["error"] = f"{rng.choice('EXAB')}{rng.randint(100, 9999)}"
    return template.format(**slots)


# -- reviews and tickets -------------------------------------------------------------------


def _review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(SENTIMENT_LABELS)
    sentences = [_fill(rng, s) for s in rng.sample(vocab.REVIEW[label], rng.randint(1, 2))]
    if rng.random() < 0.35:
        sentences.insert(0, _fill(rng, rng.choice(vocab.REVIEW_CONTRAST[label])))
    for _ in range(rng.choice((0, 1, 1, 2))):
        sentences.insert(rng.randint(0, len(sentences)), _fill(rng, rng.choice(vocab.FILLER)))
    return _noisy(rng, " ".join(sentences)), label


def _ticket(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(CATEGORY_LABELS)
    sentences = [_fill(rng, s) for s in rng.sample(vocab.TICKET[label], rng.randint(1, 2))]
    if rng.random() < 0.4:
        sentences.insert(0, _fill(rng, rng.choice(vocab.TICKET_CONTEXT)))
    if rng.random() < 0.6:
        sentences.insert(0, rng.choice(vocab.GREETINGS))
    if rng.random() < 0.6:
        sentences.append(_fill(rng, rng.choice(vocab.CLOSINGS)))
    return _noisy(rng, " ".join(sentences)), label


# -- invoices ------------------------------------------------------------------------------


def _invented_name(rng: random.Random) -> str:
    syllables = rng.choices(vocab.NAME_SYLLABLES, k=rng.choice((2, 2, 3)))
    return "".join(syllables).capitalize()


def _vendor(rng: random.Random) -> str:
    """A known head (`Acme`) or an invented one (`Korvin`), then maybe a trade and a suffix."""
    head = rng.choice(vocab.VENDOR_HEADS) if rng.random() < 0.4 else _invented_name(rng)
    parts = [head]
    if rng.random() < 0.5:
        parts.append(rng.choice(vocab.VENDOR_TRADES))
    suffix = rng.choice(vocab.VENDOR_SUFFIXES)
    return " ".join([*parts, suffix] if suffix else parts)


def _money(rng: random.Random, value: float, currency: str) -> str:
    """One of several spellings of an amount; the currency is always recoverable."""
    digits = f"{value:,.2f}" if rng.random() < 0.6 else f"{value:.2f}"
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}[currency]
    style = rng.random()
    if style < 0.45:
        return f"{symbol}{digits}"
    if style < 0.75:
        return f"{currency} {digits}"
    return f"{digits} {currency}"


def _date_text(rng: random.Random, date: dt.date) -> str:
    month, short = vocab.MONTHS[date.month - 1], vocab.MONTHS[date.month - 1][:3]
    return rng.choice(
        (
            date.isoformat(),
            date.isoformat(),
            f"{month} {date.day}, {date.year}",
            f"{date.day} {month} {date.year}",
            f"{short} {date.day}, {date.year}",
            f"{date.day:02d} {short} {date.year}",
            date.strftime("%Y/%m/%d"),
        )
    )


def _invoice(rng: random.Random) -> tuple[str, Record]:
    currency = rng.choice(("USD", "EUR", "GBP"))
    total = round(10 ** rng.uniform(0.7, 4.6), 2)
    date = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randrange(7 * 365))
    tax = round(total * rng.choice((0.05, 0.07, 0.1, 0.2)) / 1.1, 2)
    qty = rng.randint(2, 40)
    slots = {
        "vendor": _vendor(rng),
        "date": _date_text(rng, date),
        "amount": _money(rng, total, currency),
        "subtotal": _money(rng, round(total - tax, 2), currency),
        "tax": _money(rng, tax, currency),
        "num": f"{rng.choice(('INV-', '#', 'No. ', ''))}{rng.randint(100, 99999)}",
        "qty": str(qty),
        "unit": _money(rng, round(total / qty, 2), currency),
        "item": rng.choice(vocab.SLOTS["service"]),
        "service": rng.choice(vocab.SLOTS["service"]),
        "days": str(rng.choice((7, 14, 15, 30, 45, 60))),
    }
    text = rng.choice(vocab.INVOICE_TEMPLATES).format(**slots)
    fields = {"vendor": slots["vendor"], "total": total, "date": date.isoformat()}
    return text, {**fields, "currency": currency}


# -- tables --------------------------------------------------------------------------------


def make_record(rng: random.Random, kind: str, row_id: int) -> Record:
    """One row with every column of `COLUMNS`; fields that do not apply are None."""
    row: Record = dict.fromkeys(COLUMNS)
    row.update(id=row_id, kind=kind)
    if kind == "review":
        row["text"], row["label"] = _review(rng)
    elif kind == "ticket":
        row["text"], row["label"] = _ticket(rng)
    else:
        row["text"], fields = _invoice(rng)
        row.update(fields)
    return row


def make_records(n_rows: int, seed: int) -> list[Record]:
    """`n_rows` rows, kinds in a seeded shuffle of equal thirds."""
    rng = random.Random(seed)
    kinds = [KINDS[row_idx % len(KINDS)] for row_idx in range(n_rows)]
    rng.shuffle(kinds)
    return [make_record(rng, kind, row_idx) for row_idx, kind in enumerate(kinds)]


def make_table(n_rows: int = 3000, seed: int = TABLE_SEED) -> Any:
    """The rows as a pandas DataFrame (columns `COLUMNS`, nulls where not applicable)."""
    import pandas as pd

    frame = pd.DataFrame(make_records(n_rows, seed), columns=list(COLUMNS))
    frame["total"] = frame["total"].astype("float64")
    return frame


def answer_json(row: Record, fields: list[str] | None = None) -> str:
    """The extract target: compact JSON with keys in schema order. The total keeps two
    decimals (`230.30`, as invoices write it), so its digits are the text's minus commas."""
    keys = fields or list(INVOICE_SCHEMA)
    values = [f"{row[key]:.2f}" if key == "total" else json.dumps(row[key]) for key in keys]
    pairs = [f"{json.dumps(key)}:{value}" for key, value in zip(keys, values, strict=True)]
    return "{" + ",".join(pairs) + "}"


def schema_text(fields: list[str] | None = None) -> str:
    keys = fields or list(INVOICE_SCHEMA)
    return json.dumps({key: INVOICE_SCHEMA[key] for key in keys}, separators=(",", ":"))


def write_table(path: str, n_rows: int = 3000, seed: int = TABLE_SEED) -> None:
    make_table(n_rows, seed).to_parquet(path, index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/demo_table.parquet")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=TABLE_SEED)
    args = parser.parse_args(argv)
    write_table(args.out, args.rows, args.seed)


if __name__ == "__main__":
    main()
