"""Running a knowledge map: jobs from the technique registry, saved as they finish, resumed on rerun.

A *job* is one technique on one family (a map row). The technique, its size presets (``"quick"`` /
``"full"``), the inputs it needs, whether it can share work across families (``run_many``) and its
report decorations (``extras``) all come from :data:`medinterp.techniques.REGISTRY`; nothing here
knows a technique by name.

Each finished job is saved to ``<work>/<family>/<technique>/`` with a ``job.json`` holding its
fingerprint (:func:`medinterp.store.fingerprint` over the *content* of the family's inputs, the
technique parameters, the model identity and the medinterp version). A rerun loads a saved result only
when the fingerprint matches and the result loads; otherwise it recomputes and the log says why.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.maps.band_checks import check_bands
from medinterp.maps.cells import said
from medinterp.maps.controls import mark_all
from medinterp.maps.jobs import (  # noqa: F401  (public here since 0.1.0)
    _load_finished,
    _save_job,
    check_family_inputs,
    claims_work_dir,
    input_content,
    job_dir,
    job_fingerprint,
    saved_jobs,
)
from medinterp.maps.families import (  # noqa: F401  (public here since 0.1)
    CONTROL_SUFFIX,
    TWIN_SUFFIX,
    _family,
    _is_shipped,
    check_techniques,
    control_specs,
    family_specs,
)
from medinterp.maps.matrix import CONTROL, MODEL, TWIN, claim_job, job_matrix
from medinterp.maps.side_extras import add_side_extras
from medinterp.maps.twin_plan import plan_twin_skips
from medinterp.maps.synthesis import MAP_RULES, KnowledgeMap, interval_rules, registered_techniques, validate_params
from medinterp.models.twin import parked, random_twin, twin_needs_room
from medinterp.results import Result, _jsonable, make_provenance
from medinterp.store import model_identity
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import Family, MissingInput, Technique

log = logging.getLogger("medinterp")

def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def result_curve(result: Any, n_layers: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], str]:
    """``(curve, (ci_low, ci_high), curve label)`` of a technique result, validated to ``n_layers`` blocks."""
    curve = np.asarray(result.layer_curve(), dtype=float)
    if curve.shape != (n_layers,):
        raise MedinterpError(f"{result.kind}.layer_curve() has shape {curve.shape}, expected ({n_layers},)")
    lo, hi = (np.asarray(a, dtype=float) for a in result.layer_curve_ci())
    if lo.shape != (n_layers,) or hi.shape != (n_layers,):
        raise MedinterpError(f"{result.kind}.layer_curve_ci() has shapes {lo.shape}, {hi.shape}, expected ({n_layers},)")
    return curve, (lo, hi), str(result.curve_label)


# ============================================================================ the runner
@dataclasses.dataclass
class _Run:
    """Bookkeeping of one knowledge_map call."""

    n_layers: int
    curves: dict
    cis: dict
    status: dict
    curve_names: dict = dataclasses.field(default_factory=dict)
    results: dict = dataclasses.field(default_factory=dict)
    result_dirs: dict = dataclasses.field(default_factory=dict)
    timing: dict = dataclasses.field(default_factory=dict)
    peak_mb: dict = dataclasses.field(default_factory=dict)
    elsewhere: dict = dataclasses.field(default_factory=dict)  # job key -> the process that holds it
    missing: list = dataclasses.field(default_factory=list)  # merge only: jobs with no saved result

    def record(self, fam: str, tech: str, res: Result, rdir: Path | None) -> None:
        curve, ci, name = result_curve(res, self.n_layers)
        key = f"{fam}/{tech}"
        self.curves[fam][tech] = curve
        self.cis[fam][tech] = ci
        self.status[fam][tech] = res.unavailable() or "ok"  # e.g. "not known by the model: ..."
        self.curve_names.setdefault(tech, name)
        self.curve_names[key] = name
        self.results[key] = res
        if rdir is not None:
            self.result_dirs[key] = str(rdir)


def _run_shared(model: Any, tech: Technique, fams: Mapping[str, Family], pending: list[str], params: dict,
                work: Path | None, fps: dict[str, str], progress: bool, run: _Run,
                dirnames: Mapping[str, str] | None = None, label: str = "model") -> dict[str, Result]:
    """One ``run_many`` call for the pending families of a technique that shares work; each result is
    saved as soon as the batch returns. On error the families run one by one (each records its own)."""
    t0 = time.perf_counter()
    out: dict[str, Result] = {}

    def save(i: int, res: Result) -> None:  # as each family finishes: an interrupt keeps the finished ones
        f = pending[i]
        if work is not None:
            d = (dirnames or {}).get(f, f)
            _save_job(res, job_dir(work, d, tech.name), fps[f], f"{d}/{tech.name}")
        out[f] = res

    try:
        results = tech.run_many(model, [fams[f] for f in pending], progress=progress, on_result=save, **params)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - logged; the unfinished families then run (and fail) on their own
        log.warning("%s: shared run of %d families failed (%s: %s); running the %d unfinished one by one",
                    tech.name, len(pending), type(e).__name__, e, len(pending) - len(out))
        return out
    run.timing[f"batch:{label}/{tech.name}"] = round(time.perf_counter() - t0, 2)
    run.peak_mb[f"batch:{label}/{tech.name}"] = round(peak_rss_mb(), 1)
    log.info("knowledge map: shared run of %s on %d families (%s) in %.1f s", tech.name, len(pending), label,
             run.timing[f"batch:{label}/{tech.name}"])
    if len(results) != len(pending):
        raise MedinterpError(f"{tech.name}.run_many returned {len(results)} results for {len(pending)} families")
    for i, res in enumerate(results):  # a run_many_fn that does not call on_result: saved now
        if pending[i] not in out:
            save(i, res)
    return out


def _claim(work: Path | None, fam: Family, t: str, fp: str, rerun: bool, claims: dict, busy: dict,
           loaded: dict, key: tuple[str, str]) -> bool:
    """Claim a job before running it (:func:`~medinterp.maps.matrix.claim_job`); False where another process
    holds it (``busy[key]`` says which) or finished it meanwhile (then it is in ``loaded``)."""
    if work is None or key in claims:
        return True
    c = claim_job(work, fam.name, t)
    if isinstance(c, str):
        busy[key] = c
        return False
    claims[key] = c
    res = None if rerun else _load_finished(job_dir(work, fam.name, t), fp, f"{fam.name}/{t}", quiet=True)
    if res is not None:  # another process saved it between our look and our claim: reuse, never rerun
        loaded[key] = res
        claims.pop(key).release()
        return False
    return True


def _run_jobs(model: Any, fams: Mapping[str, Family], techniques: Sequence[str], kw: Mapping[str, dict],
              work: Path | None, fps: Mapping[tuple[str, str], str], *, rerun: bool, progress: bool, run: _Run,
              desc: str, label: str = "model", loaded: dict | None = None,
              skip: Mapping[tuple[str, str], str] | None = None, compute: bool = True) -> tuple[dict, dict]:
    """Run (or load) every (row, technique) job of one run kind; ``(results, status)`` keyed by (row, t).
    ``skip``: jobs not to run, with the reason (their status). With a work dir each job is claimed while it
    runs, so processes sharing the dir (shards, workers) never run one job at once; a job another process
    holds ends ``not_run`` here and is listed in ``run.elsewhere``. ``compute=False`` (a merge): a job with no
    saved result is not run but listed in ``run.missing``."""
    from tqdm.auto import tqdm

    results: dict[tuple[str, str], Result] = {}
    status: dict[tuple[str, str], str] = {}
    loaded = dict(loaded or {})
    skip = dict(skip or {})
    claims: dict = {}
    busy: dict = {}
    try:
        for t in techniques:  # finished jobs from the work dir; shared runs of what is left
            tech = REGISTRY[t]
            pending = []
            for f, fam in fams.items():
                if (f, t) in loaded or (f, t) in skip:
                    continue
                rdir = job_dir(work, fam.name, t) if work is not None else None
                res = None if rerun else _load_finished(rdir, fps[f, t], f"{fam.name}/{t}")
                if res is not None:
                    loaded[f, t] = res
                elif all(getattr(fam, need) is not None for need in tech.needs):
                    pending.append(f)
            if tech.run_many_fn is not None and len(pending) >= 2 and compute:
                pending = [f for f in pending if _claim(work, fams[f], t, fps[f, t], rerun, claims, busy, loaded,
                                                        (f, t))]
            if tech.run_many_fn is not None and len(pending) >= 2 and compute:
                sub = {f: fams[f] for f in pending}
                shared = _run_shared(model, tech, sub, pending, kw[t], work, {f: fps[f, t] for f in pending},
                                     progress, run, dirnames={f: fams[f].name for f in pending}, label=label)
                loaded.update({(f, t): r for f, r in shared.items()})
                for f in shared:
                    if (f, t) in claims:
                        claims.pop((f, t)).release()
        status.update({k: said("not_run", f"not run: {why}") for k, why in skip.items() if k not in loaded})
        jobs = [(f, t) for f in fams for t in techniques if (f, t) not in status]
        bar = tqdm(jobs, desc=desc, disable=not progress, unit="job")
        for f, t in bar:
            fam = fams[f]
            key = f"{fam.name}/{t}"
            bar.set_postfix_str(key)
            rdir = job_dir(work, fam.name, t) if work is not None else None
            t0 = time.perf_counter()
            try:
                res = loaded.get((f, t))
                if res is None and not compute:
                    fam.require(t, REGISTRY[t].needs)  # a job that cannot run is not missing (MissingInput below)
                    status[f, t] = said("not_run", "no saved result (merge only)")
                    run.missing.append(key)
                    continue
                if res is None and not _claim(work, fam, t, fps[f, t], rerun, claims, busy, loaded, (f, t)):
                    res = loaded.get((f, t))
                    if res is None:
                        status[f, t] = said("not_run", f"not run here: {busy[f, t]}")
                        run.elsewhere[key] = busy[f, t]
                        continue
                if res is None:
                    res = REGISTRY[t].run(model, fam, progress=progress, **kw[t])
                    if rdir is not None:
                        _save_job(res, rdir, fps[f, t], key)
                results[f, t] = res
                status[f, t] = "ok"
            except MissingInput as e:
                status[f, t] = said("not_run", f"not run: {e}")
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded in the map's status and logged; the other jobs go on
                status[f, t] = said("failed", f"failed: {type(e).__name__}: {e}"[:300])
                log.error("knowledge map: %s failed: %s: %s", key, type(e).__name__, e, exc_info=True)
                if progress:
                    tqdm.write(f"[knowledge map] {key} failed: {type(e).__name__}: {e}")
            finally:
                if (f, t) in claims:
                    claims.pop((f, t)).release()
                run.timing[key] = round(time.perf_counter() - t0, 2)
                run.peak_mb[key] = round(peak_rss_mb(), 1)
                log.info("knowledge map: %s %s in %.1f s (peak RSS %.0f MB)", key, status.get((f, t), "stopped"),
                         run.timing[key], run.peak_mb[key])
    finally:
        for c in claims.values():  # an interrupt: no claim outlives the run
            c.release()
    return results, status


@claims_work_dir
def knowledge_map(
    model: Any,
    concepts: Sequence[str | Family] | Mapping[str, Any] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out_dir: str | os.PathLike | None = None,
    technique_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    rerun: bool = False,
    model_name: str | None = None,
    controls: bool = True,
    rule: str = "controls",
    alpha: float = 0.05,
    correction: str = "holm",
    min_run: int = 2,
    robustness: float = 0.8,
    n_perm: int = 20000,
    n_boot: int = 2000,
    n_resamples: int = 20,
    twin_seed: int = 0,
    twin: Any = None,
    validate_bands: bool | Mapping[str, Any] | None = None,
    merge_only: bool = False,
    **params: Any,
) -> KnowledgeMap:
    """Run the registered techniques on each concept family and its controls, and mark where medicine wins.

    With ``controls=True`` (default) each technique runs three times per family: on (model, family),
    on (model, control family) and on (random-init twin, family); the twin
    (:func:`medinterp.models.twin.random_twin`, seed ``twin_seed``) is loaded once and freed after its
    jobs. ``rule="controls"`` marks a layer only where the technique's unit scores beat both controls
    (:func:`medinterp.maps.controls.effect_over_control`: item-level CIs and p-values, ``correction``
    across layers at ``alpha``, runs >= ``min_run``, kept in >= ``robustness`` of the resamples).
    "No interval" is a valid outcome. ``rule="paper"`` draws the paper's rules (METHOD.md §5) instead.

    Args:
        model: a HookedTransformer (e.g. from :func:`medinterp.load_model`).
        concepts: the map rows (see :func:`family_specs`; a mapping row may add ``"control"``).
        techniques: names from :data:`medinterp.techniques.REGISTRY` (default: all of them).
        quick: each technique's ``"quick"`` preset instead of ``"full"``.
        out_dir: work directory: every job is saved as it finishes (``<dir>/<family>/<technique>/``,
            ``<dir>/<family>__control/<technique>/``, ``<dir>/<family>__twin/<technique>/``) and a rerun
            loads the finished ones (fingerprints name the run kind and control). The map goes to ``<dir>/map``.
        technique_kwargs: per-technique overrides of the preset, ``{technique: {param: value}}``.
        progress: progress bars.
        rerun: ignore finished results in ``out_dir`` and recompute.
        model_name: display name (default: the model's spec or config name).
        controls: run the control family and the random twin.
        rule: ``"controls"`` or ``"paper"``.
        alpha, correction, min_run, robustness, n_perm, n_boot, n_resamples: the marking (see
            :func:`~medinterp.maps.controls.effect_over_control`).
        twin_seed: init seed of the random twin.
        twin: a ready twin model (default: :func:`~medinterp.models.twin.random_twin` of ``model``;
            a given twin's jobs are fingerprinted by its own identity).
        validate_bands: (default: on for a full map, off for ``quick``) check each marked band causally (:mod:`medinterp.maps.band_checks`: necessity and
            sufficiency of the band as a unit against random layer sets; ~1 min a band on Gemma 3 270M);
            a dict: ``validate_band`` keyword arguments. Rows in ``km.extras["band_checks"]``.
        merge_only: assemble the map from the jobs saved in ``out_dir`` (by shards or workers:
            :func:`~medinterp.maps.shards.run_shard`) and compute none; a job with no saved result is a
            :class:`MedinterpError` naming it.
        **params: paper-rule thresholds (see :data:`~medinterp.maps.synthesis.DEFAULT_PARAMS`).

    Returns:
        A :class:`KnowledgeMap`. A failing job is recorded in ``kmap.status`` (model runs) or
        ``kmap.control_status`` (why a technique has no effect over control) and logged.

    Example:
        >>> import medinterp as mi                                          # doctest: +SKIP
        >>> kmap = mi.knowledge_map(mi.load_model(), quick=True, out_dir="work")  # doctest: +SKIP
        >>> kmap.to_html("report.html")                                     # doctest: +SKIP
    """
    # validate everything before any work
    techniques = check_techniques(techniques)
    validate_params(**params)
    if rule not in MAP_RULES:
        raise MedinterpError(f"knowledge_map: rule must be one of {MAP_RULES}, not {rule!r}")
    if rule == "controls" and not controls:
        raise MedinterpError("knowledge_map: rule='controls' needs controls=True (or pass rule='paper')")
    if correction not in ("holm", "fdr_bh") or not 0 < alpha < 1 or not 0 <= robustness <= 1 or min_run < 1:
        raise MedinterpError(f"knowledge_map: need correction holm/fdr_bh, 0 < alpha < 1, 0 <= robustness <= 1, "
                             f"min_run >= 1 (got {correction!r}, {alpha}, {robustness}, {min_run})")
    if min(n_perm, n_boot, n_resamples) < 1:
        raise MedinterpError(f"knowledge_map: n_perm, n_boot and n_resamples must be >= 1 (got {n_perm}, {n_boot}, "
                             f"{n_resamples})")
    unknown = sorted(set(technique_kwargs or {}) - set(techniques))
    if unknown:
        raise MedinterpError(f"knowledge_map: technique_kwargs for {unknown}, which are not run ({techniques})")
    size = "quick" if quick else "full"
    marking_kw = dict(alpha=alpha, correction=correction, min_run=min_run, robustness=robustness, n_perm=n_perm,
                      n_boot=n_boot, n_resamples=n_resamples)
    twin_skipped: dict = {}
    premarked: dict = {}
    fams = family_specs(concepts)
    ctrl_fams = control_specs(concepts) if controls else {}
    check_family_inputs([*fams.values(), *ctrl_fams.values()])  # a malformed user file: an error now, not a failed cell later
    kw = {t: REGISTRY[t].params(size, (technique_kwargs or {}).get(t)) for t in techniques}
    n_layers = int(model.cfg.n_layers)
    info = getattr(model, "medinterp_info", {}) or {}
    model_name = model_name or str(info.get("spec") or getattr(model.cfg, "model_name", "model"))
    work = Path(out_dir) if out_dir is not None else None
    run = _Run(n_layers, {f: {} for f in fams}, {f: {} for f in fams}, {f: {} for f in fams})
    t_start = time.perf_counter()
    matrix = job_matrix(model, fams, ctrl_fams, techniques, kw, controls=controls, twin_seed=twin_seed, twin=twin)
    fps = {(j.row, j.technique): j.fingerprint for j in matrix if j.kind == MODEL}
    if merge_only and (work is None or rerun):
        raise MedinterpError("knowledge_map: merge_only=True assembles saved jobs: it needs out_dir and rerun=False")
    main, main_status = _run_jobs(model, fams, techniques, kw, work, fps, rerun=rerun, progress=progress, run=run,
                                  desc="knowledge map", compute=not merge_only)
    for (f, t), st in main_status.items():
        if st == "ok":
            run.record(f, t, main[f, t], job_dir(work, f, t) if work is not None else None)
        else:
            run.status[f][t] = st
    ctrl_res: dict = {}
    ctrl_status: dict = {}
    twin_res: dict = {}
    twin_status: dict = {}
    if controls:
        cf = {f: c for f, c in ctrl_fams.items() if c is not None}
        cfps = {(j.row, j.technique): j.fingerprint for j in matrix if j.kind == CONTROL}
        ctrl_res, ctrl_status = _run_jobs(model, cf, techniques, kw, work, cfps, rerun=rerun, progress=progress,
                                          run=run, desc="control families", label="control family",
                                          compute=not merge_only)
        tfams = {j.row: j.family for j in matrix if j.kind == TWIN}
        tfps = {(j.row, j.technique): j.fingerprint for j in matrix if j.kind == TWIN}
        saved = {} if rerun or work is None else {
            k: r for k in tfps if (r := _load_finished(job_dir(work, tfams[k[0]].name, k[1]), tfps[k], k[0])) is not None}
        # a twin run that cannot change the map (too few items for its paired test, or no layer beats the
        # control family: medinterp.maps.twin_plan) is not made
        # (whether or not a saved twin result exists: the same inputs give the same map)
        twin_skipped, premarked = plan_twin_skips(main, main_status, ctrl_res, ctrl_status, list(tfps), marking_kw,
                                                  REGISTRY)
        saved = {k: r for k, r in saved.items() if k not in twin_skipped}
        todo = [k for k in tfps if k not in saved and k not in twin_skipped
                and all(getattr(fams[k[0]], n) is not None for n in REGISTRY[k[1]].needs)]
        own_twin = twin is None and bool(todo) and not merge_only
        t0 = time.perf_counter()
        # a full-size model and its twin do not both fit on one GPU: the model waits in host memory meanwhile
        with parked(model, own_twin and twin_needs_room(model)) as park:
            try:
                tw_model = random_twin(model, seed=twin_seed, device=park.device) if own_twin else twin
            except Exception as e:  # noqa: BLE001 - recorded: every twin job shows why, the map stands
                log.error("knowledge map: random twin could not be built: %s: %s", type(e).__name__, e)
                twin_status = {k: said("failed", f"failed: random twin could not be built: {type(e).__name__}: "
                                       f"{e}"[:300]) for k in tfps}
            else:
                run.timing["twin_load"] = round(time.perf_counter() - t0, 2)
                twin_res, twin_status = _run_jobs(tw_model, tfams, techniques, kw, work, tfps, rerun=rerun,
                                                  progress=progress, run=run, desc="random twin",
                                                  label="random twin", loaded=saved, skip=twin_skipped,
                                                  compute=not merge_only)
                if own_twin:
                    del tw_model
                    gc.collect()
    if run.missing:
        raise MedinterpError(
            f"knowledge_map: cannot merge {work}: {len(run.missing)} job(s) have no saved result "
            f"({', '.join(run.missing[:6])}{' ...' if len(run.missing) > 6 else ''}); run the shards that hold them, "
            "or run without merge_only / --merge to compute them here")
    if run.elsewhere:
        raise MedinterpError(
            f"knowledge_map: {len(run.elsewhere)} job(s) are being run by other processes sharing {work} (shards or "
            f"workers), so the map cannot be assembled yet; every job finished here is saved. Run again when they "
            f"finish. First: {next(iter(run.elsewhere))}: {next(iter(run.elsewhere.values()))}")
    t0 = time.perf_counter()
    notes: dict = {}
    balance: dict = {}
    cells: dict = {}
    cstats, cstatus = mark_all(fams, techniques, main, main_status, ctrl_res, ctrl_status, ctrl_fams, twin_res,
                               twin_status, controls=controls, notes=notes, twin_skipped=twin_skipped, premarked=premarked,
                               balance_out=balance, cells_out=cells, **marking_kw)
    run.timing["marking"] = round(time.perf_counter() - t0, 2)
    run.timing["total"] = round(time.perf_counter() - t_start, 2)
    cparams = {"alpha": alpha, "correction": correction, "min_run": min_run, "robustness": robustness,
               "n_perm": n_perm, "n_boot": n_boot, "n_resamples": n_resamples, "twin_seed": twin_seed,
               "controls": controls}
    prov = make_provenance(model, concepts=list(fams), techniques=techniques, size=size,
                           technique_kwargs=_jsonable(kw), synthesis=params, rule=rule, controls=cparams)
    prov["timing_s"] = run.timing
    prov["peak_rss_mb_after"] = run.peak_mb
    prov["peak_rss_mb"] = round(peak_rss_mb(), 1)
    km = KnowledgeMap.from_curves(
        run.curves, n_layers=n_layers, cis=run.cis, techniques=techniques, status=run.status,
        labels={f: fams[f].label or f for f in fams}, model_name=model_name, provenance=prov,
        rules=interval_rules(techniques), rule=rule, control_stats=cstats, control_status=cstatus,
        control_params=cparams, control_notes=notes, control_balance=balance, control_cells=cells, **params,
    )
    km.curve_names.update(run.curve_names)
    km.result_dirs.update(run.result_dirs)
    km._results = run.results
    _add_extras(model, km, run.results)
    add_side_extras(model, km, ctrl_res, twin_res, result_curve)  # what the findings rules compare with
    if validate_bands is None:
        validate_bands = not quick  # issue 22: the full map validates each marked band
    if validate_bands:
        t0 = time.perf_counter()
        km.extras["band_checks"] = check_bands(model, km.intervals, fams, work=work,
                                               check=validate_bands if isinstance(validate_bands, Mapping) else None)
        run.timing["band_checks"] = round(time.perf_counter() - t0, 2)
    if work is not None:
        km.save(work / "map")
    return km


def _add_extras(model: Any, km: KnowledgeMap, results: Mapping[str, Result]) -> None:
    """Report decorations of techniques with ``extras``: ``km.extras[name][family] = value`` (each
    value a dict noting its ``technique``). A failing decoration is logged and noted in the provenance.

    Keys the map itself reads (see :mod:`medinterp.maps.findings`): ``"findings"`` (statistics of the
    findings table, merged across techniques), ``"findings_of"`` (``{concept set: statistics}`` of other
    sets the run measured, e.g. a row's variants: stored as findings rows of those names), ``"block_criticality"`` (the strip shown once for all
    families), ``"attention"`` (attention views)."""
    for key, res in results.items():
        fam, t = key.rsplit("/", 1)
        tech = REGISTRY[t]
        if tech.extras is None:
            continue
        try:
            extra = tech.extras(model, res)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - an optional decoration: logged and noted, the map stands
            if isinstance(e, MedinterpError) and res.unavailable() is not None:  # an expected state: a family
                # the model does not know has nothing to decorate; noted, not logged as a failure
                log.info("knowledge map: %s has no report extras: %s", key, res.unavailable())
                km.provenance.setdefault("extras_skipped", {})[key] = str(res.unavailable())[:300]
                continue
            log.warning("knowledge map: %s report extras failed: %s: %s", key, type(e).__name__, e)
            km.provenance.setdefault("extras_failed", {})[key] = f"{type(e).__name__}: {e}"[:300]
            continue
        for name, value in extra.items():
            if name == "findings_of" and isinstance(value, Mapping):  # statistics of other concept sets (a
                # row's variants): findings rows of their own, beside the row's
                found = km.extras.setdefault("findings", {})
                for other, stats in value.items():
                    found[str(other)] = {**(found.get(str(other)) or {}), **dict(stats)}
                continue
            slot = km.extras.setdefault(name, {})
            if name == "findings" and isinstance(value, Mapping):  # several techniques may add statistics
                slot[fam] = {**(slot.get(fam) or {}), **value}
                continue
            slot[fam] = {**value, "technique": t} if isinstance(value, Mapping) else value

