"""The labelled texts an extraction reads: a CSV, JSONL or Parquet file with a text and a 0/1 label column.

`read_texts(settings)` returns `LabelledTexts` (texts as the model will see them, after the template;
int8 labels; the file's SHA-256 for the store's provenance), or one line naming the file and what is
wrong: a missing column (listing those present), an empty file, a label that is not 0 or 1 (naming
its row), a text that is not a string. Parquet needs pyarrow (the `extract` extra).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probe_lab.errors import ProbeLabError
from probe_lab.settings.extract import CHAT_TEMPLATE, TEXT_PLACEHOLDER, ExtractDatasetSettings

SUFFIXES = (".csv", ".jsonl", ".parquet")
_LABELS = {"0": 0, "1": 1, "false": 0, "true": 1, "0.0": 0, "1.0": 1}


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # int8 (N,) of 0/1
    sha256: str  # of the file


def read_texts(settings: ExtractDatasetSettings, chat: Callable[[str], str] | None = None) -> LabelledTexts:
    """The file's texts (each through `settings.template`; `chat` applies the tokenizer's chat template
    for template=chat) and labels."""
    path = Path(settings.path)
    if not path.is_file():
        raise ProbeLabError(f"dataset.path ({path}): file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise ProbeLabError(f"dataset.path ({path}): expected a {', '.join(SUFFIXES)} file")
    columns, records = _records(path)
    for setting, column in (("text_column", settings.text_column), ("label_column", settings.label_column)):
        if column not in columns:
            raise ProbeLabError(
                f"dataset.path ({path}): no column {column!r} (dataset.{setting}); "
                f"it has {', '.join(map(repr, columns)) or 'none'}"
            )
    if not records:
        raise ProbeLabError(f"dataset.path ({path}): holds no rows")
    texts, labels = [], np.empty(len(records), dtype=np.int8)
    for row, record in enumerate(records):
        text = record.get(settings.text_column)
        if not isinstance(text, str):
            raise ProbeLabError(f"dataset.path ({path}): row {row}: {settings.text_column!r} is not a text ({text!r})")
        texts.append(_templated(text, settings.template, chat))
        labels[row] = _label(record.get(settings.label_column), path, row, settings.label_column)
    return LabelledTexts(texts, labels, hashlib.sha256(path.read_bytes()).hexdigest())


def _records(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, one dict per row)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file)
                records = list(reader)
                return list(reader.fieldnames or []), records
        if suffix == ".jsonl":
            records = []
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    if line.strip():
                        record = json.loads(line)
                        if not isinstance(record, dict):
                            raise ProbeLabError(f"dataset.path ({path}): line {number} is not a JSON object")
                        records.append(record)
            columns = list(dict.fromkeys(key for record in records for key in record))
            return columns, records
        return _parquet_records(path)
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ProbeLabError(f"dataset.path ({path}): not readable ({str(err).splitlines()[0]})") from None


def _parquet_records(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ProbeLabError(
            f"dataset.path ({path}): reading Parquet needs pyarrow (pip install 'probe-lab[extract]')"
        ) from None
    try:
        table = parquet.read_table(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid and OSError kinds
        raise ProbeLabError(
            f"dataset.path ({path}): not a readable Parquet file ({str(err).splitlines()[0]})"
        ) from None
    return list(table.column_names), table.to_pylist()


def _templated(text: str, template: str | None, chat: Callable[[str], str] | None) -> str:
    if template is None:
        return text
    if template == CHAT_TEMPLATE:
        if chat is None:
            raise ProbeLabError("dataset.template=chat: the tokenizer has no chat template")
        return chat(text)
    return template.replace(TEXT_PLACEHOLDER, text)


def _label(value: Any, path: Path, row: int, column: str) -> int:
    if isinstance(value, bool | int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise ProbeLabError(f"dataset.path ({path}): row {row}: label {value!r} in {column!r} is not 0 or 1")
