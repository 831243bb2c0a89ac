"""Patching pairs (clean / corrupted prompts with different single-token answers) and THE pair rule.

:class:`PromptPair` is the one pair type and :meth:`PairSet.check` the one validity rule, used by
``medinterp concepts check``, ``medinterp patch``, the knowledge map and the API alike. For one
tokenizer a pair is valid when

1. clean and corrupted are different texts that tokenize to the *same number of tokens*;
2. each answer is *exactly one token*, not the unknown token (``<unk>``/``[UNK]``);
3. each answer is the *real next token*: tokenizing ``prompt + answer`` gives the prompt's tokens
   followed by the answer token (``"... head"`` + ``"ache"`` tokenizing as one ``"▁headache"`` fails);
4. the two answer tokens differ;
5. it is not a duplicate: a pair equal to an earlier one (both prompts and both answers) is dropped with
   the reason ``duplicate: the same pair (prompts and answers) as line N`` (``as pair N`` for pairs
   built in code); the file readers keep duplicates so that this is the one place they are handled;
   and it is not *contradicted*: pairs with the same clean and corrupted prompts but other answers are all
   dropped (``contradictory answers: ...``), since patching would average opposite targets;
6. with a model: every token id is inside the model's vocabulary.

:meth:`PairSet.check` returns the valid pairs, tokenized (:class:`TokenizedPair`, what the patching
engine runs on), plus every dropped pair with its reason; nothing is dropped silently.

Example:
    >>> from medinterp.concepts import load_concepts
    >>> from medinterp.testing import tiny_model
    >>> pairs = load_concepts("diagnosis_pairs")
    >>> chk = pairs.check(tiny_model(n_layers=1))
    >>> chk.n_valid + chk.n_dropped == len(pairs)
    True
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Sequence

from medinterp.errors import MedinterpError

_PAIR_FIELDS = ("clean", "corrupted", "clean_answer", "corrupted_answer")


@dataclass(frozen=True)
class PromptPair:
    """A clean / corrupted prompt pair with the expected next token of each.

    Attributes:
        clean, corrupted: the two prompts (they differ in one clinical detail or one drug).
        clean_answer, corrupted_answer: text of the expected next token, with its leading space
            (e.g. ``" angina"``), or a bare digit after a prompt ending in a space (dosage).
        meta: the row's other columns (e.g. ``clean_drug``, ``clean_dose``) and ``row`` ("file:line",
            which techniques use to name a pair in messages).
        line: line of the row in its file (None when built in code).
    """

    clean: str
    corrupted: str
    clean_answer: str
    corrupted_answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    line: int | None = field(default=None, compare=False)


def pair_row(pair: PromptPair, index: int) -> str | int:
    """How messages name a pair: its ``meta["row"]`` (``"file.csv:3"``) or its index in the set."""
    return pair.meta.get("row", index)


def describe_pair(pair: PromptPair, index: int) -> dict[str, Any]:
    """The pair's row label and four texts, as results and reports list them."""
    return {"row": pair_row(pair, index), "clean": pair.clean, "corrupted": pair.corrupted,
            "clean_answer": pair.clean_answer, "corrupted_answer": pair.corrupted_answer}


@dataclass(frozen=True)
class TokenizedPair:
    """A valid pair with its tokens, as :meth:`PairSet.check` returns it (the patching engine's input).

    Attributes:
        pair: the :class:`PromptPair`.
        index: its position in the pair set.
        clean_tokens, corrupted_tokens: prompt token ids (BOS included where the model adds one).
        clean_id, corrupted_id: the answer token ids.
    """

    pair: PromptPair
    index: int
    clean_tokens: list[int]
    corrupted_tokens: list[int]
    clean_id: int
    corrupted_id: int

    @property
    def row(self) -> str | int:
        return pair_row(self.pair, self.index)

    def describe(self) -> dict[str, Any]:
        return describe_pair(self.pair, self.index)


@dataclass
class PairCheck:
    """Result of :meth:`PairSet.check`: which pairs a tokenizer can use and why the others cannot.

    Attributes:
        valid: usable pairs, in file order.
        dropped: ``(pair, reason)`` for every unusable pair.
        answer_ids: for each valid pair, ``(clean answer token id, corrupted answer token id)``.
        n_tokens: for each valid pair, its prompt length in tokens (BOS included where the model adds one).
        tokenizer: short description of the tokenizer used.
        name: the pair set's name.
        tokenized: for each valid pair, its :class:`TokenizedPair` (what the patching engine runs on).
        dropped_index: for each dropped pair, its index in the pair set.
    """

    valid: list[PromptPair]
    dropped: list[tuple[PromptPair, str]]
    answer_ids: list[tuple[int, int]] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    tokenizer: str = ""
    name: str = ""
    tokenized: list[TokenizedPair] = field(default_factory=list)
    dropped_index: list[int] = field(default_factory=list)

    def dropped_rows(self) -> list[dict[str, Any]]:
        """Each dropped pair as ``{row, clean, corrupted, clean_answer, corrupted_answer, reason}``."""
        idx = self.dropped_index or list(range(len(self.dropped)))
        return [{**describe_pair(p, i), "reason": r} for (p, r), i in zip(self.dropped, idx)]

    @property
    def n_valid(self) -> int:
        return len(self.valid)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    @property
    def fraction_valid(self) -> float:
        n = self.n_valid + self.n_dropped
        return self.n_valid / n if n else 0.0

    def reasons(self) -> Counter:
        """How often each kind of reason occurred (the part before the first ':')."""
        return Counter(r.split(":")[0] for _, r in self.dropped)

    def summary(self) -> str:
        """One line: ``diagnosis_pairs: 33/36 valid (92%) for <tokenizer>; 3 dropped``."""
        n = self.n_valid + self.n_dropped
        return (f"{self.name or 'pairs'}: {self.n_valid}/{n} valid ({100 * self.fraction_valid:.0f}%) for "
                f"{self.tokenizer}; {self.n_dropped} dropped")

    def report(self) -> str:
        """Readable multi-line report: the summary and each dropped pair with its reason."""
        lines = [self.summary()]
        for p, r in self.dropped:
            where = f"line {p.line}: " if p.line else ""
            lines.append(f"  dropped {where}{p.clean!r} / {p.corrupted!r}: {r}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def to_dataframe(self):
        """One row per pair: the four pair columns, ``valid`` and ``reason`` ("" when valid)."""
        import pandas as pd

        rows = [dict(clean=p.clean, corrupted=p.corrupted, clean_answer=p.clean_answer,
                     corrupted_answer=p.corrupted_answer, line=p.line, valid=True, reason="") for p in self.valid]
        rows += [dict(clean=p.clean, corrupted=p.corrupted, clean_answer=p.clean_answer,
                      corrupted_answer=p.corrupted_answer, line=p.line, valid=False, reason=r) for p, r in self.dropped]
        return pd.DataFrame(rows, columns=["clean", "corrupted", "clean_answer", "corrupted_answer", "line",
                                           "valid", "reason"])


@dataclass
class PairSet:
    """A validated set of patching pairs (one data file).

    Attributes:
        name, version, description, provenance: from the file header.
        pairs: the pairs in file order.
        columns: the extra (meta) column names.
        path: the file it came from.
    """

    name: str
    version: str
    description: str
    pairs: list[PromptPair]
    columns: list[str] = field(default_factory=list)
    provenance: str = ""
    path: str = ""

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PromptPair]:
        return iter(self.pairs)

    def __getitem__(self, i: int) -> PromptPair:
        return self.pairs[i]

    def __repr__(self) -> str:
        return f"PairSet({self.name!r} v{self.version}: {len(self)} pairs)"

    @classmethod
    def from_pairs(cls, pairs: Sequence[Any], name: str = "pairs") -> "PairSet":
        """A set built in code from :class:`PromptPair` objects, 4-tuples ``(clean, corrupted, clean_answer,
        corrupted_answer)`` or dicts with exactly those keys (plus meta keys).

        Example:
            >>> PairSet.from_pairs([("A has", "B has", " x", " y")]).pairs[0].corrupted_answer
            ' y'
        """
        out = []
        for i, p in enumerate(pairs):
            if isinstance(p, PromptPair):
                out.append(p)
            elif isinstance(p, dict):
                missing = [c for c in _PAIR_FIELDS if c not in p]
                if missing:
                    raise MedinterpError(f"pair {i}: missing keys {missing}; a pair dict needs {list(_PAIR_FIELDS)}")
                out.append(PromptPair(*(p[c] for c in _PAIR_FIELDS),
                                      meta={k: v for k, v in p.items() if k not in _PAIR_FIELDS}))
            elif isinstance(p, (tuple, list)) and len(p) == 4:
                out.append(PromptPair(*p))
            else:
                raise MedinterpError(f"pair {i}: expected a PromptPair, a dict or a 4-tuple (clean, corrupted, "
                                     f"clean_answer, corrupted_answer), got {type(p).__name__}")
            bad = [c for c in _PAIR_FIELDS if not isinstance(getattr(out[-1], c), str)]
            if bad:
                raise MedinterpError(f"pair {i}: {bad} must be text, got {[type(getattr(out[-1], c)).__name__ for c in bad]}")
        if not out:
            raise MedinterpError("no pairs given")
        return cls(name, "unversioned", "", out)

    def to_dataframe(self):
        """One row per pair: ``clean, corrupted, clean_answer, corrupted_answer`` and the meta columns."""
        import pandas as pd

        cols = ["clean", "corrupted", "clean_answer", "corrupted_answer"] + self.columns
        return pd.DataFrame([{"clean": p.clean, "corrupted": p.corrupted, "clean_answer": p.clean_answer,
                              "corrupted_answer": p.corrupted_answer, **{c: p.meta.get(c) for c in self.columns}}
                             for p in self.pairs], columns=cols)

    def filter(self, **meta: Any) -> "PairSet":
        """A new set with the pairs whose meta columns match (value or collection of values)."""
        for k in meta:
            if k not in self.columns:
                raise MedinterpError(f"filter: pair set {self.name!r} has no column {k!r}; columns are {self.columns}")

        def ok(p: PromptPair) -> bool:
            for k, v in meta.items():
                val = p.meta.get(k)
                vs = v if isinstance(v, (list, tuple, set, frozenset)) else [v]
                if val not in vs and str(val) not in {str(x) for x in vs}:
                    return False
            return True

        new = copy.copy(self)
        new.pairs = [p for p in self.pairs if ok(p)]
        if not new.pairs:
            raise MedinterpError(f"filter {meta} leaves no pair of {self.name!r}")
        return new

    def check(self, model_or_tokenizer: Any, *, prepend_bos: bool | None = None) -> PairCheck:
        """Which pairs a model's tokenizer can patch, and why the others cannot.

        The rule (see the module docstring): different prompts of the same token length; each answer
        exactly one token, not the unknown token, and the real next token of its prompt; different
        answer tokens; not a repeat of an earlier pair; with a model, token ids inside its vocabulary.

        Args:
            model_or_tokenizer: a HookedTransformer (``to_tokens`` semantics, BOS as the model adds
                it) or a Hugging Face tokenizer (its ``add_special_tokens`` default adds BOS).
            prepend_bos: for a HookedTransformer, override its default BOS handling.

        Returns:
            PairCheck with ``valid``, ``dropped=[(pair, reason)]``, answer token ids and lengths, and the
            valid pairs tokenized (``tokenized``).
        """
        tk = _Tok(model_or_tokenizer, prepend_bos)
        d_vocab = getattr(tk.model.cfg, "d_vocab", None) if tk.model is not None else None
        valid, dropped, ids, lens, toks, dropped_index = [], [], [], [], [], []
        seen: dict[tuple[str, str, str, str], str] = {}
        for i, p in enumerate(self.pairs):
            key = (p.clean, p.corrupted, p.clean_answer, p.corrupted_answer)
            if key in seen:
                dropped.append((p, f"duplicate: the same pair (prompts and answers) as {seen[key]}"))
                dropped_index.append(i)
                continue
            seen[key] = f"line {p.line}" if p.line else f"pair {i}"
            reasons = []
            if p.clean == p.corrupted:
                reasons.append("identical prompts: clean and corrupted are the same text")
            c_ids, k_ids = tk.prompt(p.clean), tk.prompt(p.corrupted)
            if len(c_ids) != len(k_ids):
                reasons.append(f"unequal length: clean is {len(c_ids)} tokens, corrupted is {len(k_ids)} "
                               "(equal token length is required)")
            ans_ids = []
            for which, prompt, pids, ans in (("clean", p.clean, c_ids, p.clean_answer),
                                             ("corrupted", p.corrupted, k_ids, p.corrupted_answer)):
                a = tk.answer(ans)
                if len(a) != 1:
                    reasons.append(f"multi-token answer: {which} answer {ans!r} is {len(a)} tokens {tk.strs(a)}")
                    ans_ids.append(None)
                    continue
                if tk.unk is not None and a[0] == tk.unk:
                    reasons.append(f"unknown token: {which} answer {ans!r} maps to the unknown token")
                joined = tk.prompt(prompt, ans)
                if joined != pids + a:
                    reasons.append(f"answer not the next token: {which} prompt + {ans!r} tokenizes as "
                                   f"...{tk.strs(joined[len(pids) - 1:])}, not ...{tk.strs(pids[-1:] + a)}")
                ans_ids.append(a[0])
            if p.clean_answer == p.corrupted_answer:
                reasons.append(f"identical answers: clean and corrupted answers are both {p.clean_answer!r}")
            elif None not in ans_ids and ans_ids[0] == ans_ids[1]:
                reasons.append(f"identical answers: {p.clean_answer!r} and {p.corrupted_answer!r} are the same token")
            if d_vocab is not None and not reasons and max(c_ids + k_ids + ans_ids) >= d_vocab:
                reasons.append(f"token id out of the model's vocabulary (d_vocab={d_vocab})")
            if reasons:
                dropped.append((p, "; ".join(reasons)))
                dropped_index.append(i)
            else:
                valid.append(p)
                ids.append((int(ans_ids[0]), int(ans_ids[1])))
                lens.append(len(c_ids))
                toks.append(TokenizedPair(p, i, c_ids, k_ids, int(ans_ids[0]), int(ans_ids[1])))
        _drop_contradictions(valid, ids, lens, toks, dropped, dropped_index)
        return PairCheck(valid, dropped, ids, lens, tokenizer=tk.name, name=self.name, tokenized=toks,
                         dropped_index=dropped_index)


class _Tok:
    """Uniform tokenization over a HookedTransformer or a Hugging Face tokenizer."""

    def __init__(self, obj: Any, prepend_bos: bool | None) -> None:
        self.model = obj if hasattr(obj, "to_tokens") and hasattr(obj, "cfg") else None
        if self.model is not None:
            self.tok = getattr(obj, "tokenizer", None)
            if self.tok is None:
                raise MedinterpError("check: this HookedTransformer has no tokenizer; pass one with a tokenizer "
                                     "or a Hugging Face tokenizer")
            self.prepend_bos = prepend_bos
            info = getattr(obj, "medinterp_info", None) or {}
            self.name = str(info.get("spec") or getattr(obj.cfg, "model_name", "HookedTransformer"))
        elif callable(obj) and hasattr(obj, "convert_ids_to_tokens"):
            self.tok = obj
            self.name = str(getattr(obj, "name_or_path", "") or type(obj).__name__)
        else:
            raise MedinterpError(f"check: expected a HookedTransformer or a Hugging Face tokenizer, got "
                                 f"{type(obj).__name__}")
        self.unk = getattr(self.tok, "unk_token_id", None)
        if self.name.startswith("/") or ":\\" in self.name:  # never print a local path
            self.name = self.name.rstrip("/").split("/")[-1]

    def prompt(self, text: str, answer: str = "") -> list[int]:
        """A prompt's tokens (followed by ``answer``'s); a model's chat template wraps the prompt."""
        if self.model is not None:
            from medinterp.models.chat import answer_text, wrap_text

            text = wrap_text(self.model, text)[0] + (answer_text(self.model, answer) if answer else "")
            kw = {} if self.prepend_bos is None else {"prepend_bos": self.prepend_bos}
            return self.model.to_tokens(text, **kw)[0].tolist()
        return list(self.tok(text + answer)["input_ids"])

    def answer(self, text: str) -> list[int]:
        if self.model is not None:
            from medinterp.models.chat import answer_text  # under a chat template: the reply's first word

            return self.model.to_tokens(answer_text(self.model, text), prepend_bos=False)[0].tolist()
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def strs(self, ids: list[int]) -> list[str]:
        return [str(t) for t in self.tok.convert_ids_to_tokens(ids)]


def contradictions(pairs: Any) -> list[str]:
    """The pairs of a pair set that share clean and corrupted prompts but not answers, one sentence each (the
    same rule tokenizing applies, checked on the text alone, so before any model loads).

    Example:
        >>> from types import SimpleNamespace as P
        >>> contradictions([P(clean="a", corrupted="b", clean_answer=" x", corrupted_answer=" y", line=2),
        ...                 P(clean="a", corrupted="b", clean_answer=" y", corrupted_answer=" x", line=5)])
        ["line 2 and line 5: the same clean and corrupted prompts with other answers (' x' / ' y' vs ' y' / ' x')"]
    """
    groups: dict[tuple[str, str], list[Any]] = {}
    for k, p in enumerate(pairs):
        groups.setdefault((p.clean, p.corrupted), []).append((k, p))
    out = []
    for rows in groups.values():
        answers = list(dict.fromkeys((p.clean_answer, p.corrupted_answer) for _, p in rows))
        if len(answers) < 2:
            continue
        where = " and ".join(f"line {p.line}" if getattr(p, "line", None) else f"pair {k}" for k, p in rows)
        said = " vs ".join(f"{a!r} / {b!r}" for a, b in answers)
        out.append(f"{where}: the same clean and corrupted prompts with other answers ({said})")
    return out


def _drop_contradictions(valid: list, ids: list, lens: list, toks: list, dropped: list, dropped_index: list) -> None:
    """Move every otherwise valid pair whose clean and corrupted prompts another valid pair has with other
    answers to ``dropped`` (in place, pair order kept): patching them would average opposite targets."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, p in enumerate(valid):
        groups.setdefault((p.clean, p.corrupted), []).append(j)
    bad: dict[int, str] = {}
    for js in groups.values():
        if len({(valid[j].clean_answer, valid[j].corrupted_answer) for j in js}) < 2:
            continue
        for j in js:
            others = [f"{'line ' + str(valid[k].line) if valid[k].line else 'pair ' + str(toks[k].index)} (answers "
                      f"{valid[k].clean_answer!r} / {valid[k].corrupted_answer!r})" for k in js if k != j]
            bad[j] = ("contradictory answers: the same clean and corrupted prompts as " + ", ".join(others)
                      + "; patching would average opposite targets")
    if not bad:
        return
    out = sorted([(i, d) for i, d in zip(dropped_index, dropped)]
                 + [(toks[j].index, (valid[j], why)) for j, why in bad.items()], key=lambda x: x[0])
    dropped[:] = [d for _, d in out]
    dropped_index[:] = [i for i, _ in out]
    keep = [j for j in range(len(valid)) if j not in bad]
    for lst in (valid, ids, lens, toks):
        lst[:] = [lst[j] for j in keep]
