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
import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medinterp.errors import MedinterpError
from medinterp.maps.synthesis import KnowledgeMap, interval_rules, registered_techniques, validate_params
from medinterp.results import Result, _jsonable, make_provenance
from medinterp.store import fingerprint
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import Family, MissingInput, Technique

log = logging.getLogger("medinterp")

_FAMILY_KEYS = frozenset({"concepts", "pairs", "label"})
_JOB_FILE = "job.json"


# ============================================================================ families
def family_specs(families: Sequence[str | Family] | Mapping[str, Any] | None = None) -> dict[str, Family]:
    """Map rows → :class:`~medinterp.techniques.base.Family` (their concept and pair sets).

    Args:
        families: None (every family of :data:`medinterp.concepts.CONCEPT_FAMILIES`); a list of shipped
            family names or ``Family`` objects; or a mapping ``{row: Family}`` or ``{row: {"concepts":
            ..., "pairs": ..., "label": ...}}`` (those keys only, each optional) of your own.

    Example:
        >>> family_specs(["drugs"])["drugs"].pairs
        'drug_pairs'
        >>> family_specs({"mine": {"concept": "x"}})
        Traceback (most recent call last):
        ...
        medinterp.errors.MedinterpError: knowledge_map: family 'mine': unknown key(s) ['concept']; a family mapping has the keys ['concepts', 'label', 'pairs'] (or pass a Family)
    """
    from medinterp.concepts import CONCEPT_FAMILIES

    if isinstance(families, Mapping):
        return {str(k): _family(str(k), v) for k, v in families.items()}
    names = list(CONCEPT_FAMILIES) if families is None else list(families)
    out: dict[str, Family] = {}
    for f in names:
        if isinstance(f, Family):
            out[f.name] = f
            continue
        if not isinstance(f, str) or f not in CONCEPT_FAMILIES:
            raise MedinterpError(f"knowledge_map: unknown concept family {f!r}; known: {list(CONCEPT_FAMILIES)} "
                                 "(or pass a Family / a mapping {row: {'concepts': ..., 'pairs': ...}})")
        spec = CONCEPT_FAMILIES[f]
        out[f] = Family(f, concepts=spec["concepts"], pairs=spec["pairs"], label=f)
    return out


def _family(name: str, spec: Any) -> Family:
    if isinstance(spec, Family):
        return spec if spec.name == name else dataclasses.replace(spec, name=name)
    if isinstance(spec, Mapping):
        bad = sorted(set(map(str, spec)) - _FAMILY_KEYS)
        if bad:
            raise MedinterpError(f"knowledge_map: family {name!r}: unknown key(s) {bad}; a family mapping has the "
                                 f"keys {sorted(_FAMILY_KEYS)} (or pass a Family)")
        return Family(name, concepts=spec.get("concepts"), pairs=spec.get("pairs"), label=str(spec.get("label") or name))
    raise MedinterpError(f"knowledge_map: family {name!r} is a {type(spec).__name__}; expected a Family or a mapping "
                         f"with the keys {sorted(_FAMILY_KEYS)}")


def check_techniques(techniques: Sequence[str] | None) -> list[str]:
    """The technique names, checked against :data:`medinterp.techniques.REGISTRY` (default: all)."""
    techniques = registered_techniques() if techniques is None else list(techniques)
    bad = [t for t in techniques if t not in REGISTRY]
    if bad:
        raise MedinterpError(f"knowledge_map: unknown technique(s) {bad}; known {sorted(REGISTRY)}")
    if not techniques:
        raise MedinterpError("knowledge_map: no technique to run")
    return techniques


# ============================================================================ job identity
def input_content(x: Any) -> Any:
    """What a family input *contains*, for the job fingerprint (never just its name or path).

    A shipped name is loaded and its content used (an upgrade that edits a shipped set changes it);
    a file is hashed by its bytes; a loaded concept/pair set by its fields (items, labels, templates,
    pairs), without the path it was read from; a list of prompts by its items.
    """
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.is_file():
            return p  # store.fingerprint hashes the file's bytes
        from medinterp.concepts import SHIPPED, load_concepts

        if str(x) in SHIPPED:
            return input_content(load_concepts(str(x)))
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type) and hasattr(x, "to_dataframe"):
        return {"__set__": type(x).__name__,
                **{f.name: getattr(x, f.name) for f in dataclasses.fields(x) if f.name != "path"}}
    if isinstance(x, (list, tuple)):
        return [input_content(v) for v in x]
    return x


def job_fingerprint(model: Any, family: Family, technique: str, params: Mapping[str, Any]) -> str:
    """Fingerprint of one job (see module docstring)."""
    return fingerprint({"technique": technique, "params": _jsonable(dict(params)),
                        "concepts": input_content(family.concepts), "pairs": input_content(family.pairs)},
                       model=model)


def _safe_dirname(name: str) -> str:
    """A family name as a directory name: itself when plain, else a slug plus a short hash."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", name) and name not in (".", ".."):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "family"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def job_dir(work_dir: str | os.PathLike, family: str, technique: str) -> Path:
    """Where the result of one job is saved inside a work dir."""
    return Path(work_dir) / _safe_dirname(family) / technique


def _load_finished(rdir: Path | None, fp: str, key: str) -> Result | None:
    """The saved result of the same job, or None (absent, other inputs, or unreadable: recomputed)."""
    if rdir is None or not (rdir / "manifest.json").is_file():
        return None
    try:
        saved = json.loads((rdir / _JOB_FILE).read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        saved = None
    if saved != fp:
        log.info("%s: saved result in %s is of other inputs or parameters (fingerprint %s, now %s); recomputing",
                 key, rdir, saved, fp)
        return None
    try:
        return Result.load(rdir)
    except MedinterpError as e:
        log.warning("%s: saved result in %s does not load (%s); recomputing", key, rdir, e)
        return None


def _save_job(res: Result, rdir: Path, fp: str, key: str) -> None:
    job = rdir / _JOB_FILE
    if job.exists():
        job.unlink()  # a half-written result never looks finished
    res.save(rdir)
    tmp = rdir / f".{_JOB_FILE}.tmp"
    tmp.write_text(json.dumps({"fingerprint": fp, "job": key}))
    os.chmod(tmp, 0o644)
    os.replace(tmp, job)


def saved_jobs(work_dir: str | os.PathLike) -> list[str]:
    """``family/technique`` keys of the finished jobs saved in a work dir (for progress and resume)."""
    work = Path(work_dir)
    out = []
    if not work.is_dir():
        return out
    for job in sorted(work.glob(f"*/*/{_JOB_FILE}")):
        if (job.parent / "manifest.json").is_file():
            try:
                out.append(str(json.loads(job.read_text()).get("job")))
            except (OSError, json.JSONDecodeError):
                continue
    return out


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

    def record(self, fam: str, tech: str, res: Result, rdir: Path | None) -> None:
        curve, ci, name = result_curve(res, self.n_layers)
        key = f"{fam}/{tech}"
        self.curves[fam][tech] = curve
        self.cis[fam][tech] = ci
        self.status[fam][tech] = "ok"
        self.curve_names.setdefault(tech, name)
        self.curve_names[key] = name
        self.results[key] = res
        if rdir is not None:
            self.result_dirs[key] = str(rdir)


def _run_shared(model: Any, tech: Technique, fams: Mapping[str, Family], pending: list[str], params: dict,
                work: Path | None, fps: dict[str, str], progress: bool, run: _Run) -> dict[str, Result]:
    """One ``run_many`` call for the pending families of a technique that shares work; each result is
    saved as soon as the batch returns. On error the families run one by one (each records its own)."""
    t0 = time.perf_counter()
    try:
        results = tech.run_many(model, [fams[f] for f in pending], progress=progress, **params)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - logged; every family is then run (and fails) on its own
        log.warning("%s: shared run of %d families failed (%s: %s); running them one by one",
                    tech.name, len(pending), type(e).__name__, e)
        return {}
    run.timing[f"{tech.name}_batch"] = round(time.perf_counter() - t0, 2)
    if len(results) != len(pending):
        raise MedinterpError(f"{tech.name}.run_many returned {len(results)} results for {len(pending)} families")
    out = {}
    for f, res in zip(pending, results):
        if work is not None:
            _save_job(res, job_dir(work, f, tech.name), fps[f], f"{f}/{tech.name}")
        out[f] = res
    return out


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
    **params: Any,
) -> KnowledgeMap:
    """Run the registered techniques on each concept family and merge their layer curves into a map.

    Args:
        model: a HookedTransformer (e.g. from :func:`medinterp.load_model`).
        concepts: the map rows (see :func:`family_specs`); default every shipped family.
        techniques: names from :data:`medinterp.techniques.REGISTRY` (default: all of them). Those not
            run show as "not run" in the map (no numbers).
        quick: each technique's ``"quick"`` preset (a few minutes on 2 CPU cores) instead of ``"full"``.
        out_dir: work directory; each technique result is saved there as it finishes
            (``<dir>/<family>/<technique>/``) and a rerun loads the finished ones instead of
            recomputing (resume after an interruption). The map itself is saved to ``<dir>/map``.
        technique_kwargs: per-technique overrides of the preset, ``{technique: {param: value}}``.
        progress: progress bars.
        rerun: ignore finished results in ``out_dir`` and recompute.
        model_name: display name (default: the model's spec or config name).
        **params: synthesis thresholds (see :data:`~medinterp.maps.synthesis.DEFAULT_PARAMS`).

    Returns:
        A :class:`KnowledgeMap`. A technique that fails for a family is recorded in
        ``kmap.status[family][technique]`` with the error (and logged) and left out of the map.

    Example:
        >>> import medinterp as mi                                          # doctest: +SKIP
        >>> kmap = mi.knowledge_map(mi.load_model(), quick=True, out_dir="work")  # doctest: +SKIP
        >>> kmap.to_html("report.html")                                     # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    # validate everything before any work
    techniques = check_techniques(techniques)
    validate_params(**params)
    unknown = sorted(set(technique_kwargs or {}) - set(techniques))
    if unknown:
        raise MedinterpError(f"knowledge_map: technique_kwargs for {unknown}, which are not run ({techniques})")
    size = "quick" if quick else "full"
    fams = family_specs(concepts)
    kw = {t: REGISTRY[t].params(size, (technique_kwargs or {}).get(t)) for t in techniques}
    n_layers = int(model.cfg.n_layers)
    info = getattr(model, "medinterp_info", {}) or {}
    model_name = model_name or str(info.get("spec") or getattr(model.cfg, "model_name", "model"))
    work = Path(out_dir) if out_dir is not None else None
    run = _Run(n_layers, {f: {} for f in fams}, {f: {} for f in fams}, {f: {} for f in fams})
    fps = {(f, t): job_fingerprint(model, fams[f], t, kw[t]) for f in fams for t in techniques}
    t_start = time.perf_counter()
    loaded: dict[tuple[str, str], Result] = {}
    for t in techniques:  # finished jobs from the work dir; shared runs of what is left
        tech = REGISTRY[t]
        pending = []
        for f in fams:
            rdir = job_dir(work, f, t) if work is not None else None
            res = None if rerun else _load_finished(rdir, fps[f, t], f"{f}/{t}")
            if res is not None:
                loaded[f, t] = res
            elif all(getattr(fams[f], need) is not None for need in tech.needs):
                pending.append(f)
        if tech.run_many_fn is not None and len(pending) >= 2:
            shared = _run_shared(model, tech, fams, pending, kw[t], work, {f: fps[f, t] for f in pending}, progress, run)
            loaded.update({(f, t): r for f, r in shared.items()})
    jobs = [(f, t) for f in fams for t in techniques]
    bar = tqdm(jobs, desc="knowledge map", disable=not progress, unit="job")
    for f, t in bar:
        bar.set_postfix_str(f"{f}/{t}")
        key = f"{f}/{t}"
        rdir = job_dir(work, f, t) if work is not None else None
        t0 = time.perf_counter()
        try:
            res = loaded.get((f, t))
            if res is None:
                res = REGISTRY[t].run(model, fams[f], progress=progress, **kw[t])
                if rdir is not None:
                    _save_job(res, rdir, fps[f, t], key)
            run.record(f, t, res, rdir)
        except MissingInput as e:
            run.status[f][t] = f"not run: {e}"
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - recorded in the map's status and logged; the other jobs go on
            run.status[f][t] = f"failed: {type(e).__name__}: {e}"[:300]
            log.error("knowledge map: %s failed: %s: %s", key, type(e).__name__, e, exc_info=True)
            if progress:
                tqdm.write(f"[knowledge map] {key} failed: {type(e).__name__}: {e}")
        finally:
            run.timing[key] = round(time.perf_counter() - t0, 2)
    run.timing["total"] = round(time.perf_counter() - t_start, 2)
    prov = make_provenance(model, concepts=list(fams), techniques=techniques, size=size,
                           technique_kwargs=_jsonable(kw), synthesis=params)
    prov["timing_s"] = run.timing
    prov["peak_rss_mb"] = round(peak_rss_mb(), 1)
    km = KnowledgeMap.from_curves(
        run.curves, n_layers=n_layers, cis=run.cis, techniques=techniques, status=run.status,
        labels={f: fams[f].label or f for f in fams}, model_name=model_name, provenance=prov,
        rules=interval_rules(techniques), **params,
    )
    km.curve_names.update(run.curve_names)
    km.result_dirs.update(run.result_dirs)
    km._results = run.results
    _add_extras(model, km, run.results)
    if work is not None:
        km.save(work / "map")
    return km


def _add_extras(model: Any, km: KnowledgeMap, results: Mapping[str, Result]) -> None:
    """Report decorations of techniques with ``extras``: ``km.extras[name][family] = value`` (each
    value a dict noting its ``technique``). A failing decoration is logged and noted in the provenance."""
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
            log.warning("knowledge map: %s report extras failed: %s: %s", key, type(e).__name__, e)
            km.provenance.setdefault("extras_failed", {})[key] = f"{type(e).__name__}: {e}"[:300]
            continue
        for name, value in extra.items():
            km.extras.setdefault(name, {})[fam] = {**value, "technique": t} if isinstance(value, Mapping) else value


def map_from_work_dir(
    work_dir: str | os.PathLike,
    families: Sequence[str] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    model_name: str = "",
    **params: Any,
) -> KnowledgeMap:
    """A map from the technique results saved in a work dir so far, without a model.

    Useful to look at an interrupted or still-running :func:`knowledge_map`: a family/technique with
    no finished result shows as "no saved result" (no numbers).

    Example:
        >>> km = map_from_work_dir("report.work")           # doctest: +SKIP
    """
    work = Path(work_dir)
    if not work.is_dir():
        raise MedinterpError(f"{work}: no such work directory")
    techniques = check_techniques(techniques)
    validate_params(**params)
    if families is None:
        families = sorted(p.name for p in work.iterdir() if p.is_dir() and p.name != "map")
    curves: dict[str, dict[str, Any]] = {f: {} for f in families}
    run = _Run(0, curves, {f: {} for f in families}, {f: {} for f in families})
    for f in families:
        for t in techniques:
            d = job_dir(work, f, t)
            if not (d / "manifest.json").is_file():
                run.status[f][t] = "no saved result"
                continue
            try:
                res = Result.load(d)
                run.n_layers = run.n_layers or len(np.asarray(res.layer_curve()))
                run.record(f, t, res, d)
            except (MedinterpError, NotImplementedError, AttributeError, ValueError) as e:
                run.status[f][t] = f"failed to load: {type(e).__name__}: {e}"[:300]
                log.warning("map_from_work_dir: %s/%s: %s: %s", f, t, type(e).__name__, e)
    if not run.n_layers:
        raise MedinterpError(f"{work}: no finished technique result found")
    km = KnowledgeMap.from_curves(curves, n_layers=run.n_layers, cis=run.cis, techniques=techniques,
                                  status=run.status, model_name=model_name, provenance={"work_dir": str(work)},
                                  rules=interval_rules(techniques), **params)
    km.curve_names.update(run.curve_names)
    km.result_dirs.update(run.result_dirs)
    km._results = run.results
    return km
