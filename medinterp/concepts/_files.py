"""Reading concept / pair files (YAML or CSV) with the line number of every row, and validating them.

Both formats share one schema. A YAML file is a mapping with a header (``name``, ``kind``,
``version``, ``description``, ``provenance``, ``item``, ``labels``, ``columns``, ``templates``,
``unique``) and a list of rows under ``items`` (concept sets) or ``pairs`` (pair sets). A CSV file
carries the same header as ``#``-prefixed YAML lines at the top, then one row per item with a header
row of column names. Every error names the file, the line a person sees in an editor, the column and
what was expected.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medinterp.errors import ConceptFileError

PAIR_COLUMNS = ("clean", "corrupted", "clean_answer", "corrupted_answer")
_HEADER_KEYS = {
    "name", "kind", "version", "description", "provenance", "item", "labels", "columns",
    "templates", "unique", "items", "pairs",
}

try:  # the C loader is ~10x faster; both give the same line marks
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


@dataclass
class RawFile:
    """A parsed file before validation: header mapping, rows, and the line of every row / header key."""

    path: str
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    row_lines: list[int]
    key_lines: dict[str, int] = field(default_factory=dict)
    template_lines: list[int] = field(default_factory=list)
    fmt: str = "yaml"


def _err(path: str, line: int | None, column: str | None, msg: str) -> ConceptFileError:
    where = path + (f", line {line}" if line else "")
    if column:
        where += f", column '{column}'"
    return ConceptFileError(f"{where}: {msg}")


#: the longest text one field (item, label, template, prompt, answer) may hold, in characters: an item of
#: megabytes would reach the model as a prompt far over any context (and a multi-GB activation buffer).
MAX_FIELD_CHARS = 10_000
#: the most rows (items of a concept set, pairs of a pair set) a file may hold unless raised: the shipped sets
#: hold at most a few hundred, and every row costs a forward per template in every technique (a 100,000-item
#: set ran to 9.5 GB). Raise it with ``load_concepts(..., max_rows=N)`` or the environment variable
#: ``MEDINTERP_MAX_ROWS=N``.
MAX_ROWS = 10_000


def max_rows_default() -> int:
    """:data:`MAX_ROWS`, or ``MEDINTERP_MAX_ROWS`` when set (a clear error when it is not a positive number)."""
    env = os.environ.get("MEDINTERP_MAX_ROWS", "").strip()
    if not env:
        return MAX_ROWS
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ConceptFileError(f"MEDINTERP_MAX_ROWS={env!r}: expected a positive whole number")
    return n


def read_file(path: str | Path, max_field_chars: int = MAX_FIELD_CHARS, max_rows: int | None = None) -> RawFile:
    """Parse a YAML (``.yaml``/``.yml``) or CSV (``.csv``, with or without the ``#`` YAML header) concept or
    pair file, or a JSONL (``.jsonl``) pair file, keeping row line numbers.

    Raises:
        ConceptFileError: malformed file, or a field longer than ``max_field_chars`` characters (file,
            line and column named).
    """
    raw = _read_any(path)
    cap = max_rows if max_rows is not None else max_rows_default()
    if len(raw.rows) > cap:
        raise ConceptFileError(f"{path}: {len(raw.rows):,} rows (items or pairs), over the cap of {cap:,} rows; "
                               f"every row costs forwards in every technique. To run it anyway, raise the cap: "
                               f"load_concepts(..., max_rows={len(raw.rows)}) or MEDINTERP_MAX_ROWS={len(raw.rows)}")
    _check_sizes(raw, max_field_chars)
    return raw


def _check_sizes(raw: RawFile, limit: int) -> None:
    def long(v: Any) -> int:
        if isinstance(v, str):
            return len(v)
        if isinstance(v, (list, tuple)):
            return max((long(x) for x in v), default=0)
        if isinstance(v, dict):
            return max((long(x) for x in v.values()), default=0)
        return 0

    for row, line in zip(raw.rows, raw.row_lines):
        if not isinstance(row, dict):
            continue
        for k, v in row.items():
            n = long(v)
            if n > limit:
                raise _err(raw.path, line, str(k), f"{n:,} characters; expected at most {limit:,} per field "
                           "(max_field_chars)")
    for key in ("templates", "description", "provenance", "name"):
        n = long(raw.header.get(key))
        if n > limit:
            raise _err(raw.path, raw.key_lines.get(key), key, f"{n:,} characters; expected at most {limit:,} "
                       "per field (max_field_chars)")


def _read_any(path: str | Path) -> RawFile:
    p = Path(path)
    shown = str(path)
    if not p.is_file():
        raise ConceptFileError(f"{shown}: no such file (expected a .yaml, .yml or .csv concept/pair file "
                               "or a .jsonl pair file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConceptFileError(f"{shown}: not UTF-8 text ({e})") from None
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _read_yaml(shown, text)
    if suffix == ".csv":
        return _read_csv(shown, text)
    if suffix == ".jsonl":
        return _read_jsonl(shown, text)
    raise ConceptFileError(f"{shown}: unknown file type {suffix!r} (expected .yaml, .yml, .csv or .jsonl)")


def _read_jsonl(path: str, text: str) -> RawFile:
    """A pair file with one JSON object per line (``clean, corrupted, clean_answer, corrupted_answer`` and
    any meta keys; blank lines skipped). It has no header: the name is the file's stem."""
    rows: list[dict[str, Any]] = []
    row_lines: list[int] = []
    extra: list[str] = []
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(path, ln, None, f"not valid JSON ({e.msg}); expected one pair object per line") from None
        if not isinstance(rec, dict):
            raise _err(path, ln, None, f"expected a JSON object with keys {list(PAIR_COLUMNS)}, got {rec!r}")
        extra += [str(k) for k in rec if k not in PAIR_COLUMNS and k not in extra]
        rows.append(rec)
        row_lines.append(ln)
    return RawFile(path, {"kind": "pairs", "columns": extra}, rows, row_lines, {}, [], "jsonl")


def _read_yaml(path: str, text: str) -> RawFile:
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise _err(path, line, None, f"not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict) or root is None:
        raise _err(path, 1, None, "expected a YAML mapping with a header (name, version, ...) and "
                   "'items' (concept set) or 'pairs' (pair set)")
    key_lines: dict[str, int] = {}
    value_nodes: dict[str, Any] = {}
    for k_node, v_node in root.value:
        key_lines[str(k_node.value)] = k_node.start_mark.line + 1
        value_nodes[str(k_node.value)] = v_node
    rows_key = "pairs" if "pairs" in data else "items"
    rows = data.get(rows_key)
    if rows is None:
        raise _err(path, None, None, "no 'items' (concept set) or 'pairs' (pair set) list found")
    if not isinstance(rows, list):
        raise _err(path, key_lines.get(rows_key), rows_key, f"expected a list of rows under '{rows_key}'")
    row_lines = [n.start_mark.line + 1 for n in value_nodes[rows_key].value]
    template_lines: list[int] = []
    if "templates" in value_nodes and isinstance(value_nodes["templates"], yaml.SequenceNode):
        template_lines = [n.start_mark.line + 1 for n in value_nodes["templates"].value]
    header = {k: v for k, v in data.items() if k != rows_key}
    header.setdefault("kind", "pairs" if rows_key == "pairs" else "concepts")
    return RawFile(path, header, rows, row_lines, key_lines, template_lines, "yaml")


def _read_csv(path: str, text: str) -> RawFile:
    lines = text.splitlines(keepends=True)
    n_head = 0
    while n_head < len(lines) and (lines[n_head].startswith("#") or not lines[n_head].strip()):
        n_head += 1
    head_text = "".join(ln[1:] if ln.startswith("#") else ln for ln in lines[:n_head])
    try:
        header = yaml.load(head_text, Loader=_Loader) if head_text.strip() else {}
    except yaml.YAMLError as e:
        raise _err(path, None, None, f"the '#' header lines are not valid YAML ({e})") from None
    if header is None:
        header = {}
    if not isinstance(header, dict):
        header = {}  # plain comments: no header
    reader = csv.DictReader(io.StringIO("".join(lines[n_head:])))
    rows: list[dict[str, Any]] = []
    row_lines: list[int] = []
    try:
        names = reader.fieldnames
    except csv.Error as e:
        raise _err(path, n_head + 1, None, f"the CSV header row is not readable ({e})") from None
    if names is None:
        raise _err(path, n_head + 1, None, "expected a CSV header row with column names")
    fieldnames = [f.strip() for f in reader.fieldnames]
    prev = reader.line_num
    try:
        for rec in reader:
            _csv_row(path, rec, prev, n_head, fieldnames, rows, row_lines)
            prev = reader.line_num
    except csv.Error as e:  # e.g. a field over the csv module's limit of csv.field_size_limit() characters
        raise _err(path, n_head + prev + 1, None, f"not readable as CSV ({e}); expected at most "
                   f"{MAX_FIELD_CHARS:,} characters per field and balanced quotes") from None
    kind = header.get("kind") or ("pairs" if set(PAIR_COLUMNS) & set(fieldnames) else "concepts")

    header["kind"] = kind
    header.setdefault("_fieldnames", fieldnames)
    header["_header_line"] = n_head + 1
    return RawFile(path, header, rows, row_lines, {}, [], "csv")


def _csv_row(path: str, rec: dict, prev: int, n_head: int, fieldnames: list[str], rows: list, row_lines: list) -> None:
    row_lines.append(n_head + prev + 1)
    row = {}
    for k, v in rec.items():
        if k is None:
            raise _err(path, row_lines[-1], None, f"more values than the {len(fieldnames)} columns of the header")
        row[k.strip()] = v
    rows.append(row)


# ----------------------------------------------------------------------------------------- validation


@dataclass
class LabelSpec:
    name: str
    type: str  # "categorical" | "continuous"
    values: list[str] | None = None


@dataclass
class TemplateSpec:
    text: str
    answer: str | None = None  # column holding the answer, or None
    ends_on_item: bool = False  # the text ends with the item placeholder (read position = item's last token)


_ITEM_ALIAS = re.compile(r"(?<!\{)\{item\}(?!\})")


def item_alias(text: str, item: str) -> str:
    """Rewrite the generic placeholder ``{item}`` to the item column's own name (``{drug}`` for ``item: drug``)."""
    return text if item == "item" else _ITEM_ALIAS.sub("{" + item + "}", text)


def ends_on_item(text: str, item: str) -> bool:
    """True when the template's last character is the end of the item placeholder (nothing follows it)."""
    return text.rstrip("\n").endswith("{" + item + "}")


def _to_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and math.isnan(v) else v
    if isinstance(v, str):
        s = v.strip()
        try:
            f = float(s)
        except ValueError:
            return None
        if math.isnan(f):
            return None
        return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f
    return None


def parse_labels(raw: RawFile) -> dict[str, LabelSpec]:
    """The ``labels`` header: ``{name: {type: categorical|continuous, values: [...]}}`` (or a bare type)."""
    path, spec = raw.path, raw.header.get("labels") or {}
    line = raw.key_lines.get("labels")
    if not isinstance(spec, dict):
        raise _err(path, line, "labels", "expected a mapping {label name: {type: categorical|continuous, values: [...]}}")
    out: dict[str, LabelSpec] = {}
    for name, s in spec.items():
        if isinstance(s, str):
            s = {"type": s}
        if s is None:
            s = {}
        if not isinstance(s, dict):
            raise _err(path, line, "labels", f"label '{name}': expected a mapping with 'type' (and 'values')")
        typ = str(s.get("type", "categorical")).lower()
        if typ not in ("categorical", "continuous"):
            raise _err(path, line, "labels", f"label '{name}': type must be 'categorical' or 'continuous', got {typ!r}")
        values = s.get("values")
        if values is not None:
            if not isinstance(values, list) or not values:
                raise _err(path, line, "labels", f"label '{name}': 'values' must be a non-empty list")
            values = [str(v) for v in values]
        out[str(name)] = LabelSpec(str(name), typ, values)
    return out


def parse_templates(raw: RawFile, item: str, columns: list[str]) -> list[TemplateSpec]:
    """Validate templates: non-empty, contain the item placeholder, only known placeholders, answer is a column.

    The item placeholder may be written ``{item}`` or with the item column's own name (``{drug}`` for
    ``item: drug``); ``{item}`` is rewritten to the column name. A template mapping may state
    ``ends_on_item: true/false``; it must agree with the text (nothing after the item placeholder).
    """
    path = raw.path
    tmpls = raw.header.get("templates")
    line0 = raw.key_lines.get("templates")
    if not tmpls or not isinstance(tmpls, list):
        raise _err(path, line0, "templates", f"expected a non-empty list of prompt templates containing '{{{item}}}'")
    out = []
    for i, t in enumerate(tmpls):
        line = raw.template_lines[i] if i < len(raw.template_lines) else line0
        where = f"template {i + 1}"
        stated = None
        if isinstance(t, dict):
            text, answer, stated = t.get("text"), t.get("answer"), t.get("ends_on_item")
        else:
            text, answer = t, None
        if not isinstance(text, str) or not text.strip():
            raise _err(path, line, "templates", f"{where} is empty; expected text containing '{{{item}}}'")
        text = item_alias(text, item)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as e:
            raise _err(path, line, "templates", f"{where} {text!r} is not a valid template ({e}); "
                       "write a literal brace as '{{' or '}}'") from None
        if item not in fields:
            raise _err(path, line, "templates", f"{where} {text!r} has no placeholder '{{{item}}}' "
                       f"for the item column '{item}'")
        for f in fields:
            if f not in columns:
                raise _err(path, line, "templates", f"{where} {text!r}: unknown placeholder '{{{f}}}'; "
                           f"expected one of the columns {columns}")
        if answer is not None:
            answer = str(answer)
            if answer not in columns:
                raise _err(path, line, "templates", f"{where}: answer column '{answer}' is not a column; "
                           f"expected one of {columns}")
        ends = ends_on_item(text, item)
        if stated is not None and bool(stated) != ends:
            raise _err(path, line, "templates", f"{where} {text!r} says ends_on_item: {stated} but "
                       + ("it ends on the item" if ends else "text follows the item placeholder"))
        out.append(TemplateSpec(text, answer, ends))
    return out


def check_header_keys(raw: RawFile) -> None:
    for k in raw.header:
        if k.startswith("_"):
            continue
        if k not in _HEADER_KEYS:
            raise _err(raw.path, raw.key_lines.get(k), None, f"unknown header key '{k}'; expected some of "
                       f"{sorted(_HEADER_KEYS)}")


def validate_concept_rows(
    raw: RawFile, item: str, labels: dict[str, LabelSpec], extra: list[str], unique: list[str]
) -> list[dict[str, Any]]:
    """Check every row: all columns present, no unknown column, known labels, numbers, no duplicates."""
    path = raw.path
    columns = [item] + [c for c in labels if c != item] + [c for c in extra if c != item and c not in labels]
    seen: dict[tuple, int] = {}
    out = []
    if not raw.rows:
        raise _err(path, raw.key_lines.get("items"), "items", "no rows: expected at least one item")
    for row, line in zip(raw.rows, raw.row_lines):
        if not isinstance(row, dict):
            raise _err(path, line, None, f"expected a row mapping columns {columns} to values, got {row!r}")
        clean: dict[str, Any] = {}
        for c in columns:
            if c not in row:
                raise _err(path, line, c, f"missing column '{c}' (every row needs {columns})")
            v = row[c]
            spec = labels.get(c)
            if spec is not None and spec.type == "continuous":
                num = _to_number(v)
                if num is None:
                    raise _err(path, line, c, f"expected a number for the continuous label '{c}', got {v!r}")
                clean[c] = num
                continue
            if c in extra and c not in labels and c != item:
                clean[c] = "" if v is None else v
                continue
            if v is None or (isinstance(v, str) and not v.strip()):
                raise _err(path, line, c, f"empty value; expected a {'label' if spec else 'item'} text")
            if isinstance(v, (list, dict)):
                raise _err(path, line, c, f"expected a single value, got {v!r}")
            s = str(v)
            if spec is not None and spec.values is not None and s not in spec.values:
                raise _err(path, line, c, f"unknown label {s!r} for '{c}'; expected one of {spec.values} "
                           f"(add it to labels.{c}.values in the header if it is intended)")
            clean[c] = s
        for c in row:
            if c not in columns:
                raise _err(path, line, str(c), f"unknown column '{c}'; expected only {columns} "
                           "(declare extra columns under 'columns' or 'labels' in the header)")
        key = tuple(str(clean[c]).strip().lower() for c in unique)
        if key in seen:
            raise _err(path, line, ",".join(unique), f"duplicate item {dict(zip(unique, key))}: "
                       f"already on line {seen[key]}")
        seen[key] = line
        out.append(clean)
    return out


def validate_pair_rows(raw: RawFile, extra: list[str], labels: dict[str, LabelSpec] | None = None) -> list[dict[str, Any]]:
    """Check pair rows: the four pair columns present and non-empty text, declared extras.

    Duplicate pairs are kept here: :meth:`PairSet.check` drops them (naming the line of the first), the one
    place duplicates are handled."""
    path = raw.path
    labels = labels or {}
    extra = list(extra) + [c for c in labels if c not in extra]
    if not raw.rows:
        raise _err(path, raw.key_lines.get("pairs"), "pairs", "no rows: expected at least one pair")
    allowed = list(PAIR_COLUMNS) + [c for c in extra if c not in PAIR_COLUMNS]
    out = []
    for row, line in zip(raw.rows, raw.row_lines):
        if not isinstance(row, dict):
            raise _err(path, line, None, f"expected a row with columns {list(PAIR_COLUMNS)}, got {row!r}")
        for c in PAIR_COLUMNS:
            if c not in row:
                raise _err(path, line, c, f"missing column '{c}' (pair rows need {list(PAIR_COLUMNS)})")
            v = row[c]
            if not isinstance(v, str) or v == "" or (c in ("clean", "corrupted") and not v.strip()):
                raise _err(path, line, c, f"expected non-empty text, got {v!r}"
                           + (" (answers are the text of the next token, e.g. \" angina\")" if "answer" in c else ""))
        for c in row:
            if c not in allowed:
                raise _err(path, line, str(c), f"unknown column '{c}'; expected {allowed} "
                           "(declare extra columns under 'columns' in the header)")
        for c, spec in labels.items():
            if c not in row:
                raise _err(path, line, c, f"missing column '{c}' (declared under 'labels')")
            if spec.type == "continuous":
                if _to_number(row[c]) is None:
                    raise _err(path, line, c, f"expected a number for the continuous label '{c}', got {row[c]!r}")
                row = {**row, c: _to_number(row[c])}
            elif spec.values is not None and str(row[c]) not in spec.values:
                raise _err(path, line, c, f"unknown label {str(row[c])!r} for '{c}'; expected one of {spec.values}")
        out.append(dict(row))
    return out
