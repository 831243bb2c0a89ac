"""Concept sets: items with categorical / continuous labels, rendered into prompts through templates.

Example:
    >>> from medinterp.concepts import load_concepts
    >>> drugs = load_concepts("drugs")
    >>> p = drugs.prompts(templates=[0])[0]
    >>> p.text, p.answer, p.text[p.span[0]:p.span[1]] == p.item
    ('The drug metoprolol is used for', ' hypertension', True)
    >>> sorted(drugs.filter(specialty="ophthalmology").to_dataframe()["drug"])[:2]
    ['brimonidine', 'chloramphenicol']
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from medinterp.concepts._files import ends_on_item, item_alias
from medinterp.errors import MedinterpError


@dataclass(frozen=True)
class ConceptPrompt:
    """One rendered prompt: an item of a concept set put into one template.

    Attributes:
        text: the prompt text.
        item: the item's text as it appears in ``text`` (e.g. ``"metformin"``, ``"45"``).
        item_index: index of the item in ``ConceptSet.items``.
        template_index: index of the template in ``ConceptSet.templates`` (-1 for a custom template).
        labels: the item's labels (categorical and continuous), e.g. ``{"specialty": "cardiology"}``.
        span: ``(start, end)`` character offsets of the item in ``text``.
        answer: expected next-token text (leading space, e.g. ``" diabetes"``) or None when the set has
            no natural answer for this template; techniques then score the item's own tokens.
        concept: name of the concept set.
        ends_on_item: the template ends on the item (the last prompt token is the item's last
            sub-word); False when a fixed word or punctuation follows the item.
    """

    text: str
    item: str
    item_index: int
    template_index: int
    labels: dict = field(default_factory=dict, hash=False, compare=True)
    span: tuple[int, int] = (0, 0)
    answer: str | None = None
    concept: str = ""
    ends_on_item: bool = False

    def __hash__(self) -> int:  # dict field: hash the identifying parts only
        return hash((self.text, self.item_index, self.template_index, self.concept))


@dataclass
class ConceptSet:
    """A validated concept set (one data file): items, labels, templates.

    Attributes:
        name, version, description, provenance: from the file header.
        item_key: the column holding the item text (the templates' required placeholder).
        items: one dict per item: item column, label columns, extra columns.
        categorical_labels / continuous_labels: label column names by kind.
        label_values: allowed values of each categorical label (from the header, else observed).
        templates: template texts; ``template_answers[i]`` is the column holding template ``i``'s
            answer, or None; ``template_ends_on_item[i]`` says whether template ``i`` ends on the item.
        extra_columns: non-label columns (e.g. drugs: ``indication``, ``keywords``).
        path: the file it came from ("" when built in code).
    """

    name: str
    version: str
    description: str
    items: list[dict[str, Any]]
    item_key: str
    categorical_labels: list[str]
    continuous_labels: list[str]
    templates: list[str]
    template_answers: list[str | None] = field(default_factory=list)
    label_values: dict[str, list[str]] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    provenance: str = ""
    path: str = ""
    template_ends_on_item: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.template_answers:
            self.template_answers = [None] * len(self.templates)
        if not self.template_ends_on_item:
            self.template_ends_on_item = [ends_on_item(t, self.item_key) for t in self.templates]

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Iterate over items (dicts), before templating. Use :meth:`prompts` for rendered prompts."""
        return iter(self.items)

    def __repr__(self) -> str:
        return (f"ConceptSet({self.name!r} v{self.version}: {len(self)} items, "
                f"labels={self.categorical_labels + self.continuous_labels}, {len(self.templates)} templates)")

    @property
    def labels(self) -> list[str]:
        """All label names (categorical then continuous)."""
        return self.categorical_labels + [c for c in self.continuous_labels if c not in self.categorical_labels]

    def label(self, name: str) -> list[Any]:
        """One label's value for every item, in item order."""
        if name not in self.labels and name not in self.extra_columns and name != self.item_key:
            raise MedinterpError(f"concept set {self.name!r} has no label {name!r}; labels are {self.labels}")
        return [it[name] for it in self.items]

    def to_dataframe(self):
        """One row per item (before templating): the item column, label columns, extra columns."""
        import pandas as pd

        cols = [self.item_key] + [c for c in self.labels if c != self.item_key] + self.extra_columns
        return pd.DataFrame([{c: it.get(c) for c in cols} for it in self.items], columns=cols)

    # ------------------------------------------------------------------ selection
    def filter(self, **labels: Any) -> "ConceptSet":
        """A new set with the items whose labels match, e.g. ``filter(specialty="cardiology")``.

        A value may be a single value or a list/tuple/set of accepted values; continuous labels may
        also be given as a ``(low, high)`` inclusive range via ``filter(age=range(18, 66))``.
        """
        known = set(self.labels) | set(self.extra_columns) | {self.item_key}
        for k in labels:
            if k not in known:
                raise MedinterpError(f"filter: concept set {self.name!r} has no label {k!r}; labels are {self.labels}")

        def ok(it: dict[str, Any]) -> bool:
            for k, v in labels.items():
                val = it[k]
                if isinstance(v, (list, tuple, set, frozenset, range)):
                    if val not in v and str(val) not in {str(x) for x in v}:
                        return False
                elif val != v and str(val) != str(v):
                    return False
            return True

        new = copy.copy(self)
        new.items = [it for it in self.items if ok(it)]
        if not new.items:
            raise MedinterpError(f"filter {labels} leaves no item of {self.name!r}")
        return new

    # ------------------------------------------------------------------ rendering
    def render(self, template: str, item: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        """Fill ``template`` with an item; returns the text and the item's character span."""
        out: list[str] = []
        span: tuple[int, int] | None = None
        pos = 0
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise MedinterpError(f"template {template!r} is not valid ({e})") from None
        for literal, fname, spec, conv in parsed:
            out.append(literal)
            pos += len(literal)
            if fname is None:
                continue
            if fname not in item:
                raise MedinterpError(f"template {template!r}: placeholder '{{{fname}}}' is not a column of "
                                     f"{self.name!r} (columns: {sorted(item)})")
            val = _fmt(item[fname])
            if conv or spec:
                val = format(item[fname] if not conv else _fmt(item[fname]), spec or "")
            if fname == self.item_key and span is None:
                span = (pos, pos + len(val))
            out.append(val)
            pos += len(val)
        if span is None:
            raise MedinterpError(f"template {template!r} has no placeholder '{{{self.item_key}}}' for the item")
        return "".join(out), span

    def prompts(self, templates: Sequence[int | str] | int | str | None = None) -> list["ConceptPrompt"]:
        """Render every item through the chosen templates (item-major order).

        Args:
            templates: None = all of the set's templates; otherwise indices into ``self.templates``
                and/or custom template strings (which must contain ``{item_key}``; no answer).

        Example:
            >>> from medinterp.concepts import load_concepts
            >>> ps = load_concepts("age").prompts(templates=[0])
            >>> len(ps), ps[17].labels["age"], ps[17].item
            (200, 18, '18')
        """
        if templates is None:
            chosen: list[tuple[int, str, str | None]] = [
                (i, t, self.template_answers[i]) for i, t in enumerate(self.templates)
            ]
        else:
            if isinstance(templates, (int, str)):
                templates = [templates]
            chosen = []
            for t in templates:
                if isinstance(t, bool) or not isinstance(t, (int, str)):
                    raise MedinterpError(f"templates: expected template indices or strings, got {t!r}")
                if isinstance(t, int):
                    if not 0 <= t < len(self.templates):
                        raise MedinterpError(f"template index {t} out of range: {self.name!r} has "
                                             f"{len(self.templates)} templates (0..{len(self.templates) - 1})")
                    chosen.append((t, self.templates[t], self.template_answers[t]))
                else:
                    t = item_alias(t, self.item_key)
                    if "{" + self.item_key + "}" not in t:
                        raise MedinterpError(f"custom template {t!r} needs the placeholder '{{{self.item_key}}}'")
                    chosen.append((-1, t, None))
        out = []
        for i, it in enumerate(self.items):
            labels = {k: it[k] for k in self.labels}
            for ti, t, ans_col in chosen:
                eoi = self.template_ends_on_item[ti] if ti >= 0 else ends_on_item(t, self.item_key)
                text, span = self.render(t, it)
                ans = it.get(ans_col) if ans_col else None
                out.append(ConceptPrompt(text=text, item=text[span[0]:span[1]], item_index=i, template_index=ti,
                                         labels=labels, span=span, answer=(str(ans) if ans else None),
                                         concept=self.name, ends_on_item=eoi))
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
