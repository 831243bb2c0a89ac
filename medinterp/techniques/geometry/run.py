"""The geometry pipeline: inputs → per-layer jobs (UMAP + metrics) → :class:`GeometryResult`.

:func:`geometry` runs one concept set and :func:`geometry_many` several sets with one shared pool of
UMAP workers; ``TECHNIQUE`` (:mod:`~medinterp.techniques.geometry.technique`) is the adapter the map runs.

Which labellings get a silhouette: ``labels=`` when given; else, for a set whose name is a concept
set of :data:`medinterp.concepts.CONCEPT_FAMILIES`, the categorical ones among that family's
``"labels"``; else (or when none of those is categorical) every categorical label the set declares.
The label roles are found by name: ``age`` (continuous), ``sex`` (categorical, the age groups),
``disease`` (categorical) with ``stage`` (continuous).

Example:
    >>> import medinterp as mi
    >>> res = geometry(mi.load_model(), "drugs", n_jobs=2)          # doctest: +SKIP
    >>> res.summary()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medinterp.activations import ActivationSet, collect_activations, collect_reads
from medinterp.concepts import CONCEPT_FAMILIES, load_concepts
from medinterp.errors import MedinterpError
from medinterp.results import make_provenance
from medinterp.techniques.geometry.embedding import (
    _align_2d,
    _embed_layer_inner,
    _one_blas_thread,
    _run_jobs,
    is_constant,
)
from medinterp.covariates import to_matrix
from medinterp.techniques.geometry.headline import HeadlineInput, HeadlineOutput, headline
from medinterp.techniques.geometry.contrast import structure_covariates
from medinterp.techniques.geometry.layer import TABLE_COLUMNS, LabelSpec, _present, layer_metrics
from medinterp.techniques.geometry.findings import findings_extras
from medinterp.techniques.geometry.result import GeometryResult

#: The role labels, by name (see the module docstring).
AGE_LABEL, GROUP_LABEL, DISEASE_LABEL, STAGE_LABEL = "age", "sex", "disease", "stage"


class ConstantLayerWarning(UserWarning):
    """A layer where every prompt gives the same vector (up to float32 rounding): its metrics are NaN."""


@dataclasses.dataclass
class _Prepared:
    name: str
    version: str
    values: np.ndarray  # [L, n, d]
    layers: list[int]
    texts: list[str]
    items: list[str]
    spec: LabelSpec
    primary_label: str | None
    t_acts: float
    reads: dict = dataclasses.field(default_factory=dict)  # read name -> [L, n, d] (headline)
    item_ids: list = dataclasses.field(default_factory=list)
    template_ids: list | None = None
    item_text: list = dataclasses.field(default_factory=list)
    scored: list = dataclasses.field(default_factory=list)
    lab_dict: dict = dataclasses.field(default_factory=dict)
    cont_names: list = dataclasses.field(default_factory=list)


def family_labels(set_name: str) -> list[str] | None:
    """The labellings CONCEPT_FAMILIES lists for the set ``set_name``: a family's concept set or one of its
    ``variants`` -> ``"labels"``; its ``control`` set -> ``"control_labels"`` (None when no family uses it)."""
    for fam in CONCEPT_FAMILIES.values():
        if fam["concepts"] == set_name or set_name in fam.get("variants", ()):
            return list(fam["labels"])
    for fam in CONCEPT_FAMILIES.values():
        if fam.get("control") == set_name:
            return list(fam.get("control_labels", fam["labels"]))
    return None


def family_matched(set_name: str) -> tuple[str, str] | None:
    """``(a, b)`` whose per-item probe difference a − b geometry reports, from CONCEPT_FAMILIES
    ``matched_labels`` (drugs lists ``[mechanism_class, specialty_matched]``: the paper's claim is
    specialty over mechanism, so a = specialty_matched, b = mechanism_class)."""
    for fam in CONCEPT_FAMILIES.values():
        if fam["concepts"] == set_name and fam.get("matched_labels"):
            b, a = fam["matched_labels"][:2]
            return a, b
    return None


def default_concept_sets() -> list[str]:
    """Names of the shipped concept sets that feed geometry (CONCEPT_FAMILIES order)."""
    return list(dict.fromkeys(fam["concepts"] for fam in CONCEPT_FAMILIES.values()))


def _build_spec(labels: Mapping[str, Sequence[Any]], categorical: Sequence[str], continuous: Sequence[str],
                score: Sequence[str]) -> LabelSpec:
    for nm in list(categorical) + list(continuous) + list(score):
        if nm not in labels:
            raise MedinterpError(f"label {nm!r} is not in the prompts' labels {sorted(labels)}")
    cat = {k: list(labels[k]) for k in score}
    cont = {k: [math.nan if v is None or v == "" else float(v) for v in labels[k]] for k in continuous}
    age = AGE_LABEL if AGE_LABEL in cont else None
    group = GROUP_LABEL if GROUP_LABEL in categorical else None
    stage = STAGE_LABEL if STAGE_LABEL in cont else None
    disease = DISEASE_LABEL if DISEASE_LABEL in categorical else None
    if group and group not in cat and age:
        cat[group] = list(labels[group])
    if disease and disease not in cat and stage:
        cat[disease] = list(labels[disease])
    return LabelSpec(cat, cont, age=age, group=group if age else None,
                     disease=disease if stage else None, stage=stage if disease else None)


def _check_classes(name: str, lab_dict: Mapping[str, Sequence[Any]], score: Sequence[str]) -> None:
    """Each scored categorical labelling needs 2..n-1 classes among the prompts that have it."""
    for k in score:
        present = [str(v) for v, ok in zip(lab_dict[k], _present(lab_dict[k])) if ok]
        n_cls = len(set(present))
        if not 2 <= n_cls < len(present):
            raise MedinterpError(
                f"geometry of {name!r}: categorical label {k!r} has {n_cls} distinct value(s) over {len(present)} "
                f"prompts; a silhouette needs 2..n-1 classes (filter the set differently, or pass labels=[...] "
                f"naming the labellings to score)")


def _stack(activations: Any, include_embed: bool, layers: Sequence[int] | None) -> tuple[list[int], np.ndarray]:
    act_layers, values = activations.stack("resid_post", include_embed=include_embed)
    values = np.asarray(values, dtype=np.float32)
    act_layers = [int(x) for x in act_layers]
    if not include_embed:
        keep = [i for i, l in enumerate(act_layers) if l >= 0]
        values, act_layers = values[keep], [act_layers[i] for i in keep]
    if layers is not None:
        want = set(int(x) for x in layers) | ({-1} if include_embed else set())
        keep = [i for i, l in enumerate(act_layers) if l in want]
        values, act_layers = values[keep], [act_layers[i] for i in keep]
    order = np.argsort(act_layers, kind="stable")
    return [act_layers[i] for i in order], values[order]


def _prepare(model: Any, concepts: Any, activations: Any, *, labels: Sequence[str] | None, positions: Any,
             templates: Any, include_embed: bool, layers: Sequence[int] | None, batch_size: int,
             progress: bool, read_last: bool = False, max_prompts: int | None = None,
             min_templates: int = 4) -> _Prepared:
    t0 = time.perf_counter()
    cset = load_concepts(concepts) if isinstance(concepts, str) else concepts
    if cset is not None and not hasattr(cset, "prompts"):
        raise MedinterpError(f"geometry needs a ConceptSet (items with labels); got {type(cset).__name__}")
    if cset is not None and templates is None and max_prompts:
        # budget: the first t templates with n_items * t <= max_prompts (at least min_templates of them)
        n_t = len(cset.templates)
        t = max(min(min_templates, n_t), min(n_t, max_prompts // max(len(cset), 1)))
        templates = list(range(t)) if t < n_t else None
    prompts = cset.prompts(templates) if cset is not None else None
    last_read = None
    if activations is None:
        if model is None or prompts is None:
            raise MedinterpError("geometry needs a model and concepts, or precomputed activations=")
        both = read_last and isinstance(positions, str) and positions != "last"
        if both:  # the item read and the final-token read from one forward pass
            got = collect_reads(model, prompts, [positions, "last"], sites=("resid_post",), layers=layers,
                                include_embed=include_embed, batch_size=batch_size, progress=progress)
            activations, last_read = got[positions], got["last"]
        else:
            activations = collect_activations(
                model, prompts, sites=("resid_post",), layers=layers, positions=positions,
                include_embed=include_embed, batch_size=batch_size, progress=progress,
            )
    if isinstance(activations, dict):  # collect_reads output: {"span_mean": ..., "last": ...}
        if not all(isinstance(v, ActivationSet) for v in activations.values()) or not activations:
            raise MedinterpError("activations= as a dict must map position modes to ActivationSets (collect_reads)")
        reads_in = dict(activations)
        last_read = reads_in.pop("last", None) if len(reads_in) > 1 else None
        activations = next(iter(reads_in.values()))
    if not isinstance(activations, ActivationSet):
        raise MedinterpError(f"activations= must be an ActivationSet (from collect_activations) or the dict of "
                             f"collect_reads; got {type(activations).__name__}")
    act_layers, values = _stack(activations, include_embed, layers)
    read_name = "last" if activations.positions == "last" else "span"
    reads = {read_name: values}
    if last_read is not None:
        reads["last"] = _stack(last_read, include_embed, layers)[1]
    if values.ndim != 3 or values.shape[0] == 0:
        raise MedinterpError(f"activations must be [layers, prompts, d_model]; got shape {values.shape}")
    n = values.shape[1]
    if prompts is not None and len(prompts) == n:
        lab_dict: dict[str, list] = {}
        for p in prompts:
            for k in p.labels:
                lab_dict.setdefault(k, [])
        for k in lab_dict:
            lab_dict[k] = [p.labels.get(k) for p in prompts]
        texts = [p.text for p in prompts]
        items = [str(p.item) for p in prompts]
        units = [getattr(p, "template_index", None) for p in prompts]
        units = units if None not in units and len(set(units)) > 1 else None
        item_ids = [getattr(p, "item_index", str(p.item)) for p in prompts]
        item_text = [str(p.item) for p in prompts]
    else:
        lab_dict = {k: list(v) for k, v in activations.labels.items()}
        texts = list(activations.prompts) or [""] * n
        items = texts
        units = None
        item_ids, item_text = list(texts), list(texts)
    if n < 5:
        raise MedinterpError(f"geometry needs at least 5 prompts; got {n}")
    for k, v in lab_dict.items():
        if len(v) != n:
            raise MedinterpError(f"label {k!r} has {len(v)} values for {n} prompts")
    if cset is not None:
        cat_names, cont_names = list(cset.categorical_labels), list(cset.continuous_labels)
        name, version = str(cset.name), str(getattr(cset, "version", ""))
    else:  # an ActivationSet alone: its labels' kinds are read from their values
        cat_names, cont_names = [], []
        for k, v in lab_dict.items():
            vals = [x for x in v if x is not None]
            (cont_names if vals and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                                        for x in vals) else cat_names).append(k)
        name = str(activations.provenance.get("params", {}).get("concepts", "activations"))
        version = ""
    if labels is not None:
        for lab in labels:
            if lab not in lab_dict:
                raise MedinterpError(f"labelling {lab!r} to score is not a label of {name!r}; have {sorted(lab_dict)}")
        score = list(labels)
    else:
        # CONCEPT_FAMILIES lists continuous labellings too (age, stage): those get the age /
        # progression / linearity metrics, only the categorical ones get a silhouette
        score = [s for s in (family_labels(name) or []) if s in lab_dict and s in cat_names] or cat_names
    if labels is not None:
        scored = list(labels)
    else:  # the headline probes continuous labellings too (age, stage: grouped ridge)
        scored = [s for s in (family_labels(name) or []) if s in lab_dict] or list(score) or list(cont_names)
    _check_classes(name, lab_dict, [s for s in score if s not in cont_names])
    spec = _build_spec(lab_dict, cat_names, cont_names, score)
    spec.units = units
    primary = score[0] if score else None
    return _Prepared(name, version, values, act_layers, texts, items, spec, primary, time.perf_counter() - t0,
                     reads=reads, item_ids=item_ids, template_ids=units, item_text=item_text, scored=scored,
                     lab_dict=lab_dict, cont_names=list(cont_names))


def _primary_for(spec: LabelSpec, primary_label: str | None) -> dict[str, str]:
    if spec.age:
        return {"metric": "anisotropy", "space": "umap", "label": "", "group": ""}
    if spec.disease and spec.stage:
        return {"metric": "spearman", "space": "umap", "label": spec.stage, "group": "mean"}
    lab = primary_label if primary_label in spec.categorical else next(iter(spec.categorical), None)
    if lab is None:
        return {"metric": "anisotropy", "space": "umap", "label": "", "group": ""}
    return {"metric": "silhouette", "space": "umap", "label": lab, "group": ""}


def _layer_job(X: np.ndarray, layer: int, spec: LabelSpec, umap_params: dict[str, Any],
               params: dict[str, Any]) -> tuple:
    """One layer end to end (UMAP + metrics); module level so joblib worker processes can run it."""
    with _one_blas_thread():
        c0 = time.process_time()
        constant = is_constant(X)
        e_hi, e_2, _ = _embed_layer_inner(X, umap_params)
        c1 = time.process_time()
        rows, steps, progs = layer_metrics(
            layer, X, e_hi, spec, k=params["k_anisotropy"], n_perm=params["n_perm"], n_boot=params["n_boot"],
            ci=params["ci"], seed=params["seed"], jump=tuple(params["jump"]), constant=constant,
        )
    return e_hi, e_2, rows, steps, progs, c1 - c0, time.process_time() - c1, constant


def _finish(prep: _Prepared, outs: list[tuple] | None, head: HeadlineOutput, model: Any,
            params: dict[str, Any]) -> GeometryResult:
    outs = outs or []
    rows = [r for o in outs for r in o[2]] + head.rows
    steps = [s for o in outs for s in o[3]]
    progs = [p for o in outs for p in o[4]] + ([head.progression] if head.progression is not None else [])
    t_umap = float(sum(o[5] for o in outs))
    t_metrics = float(sum(o[6] for o in outs))
    notes = []
    for layer, o in zip(prep.layers, outs):
        if o[7]:
            where = "the embedding output (layer -1)" if layer < 0 else f"layer {layer}"
            msg = (f"{prep.name}: every prompt gives the same vector at {where} (up to float32 rounding); "
                   f"its geometry metrics are NaN (residual norm and mean cosine kept)")
            notes.append(f"ConstantLayerWarning: {msg}")
            warnings.warn(msg, ConstantLayerWarning, stacklevel=3)
    labels = {k: list(v) for k, v in prep.spec.categorical.items()}
    labels.update({k: list(v) for k, v in prep.spec.continuous.items()})
    for k in prep.scored:
        labels.setdefault(k, list(prep.lab_dict[k]))
    kinds = {k: ("continuous" if k in prep.cont_names else "categorical") for k in labels}
    prov = make_provenance(model, concepts=prep.name, concepts_version=prep.version, **params)
    primary_label = prep.scored[0]
    read = "span" if "span" in head.unit else "last"
    timings = {"activations_s": prep.t_acts, "headline_s": head.seconds}
    if outs:
        timings.update(umap_cpu_s=t_umap, metrics_cpu_s=t_metrics)
    primary_cont = primary_label in prep.cont_names
    cov_m, cov_names = to_matrix(structure_covariates(
        list(prep.lab_dict[primary_label]), head.groups if head.groups is not None else prep.item_ids, primary_cont))
    return GeometryResult(
        concept_set=prep.name,
        layers=list(prep.layers),
        table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
        age_steps=pd.concat(steps, ignore_index=True) if steps else None,
        progression=pd.concat(progs, ignore_index=True) if progs else None,
        embedding_2d=_align_2d(np.stack([o[1] for o in outs])).astype(np.float32) if outs else None,
        embedding=np.stack([o[0] for o in outs]).astype(np.float32) if outs else None,
        texts=prep.texts,
        items=prep.items,
        labels=labels,
        label_kinds=kinds,
        primary={"metric": "probe", "space": read, "label": primary_label, "group": ""},
        paper_primary=_primary_for(prep.spec, prep.primary_label) if outs else {},
        unit_values=head.unit[read].astype(np.float64),
        unit_values_last=head.unit["last"].astype(np.float64) if "last" in head.unit and read != "last" else None,
        lexical_scores=np.asarray(head.lexical, np.float64),
        probe_features=head.features.get(read),
        lexical_features=head.lexical_features,
        cv_groups=[str(g) for g in head.groups] if head.groups is not None else [],
        covariates=cov_m,
        covariate_names=cov_names,
        unit_ids=[str(u) for u in prep.item_ids],
        template_ids=[int(t) if isinstance(t, (int, np.integer)) else str(t) for t in (prep.template_ids or [])],
        findings=head.findings,
        warnings=notes,
        params=params,
        timings=timings,
        provenance=prov,
    )


def geometry(
    model: Any = None,
    concepts: Any = None,
    *,
    activations: Any = None,
    labels: Sequence[str] | None = None,
    positions: Any = "span_mean",
    read_last: bool = True,
    paper: bool = False,
    pca_dims: int | None = 64,
    n_splits: int = 5,
    n_boot_items: int = 1000,
    n_null: int = 1000,
    matched_labels: Sequence[str] | None = None,
    templates: Any = None,
    max_prompts: int | None = None,
    min_templates: int = 4,
    include_embed: bool = True,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_components: int = 30,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    pca: int | None = 50,
    n_epochs: int | None = 200,
    seed: int = 0,
    n_perm: int = 100,
    n_boot: int = 200,
    ci: float = 0.95,
    k_anisotropy: int = 20,
    jump: tuple[float, float] = (17, 18),
    n_jobs: int = 1,
    variants: bool = False,
    progress: bool = True,
) -> GeometryResult:
    """Activation geometry of one concept set, per layer (METHOD.md §1).

    Args:
        model: a HookedTransformer (from :func:`medinterp.load_model`); optional with ``activations``.
        concepts: a ConceptSet or a shipped set name (``"drugs"``, ``"age"``, ...).
        activations: a precomputed ActivationSet (``resid_post`` per layer, optionally the embedding
            as layer -1) to reuse instead of running the model, or the dict of
            :func:`medinterp.activations.collect_reads` (``{"span_mean": ..., "last": ...}``: both reads
            from one shared forward); labels then come from ``concepts`` when given (same prompt order)
            or from the ActivationSet.
        labels: labellings to score (default: CONCEPT_FAMILIES, else all categorical; see the module
            docstring). Each categorical one needs 2..n-1 classes (else a MedinterpError). The first is
            the primary one: the headline probe on it is :meth:`GeometryResult.layer_curve`.
        positions: the concept read: ``"span_mean"`` (default: mean over the item's tokens),
            ``"span_last"`` or ``"last"`` (see collect_activations). Template-centred for the headline.
        read_last: also read the fixed final token (``"last"``), recorded as a second headline read.
        paper: also compute the 0.1.0 / paper metrics (UMAP-30 silhouette, anisotropy, step profile, ...)
            on the ``positions`` read (slow; for ``rule="paper"`` and the UMAP pictures).
        pca_dims: PCA components (label-free) the probes are fitted on (None = raw space).
        n_splits: folds of the item-grouped (age: age-grouped) cross-validation.
        n_boot_items: cluster-bootstrap replicates (items) for the headline CIs.
        n_null: item-level permutations for the headline nulls (progression stage order).
        matched_labels: ``(a, b)``: report the per-item probe difference a − b at matched class count and
            size (default: CONCEPT_FAMILIES ``matched_labels``, drugs: specialty vs mechanism).
        templates: which templates of the set to use (default all, or as ``max_prompts`` allows).
        max_prompts: when ``templates`` is None, use the first t templates with n_items × t <= max_prompts
            (a time budget; None = all templates).
        min_templates: the fewest templates ``max_prompts`` may leave.
        include_embed: also analyse the embedding output (layer -1).
        layers: block indices (default all).
        n_components: UMAP dims for metrics (paper: 30).
        n_neighbors, min_dist, metric: UMAP parameters.
        pca: PCA components before UMAP (None/0 = off).
        n_epochs: UMAP epochs (None = umap-learn's default, 500 for small sets).
        seed: seed for UMAP, PCA, permutations and bootstrap.
        n_perm: label permutations for the silhouette baseline.
        n_boot: bootstrap replicates for CIs (on the fixed embedding, see the package docstring).
        ci: confidence level.
        k_anisotropy: neighbours for local anisotropy (paper: 20).
        jump: the consecutive ages whose step is compared to the median step.
        n_jobs: worker processes for UMAP (1 = in this process).
        variants: also run the set's lexical-cue-free variants (CONCEPT_FAMILIES ``variants``: ``age_words``
            for age, ``progression_plain`` for progression) at mid depth only (the forward stops there) and
            keep their findings statistics in ``result.variant_findings`` (the findings rules test the age jump
            and circularity on both forms). Needs ``model``.
        progress: show progress bars.

    Returns:
        :class:`GeometryResult`. A layer where all prompts give one vector (up to rounding) gets NaN
        metrics and a :class:`ConstantLayerWarning`, also listed in ``result.warnings``.

    Example:
        >>> import medinterp as mi
        >>> res = mi.geometry(mi.load_model(), "drugs")               # doctest: +SKIP
        >>> res.best("silhouette", label="mechanism")                  # doctest: +SKIP
        >>> res.to_html("drugs.html")                                   # doctest: +SKIP
    """
    params = {k: v for k, v in locals().items() if k in _DEFAULTS}
    return geometry_many(model, [concepts] if activations is None or concepts is not None else [None],
                         activations=[activations] if activations is not None else None, **params)[0]


#: The run parameters of :func:`geometry` and their defaults (one source for both entry points).
_DEFAULTS: dict[str, Any] = {
    k: p.default for k, p in inspect.signature(geometry).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "activations"
}


def geometry_many(model: Any, concepts: Sequence[Any], *, activations: Sequence[Any] | None = None,
                  **params: Any) -> list[GeometryResult]:
    """:func:`geometry` for several concept sets; the UMAP jobs of all sets share one worker pool.

    Args: as :func:`geometry` (same keyword parameters and defaults); ``concepts`` is a list,
    ``activations`` (optional) a parallel list. ``labels`` applies to every set (usually leave it None).

    Example:
        >>> results = geometry_many(model, ["symptoms", "drugs"])     # doctest: +SKIP
    """
    unknown = sorted(set(params) - set(_DEFAULTS))
    if unknown:
        raise MedinterpError(f"geometry: unknown parameter(s) {unknown}; known: {sorted(_DEFAULTS)}")
    p = {**_DEFAULTS, **params}
    if isinstance(concepts, (str, bytes)) or not isinstance(concepts, Sequence):
        raise MedinterpError("geometry_many: concepts must be a list of sets or names")
    if activations is not None and len(activations) != len(concepts):
        raise MedinterpError(f"geometry_many: {len(activations)} activation sets for {len(concepts)} concept sets")
    if not 0 < p["ci"] < 1:
        raise MedinterpError(f"ci must be in (0, 1); got {p['ci']}")
    if p["n_components"] < 2:
        raise MedinterpError(f"n_components must be ≥ 2; got {p['n_components']}")
    positions = p["positions"]
    if isinstance(positions, str) and positions not in ("last", "span_mean", "span_last"):
        raise MedinterpError(f"positions must be 'last', 'span_mean' or 'span_last'; got {positions!r}")
    run_params = dict(positions=positions if isinstance(positions, str) else "custom",
                      read_last=p["read_last"], paper=p["paper"], pca_dims=p["pca_dims"], n_splits=p["n_splits"],
                      n_boot_items=p["n_boot_items"], n_null=p["n_null"], max_prompts=p["max_prompts"],
                      min_templates=p["min_templates"],
                      matched_labels=list(p["matched_labels"]) if p["matched_labels"] else None,
                      **{k: p[k] for k in ("include_embed", "n_components", "n_neighbors", "min_dist", "metric",
                                           "pca", "n_epochs", "seed", "n_perm", "n_boot", "ci", "k_anisotropy")},
                      jump=list(p["jump"]), n_jobs=p["n_jobs"], labels=list(p["labels"]) if p["labels"] else None,
                      variants=bool(p["variants"]))
    preps = [
        _prepare(model, c, activations[i] if activations is not None else None, labels=p["labels"],
                 positions=positions, templates=p["templates"], include_embed=p["include_embed"],
                 layers=p["layers"], batch_size=p["batch_size"], progress=p["progress"], read_last=p["read_last"],
                 max_prompts=p["max_prompts"], min_templates=p["min_templates"])
        for i, c in enumerate(concepts)
    ]
    t0 = time.perf_counter()
    if p["paper"]:
        umap_params = {k: p[k] for k in ("n_components", "n_neighbors", "min_dist", "metric", "pca", "n_epochs",
                                         "seed")}
        jobs = [(pr.values[i], layer, pr.spec, umap_params, run_params) for pr in preps
                for i, layer in enumerate(pr.layers)]
        out = _run_jobs(_layer_job, jobs, p["n_jobs"], p["progress"], "UMAP + metrics")
    else:
        out = []
    t_wall = time.perf_counter() - t0
    results, k = [], 0
    for pr in preps:
        chunk = out[k : k + len(pr.layers)] if p["paper"] else None
        k += len(pr.layers)
        head = headline(_headline_input(pr, p["matched_labels"]), pca_dims=p["pca_dims"], n_splits=p["n_splits"],
                        n_boot=p["n_boot_items"], n_null=p["n_null"], ci=p["ci"], seed=p["seed"],
                        jump=tuple(p["jump"]))
        res = _finish(pr, chunk, head, model, run_params)
        if p["variants"] and model is not None:
            res.variant_findings = variant_findings(model, pr.name, p)
        if p["paper"]:
            res.timings["layers_wall_all_sets_s"] = t_wall
        results.append(res)
    return results


def _headline_input(pr: _Prepared, matched_labels: Sequence[str] | None) -> HeadlineInput:
    matched = tuple(matched_labels) if matched_labels else family_matched(pr.name)
    if matched is not None:
        missing = [m for m in matched if m not in pr.lab_dict]
        if len(matched) != 2 or missing:
            if matched_labels:
                raise MedinterpError(f"matched_labels must be two labels of {pr.name!r}; missing {missing}")
            matched = None  # an older data file without the matched labellings
    cont = set(pr.cont_names)
    age = AGE_LABEL if AGE_LABEL in cont else None
    stage = STAGE_LABEL if STAGE_LABEL in cont and DISEASE_LABEL in pr.lab_dict else None
    disease = DISEASE_LABEL if stage else None
    if disease is None:  # control families name their grouping otherwise (e.g. process): the first categorical
        cats = [k for k in pr.lab_dict if k not in cont]
        if STAGE_LABEL in cont and cats:
            stage, disease = STAGE_LABEL, cats[0]
    return HeadlineInput(layers=list(pr.layers), reads=pr.reads, item_text=pr.item_text, item_ids=pr.item_ids,
                         templates=pr.template_ids or [0] * len(pr.item_ids), labels=pr.lab_dict, continuous=cont,
                         scored=pr.scored, matched=matched, age=age, disease=disease, stage=stage)


def family_variants(set_name: Any) -> list[str]:
    """The lexical-cue-free variants CONCEPT_FAMILIES lists for the concept set ``set_name`` ([] if none)."""
    if not isinstance(set_name, str):
        return []
    return [v for fam in CONCEPT_FAMILIES.values() if fam["concepts"] == set_name for v in fam.get("variants", ())]


def variant_findings(model: Any, set_name: str, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The findings statistics of each variant of ``set_name``, read at mid depth only.

    Each variant runs the same headline as its set (same parameters) on block ``n_layers // 2`` alone, the
    layer :func:`~medinterp.techniques.geometry.findings.findings_extras` reads every layer-wise question at,
    so the forward stops there, on its first ``min_templates`` templates. Per-layer statistics (collapse) are
    dropped: one layer cannot show a dip.
    """
    mid = int(model.cfg.n_layers) // 2
    # the set's own minimum of templates (a time budget: ~25 s for age_words and progression_plain on Gemma 3
    # 270M, where all templates would take ~40 s; the full map's README budget has no room for more)
    n_tpl = max(int(params.get("min_templates") or 4), 1)
    q = {**params, "variants": False, "layers": [mid], "include_embed": False, "paper": False,
         "labels": None, "matched_labels": None, "templates": list(range(n_tpl)), "max_prompts": None}
    out: dict[str, dict[str, Any]] = {}
    for name in family_variants(set_name):
        res = geometry_many(model, [name], **q)[0]
        found = findings_extras(model, res, mid=mid).get("findings", {})
        out[name] = {k: stat for k, stat in found.items() if "per_layer" not in stat}
    return out
