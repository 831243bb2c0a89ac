"""The lesion result: per-prompt damage, its bootstrap table (computed once, by the run) and continuations."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, Mapping

import numpy as np
from jaxtyping import Float

from medinterp.covariates import from_matrix
from medinterp.errors import MedinterpError
from medinterp.results import bootstrap_ci
from medinterp.prompt_inputs import unit_ci, units_of
from medinterp.techniques.base import TechniqueResult, UnitScores
from medinterp.techniques.lesion.continuations import CONT_METRICS
from medinterp.techniques.lesion.engine import METRICS

METRIC_TITLES = {
    "kl": "KL(intact ‖ lesioned), nats",
    "logp_drop": "drop in log p(target), nats",
    "top1_agree": "top-1 agreement",
    "acc_drop": "drop in accuracy (top-1 == answer)",
    "ld_drop": "drop in the logit difference answer - foil, logits",
    "ld_frac": "fraction of the clean logit difference (answer - foil) lost",
    "first_diff": "first differing token of the greedy continuation",
    "overlap": "continuation positions unchanged (fraction)",
    "bag_overlap": "continuation token overlap (fraction)",
    "judge": "judge score (1 = unchanged .. 10 = gibberish)",
}


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; all-NaN columns (blocks not lesioned) stay NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


def lesion_table(
    metrics: np.ndarray,
    modes: list[str],
    layers: list[int],
    *,
    units: list | None = None,
    cont_metrics: np.ndarray | None,
    cont_modes: list[str],
    cont_index: list[int],
    judge_scores: np.ndarray | None,
    n_boot: int,
    ci: float,
    seed: int,
):
    """The per-(mode, layer) table: means over prompts with bootstrap CIs.

    A metric without NaN gets a cluster bootstrap over ``units`` (items; default one unit per prompt);
    one with NaN (``acc_drop`` of prompts without an answer) a NaN-aware prompt bootstrap.
    """
    import pandas as pd

    stat = _nanmean0
    kw = dict(n_boot=n_boot, ci=ci, seed=seed)
    units = list(range(metrics.shape[0])) if units is None else units
    est, lo, hi = (np.full(metrics.shape[1:], np.nan) for _ in range(3))
    for k in range(metrics.shape[-1]):
        m = metrics[..., k]
        rows = ~np.isnan(m).reshape(m.shape[0], -1).all(axis=1)  # prompts not scored (not lesioned, not known)
        if not rows.any():
            continue
        sub = m[rows]
        if not np.isnan(sub).any():
            est[..., k], lo[..., k], hi[..., k] = unit_ci(sub, [u for u, r in zip(units, rows) if r], **kw)
        else:  # NaN inside scored rows (acc_drop of prompts without an answer): a NaN-aware prompt bootstrap
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                est[..., k], lo[..., k], hi[..., k] = bootstrap_ci(sub, stat, **kw)
    cols: dict[str, list] = {"mode": [], "layer": []}
    names = list(METRICS)
    cont = cont_metrics is not None and len(cont_modes) > 0
    cnames = list(CONT_METRICS) + (["judge"] if judge_scores is not None else [])
    if cont:
        carr = cont_metrics
        if judge_scores is not None:
            carr = np.concatenate([carr, judge_scores[..., None]], axis=-1)
        with np.errstate(all="ignore"):
            cest, clo, chi = bootstrap_ci(carr, stat, **kw)
    for k in names + (cnames if cont else []):
        for suffix in ("", "_ci_low", "_ci_high"):
            cols[k + suffix] = []
    for mi_, mode in enumerate(modes):
        for li, l in enumerate(layers):
            cols["mode"].append(mode)
            cols["layer"].append(int(l))
            for k, name in enumerate(names):
                cols[name].append(est[mi_, li, k])
                cols[name + "_ci_low"].append(lo[mi_, li, k])
                cols[name + "_ci_high"].append(hi[mi_, li, k])
            if cont:
                ci_ = cont_modes.index(mode) if mode in cont_modes else None
                for k, name in enumerate(cnames):
                    for arr, suf in ((cest, ""), (clo, "_ci_low"), (chi, "_ci_high")):
                        cols[name + suf].append(np.nan if ci_ is None else arr[ci_, li, k])
    df = pd.DataFrame(cols)
    df["n_prompts"] = metrics.shape[0]
    df["n_scored"] = int((~np.isnan(metrics).reshape(metrics.shape[0], -1).all(axis=1)).sum())
    df["n_continuations"] = [len(cont_index) if m in cont_modes else 0 for m in df["mode"]]
    return df



#: the map's lesion unit score (fraction of the clean LD lost) is clipped to this range (heavy tails)
LD_FRAC_CLIP = (-1.0, 2.0)

@dataclasses.dataclass
class LesionResult(TechniqueResult):
    """Damage per prompt × lesion mode × layer, aggregated with bootstrap CIs, plus continuations.

    Attributes:
        metrics: ``[n_prompts, n_modes, n_layers, 4]``: ``kl, logp_drop, top1_agree, acc_drop`` (see
            module doc).
        intact_logp: ``[n_prompts]`` log p(target) of the intact model (nats, summed over target tokens).
        intact_top1: ``[n_prompts]`` intact arg-max token at the read position.
        n_target_tokens: ``[n_prompts]``.
        table: one row per (mode, layer): each metric's mean over prompts with ``_ci_low``/``_ci_high``,
            the continuation metrics (and ``judge``) where measured, ``n_prompts``, ``n_continuations``.
        prompts, targets, labels: the prompts, scored targets and per-prompt labels (``concept`` when
            several concept sets were given).
        cont_index: prompts (indices) that got continuations; ``cont_modes`` their lesion modes.
        cont_metrics: ``[n_cont, n_cont_modes, n_layers, 3]``: ``first_diff, overlap, bag_overlap``.
        cont_tokens: ``[n_cont, n_cont_modes, n_layers, max_new_tokens]``; ``intact_cont_tokens``
            ``[n_cont, max_new_tokens]``; the decoded texts in ``intact_continuations`` and
            ``lesioned_continuations[mode][layer index][prompt]``.
        judge_scores: ``[n_cont, n_cont_modes, n_layers]`` or None.
        timings: wall-clock seconds by stage (intact runs, lesions, continuations, total).
        known: pair sets: ``[n_prompts]`` whether the model knows the prompt (``LD_clean > 0 > LD_corrupted``,
            margin >= ``min_margin`` logits: patching's rule); None for other inputs (no foil).
        clean_ld, corrupted_ld: pair sets: ``[n_prompts]`` intact LD = logit(clean answer's first token) -
            logit(foil's first token), on the clean prompt (at the read position) and on the pair's corrupted one.
        min_margin, min_known: the known rule's margin and the known prompts :meth:`unavailable` needs.
        covariates, covariate_names: ``[n_prompts, k]`` per-prompt covariates
            (:data:`medinterp.covariates.COVARIATES`; pair sets: ``subject_tokens``, ``tokens_after_subject``,
            ``prompt_tokens``, ``answer_prior``, ``intact_logp``, ``intact_ld``); None / [] in older results.

    Figures: :mod:`medinterp.viz.lesion` (``result.figures()`` once ``medinterp.viz`` is imported).
    """

    kind = "lesion"
    metrics: np.ndarray = None  # type: ignore[assignment]
    intact_logp: np.ndarray = None  # type: ignore[assignment]
    intact_top1: np.ndarray = None  # type: ignore[assignment]
    n_target_tokens: np.ndarray = None  # type: ignore[assignment]
    table: Any = None
    prompts: list = dataclasses.field(default_factory=list)
    targets: list = dataclasses.field(default_factory=list)
    labels: dict = dataclasses.field(default_factory=dict)
    concept_set: str = "custom"
    modes: list = dataclasses.field(default_factory=list)
    layers: list = dataclasses.field(default_factory=list)
    n_layers: int = 0
    metric_names: list = dataclasses.field(default_factory=lambda: list(METRICS))
    cont_metric_names: list = dataclasses.field(default_factory=lambda: list(CONT_METRICS))
    cont_index: list = dataclasses.field(default_factory=list)
    cont_modes: list = dataclasses.field(default_factory=list)
    cont_metrics: np.ndarray | None = None
    cont_tokens: np.ndarray | None = None
    intact_cont_tokens: np.ndarray | None = None
    intact_continuations: list = dataclasses.field(default_factory=list)
    lesioned_continuations: dict = dataclasses.field(default_factory=dict)
    judge_scores: np.ndarray | None = None
    mean_over: str = "position"
    method: str = "prefix"
    max_new_tokens: int = 20
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    known: np.ndarray | None = None
    clean_ld: np.ndarray | None = None
    corrupted_ld: np.ndarray | None = None
    min_margin: float = 1.0
    min_known: int = 1
    covariates: np.ndarray | None = None
    covariate_names: list = dataclasses.field(default_factory=list)

    _legacy_fields: ClassVar[dict] = {"timing": "timings"}

    def _after_load(self) -> None:
        self.metrics = np.asarray(self.metrics, dtype=float)
        self.layers = [int(l) for l in self.layers]
        if self.known is not None:
            self.known = np.asarray(self.known, dtype=bool)

    # ------------------------------------------------------------------ access
    @property
    def n_prompts(self) -> int:
        return int(self.metrics.shape[0])

    @property
    def n_known(self) -> int | None:
        """Prompts the model knows (pair sets), else None."""
        return None if self.known is None else int(np.asarray(self.known, bool).sum())

    @property
    def default_metric(self) -> str:
        """The map's metric: ``ld_frac`` (fraction of the clean logit difference lost, known prompts) for a
        pair set, ``logp_drop`` for inputs without a foil and for results saved before it existed."""
        return "ld_frac" if self.known is not None and "ld_frac" in self.metric_names else "logp_drop"

    @property
    def curve_label(self) -> str:
        """What :meth:`layer_curve` measures (the map shows it)."""
        if self.default_metric == "ld_frac":
            return ("fraction of the clean logit difference (answer - foil) lost when the block is removed (skip), "
                    "on the prompts the model knows")
        return "drop in log p(answer) when the block is removed (skip), read after the item"

    def unavailable(self) -> str | None:
        """"not known by the model: K of N prompts ..." when fewer than ``min_known`` prompts are known
        (pair sets; the unit scores are then all NaN), else None."""
        if self.known is None or self.n_known >= int(self.min_known):
            return None
        return (f"not known by the model: {self.n_known} of {self.n_prompts} prompts (LD_clean > 0 > LD_corrupted, "
                f"margin >= {self.min_margin:g} logit; at least {self.min_known} needed)")

    def unit_scores(self, mode: str = "skip", metric: str | None = None) -> UnitScores:
        """Per prompt and block: the damage when the block is lesioned by ``mode`` (higher = the block matters
        more for the answer), with the per-prompt covariates; units are the items (``item`` label, else the
        prompt index). Blocks not lesioned are NaN.

        The default ``metric`` is :attr:`default_metric`: for a pair set the fraction of the clean logit
        difference lost, ``(LD_intact - LD_lesioned) / LD_intact``, on the prompts the model knows (the other
        rows are NaN; the map drops them); otherwise the drop in log p(answer) (nats).
        """
        metric = metric or self.default_metric
        units, templates = units_of(self.labels, self.n_prompts)
        v = self.values(metric, mode)
        desc = f"{METRIC_TITLES.get(metric, metric)} when the block is lesioned ({mode})"
        if metric == "ld_frac":
            # A known prompt's LD_intact can be ~0.1 logit, so the fraction has tails of +-100 that would
            # dominate a mean-based test; clipped to [-1, 2] as tracing's recovered fraction is (a lesion
            # that flips the answer scores >= 1 either way).
            v = np.clip(v, *LD_FRAC_CLIP)
            desc += f", clipped to [{LD_FRAC_CLIP[0]:g}, {LD_FRAC_CLIP[1]:g}]"
        return UnitScores(values=v, units=units, templates=templates, description=desc,
                          covariates=from_matrix(self.covariates, self.covariate_names))

    def _check(self, metric: str, mode: str) -> tuple[int, int]:
        if mode not in self.modes:
            raise MedinterpError(f"lesion mode {mode!r} was not run; this result has {self.modes}")
        if metric not in self.metric_names:
            raise MedinterpError(f"metric {metric!r}; expected one of {self.metric_names} (continuations: continuation_curve)")
        return self.modes.index(mode), self.metric_names.index(metric)

    def _mask(self, where: Mapping[str, Any] | None) -> np.ndarray:
        m = np.ones(self.n_prompts, dtype=bool)
        for k, v in (where or {}).items():
            if k not in self.labels:
                raise MedinterpError(f"label {k!r} not in this result; labels: {sorted(self.labels)}")
            m &= np.array([x == v for x in self.labels[k]])
        if not m.any():
            raise MedinterpError(f"no prompt matches {dict(where or {})}")
        return m

    def values(self, metric: str = "kl", mode: str = "skip", where: Mapping[str, Any] | None = None) -> np.ndarray:
        """Per-prompt values ``[n_selected, n_layers]`` (``where``: label filter, e.g. ``{"concept": "drugs"}``)."""
        mi_, k = self._check(metric, mode)
        return self._full(self.metrics[self._mask(where), mi_, :, k])

    def _full(self, v: np.ndarray) -> np.ndarray:
        """Lay a ``[.., len(layers)]`` array onto all ``n_layers`` blocks (NaN where not lesioned)."""
        if list(self.layers) == list(range(self.n_layers)):
            return v
        out = np.full(v.shape[:-1] + (self.n_layers,), np.nan)
        out[..., self.layers] = v
        return out

    def layer_curve(self, metric: str | None = None, mode: str = "skip", where: Mapping[str, Any] | None = None) -> Float[np.ndarray, "n_layers"]:
        """Mean over the scored prompts per block (default :attr:`default_metric` with ``skip``; higher = more
        damage).

        For ``top1_agree`` higher means *less* damage; use ``1 - curve`` for the map.
        """
        return _nanmean0(self.values(metric or self.default_metric, mode, where))

    def layer_curve_ci(
        self, metric: str | None = None, mode: str = "skip", where: Mapping[str, Any] | None = None
    ) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """Bootstrap ``(low, high)`` of :meth:`layer_curve`: from the table (cluster bootstrap over items)
        unless ``where`` filters (then a prompt bootstrap of the selection)."""
        metric = metric or self.default_metric
        self._check(metric, mode)
        if where:
            _, lo, hi = bootstrap_ci(self.values(metric, mode, where), _nanmean0,
                                     n_boot=self.n_boot, ci=self.ci, seed=self.seed)
            return lo, hi
        t = self.table[self.table["mode"] == mode].sort_values("layer")
        lo = self._full(t[metric + "_ci_low"].to_numpy(float))
        hi = self._full(t[metric + "_ci_high"].to_numpy(float))
        return lo, hi

    def continuation_curve(self, metric: str = "overlap", mode: str = "skip") -> Float[np.ndarray, "n_layers"]:
        """Mean continuation metric per block (``first_diff``, ``overlap``, ``bag_overlap`` or ``judge``)."""
        if self.cont_metrics is None or mode not in self.cont_modes:
            raise MedinterpError(f"no continuations for mode {mode!r} in this result (cont_modes={self.cont_modes})")
        mi_ = self.cont_modes.index(mode)
        if metric == "judge":
            if self.judge_scores is None:
                raise MedinterpError("this result has no judge scores (run lesion(..., judge=...))")
            return self._full(_nanmean0(self.judge_scores[:, mi_]))
        if metric not in self.cont_metric_names:
            raise MedinterpError(f"continuation metric {metric!r}; expected one of {self.cont_metric_names} or 'judge'")
        return self._full(_nanmean0(self.cont_metrics[:, mi_, :, self.cont_metric_names.index(metric)]))

    def top_layers(self, k: int = 3, metric: str | None = None, mode: str = "skip") -> list[int]:
        """The ``k`` blocks whose lesion does the most damage by ``metric`` (least agreement for top-1)."""
        metric = metric or self.default_metric
        c = self.layer_curve(metric, mode)
        c = -c if metric == "top1_agree" else c
        order = [int(i) for i in np.argsort(-np.nan_to_num(c, nan=-np.inf))]
        return order[:k]

    def summary(self, k: int = 3, mode: str | None = None) -> str:
        """A few readable lines: the most damaging blocks by KL and by log-prob drop, with CIs."""
        mode = mode or ("skip" if "skip" in self.modes else self.modes[0])
        lines = [
            f"lesion ({mode}) of {self.concept_set}: {self.n_prompts} prompts, {len(self.layers)} blocks, "
            f"intact mean log p(target) {np.mean(self.intact_logp):.3f} nats"
        ]
        if self.known is not None:
            lines.append(f"  known by the model: {self.n_known} of {self.n_prompts} prompts (LD_clean > 0 > LD_corrupted, "
                         f"margin >= {self.min_margin:g} logit)")
        if self.unavailable():
            lines.append(f"  {self.unavailable()}")
            return "\n".join(lines)
        for metric in dict.fromkeys((self.default_metric, "logp_drop", "kl")):
            cur = self.layer_curve(metric, mode)
            lo, hi = self.layer_curve_ci(metric, mode)
            tops = ", ".join(f"{l}: {cur[l]:.3g} [{lo[l]:.3g}, {hi[l]:.3g}]" for l in self.top_layers(k, metric, mode))
            lines.append(f"  top blocks by {metric}: {tops}")
        acc = self.layer_curve("acc_drop", mode)
        if np.isfinite(acc).any():
            lines.append(f"  accuracy drop (top-1 == answer): max {np.nanmax(acc):.2f} (block {int(np.nanargmax(acc))})")
        agree = self.layer_curve("top1_agree", mode)
        if np.isfinite(agree).any():
            lines.append(
                f"  top-1 agreement: min {np.nanmin(agree):.2f} (block {int(np.nanargmin(agree))}), median {np.nanmedian(agree):.2f}")
        if self.cont_metrics is not None and mode in self.cont_modes:
            ov = self.continuation_curve("overlap", mode)
            lines.append(f"  continuation overlap: min {np.nanmin(ov):.2f} (block {int(np.nanargmin(ov))}), median {np.nanmedian(ov):.2f}")
        return "\n".join(lines)
