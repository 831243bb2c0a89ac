"""The result of a geometry run: the per-layer metric table, embeddings and labels.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame([{"layer": l, "metric": "silhouette", "space": "umap", "label": "x", "group": "",
    ...                    "value": v, "ci_low": v - .1, "ci_high": v + .1} for l, v in [(0, .1), (1, .5)]])
    >>> r = GeometryResult(concept_set="toy", layers=[0, 1], table=t,
    ...                    primary={"metric": "silhouette", "space": "umap", "label": "x", "group": ""})
    >>> r.layer_curve().tolist(), r.curve_label
    ([0.1, 0.5], 'silhouette (umap, x)')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from medinterp.errors import MedinterpError
from medinterp.stats import cluster_bootstrap
from medinterp.techniques.base import TechniqueResult, UnitScores, sig3


@dataclasses.dataclass
class GeometryResult(TechniqueResult):
    """Per-layer activation geometry of one concept set.

    Attributes:
        concept_set: concept set name (``concept`` in 0.1.0).
        layers: layer index per row of the embeddings (``-1`` = embedding output).
        table: tidy per-layer metrics: ``layer, metric, space (umap|raw), label, group, value,
            ci_low, ci_high, baseline, baseline_high, p_value, n``. Metrics: ``silhouette`` (per
            categorical labelling; baseline = label-permutation mean, baseline_high = its 95th
            percentile), ``anisotropy``, ``linearity_r2`` (per continuous label), ``step_ratio``
            (age jump; group = all / each sex), ``spearman`` and ``circularity`` (progression,
            mean over diseases), ``resid_norm``, ``mean_cosine``, ``eff_rank`` (raw space).
        age_steps: the full discontinuity profile (``layer, space, group, age_from, age_to, step,
            median_step, ratio``) or None.
        progression: per-disease progression scores (``layer, space, group, metric, value, ci_low,
            ci_high, n``) or None.
        embedding_2d: ``[layers, n, 2]`` UMAP-2 (aligned across layers) for plots.
        embedding: ``[layers, n, n_components]`` UMAP embedding the metrics were computed in.
        texts: prompt per point; items: concept item per point (hover text).
        labels: label name -> one value per point; label_kinds: name -> categorical|continuous.
        primary: which table rows :meth:`layer_curve` returns (metric, space, label, group): the
            headline ``probe`` rows of the ``span`` read on the primary labelling.
        paper_primary: the 0.1.0 / paper curve's rows (UMAP silhouette, anisotropy, ...) when the run had
            ``paper=True``, else empty; ``layer_curve(**res.paper_primary)`` draws it.
        unit_values: ``[n_prompts, len(layers)]`` per-prompt out-of-fold probe scores of the primary
            labelling on the span read (see :meth:`unit_scores`); ``unit_values_last`` the same on the
            final-token read.
        lexical_scores: ``[n_prompts]`` the same per-prompt scores of the lexical baseline (character
            3-5-gram TF-IDF of the item strings, same probe and folds).
        unit_ids / template_ids: item id and template index of each prompt.
        cv_groups: the CV group of each prompt for the primary labelling (the age for age, else the
            item): the units of :meth:`unit_scores` and of the refit tests.
        probe_features: ``[layers, n_prompts, k]`` float32, the features the primary probe was fitted on
            (template-centred, PCA-reduced reads of the unit read), so the refit tests
            (:mod:`~medinterp.techniques.geometry.inference`) need no model; ``lexical_features``
            ``[n_prompts, k']`` the lexical baseline's.
        covariates / covariate_names: per-prompt covariates (``n_classes``, ``items_per_class`` of the
            primary labelling; NaN for a continuous one), see :mod:`medinterp.covariates`.
        findings: the family questions that are not per-layer rows (lexical baseline summaries, age steps
            per layer, progression's lexical floor).
        variant_findings: ``{variant set: {KEY: STAT}}``: the findings statistics (mid depth only) of the
            set's lexical-cue-free variants (``variants=True``: e.g. ``age_words``), read by the map's findings rules.
        warnings: named warnings of the run (e.g. a constant layer whose metrics are NaN).
        params, timings, provenance: how it was run.

    Figures (``figure()``: UMAP scatter per labelling with a layer slider, metric curves with CI
    bands) are drawn by ``medinterp.viz.geometry``.

    Example:
        >>> res = geometry(model, "drugs")                # doctest: +SKIP
        >>> res.best("silhouette", label="specialty")      # doctest: +SKIP
    """

    kind = "geometry"
    _legacy_fields: ClassVar[dict] = {"concept": "concept_set"}

    layers: list[int] = dataclasses.field(default_factory=list)
    table: pd.DataFrame | None = None
    age_steps: pd.DataFrame | None = None
    progression: pd.DataFrame | None = None
    embedding_2d: np.ndarray | None = None
    embedding: np.ndarray | None = None
    texts: list[str] = dataclasses.field(default_factory=list)
    items: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, list] = dataclasses.field(default_factory=dict)
    label_kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    primary: dict[str, str] = dataclasses.field(default_factory=dict)
    paper_primary: dict[str, str] = dataclasses.field(default_factory=dict)
    unit_values: np.ndarray | None = None
    unit_values_last: np.ndarray | None = None
    lexical_scores: np.ndarray | None = None
    unit_ids: list = dataclasses.field(default_factory=list)
    template_ids: list = dataclasses.field(default_factory=list)
    cv_groups: list = dataclasses.field(default_factory=list)
    probe_features: np.ndarray | None = None
    lexical_features: np.ndarray | None = None
    covariates: np.ndarray | None = None
    covariate_names: list = dataclasses.field(default_factory=list)
    findings: dict = dataclasses.field(default_factory=dict)
    variant_findings: dict = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def _after_load(self) -> None:
        self.layers = [int(x) for x in self.layers]
        self.unit_ids = [str(u) for u in self.unit_ids]
        self.cv_groups = [str(u) for u in self.cv_groups]
        self.covariate_names = [str(c) for c in self.covariate_names]
        for name in ("age_steps", "progression", "table"):
            df = getattr(self, name)
            for col in ("group", "label"):
                if df is not None and col in df.columns:  # CSV turns "" into NaN
                    df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)

    # ------------------------------------------------------------ queries
    def metric(self, metric: str, *, space: str = "umap", label: str | None = None,
               group: str | None = None) -> pd.DataFrame:
        """Rows of one metric, one per layer (sorted by layer)."""
        t = self.table
        sel = (t.metric == metric) & (t.space == space)
        if label is not None:
            sel &= t.label == label
        if group is not None:
            sel &= t.group == group
        out = t[sel].sort_values("layer")
        if out.layer.duplicated().any():
            raise MedinterpError(
                f"{metric!r} in {space!r} has several rows per layer; pick label= from "
                f"{sorted(set(out.label))} and group= from {sorted(set(out.group))}"
            )
        return out.reset_index(drop=True)

    def best(self, metric: str = "silhouette", *, space: str = "umap", label: str | None = None,
             group: str | None = None, blocks_only: bool = True) -> tuple[int, float]:
        """(layer, value) of the highest value of a metric."""
        m = self.metric(metric, space=space, label=label, group=group)
        if blocks_only:
            m = m[m.layer >= 0]
        if m.value.isna().all():
            return -1, math.nan
        r = m.loc[m.value.idxmax()]
        return int(r.layer), float(r.value)

    def _primary_rows(self, **override: str) -> pd.DataFrame:
        p = {**self.primary, **{k: v for k, v in override.items() if v is not None}}
        if not p:
            raise MedinterpError(f"geometry result for {self.concept_set!r} has no primary metric")
        m = self.metric(p["metric"], space=p.get("space", "umap"), label=p.get("label"), group=p.get("group"))
        return m[m.layer >= 0]

    def _blocks(self) -> np.ndarray:
        return np.asarray([l >= 0 for l in self.layers])

    def layer_curve(self, **override: str) -> np.ndarray:
        """Primary per-layer score over blocks ``0..n_layers-1`` (higher = more structure).

        Default (the headline): the mean over prompts of :meth:`unit_scores`: chance-corrected balanced
        accuracy of an item-grouped linear probe on template-centred item-span reads (R² of a grouped
        ridge for age / stage). ``override`` (metric=, space=, label=, group=) picks other table rows,
        e.g. ``layer_curve(**res.paper_primary)`` for the paper's UMAP curve of a ``paper=True`` run.
        """
        return self._primary_rows(**override).value.to_numpy(float)

    def layer_curve_ci(self, **override: str) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` CI of :meth:`layer_curve` (headline: cluster bootstrap over items)."""
        m = self._primary_rows(**override)
        return m.ci_low.to_numpy(float), m.ci_high.to_numpy(float)

    def unit_scores(self, read: str = "span") -> UnitScores:
        """Per-prompt, per-block evidence for the map: out-of-fold probe scores of the primary labelling.

        Categorical: chance-corrected, class-balanced correctness ``(correct * n/(k n_c) - 1/k)/(1 - 1/k)``
        (its mean is the chance-corrected balanced accuracy; 0 = chance). Continuous (age, stage, dose):
        ``1 - (yhat - y)² / Var(y)`` (its mean is the grouped R²). Units are the CV groups (the age for
        age, else the item: :attr:`cv_groups`), templates the template index, covariates ``n_classes``
        and ``items_per_class``. ``read="last"`` gives the final-token read.

        These per-prompt scores are *not* independent within a unit's fold (one probe scores a whole
        fold); tests on them must refit the probe (:meth:`probe_inputs`,
        :func:`~medinterp.techniques.geometry.inference.geometry_cell`).
        """
        vals = self.unit_values if read == "span" else self.unit_values_last
        if vals is None:
            raise MedinterpError(f"geometry result for {self.concept_set!r} has no {read!r} unit scores "
                                 "(run geometry with positions='span_mean' and read_last=True)")
        return UnitScores(values=np.asarray(vals)[:, self._blocks()], units=self._units(),
                          templates=list(self.template_ids) or None, description=self.curve_label,
                          covariates=self._covariates())

    def _primary_continuous(self) -> bool:
        return self.label_kinds.get(self.primary.get("label")) == "continuous"

    def _units(self) -> list[str]:
        """The CV groups (older results without them: the age for a continuous ``age`` label, else the item)."""
        if self.cv_groups:
            return list(self.cv_groups)
        from medinterp.techniques.geometry.inference import cv_groups

        lab = self.primary.get("label")
        if lab in self.labels:
            return list(cv_groups(self.labels, lab, self.unit_ids, continuous=self._primary_continuous()))
        return list(self.unit_ids)

    def _covariates(self) -> dict[str, np.ndarray]:
        from medinterp.covariates import from_matrix
        from medinterp.techniques.geometry.contrast import structure_covariates

        if self.covariates is not None:
            return from_matrix(self.covariates, self.covariate_names)
        lab = self.primary.get("label")
        if lab not in self.labels:
            return {}
        return structure_covariates(self.labels[lab], self._units(), self._primary_continuous())

    def control_contrast(self, control: Any, twin: Any | None, *, seed: int = 0, n_boot: int = 200,
                         balance: bool = True, quick: bool = False):
        """The map's geometry cell (METHOD §0b): refit nulls, not item-level tests on out-of-fold scores.

        Both categorical tasks are subsampled to their common class structure (the cell's balance); the
        effect over the control family is medicine's excess of the probe level over its lexical baseline
        minus the control's (refit cluster-bootstrap SEs, :func:`~medinterp.techniques.geometry.contrast.geometry_cell`);
        over the twin, the model's level minus the twin's on the same prompts (paired refit bootstrap,
        :func:`~medinterp.techniques.geometry.contrast.paired_contrast`). ``quick``: 100 permutations and
        at most 100 bootstrap replicates (robustness resamples).
        """
        from medinterp.techniques.base import ControlContrast
        from medinterp.techniques.geometry.contrast import geometry_cell, paired_contrast

        # 100 refit-bootstrap replicates per family (50 in a robustness redo): each replicate refits ~20 probes,
        # 60-100 ms per family on Gemma 3 270M's full presets, and the map has 6 cells x (control + twin)
        nb = int(min(n_boot, 50 if quick else 100))
        # the refit permutations only chance-centre the levels (the contrast uses the bootstrap): 200 suffice
        cell = geometry_cell(self, control, match_structure=balance, n_perm=100 if quick else 200, n_boot=nb, seed=seed)
        pc = paired_contrast(self, twin, n_boot=nb, seed=seed + 11) if twin is not None else None
        sa, sb = self.probe_inputs().structure(), control.probe_inputs().structure()
        bal: dict = {}
        if sa and sb:
            bal = {"covariates": ["n_classes", "items_per_class"],
                   "medicine": {"n_classes": float(len(sa)), "items_per_class": float(min(sa.values()))},
                   "control": {"n_classes": float(len(sb)), "items_per_class": float(min(sb.values()))},
                   "matched": ({"n_classes": float(cell.structure[0]), "items_per_class": float(cell.structure[1])}
                               if cell.structure else {}),
                   "method": (f"both tasks subsampled to {cell.structure[0]} classes x {cell.structure[1]} items "
                              "(seeded)" if cell.structure else "class structures not matched")}
        return ControlContrast(
            effect=cell.effect, ci_low=cell.ci_low, ci_high=cell.ci_high, se=cell.se, p=cell.p,
            n_items=int(cell.medicine.n_groups), n_control=int(cell.control.n_groups),
            effect_twin=pc.effect if pc is not None else None, twin_low=pc.ci_low if pc is not None else None,
            twin_high=pc.ci_high if pc is not None else None, p_twin=pc.p if pc is not None else None, balance=bal)

    def probe_inputs(self, read: str = "span"):
        """What the refit tests need (:class:`~medinterp.techniques.geometry.inference.ProbeInputs`): the
        stored probe features of the blocks, the lexical baseline's and the embedding layer's (when the run
        read it: ``include_embed=True``), the primary label, CV groups and templates, on the prompts that
        have the label.

        Raises:
            MedinterpError: the result has no stored features (saved by an older version), or ``read`` is
                not the read they were stored for.
        """
        from medinterp.stats.cv import grouped_folds
        from medinterp.techniques.geometry.contrast import ProbeInputs
        from medinterp.techniques.geometry.inference import present_mask

        if self.probe_features is None:
            raise MedinterpError(f"geometry result for {self.concept_set!r} has no stored probe features "
                                 "(re-run geometry with this version)")
        if read != self.primary.get("space", "span"):
            raise MedinterpError(f"probe features are stored for the {self.primary.get('space')!r} read only")
        lab = self.primary["label"]
        y = np.asarray(self.labels[lab], dtype=object)
        keep = present_mask(list(y))
        cont = self._primary_continuous()
        F = np.asarray(self.probe_features)
        layers = np.asarray(self.layers)
        blocks = layers >= 0
        emb = F[np.flatnonzero(layers == -1)[0]][keep] if (layers == -1).any() else None
        lex = np.asarray(self.lexical_features)[keep] if self.lexical_features is not None else None
        tpl = np.asarray([str(t) for t in self.template_ids])[keep] if self.template_ids else None
        yk = y[keep].astype(float) if cont else np.asarray([str(v) for v in y[keep]])
        groups = np.asarray(self._units())[keep]
        n_splits, seed = int(self.params.get("n_splits", 5)), int(self.params.get("seed", 0))
        # the headline's folds exactly (headline._groups: the age as a number, else the item id string)
        fold_groups = groups.astype(float) if cont and lab == "age" else groups
        splits = grouped_folds(yk if cont else list(yk), fold_groups, cont, n_splits=n_splits, seed=seed)
        return ProbeInputs(layers=[int(x) for x in layers[blocks]], features=F[blocks][:, keep], lexical=lex,
                           embedding=emb, y=yk, groups=groups, templates=tpl, continuous=cont, n_splits=n_splits,
                           fold_seed=seed, splits=splits)

    def lexical_baseline(self, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
        """(mean, low, high) of the lexical baseline's per-prompt scores (cluster bootstrap over the CV groups)."""
        s = np.asarray(self.lexical_scores, float)
        ok = np.isfinite(s)
        bs = cluster_bootstrap(s[ok], units=np.asarray(self._units())[ok], n_boot=n_boot, ci=ci, seed=seed)
        return float(bs.estimate), float(bs.low), float(bs.high)

    @property
    def curve_label(self) -> str:
        """What :meth:`layer_curve` measures: the primary metric, its space, label and group."""
        p = self.primary
        if p.get("metric") == "probe":
            kind = "grouped R²" if self.label_kinds.get(p.get("label")) == "continuous" else \
                "chance-corrected balanced accuracy"
            return f"item-grouped probe on template-centred {p.get('space')} reads ({p.get('label')}): {kind}"
        extra = ", ".join(str(p[k]) for k in ("space", "label", "group") if p.get(k))
        return f"{p.get('metric', '?')} ({extra})" if extra else str(p.get("metric", "?"))

    def headline_dict(self) -> dict[str, Any]:
        """The headline numbers: best block of the probe curve with its CI, the lexical baseline, and the
        family questions (matched difference, age step, progression order) at that block."""
        out: dict[str, Any] = {}
        if self.primary.get("metric") != "probe":
            return out
        rows = self._primary_rows()
        if rows.value.isna().all():
            return out
        r = rows.loc[rows.value.idxmax()]
        best = int(r.layer)
        out["best_layer"] = best
        out["probe"] = [float(r.value), float(r.ci_low), float(r.ci_high)]
        if self.lexical_scores is not None and np.isfinite(self.lexical_scores).any():
            out["lexical"] = list(self.lexical_baseline())
        t = self.table
        at = t[(t.layer == best) & (t.space == self.primary["space"])]
        for metric in ("matched_diff", "age_step_ratio", "stage_spearman"):
            m = at[at.metric == metric]
            if len(m):
                q = m.iloc[0]
                out[metric] = {"value": float(q.value), "ci_low": float(q.ci_low), "ci_high": float(q.ci_high),
                               "p_value": float(q.p_value), "baseline": float(q.baseline), "label": q.label}
        pr = t[(t.metric == "participation_ratio") & (t.space == self.primary["space"]) & (t.layer >= 0)]
        if len(pr) and pr.value.notna().any():
            q = pr.loc[pr.value.idxmin()]
            out["min_participation_ratio"] = [int(q.layer), float(q.value)]
        return out

    def summary_dict(self) -> dict[str, Any]:
        """Headline numbers (see :meth:`headline_dict`), then the paper metrics when they were computed."""
        out: dict[str, Any] = {"concept_set": self.concept_set}
        out.update({f"headline_{k}": v for k, v in self.headline_dict().items()})
        t = self.table
        for lab in sorted(set(t[t.metric == "silhouette"].label)):
            for sp in ("umap", "raw"):
                out[f"best_silhouette_{sp}[{lab}]"] = self.best("silhouette", space=sp, label=lab)
        for lab in sorted(set(t[t.metric == "linearity_r2"].label)):
            out[f"best_linearity_r2[{lab}]"] = self.best("linearity_r2", label=lab)
        if (t.metric == "step_ratio").any():
            r = self.metric("step_ratio", label=t[t.metric == "step_ratio"].label.iloc[0], group="all")
            out["max_step_ratio_layer"] = _arg(r, "max")
        for m in ("spearman", "circularity"):
            if ((t.metric == m) & (t.space == "umap")).any():
                out[f"mean_{m}"] = float(self.metric(m).value.mean())
        if ((t.metric == "eff_rank") & (t.space == "raw")).any():
            out["max_mean_cosine_layer"] = _arg(self.metric("mean_cosine", space="raw"), "max")
            out["min_eff_rank_layer"] = _arg(self.metric("eff_rank", space="raw"), "min")
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def summary(self) -> str:
        """The headline numbers of :meth:`summary_dict` as a few readable lines."""
        s = self.summary_dict()
        lines = [f"[{s['concept_set']}] layer curve: {self.curve_label}"]
        for k, v in s.items():
            if k in ("concept_set", "warnings"):
                continue
            if isinstance(v, (list, tuple)) and len(v) == 2:
                lines.append(f"  {k}: layer {v[0]} ({sig3(v[1])})")
            elif isinstance(v, (list, tuple)) and len(v) == 3:  # value [CI]
                lines.append(f"  {k}: {sig3(v[0])} [{sig3(v[1])}, {sig3(v[2])}]")
            elif isinstance(v, float):
                lines.append(f"  {k}: {sig3(v)}")
            elif isinstance(v, dict) and "value" in v:  # a question at the best block: value [CI], p, label
                lines.append(f"  {k} ({v.get('label', '')}): {sig3(v['value'])} [{sig3(v.get('ci_low'))}, "
                             f"{sig3(v.get('ci_high'))}], p {sig3(v.get('p_value'))}")
            else:
                lines.append(f"  {k}: {v}")
        lines += [f"  warning: {w}" for w in s.get("warnings", [])]
        return "\n".join(lines)


def _arg(rows: pd.DataFrame, which: str) -> tuple[int, float]:
    """(layer, value) of the largest / smallest finite value of metric rows; (-1, nan) when none."""
    ok = rows[rows.value.notna()]
    if ok.empty:
        return -1, math.nan
    i = ok.value.idxmax() if which == "max" else ok.value.idxmin()
    return int(ok.loc[i, "layer"]), float(ok.loc[i, "value"])
