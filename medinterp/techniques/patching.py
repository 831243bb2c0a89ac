"""Activation patching (METHOD.md §4): exact layer × position × head sweeps, path and attribution patching.

Three entry points, all returning a :class:`PatchingResult`:

* :func:`patch` -- exact activation patching. Clean activations are written into the corrupted run
  at one site (residual stream, attention / MLP output, one head's z / q / k / v / pattern), one
  cell at a time, and the metric is read at the last position. Numbers equal TransformerLens's
  ``transformer_lens.patching`` functions; the engine is much faster because

  1. the rows of one forward batch are the cells of the sweep (positions × heads × pairs);
  2. the corrupted run's residual stream is cached once, so a patch at layer ``l`` starts at layer
     ``l`` (``start_at_layer``) instead of recomputing the identical prefix;
  3. the unembedding runs only at the last position, and only on the two answer columns when the
     metric is a logit difference (Gemma 3's 262k-token unembedding is most of a token's cost);
  4. rows are chunked by a memory budget.

* :func:`path_patch` -- path patching from a sender component to chosen receivers (IOI style).
* :func:`attribution_patch` -- the first-order (gradient) approximation of a whole sweep in one
  forward + backward pass, optionally verified exactly on its top-k cells.

Metric (default ``"P"``): ``P = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted)`` with
``LD = logit(clean answer) − logit(corrupted answer)`` at the last position. Pairs whose
denominator is smaller than ``min_denominator`` are reported in ``excluded`` and left out of the
mean. ``"logit_diff"`` gives the raw LD, ``"logprob"`` the log-probability of the clean answer
(full log-softmax), and any callable ``f(logits [rows, d_vocab], clean_ids [rows],
corrupted_ids [rows]) -> [rows]`` is accepted.

Exactness notes. ``start_at_layer`` feeds the cached residual into block ``l``; TransformerLens
computes rotary positions and Gemma 3's sliding-window / global masks inside each attention layer
from the sequence positions, so they are identical to a full forward as long as no padding is
involved. The engine never pads: pairs are grouped by token length and every group runs alone
(``attention_mask=None`` then means "all positions real", exactly as in the unpadded full run).

Example:
    >>> from medinterp.testing import tiny_model  # doctest: +SKIP
    >>> res = patch(tiny_model(), [("a b c", "a d c", " x", " y")], site="resid_pre")  # doctest: +SKIP
    >>> res.mean.shape  # [layer, position, head]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from medinterp.errors import ConceptFileError, MedinterpError
from medinterp.results import Result, bootstrap_ci, make_provenance

__all__ = [
    "PatchingResult",
    "PatchPair",
    "patch",
    "path_patch",
    "attribution_patch",
    "read_pairs",
    "prepare_pairs",
    "SITES",
    "site_hook_name",
    "make_patch_hook",
    "make_freeze_hook",
    "last_position_logits",
    "correlation",
]

# ----------------------------------------------------------------------------------- sites
# short name -> (TL hook suffix, has head axis, layout)
# layout: "resid" [batch, pos, d], "head" [batch, pos, head, d], "pattern" [batch, head, q, k]
SITES: dict[str, tuple[str, bool, str]] = {
    "resid_pre": ("hook_resid_pre", False, "resid"),
    "resid_mid": ("hook_resid_mid", False, "resid"),
    "resid_post": ("hook_resid_post", False, "resid"),
    "attn_out": ("hook_attn_out", False, "resid"),
    "mlp_out": ("hook_mlp_out", False, "resid"),
    "z": ("attn.hook_z", True, "head"),
    "q": ("attn.hook_q", True, "head"),
    "k": ("attn.hook_k", True, "head"),
    "v": ("attn.hook_v", True, "head"),
    "pattern": ("attn.hook_pattern", True, "pattern"),
}
_ALIASES = {"head_out": "z", "head": "z", "attn_head_out": "z", "head_z": "z", "resid": "resid_pre"}
_POSITION_MODES = ("all", "last", "span", "all_at_once")
_BUILTIN_METRICS = ("P", "logit_diff", "logprob")


def _site(site: str) -> str:
    s = _ALIASES.get(site, site)
    if s not in SITES:
        raise MedinterpError(f"unknown patching site {site!r}; expected one of {sorted(SITES) + sorted(_ALIASES)}")
    return s


def site_hook_name(site: str, layer: int) -> str:
    """Full TransformerLens hook name of a short site at a layer.

    Example:
        >>> site_hook_name("z", 3)
        'blocks.3.attn.hook_z'
    """
    return f"blocks.{layer}.{SITES[_site(site)][0]}"


# ----------------------------------------------------------------------------------- pairs
@dataclasses.dataclass
class PatchPair:
    """One clean/corrupted pair, tokenized. ``row`` is where it came from (file line or list index)."""

    clean: str | list[int]
    corrupted: str | list[int]
    clean_answer: str | int
    corrupted_answer: str | int
    row: int | str = 0
    meta: dict = dataclasses.field(default_factory=dict)
    clean_tokens: list[int] | None = None
    corrupted_tokens: list[int] | None = None
    clean_id: int | None = None
    corrupted_id: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "clean": self.clean if isinstance(self.clean, str) else list(self.clean),
            "corrupted": self.corrupted if isinstance(self.corrupted, str) else list(self.corrupted),
            "clean_answer": self.clean_answer,
            "corrupted_answer": self.corrupted_answer,
        }


_COLUMNS = ("clean", "corrupted", "clean_answer", "corrupted_answer")


def read_pairs(path: str | os.PathLike) -> list[PatchPair]:
    """Read a pairs file: CSV (header row) or JSONL/JSON with the columns ``clean, corrupted,
    clean_answer, corrupted_answer`` (extra columns go to ``meta``).

    Rows are numbered as file lines (the CSV header is line 1), so error messages point at the line.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.csv"
        >>> _ = p.write_text("clean,corrupted,clean_answer,corrupted_answer\\nA,B, x, y\\n")
        >>> read_pairs(p)[0].row
        'p.csv:2'
    """
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"{path}: pairs file not found")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConceptFileError(
                    f"{path}: missing column(s) {missing}; expected header {','.join(_COLUMNS)} "
                    f"(found {reader.fieldnames})"
                )
            for i, rec in enumerate(reader):
                rows.append((reader.line_num, dict(rec)))
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConceptFileError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
            if isinstance(data, dict):
                data = data.get("pairs", data.get("items"))
            if not isinstance(data, list):
                raise ConceptFileError(f"{path}: expected a list of pair objects (or {{'pairs': [...]}})")
            rows = [(i, r) for i, r in enumerate(data)]
        else:
            for ln, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((ln, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ConceptFileError(f"{path}: line {ln}: not valid JSON ({e.msg})") from None
    else:
        raise ConceptFileError(f"{path}: unsupported pairs file type {suffix!r}; expected .csv, .tsv, .jsonl or .json")
    out = []
    for ln, rec in rows:
        if not isinstance(rec, dict):
            raise ConceptFileError(f"{path}: line {ln}: expected an object with keys {list(_COLUMNS)}")
        missing = [c for c in _COLUMNS if rec.get(c) in (None, "")]
        if missing:
            raise ConceptFileError(f"{path}: line {ln}: empty or missing {missing}; expected {list(_COLUMNS)}")
        meta = {k: v for k, v in rec.items() if k not in _COLUMNS}
        out.append(PatchPair(*(rec[c] for c in _COLUMNS), row=f"{path.name}:{ln}", meta=meta))
    if not out:
        raise ConceptFileError(f"{path}: no pairs found")
    return out


def _coerce_pairs(pairs: Any) -> list[PatchPair]:
    """Accept a PairSet, a path / shipped set name, or a list of PromptPair / dict / tuple / PatchPair."""
    if isinstance(pairs, (str, os.PathLike)):
        p = Path(pairs)
        if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json") and p.is_file():
            return read_pairs(p)
        try:  # a shipped set name (concept library)
            from medinterp.concepts import load_concepts  # type: ignore

            return _coerce_pairs(load_concepts(str(pairs)))
        except ImportError:
            raise MedinterpError(f"{pairs!r}: not a pairs file (.csv/.jsonl) and the concept library is unavailable") from None
    if hasattr(pairs, "pairs") and not isinstance(pairs, (list, tuple)):
        return _coerce_pairs(list(pairs.pairs))
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, PatchPair):
            out.append(p)
        elif isinstance(p, dict):
            missing = [c for c in _COLUMNS if c not in p]
            if missing:
                raise MedinterpError(f"pair {i}: missing keys {missing}; expected {list(_COLUMNS)}")
            out.append(PatchPair(*(p[c] for c in _COLUMNS), row=p.get("row", i),
                                 meta={k: v for k, v in p.items() if k not in _COLUMNS + ("row",)}))
        elif isinstance(p, (tuple, list)) and len(p) >= 4:
            out.append(PatchPair(*p[:4], row=i))
        elif all(hasattr(p, c) for c in _COLUMNS):
            meta = dict(getattr(p, "meta", None) or {})
            out.append(PatchPair(*(getattr(p, c) for c in _COLUMNS), row=meta.get("row", i), meta=meta))
        else:
            raise MedinterpError(f"pair {i}: expected a PromptPair, a dict or a 4-tuple "
                                 f"(clean, corrupted, clean_answer, corrupted_answer), got {type(p).__name__}")
    if not out:
        raise MedinterpError("no pairs given")
    return out


def _tokenize(model: Any, text: str | Sequence[int]) -> list[int]:
    if isinstance(text, str):
        if model.tokenizer is None:
            raise MedinterpError("the model has no tokenizer; give prompts as lists of token ids")
        return model.to_tokens(text)[0].tolist()
    return [int(t) for t in text]


def _answer_id(model: Any, ans: str | int) -> tuple[int | None, str | None]:
    if isinstance(ans, (int, np.integer)):
        return int(ans), None
    if isinstance(ans, torch.Tensor) and ans.numel() == 1:
        return int(ans.item()), None
    if model.tokenizer is None:
        raise MedinterpError("the model has no tokenizer; give answers as token ids")
    ids = model.to_tokens(str(ans), prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        strs = model.to_str_tokens(str(ans), prepend_bos=False)
        return None, f"answer {ans!r} is {len(ids)} tokens {strs}, a single token is required"
    return ids[0], None


def prepare_pairs(model: Any, pairs: Any, *, on_bad: str = "raise") -> tuple[list[PatchPair], list[dict]]:
    """Tokenize and validate pairs: equal clean/corrupted token length, single-token distinct answers.

    Args:
        model: HookedTransformer (its tokenizer is used for text).
        pairs: anything :func:`patch` accepts.
        on_bad: ``"raise"`` (a :class:`MedinterpError` naming the pair's row) or ``"drop"`` (bad
            pairs are returned in ``dropped`` with the reason).

    Returns:
        ``(kept, dropped)``; ``dropped`` holds dicts with the pair's fields, ``row`` and ``reason``.
    """
    if on_bad not in ("raise", "drop"):
        raise MedinterpError(f"on_bad must be 'raise' or 'drop', got {on_bad!r}")
    kept, dropped = [], []
    for p in _coerce_pairs(pairs):
        p = dataclasses.replace(p)
        reason = None
        p.clean_tokens = _tokenize(model, p.clean)
        p.corrupted_tokens = _tokenize(model, p.corrupted)
        if len(p.clean_tokens) != len(p.corrupted_tokens):
            reason = (f"clean and corrupted prompts differ in token length "
                      f"({len(p.clean_tokens)} vs {len(p.corrupted_tokens)}); equal lengths are required")
        if reason is None:
            p.clean_id, r1 = _answer_id(model, p.clean_answer)
            p.corrupted_id, r2 = _answer_id(model, p.corrupted_answer)
            reason = r1 or r2
        if reason is None and p.clean_id == p.corrupted_id:
            reason = f"clean and corrupted answers are the same token ({p.clean_answer!r})"
        if reason is None and max(p.clean_tokens + p.corrupted_tokens + [p.clean_id, p.corrupted_id]) >= model.cfg.d_vocab:
            reason = f"token id out of the model's vocabulary (d_vocab={model.cfg.d_vocab})"
        if reason is not None:
            if on_bad == "raise":
                raise MedinterpError(f"bad pair (row {p.row}): {reason}; pair = {p.describe()}")
            dropped.append({**p.describe(), "reason": reason})
        else:
            kept.append(p)
    if not kept:
        raise MedinterpError(f"no valid pairs left; dropped: {[(d['row'], d['reason']) for d in dropped]}")
    return kept, dropped


# ----------------------------------------------------------------------------------- positions
def _position_specs(
    pairs: list[PatchPair], positions: Any
) -> tuple[list[str], list[list[Bool[np.ndarray, "pos"] | None]]]:
    """Position axis labels and, per pair, one boolean mask per position-axis entry (None = absent).

    ``"all"`` sweeps every position separately, right-aligned so the last token is the last column
    whatever the pair's length; ``"last"`` only the last token; ``"span"`` patches, as one cell,
    the tokens where clean and corrupted differ (the concept span); ``"all_at_once"`` patches every
    position together; a list of ints sweeps those positions (negative = from the end).
    """
    lens = [len(p.clean_tokens) for p in pairs]
    n = max(lens)
    if isinstance(positions, str):
        if positions not in _POSITION_MODES:
            raise MedinterpError(f"positions must be one of {_POSITION_MODES} or a list of ints, got {positions!r}")
        if positions == "all":
            labels = [f"pos {i - n}" for i in range(n)]
            masks = []
            for S in lens:
                row = []
                for j in range(n):
                    p = j - (n - S)
                    if p < 0:
                        row.append(None)
                    else:
                        m = np.zeros(S, bool)
                        m[p] = True
                        row.append(m)
                masks.append(row)
            return labels, masks
        if positions == "last":
            return ["last"], [[np.eye(S, dtype=bool)[-1]] for S in lens]
        if positions == "all_at_once":
            return ["all positions"], [[np.ones(S, bool)] for S in lens]
        masks = []
        for p in pairs:
            m = np.array(p.clean_tokens) != np.array(p.corrupted_tokens)
            if not m.any():
                raise MedinterpError(f"pair (row {p.row}): clean and corrupted tokens are identical; no span to patch")
            masks.append([m])
        return ["span"], masks
    try:
        idx = [int(i) for i in positions]
    except (TypeError, ValueError):
        raise MedinterpError(f"positions must be one of {_POSITION_MODES} or a list of ints, got {positions!r}") from None
    masks = []
    for p, S in zip(pairs, lens):
        row = []
        for i in idx:
            if not -S <= i < S:
                raise MedinterpError(f"pair (row {p.row}): position {i} is outside its {S} tokens")
            m = np.zeros(S, bool)
            m[i] = True
            row.append(m)
        masks.append(row)
    return [f"pos {i}" for i in idx], masks


def _position_token_labels(model: Any, pairs: list[PatchPair], labels: list[str], positions: Any) -> list[str]:
    """Readable axis labels: the first pair's clean/corrupted token strings for a position sweep."""
    if positions != "all" or model.tokenizer is None:
        return labels
    n = len(labels)
    p0 = pairs[0]
    S = len(p0.clean_tokens)
    try:
        ct = [model.tokenizer.decode([t]) for t in p0.clean_tokens]
        xt = [model.tokenizer.decode([t]) for t in p0.corrupted_tokens]
    except Exception:  # noqa: BLE001 - labels only
        return labels
    out = []
    for j in range(n):
        p = j - (n - S)
        if p < 0:
            out.append(labels[j])
        else:
            tok = ct[p] if ct[p] == xt[p] else f"{ct[p]}/{xt[p]}"
            out.append(f"{p}:{tok}")
    return out


# ----------------------------------------------------------------------------------- hooks
def make_patch_hook(
    clean: torch.Tensor,
    row_pair: Int[torch.Tensor, "rows"],
    pos_mask: Bool[torch.Tensor, "rows pos"],
    head_mask: Bool[torch.Tensor, "rows head"] | None = None,
    layout: str = "resid",
) -> Callable:
    """A TL forward hook that, row by row, writes clean activations into the corrupted run.

    Args:
        clean: the clean activations of the group's pairs, ``[pairs, ...]`` in the hook's layout.
        row_pair: for each batch row, which pair (index into ``clean``) it patches from.
        pos_mask: ``[rows, pos]`` which positions each row patches (query/destination positions
            for ``layout="pattern"``).
        head_mask: ``[rows, head]`` which heads (only for head layouts; None = all).
        layout: ``"resid"`` ``[b, pos, d]``, ``"head"`` ``[b, pos, head, d]`` or ``"pattern"``
            ``[b, head, q, k]``.

    Rows whose masks are all False leave the activation untouched, so a batch may mix cells.
    """

    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        src = clean[row_pair]
        if layout == "resid":
            m = pos_mask[:, :, None]
        elif layout == "head":
            hm = head_mask if head_mask is not None else torch.ones(act.shape[0], act.shape[2], dtype=torch.bool)
            m = (pos_mask[:, :, None] & hm[:, None, :])[..., None]
        else:
            hm = head_mask if head_mask is not None else torch.ones(act.shape[0], act.shape[1], dtype=torch.bool)
            m = (hm[:, :, None] & pos_mask[:, None, :])[..., None]
        return torch.where(m.to(act.device), src.to(act.dtype), act)

    return hook


def make_freeze_hook(value: torch.Tensor, record: dict | None = None, key: Any = None) -> Callable:
    """A hook that replaces an activation by ``value`` (freezing it); optionally records the
    activation it received into ``record[key]`` first (used by path patching)."""

    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if record is not None:
            record[key] = act.detach().clone()
        return value.to(act.dtype).expand_as(act)

    return hook


def last_position_logits(
    model: Any, resid: Float[torch.Tensor, "rows pos d_model"], columns: torch.Tensor | None = None
) -> Float[torch.Tensor, "rows n_cols"]:
    """Logits at the last position from the final residual (after the last block), optionally
    only for the given vocabulary ``columns``. Equals ``model(...)[:, -1, columns]``."""
    x = resid[:, -1, :]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x[:, None, :])[:, 0, :]
    W, b = model.unembed.W_U, model.unembed.b_U
    if columns is not None:
        logits = x @ W[:, columns] + b[columns]
    else:
        logits = model.unembed(x)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


# ----------------------------------------------------------------------------------- metrics
class _Metric:
    """Turns last-position final residuals into (metric value, raw LD) per row."""

    def __init__(self, metric: str | Callable):
        if isinstance(metric, str):
            alias = {"normalized_logit_diff": "P", "p": "P", "ld": "logit_diff", "logit_difference": "logit_diff"}
            metric = alias.get(metric, metric)
            if metric not in _BUILTIN_METRICS:
                raise MedinterpError(f"unknown metric {metric!r}; expected one of {_BUILTIN_METRICS} or a callable")
            self.name = metric
            self.fn = None
        elif callable(metric):
            self.name = getattr(metric, "__name__", "custom")
            self.fn = metric
        else:
            raise MedinterpError(f"metric must be a name or a callable, got {type(metric).__name__}")
        self.full_vocab = self.name == "logprob" or self.fn is not None

    def __call__(self, model: Any, resid: torch.Tensor, cid: torch.Tensor, xid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.full_vocab:
            cols = torch.stack([cid, xid], 1)  # [rows, 2]
            uniq, inv = torch.unique(cols, return_inverse=True)
            lg = last_position_logits(model, resid, uniq)
            two = torch.gather(lg, 1, inv)
            ld = two[:, 0] - two[:, 1]
            return ld, ld
        logits = last_position_logits(model, resid)
        ld = logits.gather(1, cid[:, None])[:, 0] - logits.gather(1, xid[:, None])[:, 0]
        if self.fn is not None:
            val = torch.as_tensor(self.fn(logits, cid, xid)).reshape(-1)
            if val.shape[0] != logits.shape[0]:
                raise MedinterpError(f"custom metric returned {val.shape[0]} values for {logits.shape[0]} rows")
            return val.to(ld.dtype), ld
        lp = torch.log_softmax(logits.float(), -1).gather(1, cid[:, None])[:, 0]
        return lp.to(ld.dtype), ld


# ----------------------------------------------------------------------------------- result
@dataclasses.dataclass
class PatchingResult(Result):
    """Patching values with axes ``[pair, layer, position, head]``.

    Fields:
        values: the metric per pair and cell (``P`` by default); NaN where a cell does not exist
            for a pair (shorter prompt) or the pair was excluded (near-zero denominator, P only).
        ld: the raw patched logit difference, same shape.
        mean, ci_low, ci_high: ``[layer, position, head]`` over the included pairs (bootstrap CI).
        clean_metric, corrupted_metric, clean_ld, corrupted_ld: ``[pair]`` baselines.
        included: ``[pair]`` bool, pairs that enter the mean.
        layers, positions, heads: axis labels; ``position_tokens`` readable position labels.
        excluded: pairs kept but left out of the mean, with reasons; dropped: invalid pairs.
        extra: method-specific information (timings, top-k verification, correlations).

    Example:
        >>> r = PatchingResult(values=np.zeros((2, 3, 1, 1)), layers=[0, 1, 2], positions=["last"])
        >>> r.layer_curve().shape
        (3,)
    """

    kind = "patching"
    values: np.ndarray = None
    ld: np.ndarray = None
    mean: np.ndarray = None
    ci_low: np.ndarray = None
    ci_high: np.ndarray = None
    clean_metric: np.ndarray = None
    corrupted_metric: np.ndarray = None
    clean_ld: np.ndarray = None
    corrupted_ld: np.ndarray = None
    included: np.ndarray = None
    site: str = "resid_pre"
    method: str = "exact"
    metric: str = "P"
    position_mode: str = "all"
    layers: list = dataclasses.field(default_factory=list)
    positions: list = dataclasses.field(default_factory=list)
    position_tokens: list = dataclasses.field(default_factory=list)
    heads: list = dataclasses.field(default_factory=lambda: [0])
    axes: list = dataclasses.field(default_factory=lambda: ["pair", "layer", "position", "head"])
    pairs: list = dataclasses.field(default_factory=list)
    excluded: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values is not None and self.mean is None:
            self._summarise()

    def _summarise(self, n_boot: int = 1000, seed: int = 0) -> None:
        v = np.asarray(self.values, dtype=np.float64)
        if self.included is None:
            self.included = np.ones(v.shape[0], bool)
        inc = np.asarray(self.included, bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if inc.any():
                est, lo, hi = bootstrap_ci(v[inc], statistic=lambda s: np.nanmean(s, axis=0), n_boot=n_boot, seed=seed)
            else:
                est = lo = hi = np.full(v.shape[1:], np.nan)
        self.mean, self.ci_low, self.ci_high = (np.asarray(a, np.float32) for a in (est, lo, hi))

    # -------------------------------------------------------------- curves for the map
    def _pos_index(self, position: int | str) -> int:
        if isinstance(position, int):
            return position
        if position == "last":
            return len(self.positions) - 1
        if position in self.positions:
            return self.positions.index(position)
        raise MedinterpError(f"position {position!r} not in {self.positions}")

    def _reduce(self, arr: np.ndarray, position: int | str, heads: str) -> np.ndarray:
        a = arr[:, self._pos_index(position), :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(a, axis=-1) if heads == "max" else np.nansum(a, axis=-1) if heads == "sum" else np.nanmean(a, axis=-1)

    def layer_curve(self, position: int | str = "last", heads: str = "max") -> np.ndarray:
        """Per-layer score for the knowledge map: mean (over pairs) metric at ``position`` (default
        the last position column), reduced over heads by ``heads`` (``max``/``sum``/``mean``).
        For ``resid_pre`` with P this is the fraction of the clean behaviour restored by patching
        that layer's residual stream at the last token."""
        return self._reduce(np.asarray(self.mean), position, heads)

    def layer_curve_ci(self, position: int | str = "last", heads: str = "max") -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap CI ``(low, high)`` matching :meth:`layer_curve` (exact when there is one head)."""
        return self._reduce(np.asarray(self.ci_low), position, heads), self._reduce(np.asarray(self.ci_high), position, heads)

    # -------------------------------------------------------------- figures
    def figure(self):
        """Plotly heatmaps: layer × position (token strings on the axis) and, for head sites,
        layer × head (at the last position column)."""
        import plotly.graph_objects as go

        figs = []
        mean = np.asarray(self.mean, dtype=float)
        ylab = [str(l) for l in self.layers]
        xlab = self.position_tokens or self.positions
        title = f"{self.method} patching: {self.site}, metric {self.metric}, {int(np.sum(self.included))} pairs"
        zmid = 0.0
        if mean.shape[1] > 1 or mean.shape[2] == 1:
            z = mean[:, :, 0] if mean.shape[2] == 1 else np.nanmax(mean, axis=2)
            figs.append(go.Figure(
                go.Heatmap(z=z, x=[f"{i}|{t}" for i, t in enumerate(xlab)], y=ylab, colorscale="RdBu", zmid=zmid,
                           colorbar={"title": self.metric}, hovertemplate="layer %{y}<br>%{x}<br>%{z:.4f}<extra></extra>"),
                layout={"title": title + ("" if mean.shape[2] == 1 else " (max over heads)"),
                        "xaxis": {"title": "position"}, "yaxis": {"title": "layer"}, "height": 300 + 18 * len(ylab)}))
        if mean.shape[2] > 1:
            j = self._pos_index("last")
            figs.append(go.Figure(
                go.Heatmap(z=mean[:, j, :], x=[f"head {h}" for h in self.heads], y=ylab, colorscale="RdBu", zmid=zmid,
                           colorbar={"title": self.metric}, hovertemplate="layer %{y}<br>%{x}<br>%{z:.4f}<extra></extra>"),
                layout={"title": f"{title}, position {xlab[j]}", "xaxis": {"title": "head"}, "yaxis": {"title": "layer"},
                        "height": 300 + 18 * len(ylab)}))
        return figs

    def to_frame(self):
        """Long-format pandas DataFrame (pair, layer, position, head, value, ld)."""
        import pandas as pd

        P, L, N, H = self.values.shape
        idx = np.array(np.meshgrid(np.arange(P), np.arange(L), np.arange(N), np.arange(H), indexing="ij")).reshape(4, -1)
        return pd.DataFrame({
            "pair": idx[0], "layer": np.asarray(self.layers)[idx[1]], "position": np.asarray(self.positions)[idx[2]],
            "head": np.asarray(self.heads)[idx[3]], "value": self.values.reshape(-1), "ld": self.ld.reshape(-1),
        })


# ----------------------------------------------------------------------------------- engine
@dataclasses.dataclass
class _Group:
    """Pairs of one token length, with their cached runs."""

    idx: list[int]  # indices into the kept pair list
    clean_tokens: torch.Tensor
    corr_tokens: torch.Tensor
    cid: torch.Tensor
    xid: torch.Tensor
    corr_cache: dict
    clean_cache: dict
    kv: tuple | None = None  # corrupted keys/values per layer (for prefix reuse)


def _groups(pairs: list[PatchPair]) -> list[list[int]]:
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_len.setdefault(len(p.clean_tokens), []).append(i)
    return [by_len[k] for k in sorted(by_len)]


@contextmanager
def _no_param_grad(model: Any) -> Iterator[None]:
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _run_cached(model: Any, tokens: torch.Tensor, names: set[str]) -> tuple[dict, torch.Tensor]:
    """One run keeping only ``names``; returns (cache, final residual [b, pos, d])."""
    store: dict[str, torch.Tensor] = {}

    def save(act, hook):
        store[hook.name] = act.detach()

    with torch.no_grad():
        resid = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n in names, save)], stop_at_layer=model.cfg.n_layers)
    return store, resid


def _rows_per_chunk(model: Any, seq: int, budget_mb: float, full_vocab: bool) -> int:
    c = model.cfg
    d_mlp = c.d_mlp or 4 * c.d_model
    per_tok = 6 * c.d_model + 3 * d_mlp + 4 * c.n_heads * c.d_head + 3 * c.n_heads * seq
    per_row = 4 * (seq * per_tok + (c.d_vocab * 2 if full_vocab else 0))
    return max(1, int(budget_mb * 2**20 // per_row))


def _fingerprint(model: Any, pairs: list[PatchPair], **params: Any) -> str:
    info = {}
    try:
        from medinterp.models import model_info

        info = {k: v for k, v in model_info(model).items() if k not in ("seconds", "load_seconds")}
    except Exception:  # noqa: BLE001
        info = {"cfg": str(model.cfg.model_name), "n_params": sum(p.numel() for p in model.parameters())}
    blob = json.dumps({"model": info, "pairs": [(p.clean_tokens, p.corrupted_tokens, p.clean_id, p.corrupted_id) for p in pairs],
                       "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Checkpoint:
    """Finished work units of a sweep, one ``.npz`` per unit, in a directory (no pickle)."""

    def __init__(self, directory: str | os.PathLike | None, fingerprint: str):
        self.dir = Path(directory) if directory is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            fp = self.dir / "fingerprint.json"
            if fp.is_file() and json.loads(fp.read_text()).get("fingerprint") != fingerprint:
                for f in self.dir.glob("unit_*.npz"):
                    f.unlink()
            fp.write_text(json.dumps({"fingerprint": fingerprint}))

    def _path(self, key: str) -> Path:
        return self.dir / f"unit_{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        if self.dir is None or not self._path(key).is_file():
            return None
        with np.load(self._path(key), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save(self, key: str, **arrays: np.ndarray) -> None:
        if self.dir is None:
            return
        tmp = self.dir / f"tmp_{key}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._path(key))

    def n_done(self) -> int:
        return 0 if self.dir is None else len(list(self.dir.glob("unit_*.npz")))


def _cells(
    n_pos: int, heads: list[int], group: _Group, masks: list[list], cell_filter: np.ndarray | None, layer_i: int
) -> list[tuple[int, int, int, np.ndarray]]:
    """Rows for one group and layer: (local pair index, position column, head column, pos mask)."""
    out = []
    for gi, pi in enumerate(group.idx):
        for j in range(n_pos):
            m = masks[pi][j]
            if m is None:
                continue
            for hj in range(len(heads)):
                if cell_filter is not None and not cell_filter[layer_i, j, hj]:
                    continue
                out.append((gi, j, hj, m))
    return out


def _batches(rows: list, chunk: int, by_prefix: bool) -> Iterator[tuple[int, list]]:
    """Split rows into forward batches of at most ``chunk`` rows. With ``by_prefix`` rows are grouped
    by their first patched position, so each batch can skip its unpatched common prefix."""
    if not by_prefix:
        for s in range(0, len(rows), chunk):
            yield 0, rows[s:s + chunk]
        return
    by: dict[int, list] = {}
    for r in rows:
        by.setdefault(int(np.argmax(r[3])), []).append(r)
    for p in sorted(by):
        for s in range(0, len(by[p]), chunk):
            yield p, by[p][s:s + chunk]


def _prepare(model: Any, pairs: Any, positions: Any, on_bad: str):
    kept, dropped = prepare_pairs(model, pairs, on_bad=on_bad)
    labels, masks = _position_specs(kept, positions)
    return kept, dropped, labels, masks


def _make_group(model: Any, kept: list[PatchPair], idx: list[int], corr_names: set[str], clean_names: set[str]) -> tuple[_Group, torch.Tensor, torch.Tensor]:
    dev = _device(model)
    ct = torch.tensor([kept[i].clean_tokens for i in idx], device=dev)
    xt = torch.tensor([kept[i].corrupted_tokens for i in idx], device=dev)
    cid = torch.tensor([kept[i].clean_id for i in idx], device=dev)
    xid = torch.tensor([kept[i].corrupted_id for i in idx], device=dev)
    corr_cache, corr_final = _run_cached(model, xt, corr_names)
    clean_cache, clean_final = _run_cached(model, ct, clean_names)
    return _Group(idx, ct, xt, cid, xid, corr_cache, clean_cache), clean_final, corr_final


def _n_heads_for(model: Any, site: str, cache_shape: tuple[int, ...] | None = None) -> int:
    if not SITES[site][1]:
        return 1
    if site in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None) and not getattr(model.cfg, "ungroup_grouped_query_attention", False):
        return int(model.cfg.n_key_value_heads)
    return int(model.cfg.n_heads)


def _corrupted_kv(model: Any, group: _Group) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys/values of the corrupted run exactly as TL's KV cache stores them (after
    k-norm / clipping, before rotary): a run from the cached embedding with empty, growing entries."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    b = group.corr_tokens.shape[0]
    entries = [Entry.init_cache_entry(model.cfg, _device(model), b) for _ in range(model.cfg.n_layers)]
    with torch.no_grad():
        model(group.corr_cache["blocks.0.hook_resid_pre"], start_at_layer=0, stop_at_layer=model.cfg.n_layers,
              past_kv_cache=entries)
    return [e.past_keys for e in entries], [e.past_values for e in entries]


def _forward_rows(
    model: Any, group: _Group, site: str, layer: int, rows: list[tuple[int, int, int, np.ndarray]], heads: list[int],
    metric: _Metric, prefix: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact patched runs of the given rows (all of one layer and group): (metric, LD) per row.

    ``prefix``: every row leaves positions ``< prefix`` unpatched. Causal attention means those
    positions are identical to the corrupted run at every later layer, so only positions
    ``prefix..S-1`` are computed, attending to the corrupted run's cached keys/values for the prefix
    (TL's KV-cache path: queries get rotary offset ``prefix``, the causal / sliding-window masks are
    built with that offset).
    """
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    dev = _device(model)
    L = model.cfg.n_layers
    hook_suffix, has_head, layout = SITES[site]
    row_pair = torch.tensor([r[0] for r in rows], device=dev)
    pos_mask = torch.from_numpy(np.stack([r[3] for r in rows])).to(dev)[:, prefix:]
    head_mask = None
    if has_head:
        nh = _n_heads_for(model, site)
        head_mask = torch.zeros(len(rows), nh, dtype=torch.bool, device=dev)
        head_mask[torch.arange(len(rows)), torch.tensor([heads[r[2]] for r in rows])] = True
    cid, xid = group.cid[row_pair], group.xid[row_pair]

    def kv(start: int):
        if prefix == 0 or start >= L:
            return None
        K, V = group.kv
        return [None] * start + [Entry(K[m][row_pair, :prefix], V[m][row_pair, :prefix], frozen=True) for m in range(start, L)]

    def suffix(clean: torch.Tensor) -> torch.Tensor:
        return clean[:, :, prefix:] if layout == "pattern" else clean[:, prefix:]

    with torch.no_grad():
        if site in ("resid_pre", "resid_post"):
            start = layer if site == "resid_pre" else layer + 1
            name = site_hook_name(site, layer)
            corr = group.corr_cache[f"blocks.{start}.hook_resid_pre"] if start < L else group.corr_cache["final"]
            x = make_patch_hook(suffix(group.clean_cache[name]), row_pair, pos_mask)(corr[row_pair][:, prefix:])
            resid = model(x, start_at_layer=start, stop_at_layer=L, past_kv_cache=kv(start)) if start < L else x
        else:
            name = site_hook_name(site, layer)
            x = group.corr_cache[f"blocks.{layer}.hook_resid_pre"][row_pair][:, prefix:]
            hook = make_patch_hook(suffix(group.clean_cache[name]), row_pair, pos_mask, head_mask, layout)
            resid = model.run_with_hooks(x, start_at_layer=layer, stop_at_layer=L, past_kv_cache=kv(layer),
                                         fwd_hooks=[(name, hook)])
        return metric(model, resid, cid, xid)


def _exact_sweep(
    model: Any, kept: list[PatchPair], masks: list[list], n_pos: int, site: str, layers: list[int], heads: list[int],
    metric: _Metric, *, batch_budget_mb: float, progress: bool, checkpoint: _Checkpoint | None,
    cell_filter: np.ndarray | None = None, desc: str = "patching", prefix_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Returns values, ld [pair, layer, pos, head] and baselines clean/corr metric & LD [pair]."""
    from tqdm.auto import tqdm

    L = model.cfg.n_layers
    P = len(kept)
    shape = (P, len(layers), n_pos, len(heads))
    vals = np.full(shape, np.nan, np.float32)
    lds = np.full(shape, np.nan, np.float32)
    base = np.full((4, P), np.nan, np.float32)
    hook_suffix = SITES[site][0]
    clean_names = {site_hook_name(site, l) for l in layers}
    corr_names = {f"blocks.{l}.hook_resid_pre" for l in range(L)}
    stats = {"rows": 0, "forward_calls": 0, "units_resumed": 0}
    groups = _groups(kept)
    total = len(groups) * len(layers)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for g_i, idx in enumerate(groups):
        keys = [f"g{g_i}_l{l}" for l in layers]
        done = {k: checkpoint.load(k) for k in keys} if checkpoint else {}
        base_done = checkpoint.load(f"g{g_i}_base") if checkpoint else None
        if base_done is not None and all(done.get(k) is not None for k in keys):
            base[:, idx] = base_done["base"]
            for li, k in enumerate(keys):
                vals[idx, li], lds[idx, li] = done[k]["vals"], done[k]["lds"]
            stats["units_resumed"] += len(keys)
            bar.update(len(keys))
            continue
        group, clean_final, corr_final = _make_group(model, kept, idx, corr_names, clean_names)
        group.corr_cache["final"] = corr_final
        if prefix_cache:
            group.kv = _corrupted_kv(model, group)
        with torch.no_grad():
            cm, cl = metric(model, clean_final, group.cid, group.xid)
            xm, xl = metric(model, corr_final, group.cid, group.xid)
        b = torch.stack([cm, xm, cl, xl]).float().cpu().numpy()
        base[:, idx] = b
        if checkpoint:
            checkpoint.save(f"g{g_i}_base", base=b)
        S = group.clean_tokens.shape[1]
        chunk = _rows_per_chunk(model, S, batch_budget_mb, metric.full_vocab)
        for li, l in enumerate(layers):
            if done.get(keys[li]) is not None:
                vals[idx, li], lds[idx, li] = done[keys[li]]["vals"], done[keys[li]]["lds"]
                stats["units_resumed"] += 1
                bar.update(1)
                continue
            rows = _cells(n_pos, heads, group, masks, cell_filter, li)
            uv = np.full((len(idx), n_pos, len(heads)), np.nan, np.float32)
            ul = uv.copy()
            for prefix, part in _batches(rows, chunk, prefix_cache and group.kv is not None):
                m, d = _forward_rows(model, group, site, l, part, heads, metric, prefix)
                m, d = m.float().cpu().numpy(), d.float().cpu().numpy()
                for r, (gi, j, hj, _) in enumerate(part):
                    uv[gi, j, hj], ul[gi, j, hj] = m[r], d[r]
                stats["rows"] += len(part)
                stats["forward_calls"] += 1
            vals[idx, li], lds[idx, li] = uv, ul
            if checkpoint and cell_filter is None:
                checkpoint.save(keys[li], vals=uv, lds=ul)
            bar.update(1)
    bar.close()
    return vals, lds, base[0], base[1], base[2], base[3], stats


def _normalise(
    metric: _Metric, vals: np.ndarray, lds: np.ndarray, cm: np.ndarray, xm: np.ndarray, cl: np.ndarray, xl: np.ndarray,
    kept: list[PatchPair], min_denominator: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """For metric P: turn LDs into P, mark pairs with |LD_clean − LD_corrupted| < min_denominator."""
    included = np.ones(len(kept), bool)
    excluded = []
    if metric.name != "P":
        return vals, cm, xm, included, excluded
    denom = (cl - xl).astype(np.float64)
    P = (lds.astype(np.float64) - xl[:, None, None, None]) / np.where(np.abs(denom) > 0, denom, np.nan)[:, None, None, None]
    for i, d in enumerate(denom):
        if not np.isfinite(d) or abs(d) < min_denominator:
            included[i] = False
            excluded.append({**kept[i].describe(), "pair_index": i,
                             "reason": f"|LD_clean − LD_corrupted| = {abs(d):.3g} < min_denominator {min_denominator}"})
    cmP = np.where(included, 1.0, np.nan).astype(np.float32)
    xmP = np.where(included, 0.0, np.nan).astype(np.float32)
    P[~included] = np.nan
    return P.astype(np.float32), cmP, xmP, included, excluded


def _layers_arg(model: Any, layers: Iterable[int] | None) -> list[int]:
    L = model.cfg.n_layers
    if layers is None:
        return list(range(L))
    out = []
    for l in layers:
        l = int(l)
        if not -L <= l < L:
            raise MedinterpError(f"layer {l} out of range for a {L}-layer model")
        out.append(l % L)
    return out


def _heads_arg(model: Any, site: str, heads: Iterable[int] | None) -> list[int]:
    nh = _n_heads_for(model, site)
    if heads is None:
        return list(range(nh))
    if not SITES[site][1]:
        raise MedinterpError(f"site {site!r} has no head axis; do not pass heads=")
    out = [int(h) for h in heads]
    for h in out:
        if not 0 <= h < nh:
            raise MedinterpError(f"head {h} out of range (site {site!r} has {nh} heads)")
    return out


def _check_model(model: Any) -> None:
    if getattr(model.cfg, "positional_embedding_type", "") == "shortformer":
        raise MedinterpError("shortformer positional embeddings are not supported by the patching engine")


def patch(
    model: Any,
    pairs: Any,
    site: str = "resid_pre",
    positions: str | Sequence[int] = "last",
    metric: str | Callable = "P",
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    min_denominator: float = 1e-2,
    on_bad: str = "raise",
    batch_budget_mb: float = 1024.0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    prefix_cache: bool = True,
) -> PatchingResult:
    """Exact activation patching of clean activations into corrupted runs, swept over cells.

    Args:
        model: a HookedTransformer.
        pairs: a ``PairSet``, a CSV/JSONL path or shipped pair-set name, or a list of
            ``PromptPair`` / dicts / 4-tuples ``(clean, corrupted, clean_answer, corrupted_answer)``
            (prompts as text or token-id lists; answers as single-token text or ids).
        site: ``resid_pre|resid_mid|resid_post|attn_out|mlp_out`` (per layer) or a head site
            ``z|q|k|v|pattern`` (per layer × head; ``pattern`` patches a destination row).
        positions: ``"last"``, ``"all"`` (each position separately, right-aligned), ``"span"``
            (the tokens that differ between clean and corrupted, together), ``"all_at_once"``, or a
            list of position indices.
        metric: ``"P"`` (normalised logit difference), ``"logit_diff"``, ``"logprob"`` or a callable
            ``f(logits [rows, vocab], clean_ids, corrupted_ids) -> [rows]`` (last-position logits).
        layers, heads: subsets to sweep (default all).
        min_denominator: pairs with ``|LD_clean − LD_corrupted|`` below this are excluded from
            means (P only) and listed in ``excluded``.
        on_bad: ``"raise"`` or ``"drop"`` for invalid pairs.
        batch_budget_mb: memory budget of one batch of rows.
        checkpoint_dir: finished (group, layer) units are written there; rerunning with the same
            inputs resumes where an interrupted sweep stopped.
        progress: show a tqdm bar.
        n_boot, seed: bootstrap of the mean over pairs.
        prefix_cache: skip each row's unpatched prefix positions (causal attention leaves them equal
            to the corrupted run) by attending to the corrupted run's cached keys/values; rows are
            batched by their first patched position. False runs every position (same numbers up to
            float rounding).

    Returns:
        A :class:`PatchingResult`, values ``[pair, layer, position, head]``.

    Example:
        >>> res = patch(model, "diagnosis_pairs", site="resid_pre", positions="all")  # doctest: +SKIP
        >>> res.layer_curve()  # mean P at the last token, per layer  # doctest: +SKIP
    """
    _check_model(model)
    site = _site(site)
    met = _Metric(metric)
    layer_list = _layers_arg(model, layers)
    head_list = _heads_arg(model, site, heads) if SITES[site][1] else [0]
    kept, dropped, labels, masks = _prepare(model, pairs, positions, on_bad)
    fp = _fingerprint(model, kept, site=site, positions=positions if isinstance(positions, str) else list(positions),
                      metric=met.name, layers=layer_list, heads=head_list)
    ckpt = _Checkpoint(checkpoint_dir, fp) if checkpoint_dir is not None else None
    t0 = time.perf_counter()
    vals, lds, cm, xm, cl, xl, stats = _exact_sweep(
        model, kept, masks, len(labels), site, layer_list, head_list, met,
        batch_budget_mb=batch_budget_mb, progress=progress, checkpoint=ckpt, prefix_cache=prefix_cache)
    stats["seconds"] = time.perf_counter() - t0
    vals, cm, xm, included, excluded = _normalise(met, vals, lds, cm, xm, cl, xl, kept, min_denominator)
    res = PatchingResult(
        values=vals, ld=lds, clean_metric=cm, corrupted_metric=xm, clean_ld=cl, corrupted_ld=xl, included=included,
        site=site, method="exact", metric=met.name, position_mode=positions if isinstance(positions, str) else "list",
        layers=layer_list, positions=labels, position_tokens=_position_token_labels(model, kept, labels, positions),
        heads=head_list, pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped, extra={"engine": stats},
        provenance=make_provenance(model, technique="patching", method="exact", site=site,
                                   positions=positions if isinstance(positions, str) else list(positions), metric=met.name,
                                   layers=layer_list, heads=head_list, min_denominator=min_denominator, n_pairs=len(kept),
                                   n_dropped=len(dropped), n_boot=n_boot, seed=seed, fingerprint=fp),
    )
    if n_boot != 1000 or seed != 0:
        res._summarise(n_boot=n_boot, seed=seed)
    return res


# ----------------------------------------------------------------------------------- attribution
def attribution_patch(
    model: Any,
    pairs: Any,
    site: str = "resid_pre",
    positions: str | Sequence[int] = "last",
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    min_denominator: float = 1e-2,
    on_bad: str = "raise",
    verify_top_k: int = 0,
    compare_exact: bool = False,
    progress: bool = True,
    batch_budget_mb: float = 1024.0,
) -> PatchingResult:
    """Attribution patching: the linear estimate of every cell's patching effect from one forward
    and one backward pass per group of equal-length pairs.

    For a cell patching activation ``a`` (positions / head of a site) the estimate of
    ``LD_patched − LD_corrupted`` is ``Σ (a_clean − a_corrupted) · ∂LD/∂a`` evaluated on the
    corrupted run; P divides it by ``LD_clean − LD_corrupted``. Metric is P (values) with the raw
    estimated LD in ``ld``.

    Args:
        verify_top_k: also run the exact patch on the k cells with the largest |mean estimate|;
            ``extra["verified"]`` lists (layer, position, head, approx, exact).
        compare_exact: also run the full exact sweep and store the Pearson correlation of the
            per-pair values in ``extra["correlation_with_exact"]`` (and the exact values in
            ``extra["exact_mean"]``).
        Other arguments as in :func:`patch`.
    """
    _check_model(model)
    site = _site(site)
    met = _Metric("P")
    layer_list = _layers_arg(model, layers)
    head_list = _heads_arg(model, site, heads) if SITES[site][1] else [0]
    kept, dropped, labels, masks = _prepare(model, pairs, positions, on_bad)
    n_pos = len(labels)
    L = model.cfg.n_layers
    P = len(kept)
    shape = (P, len(layer_list), n_pos, len(head_list))
    est = np.full(shape, np.nan, np.float32)
    base = np.full((2, P), np.nan, np.float32)
    names = [site_hook_name(site, l) for l in layer_list]
    _, has_head, layout = SITES[site]
    t0 = time.perf_counter()
    dev = _device(model)
    for idx in _groups(kept):
        ct = torch.tensor([kept[i].clean_tokens for i in idx], device=dev)
        xt = torch.tensor([kept[i].corrupted_tokens for i in idx], device=dev)
        cid = torch.tensor([kept[i].clean_id for i in idx], device=dev)
        xid = torch.tensor([kept[i].corrupted_id for i in idx], device=dev)
        clean_cache, clean_final = _run_cached(model, ct, set(names))
        acts: dict[str, torch.Tensor] = {}

        def keep(act, hook):
            act.retain_grad()
            acts[hook.name] = act
            return act

        def make_leaf(act, hook):
            return act.detach().requires_grad_(True)

        with _no_param_grad(model), torch.enable_grad():
            resid = model.run_with_hooks(xt, stop_at_layer=L, fwd_hooks=[("hook_embed", make_leaf), (lambda n: n in names, keep)])
            ld_corr, _ = met(model, resid, cid, xid)
            ld_corr.sum().backward()
        with torch.no_grad():
            ld_clean, _ = met(model, clean_final, cid, xid)
        base[0, idx] = ld_clean.float().cpu().numpy()
        base[1, idx] = ld_corr.detach().float().cpu().numpy()
        for li, name in enumerate(names):
            a = acts[name]
            diff_grad = ((clean_cache[name] - a.detach()) * a.grad).float()  # per element
            if layout == "resid":
                per = diff_grad.sum(-1)  # [b, pos]
            elif layout == "head":
                per = diff_grad.sum(-1)  # [b, pos, head]
            else:
                per = diff_grad.sum(-1).transpose(1, 2)  # [b, head, q] -> [b, q, head]
            per = per.cpu().numpy()
            for gi, pi in enumerate(idx):
                for j in range(n_pos):
                    m = masks[pi][j]
                    if m is None:
                        continue
                    if layout == "resid":
                        est[pi, li, j, 0] = per[gi][m].sum()
                    else:
                        est[pi, li, j, :] = per[gi][m][:, head_list].sum(0)
    seconds = time.perf_counter() - t0
    cl, xl = base
    lds = est + xl[:, None, None, None]
    vals, cm, xm, included, excluded = _normalise(met, est, lds, cl, xl, cl, xl, kept, min_denominator)
    extra: dict[str, Any] = {"seconds": seconds}
    res = PatchingResult(
        values=vals, ld=lds, clean_metric=cm, corrupted_metric=xm, clean_ld=cl, corrupted_ld=xl, included=included,
        site=site, method="attribution", metric="P", position_mode=positions if isinstance(positions, str) else "list",
        layers=layer_list, positions=labels, position_tokens=_position_token_labels(model, kept, labels, positions),
        heads=head_list, pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped, extra=extra,
        provenance=make_provenance(model, technique="patching", method="attribution", site=site,
                                   positions=positions if isinstance(positions, str) else list(positions),
                                   layers=layer_list, heads=head_list, min_denominator=min_denominator, n_pairs=len(kept),
                                   verify_top_k=verify_top_k, compare_exact=compare_exact),
    )
    if verify_top_k > 0:
        score = np.nan_to_num(np.abs(np.asarray(res.mean, float)), nan=-1.0)
        flat = np.argsort(score.reshape(-1))[::-1][:verify_top_k]
        cell_filter = np.zeros(score.shape, bool)
        cell_filter.reshape(-1)[flat] = True
        t1 = time.perf_counter()
        ev, el, ecm, exm, ecl, exl, _ = _exact_sweep(model, kept, masks, n_pos, site, layer_list, head_list, met,
                                                     batch_budget_mb=batch_budget_mb, progress=progress, checkpoint=None,
                                                     cell_filter=cell_filter, desc="verify top-k")
        evP, *_ = _normalise(met, ev, el, ecm, exm, ecl, exl, kept, min_denominator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exact_mean = np.nanmean(evP[included], axis=0) if included.any() else np.full(score.shape, np.nan)
        verified = []
        for f in flat:
            li, j, hj = np.unravel_index(f, score.shape)
            verified.append({"layer": layer_list[li], "position": labels[j], "head": head_list[hj],
                             "approx": float(res.mean[li, j, hj]), "exact": float(exact_mean[li, j, hj])})
        extra["verified"] = verified
        extra["verify_seconds"] = time.perf_counter() - t1
    if compare_exact:
        t1 = time.perf_counter()
        exact = patch(model, [dataclasses.replace(p) for p in kept], site=site, positions=positions, metric="P",
                      layers=layer_list, heads=head_list if SITES[site][1] else None, min_denominator=min_denominator,
                      progress=progress, batch_budget_mb=batch_budget_mb)
        extra["exact_seconds"] = time.perf_counter() - t1
        extra["correlation_with_exact"] = correlation(res.values[included], exact.values[included])
        extra["correlation_of_means"] = correlation(res.mean, exact.mean)
        extra["exact_mean"] = np.asarray(exact.mean).tolist()
    return res


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays over the entries finite in both (NaN if < 2 such)."""
    a, b = np.asarray(a, float).reshape(-1), np.asarray(b, float).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# ----------------------------------------------------------------------------------- path patching
def _parse_receivers(model: Any, receivers: Any) -> list[tuple[str, int, int | None]]:
    """Receivers as (kind, layer, head): kind in q/k/v (head inputs), z (head output computed from
    the patched stream), mlp (MLP output) or logits (the final residual)."""
    if receivers in ("logits", None):
        return [("logits", model.cfg.n_layers, None)]
    out = []
    for r in receivers:
        if isinstance(r, str):
            r = (r,)
        kind = r[0]
        if kind == "logits":
            raise MedinterpError("receiver 'logits' cannot be combined with other receivers")
        if kind not in ("q", "k", "v", "z", "mlp"):
            raise MedinterpError(f"receiver kind {kind!r}; expected q, k, v, z, mlp or 'logits'")
        if len(r) < 2:
            raise MedinterpError(f"receiver {r!r}: give (kind, layer[, head])")
        layer = int(r[1]) % model.cfg.n_layers
        head = int(r[2]) if len(r) > 2 and r[2] is not None else None
        if kind == "mlp" and head is not None:
            raise MedinterpError(f"receiver {r!r}: an MLP has no heads")
        out.append((kind, layer, head))
    return out


_RECEIVER_HOOK = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z", "mlp": "hook_mlp_out"}


def path_patch(
    model: Any,
    pairs: Any,
    sender_site: str = "z",
    receivers: Any = "logits",
    positions: str | Sequence[int] = "all_at_once",
    metric: str | Callable = "P",
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    min_denominator: float = 1e-2,
    on_bad: str = "raise",
    progress: bool = True,
) -> PatchingResult:
    """Path patching: the effect of a sender component that reaches the metric only through the
    receivers.

    Definition (IOI path patching, Wang et al. 2022, with clean = "new" and corrupted = "orig"):

    1. Run the corrupted prompt with the sender (one head's ``z``, a layer's ``attn_out`` or
       ``mlp_out``, at the chosen positions) set to its clean value and **every other** attention
       and MLP output of the sender's layer and later layers frozen to its corrupted value. The
       stream a receiver reads is then the corrupted stream plus the sender's direct contribution.
       Record the receivers' activations (``q``/``k``/``v`` of a head, a head's ``z``, or an MLP
       output) in this run.
    2. Run the corrupted prompt again with only the receivers' activations replaced by the recorded
       ones (all positions); everything else, downstream of the receivers included, is recomputed.
       The metric of this run is the path-patching value.

    With ``receivers="logits"`` step 2 is skipped: the value is the sender's direct effect on the
    final residual stream (unembedding after ``ln_final``). Receivers must lie after the sender
    (an MLP receiver may share the sender's layer if the sender is attention); cells where no
    receiver lies after the sender are NaN.

    Args:
        sender_site: ``"z"`` (each head is a sender), ``"attn_out"`` or ``"mlp_out"`` (each layer).
        receivers: ``"logits"`` or a list of ``(kind, layer, head)`` / ``(kind, layer)`` with kind
            in ``q, k, v, z, mlp``; e.g. ``[("q", 10, 2), ("k", 10, 2)]``.
        positions: where the sender is patched (``"all_at_once"`` as in IOI, ``"last"``, ``"span"``,
            ``"all"`` or a list).
        Other arguments as in :func:`patch`.
    """
    _check_model(model)
    sender_site = _site(sender_site)
    if sender_site not in ("z", "attn_out", "mlp_out"):
        raise MedinterpError(f"sender_site must be 'z', 'attn_out' or 'mlp_out', got {sender_site!r}")
    met = _Metric(metric)
    recv = _parse_receivers(model, receivers)
    L = model.cfg.n_layers
    layer_list = _layers_arg(model, layers)
    head_list = _heads_arg(model, sender_site, heads) if sender_site == "z" else [0]
    kept, dropped, labels, masks = _prepare(model, pairs, positions, on_bad)
    n_pos = len(labels)
    P = len(kept)
    shape = (P, len(layer_list), n_pos, len(head_list))
    vals = np.full(shape, np.nan, np.float32)
    lds = np.full(shape, np.nan, np.float32)
    base = np.full((4, P), np.nan, np.float32)
    dev = _device(model)
    from tqdm.auto import tqdm

    corr_names = ({f"blocks.{l}.hook_resid_pre" for l in range(L)} | {f"blocks.{l}.hook_attn_out" for l in range(L)}
                  | {f"blocks.{l}.hook_mlp_out" for l in range(L)} | {f"blocks.{l}.attn.hook_z" for l in range(L)})
    clean_names = {site_hook_name(sender_site, l) for l in layer_list}
    t0 = time.perf_counter()
    groups = _groups(kept)
    bar = tqdm(total=len(groups) * len(layer_list), desc="path patching", disable=not progress, leave=False)
    for idx in groups:
        group, clean_final, corr_final = _make_group(model, kept, idx, corr_names, clean_names)
        with torch.no_grad():
            cm, cl = met(model, clean_final, group.cid, group.xid)
            xm, xl = met(model, corr_final, group.cid, group.xid)
        base[:, idx] = torch.stack([cm, xm, cl, xl]).float().cpu().numpy()
        for li, l in enumerate(layer_list):
            bar.update(1)
            valid = [r for r in recv if r[1] > l or (r[0] == "mlp" and r[1] == l and sender_site != "mlp_out")]
            if len(valid) != len(recv):
                continue  # some receiver does not lie after this sender: undefined, stays NaN
            rows = _cells(n_pos, head_list, group, masks, None, li)
            if not rows:
                continue
            v, d = _path_rows(model, group, sender_site, l, rows, head_list, recv, met)
            v, d = v.float().cpu().numpy(), d.float().cpu().numpy()
            for r, (gi, j, hj, _) in enumerate(rows):
                vals[idx[gi], li, j, hj], lds[idx[gi], li, j, hj] = v[r], d[r]
    bar.close()
    vals, cm, xm, included, excluded = _normalise(met, vals, lds, base[0], base[1], base[2], base[3], kept, min_denominator)
    return PatchingResult(
        values=vals, ld=lds, clean_metric=cm, corrupted_metric=xm, clean_ld=base[2], corrupted_ld=base[3],
        included=included, site=sender_site, method="path", metric=met.name,
        position_mode=positions if isinstance(positions, str) else "list", layers=layer_list, positions=labels,
        position_tokens=_position_token_labels(model, kept, labels, positions), heads=head_list,
        pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped,
        extra={"receivers": [list(r) for r in recv], "seconds": time.perf_counter() - t0},
        provenance=make_provenance(model, technique="patching", method="path", sender_site=sender_site,
                                   receivers=[list(r) for r in recv], positions=positions if isinstance(positions, str) else list(positions),
                                   metric=met.name, layers=layer_list, heads=head_list, min_denominator=min_denominator),
    )


def _path_rows(model: Any, group: _Group, sender_site: str, layer: int, rows: list, heads: list[int], recv: list, met: _Metric):
    dev = _device(model)
    L = model.cfg.n_layers
    row_pair = torch.tensor([r[0] for r in rows], device=dev)
    pos_mask = torch.from_numpy(np.stack([r[3] for r in rows])).to(dev)
    cid, xid = group.cid[row_pair], group.xid[row_pair]
    cc = group.corr_cache
    head_mask = None
    if sender_site == "z":
        head_mask = torch.zeros(len(rows), model.cfg.n_heads, dtype=torch.bool, device=dev)
        head_mask[torch.arange(len(rows)), torch.tensor([heads[r[2]] for r in rows])] = True
    sname = site_hook_name(sender_site, layer)
    hooks = [(sname, make_patch_hook(group.clean_cache[sname], row_pair, pos_mask, head_mask,
                                     "head" if sender_site == "z" else "resid"))]
    logits_recv = recv[0][0] == "logits"
    record: dict = {}
    recv_hooks = {f"blocks.{rl}.{_RECEIVER_HOOK[k]}" for k, rl, _ in recv} if not logits_recv else set()
    stop = L if logits_recv else max(r[1] for r in recv) + 1
    # freeze every other component of the sender's layer and later layers
    for m in range(layer, stop):
        if m > layer or sender_site == "z":
            # attention of later layers (and, for a head sender, not the sender's own layer: z is patched there)
            if m > layer:
                n = f"blocks.{m}.hook_attn_out"
                hooks.append((n, make_freeze_hook(cc[n][row_pair])))
        if not (m == layer and sender_site == "mlp_out"):
            n = f"blocks.{m}.hook_mlp_out"
            hooks.append((n, make_freeze_hook(cc[n][row_pair], record if n in recv_hooks else None, n)))
    for n in recv_hooks:
        if not n.endswith("hook_mlp_out"):
            hooks.append((n, _recorder(record, n)))
    # hooks on the same name run in order: recorders of q/k/v/z are independent of attn_out freezes
    with torch.no_grad():
        x = cc[f"blocks.{layer}.hook_resid_pre"][row_pair]
        resid = model.run_with_hooks(x, start_at_layer=layer, stop_at_layer=stop, fwd_hooks=hooks)
        if logits_recv:
            return met(model, resid, cid, xid)
        start = min(r[1] for r in recv)
        hooks2 = []
        for kind, rl, h in recv:
            n = f"blocks.{rl}.{_RECEIVER_HOOK[kind]}"
            new = record[n]
            if h is None or kind == "mlp":
                hooks2.append((n, make_freeze_hook(new)))
            else:
                hooks2.append((n, _head_setter(new, h)))
        x = cc[f"blocks.{start}.hook_resid_pre"][row_pair]
        resid = model.run_with_hooks(x, start_at_layer=start, stop_at_layer=L, fwd_hooks=hooks2)
        return met(model, resid, cid, xid)


def _recorder(record: dict, key: str) -> Callable:
    def hook(act, hook):
        record[key] = act.detach().clone()
        return act

    return hook


def _head_setter(new: torch.Tensor, head: int) -> Callable:
    def hook(act, hook):
        act = act.clone()
        act[:, :, head] = new[:, :, head]
        return act

    return hook


# ============================================================================ technique contract
def _run_family(model: Any, family: Any, *, progress: bool = True, **params: Any) -> PatchingResult:
    params = {"site": "resid_pre", "positions": "last", "on_bad": "drop", **params}
    max_pairs = params.pop("max_pairs", None)
    pairs = family.pairs
    if max_pairs is not None:
        from medinterp.concepts import load_concepts

        ps = load_concepts(pairs) if isinstance(pairs, (str, os.PathLike)) else pairs
        pairs = list(getattr(ps, "pairs", ps))[: int(max_pairs)]
    return patch(model, pairs, progress=progress, **params)


def attention_view_data(model: Any, res: "PatchingResult") -> dict[str, Any]:
    """All heads of the block ``l`` maximising ``curve[l+1] - curve[l]`` (resid_pre patching: the block
    whose output carries the clean answer to the last position), on the first clean prompt."""
    curve = np.asarray(res.layer_curve(), float)
    if len(curve) < 2 or not np.all(np.isfinite(curve)):
        raise ValueError("no usable patching curve")
    layer = int(np.argmax(np.diff(curve)))
    pair = res.pairs[0]
    prompt = pair["clean"] if isinstance(pair, dict) else pair[0]
    if not isinstance(prompt, str):
        raise ValueError("clean prompt is not text")
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: n == name)
    att = cache[name][0].float().cpu().numpy()
    return {"attention": {"tokens": model.to_str_tokens(prompt), "attention": att.round(4).tolist(),
                          "head_names": [f"L{layer}H{h}" for h in range(att.shape[0])], "prompt": prompt,
                          "layer": layer}}


from medinterp.techniques.base import Technique  # noqa: E402

TECHNIQUE = Technique(
    name="patching",
    run_fn=_run_family,
    presets={
        # resid_pre at the last position, every valid pair of the family's pair set
        "full": {"n_boot": 300},
        "quick": {"max_pairs": 6, "n_boot": 100},
    },
    needs=("pairs",),
    extras=attention_view_data,
    description="activation patching of clean into corrupted runs (normalised logit difference)",
)
