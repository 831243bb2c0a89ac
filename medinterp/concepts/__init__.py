"""The medical concept library: shipped concept sets and patching pairs, loading and validation.

Shipped sets (``medinterp/concepts/data/*.yaml``, each with a version and a provenance note):

* concept sets (:class:`ConceptSet`): ``age``, ``symptoms``, ``diseases``, ``progression``, ``drugs``,
  ``dosage_drugs``;
* pair sets (:class:`PairSet`, for activation patching): ``diagnosis_pairs``, ``dosage``,
  ``age_pairs``, ``symptom_pairs``, ``drug_pairs``, ``progression_pairs``;
* a matched non-medical control of each (``<name>_control``, e.g. ``drugs_control``,
  ``drug_pairs_control``) and the variants ``age_words`` and ``progression_plain``.

:data:`CONCEPT_FAMILIES` says which concept set and pair set feed each knowledge-map row.
A user file (``.yaml``/``.yml`` or ``.csv`` with a ``#`` YAML header) with the same schema loads with
``load_concepts(path)``; errors name the file, line, column and what was expected.

Example:
    >>> from medinterp.concepts import load_concepts, CONCEPT_FAMILIES
    >>> len(load_concepts("drugs")) >= 60
    True
    >>> CONCEPT_FAMILIES["drugs"]["labels"]
    ['specialty', 'mechanism']
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from medinterp.concepts._files import (
    PAIR_COLUMNS,
    check_header_keys,
    parse_labels,
    parse_templates,
    MAX_FIELD_CHARS,
    read_file,
    validate_concept_rows,
    validate_pair_rows,
)
from medinterp.concepts.pairs import PairCheck, PairSet, PromptPair
from medinterp.concepts.sets import ConceptPrompt, ConceptSet
from medinterp.errors import ConceptFileError, MedinterpError

__all__ = [
    "load_concepts", "list_concepts", "ConceptSet", "ConceptPrompt", "PairSet", "PromptPair", "PairCheck",
    "CONCEPT_FAMILIES", "SHIPPED", "data_path",
]

#: For each knowledge-map row: the concept set that feeds geometry / saliency / lesioning, the pair
#: set that feeds activation patching, and the labellings geometry scores (categorical labels get a
#: silhouette; continuous ones — age, stage, dose_mg — get the age / progression / linearity metrics).
#: Each entry also has ``geometry`` (= ``concepts``), so a family can be found from its concept-set name.
#: ``control`` / ``control_pairs`` name the matched non-medical concept / pair set of the row (same frames,
#: same label structure, ``control_labels`` the labellings to score); ``variants`` are lexical-cue-free
#: variants of the concept set (ages in words, progression without numbers); ``matched_labels`` (drugs) are
#: the mechanism classes with >= 3 drugs and a specialty labelling of the same class count and sizes
#: (rows labelled ``ungrouped`` are outside both: filter them out before scoring).
#: dosage: the concept set is ``dosage_drugs`` (the drugs of the dosage pairs) labelled by
#: ``dose_range`` (usual adult single dose < 10 mg, 10-99 mg, >= 100 mg) and ``dose_mg``.
CONCEPT_FAMILIES: dict[str, dict[str, Any]] = {
    "age": {"concepts": "age", "pairs": "age_pairs", "labels": ["age"],
            "control": "age_control", "control_pairs": "age_pairs_control", "control_labels": ["age"],
            "variants": ["age_words"]},
    "symptoms": {"concepts": "symptoms", "pairs": "symptom_pairs", "labels": ["system"],
                 "control": "symptoms_control", "control_pairs": "symptom_pairs_control", "control_labels": ["part"]},
    "diseases": {"concepts": "diseases", "pairs": "diagnosis_pairs", "labels": ["specialty"],
                 "control": "diseases_control", "control_pairs": "diagnosis_pairs_control", "control_labels": ["trade"]},
    "progression": {"concepts": "progression", "pairs": "progression_pairs", "labels": ["stage"],
                    "control": "progression_control", "control_pairs": "progression_pairs_control",
                    "control_labels": ["stage"], "variants": ["progression_plain"]},
    "drugs": {"concepts": "drugs", "pairs": "drug_pairs", "labels": ["specialty", "mechanism"],
              "matched_labels": ["mechanism_class", "specialty_matched"],
              "control": "drugs_control", "control_pairs": "drug_pairs_control",
              "control_labels": ["cuisine", "kind"]},
    "dosage": {"concepts": "dosage_drugs", "pairs": "dosage", "labels": ["dose_range"],
               "control": "dosage_drugs_control", "control_pairs": "dosage_control", "control_labels": ["amount_range"]},
}
for _fam in CONCEPT_FAMILIES.values():  # alias: lets code look a family up by its concept-set name
    _fam["geometry"] = _fam["concepts"]


def data_path() -> Path:
    """Folder of the shipped data files."""
    return Path(str(files("medinterp.concepts").joinpath("data")))


def _shipped() -> dict[str, Path]:
    out = {}
    for p in sorted(data_path().iterdir()):
        if p.suffix in (".yaml", ".yml", ".csv"):
            out[p.stem] = p
    return out


SHIPPED: tuple[str, ...] = tuple(_shipped())


def load_concepts(name_or_path: str | Path, *, max_field_chars: int = MAX_FIELD_CHARS,
                  max_rows: int | None = None) -> ConceptSet | PairSet:
    """Load a shipped concept / pair set by name, or a user file with the same schema.

    Args:
        name_or_path: a shipped name (``age``, ``symptoms``, ``diseases``, ``progression``, ``drugs``,
            ``dosage_drugs``, ``dosage``, ``diagnosis_pairs``, ``age_pairs``, ``symptom_pairs``,
            ``drug_pairs``, ``progression_pairs``, each also as ``<name>_control``, and the variants
            ``age_words``, ``progression_plain``; see :data:`SHIPPED`) or a path to a
            ``.yaml``/``.yml``/``.csv`` file.
        max_field_chars: the longest text a field (item, label, template, answer) may hold; a longer one
            is a :class:`ConceptFileError` naming file, line and column, raised before any model work.
        max_rows: the most items / pairs the file may hold (default :data:`~medinterp.concepts._files.MAX_ROWS`,
            10,000, or the environment variable ``MEDINTERP_MAX_ROWS``); a larger file is a
            :class:`ConceptFileError` that names the cap and how to raise it.

    Returns:
        A :class:`ConceptSet`, or a :class:`PairSet` for pair files (``kind: pairs`` or the columns
        ``clean, corrupted, clean_answer, corrupted_answer``).

    Raises:
        ConceptFileError: the file is malformed (message names file, line, column, expectation).
        MedinterpError: an unknown name.

    Example:
        >>> load_concepts("diagnosis_pairs").pairs[0].clean_answer.startswith(" ")
        True
    """
    if isinstance(name_or_path, (ConceptSet, PairSet)):
        return name_or_path
    shipped = _shipped()
    key = str(name_or_path)
    if key in shipped:
        return _load(shipped[key], shown=f"{shipped[key].name} (shipped)", max_field_chars=max_field_chars,
                     max_rows=max_rows)
    p = Path(name_or_path).expanduser()
    if p.suffix.lower() in (".yaml", ".yml", ".csv") or p.exists():
        return _load(p, shown=str(name_or_path), max_field_chars=max_field_chars, max_rows=max_rows)
    raise MedinterpError(f"unknown concept set {key!r}: expected a shipped name ({', '.join(shipped)}) "
                         "or a path to a .yaml/.yml/.csv file")


def list_concepts() -> list[dict[str, Any]]:
    """The shipped sets: name, kind (concepts/pairs), version, number of items or pairs, labels, templates."""
    out = []
    for name in _shipped():
        s = load_concepts(name)
        if isinstance(s, PairSet):
            out.append({"name": name, "kind": "pairs", "version": s.version, "n": len(s), "labels": s.columns,
                        "templates": 0, "description": s.description})
        else:
            out.append({"name": name, "kind": "concepts", "version": s.version, "n": len(s), "labels": s.labels,
                        "templates": len(s.templates), "description": s.description})
    return out


def _load(path: Path, shown: str, max_field_chars: int = MAX_FIELD_CHARS,
          max_rows: int | None = None) -> ConceptSet | PairSet:
    raw = read_file(path, max_field_chars, max_rows)
    raw.path = shown
    check_header_keys(raw)
    h = raw.header
    name = str(h.get("name") or Path(path).stem)
    version = str(h.get("version") or "unversioned")
    description = str(h.get("description") or "").strip()
    provenance = str(h.get("provenance") or "").strip()
    kind = str(h.get("kind", "concepts")).lower()
    columns = h.get("columns") or []
    if not isinstance(columns, list):
        raise ConceptFileError(f"{shown}, line {raw.key_lines.get('columns')}, column 'columns': expected a list "
                               "of extra column names")
    columns = [str(c) for c in columns]
    labels = parse_labels(raw)
    if kind == "pairs":
        if raw.fmt == "csv":
            fields = h.get("_fieldnames", [])
            missing = [c for c in PAIR_COLUMNS if c not in fields]
            if missing:
                raise ConceptFileError(f"{shown}, line {h.get('_header_line', 1)}, column '{missing[0]}': missing "
                                       f"column(s) {missing} in the CSV header (pair files need {list(PAIR_COLUMNS)})")
            columns = columns or [c for c in fields if c not in PAIR_COLUMNS and c not in labels]
        rows = validate_pair_rows(raw, columns, labels)
        extra = [c for c in columns if c not in PAIR_COLUMNS] + [c for c in labels if c not in columns]
        pairs = [PromptPair(r["clean"], r["corrupted"], r["clean_answer"], r["corrupted_answer"],
                            meta={**{c: r.get(c) for c in extra}, "row": f"{Path(str(path)).name}:{line}"}, line=line)
                 for r, line in zip(rows, raw.row_lines)]
        return PairSet(name, version, description, pairs, extra, provenance, shown)
    if kind != "concepts":
        raise ConceptFileError(f"{shown}, line {raw.key_lines.get('kind')}, column 'kind': expected 'concepts' or "
                               f"'pairs', got {kind!r}")
    item = h.get("item")
    if not item or not isinstance(item, str):
        raise ConceptFileError(f"{shown}: the header needs 'item: <column name>' naming the column that holds "
                               "the item text (the placeholder every template must contain)")
    if raw.fmt == "csv" and not columns:
        fields = h.get("_fieldnames", [])
        if item not in fields:
            raise ConceptFileError(f"{shown}, line {h.get('_header_line', 1)}, column '{item}': missing item column '{item}' in the CSV header")
        columns = [c for c in fields if c != item and c not in labels]
    all_cols = [item] + [c for c in labels if c != item] + [c for c in columns if c != item and c not in labels]
    templates = parse_templates(raw, item, all_cols)
    unique = h.get("unique") or ([item] + [c for c, s in labels.items()
                                           if c != item and s.type == "categorical" and item in labels])
    if isinstance(unique, str):
        unique = [unique]
    rows = validate_concept_rows(raw, item, labels, columns, [str(u) for u in unique])
    if raw.fmt == "csv":  # list-valued extra columns are '|'-separated in CSV
        for r in rows:
            for c in columns:
                if isinstance(r.get(c), str) and "|" in r[c]:
                    r[c] = [x.strip() for x in r[c].split("|")]
    cat = [c for c, s in labels.items() if s.type == "categorical"]
    cont = [c for c, s in labels.items() if s.type == "continuous"]
    values = {c: (labels[c].values or sorted({str(r[c]) for r in rows})) for c in cat}
    return ConceptSet(name=name, version=version, description=description, items=rows, item_key=item,
                      categorical_labels=cat, continuous_labels=cont, templates=[t.text for t in templates],
                      template_answers=[t.answer for t in templates], label_values=values,
                      template_ends_on_item=[t.ends_on_item for t in templates],
                      extra_columns=[c for c in columns if c != item and c not in labels],
                      provenance=provenance, path=shown)
