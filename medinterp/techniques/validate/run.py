"""``validate_band``: does intervening on a band of layers, as a unit, change what the model knows?

See METHOD.md, "Causal validation of a band", for the statistics and the verdict rules implemented here.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Sequence

import numpy as np
import torch

from medinterp.errors import MedinterpError
from medinterp.results import make_provenance
from medinterp.techniques.validate.checks import ALPHA, _check, ratio_boot
from medinterp.techniques.validate.engine import (
    block_means,
    check_stackable,
    intact_logp,
    kl_at,
    pair_batch,
    run_sets,
)
from medinterp.techniques.validate.result import PARTS, RUN_PARTS, BandValidation
from medinterp.techniques.validate.steering import ALPHAS

#: the parts run by default (steering and erasure are opt-in)
DEFAULT_PARTS = ("necessity", "sufficiency")



def band_arg(band: Any, n_layers: int, *, option: str = "band") -> tuple[int, int]:
    """``(a, b)`` inclusive, ``0 <= a <= b < n_layers``; also parses ``"a-b"``.

    Example:
        >>> band_arg("5-12", 18), band_arg((3, 3), 4)
        ((5, 12), (3, 3))
    """
    if isinstance(band, str):
        parts = band.strip().split("-")
        try:
            if len(parts) != 2:
                raise ValueError
            band = (int(parts[0]), int(parts[1]))
        except ValueError:
            raise MedinterpError(f"{option} {band!r}: expected A-B, two block indices (e.g. 5-12)") from None
    try:
        a, b = (int(x) for x in band)
    except (TypeError, ValueError):
        raise MedinterpError(f"{option} {band!r}: expected two block indices (a, b)") from None
    if a > b:
        raise MedinterpError(f"{option} {a}-{b}: the first block is after the last; expected A <= B (e.g. {b}-{a})")
    if a < 0 or b >= n_layers:
        raise MedinterpError(f"{option} {a}-{b}: the model has blocks 0-{n_layers - 1}")
    return a, b


def null_sets(band: tuple[int, int], n_layers: int, n_random: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """The band, every other contiguous band of its width, and up to ``n_random`` random sets of ``width``
    blocks (distinct, none equal to a contiguous band; all of them when there are fewer).

    Returns:
        ``(sets, kind)``: kind 0 the band, 1 contiguous, 2 random set.

    Example:
        >>> null_sets((1, 2), 4, 10, 0)[1]
        [0, 1, 1, 2, 2, 2]
    """
    a, b = band
    w = b - a + 1
    sets = [list(range(a, b + 1))]
    kind = [0]
    for s in range(0, n_layers - w + 1):
        if s != a:
            sets.append(list(range(s, s + w)))
            kind.append(1)
    seen = {tuple(x) for x in sets}
    rng = np.random.default_rng(seed)
    from math import comb

    if comb(n_layers, w) - len(seen) <= n_random:
        pool = [list(c) for c in itertools.combinations(range(n_layers), w) if c not in seen]
    else:
        pool = []
        tries = 0
        while len(pool) < n_random and tries < 100 * n_random:
            c = tuple(sorted(rng.choice(n_layers, w, replace=False).tolist()))
            tries += 1
            if c not in seen:
                seen.add(c)
                pool.append(list(c))
    sets += pool[:n_random]
    kind += [2] * len(pool[:n_random])
    return sets, kind


def _family_inputs(family: Any, control: Any) -> tuple[str, Any, Any]:
    """``(name, pairs, control pairs or None)`` from a shipped family name, a ``Family``, or pairs."""
    from medinterp.concepts import CONCEPT_FAMILIES
    from medinterp.techniques.base import Family

    if isinstance(family, str) and family in CONCEPT_FAMILIES:
        fam = CONCEPT_FAMILIES[family]
        return family, fam["pairs"], fam.get("control_pairs") if control is None else control
    if isinstance(family, Family):
        if family.pairs is None:
            raise MedinterpError(f"validate_band: family {family.name!r} has no pair set (the answer metric needs pairs)")
        return family.name, family.pairs, control
    return getattr(family, "name", None) or (str(family) if isinstance(family, str) else "pairs"), family, control


def _known(model: Any, pairs: Any, max_pairs: int | None, seed: int, min_known: int, min_margin: float, what: str):
    from medinterp.techniques.patching.common import prepare_pairs
    from medinterp.techniques.patching.tracing import _item_span, _unit_id, baselines, known_mask

    valid, _, name = prepare_pairs(model, pairs, on_bad="drop")
    valid = [tp for tp in valid if len(tp.clean_tokens) == len(tp.corrupted_tokens)]
    if not valid:
        raise MedinterpError(f"validate_band: {what} {name!r} has no valid pair with equal clean / corrupted token length")
    spans = [_item_span(model, tp, "span") for tp in valid]
    clean_ld, corrupt_ld, _ = baselines(model, valid)
    known, _ = known_mask(clean_ld, corrupt_ld, min_margin, True)
    idx = np.flatnonzero(known)
    if max_pairs is not None and len(idx) > max_pairs:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_pairs, replace=False))
    units = [_unit_id(model, valid[i], spans[i], "item") for i in idx]
    if len(idx) < min_known or len(set(units)) < 2:
        raise MedinterpError(f"validate_band: {what} {name!r}: {len(idx)} known pairs over {len(set(units))} items "
                             f"(LD_clean > 0 > LD_corrupted, margin >= {min_margin} logit); at least {min_known} pairs "
                             "and 2 items needed")
    kept = [valid[i] for i in idx]
    pb = pair_batch(model, [tp.clean_tokens for tp in kept], [tp.corrupted_tokens for tp in kept],
                    [spans[i] for i in idx], [tp.clean_id for tp in kept], [tp.corrupted_id for tp in kept])
    return name, kept, units, pb, len(valid)


def _means(model: Any, pb: Any, units: Sequence[str], layers: Sequence[int], seed: int, batch_size: int):
    """Cross-fitted per-position mean block outputs: each half of the items gets the other half's mean."""
    from medinterp.techniques.lesion import compute_block_means, crossfit_folds

    fold = crossfit_folds(units, seed)
    T = pb.clean.shape[1]
    lengths = (pb.last + 1).tolist()
    toks = [pb.clean[i, : lengths[i]].cpu() for i in range(len(lengths))]
    means = [block_means(compute_block_means(model, [toks[i] for i in np.flatnonzero(fold == 1 - f)], layers,
                                             batch_size), layers, T, pb.clean.device) for f in (0, 1)]
    return means, torch.as_tensor(fold)


def _lost(ld: np.ndarray, clean_ld: np.ndarray) -> np.ndarray:
    return (clean_ld - ld).sum(-1) / clean_ld.sum()


def validate_band(
    model: Any,
    family: Any,
    band: Any,
    *,
    control: Any = None,
    n_random: int = 30,
    seed: int = 0,
    max_pairs: int | None = 32,
    min_known: int = 4,
    min_margin: float = 1.0,
    n_boot: int = 1000,
    ci: float = 0.95,
    alpha: float = ALPHA,
    batch_size: int = 32,
    parts: Sequence[str] = DEFAULT_PARTS,
    alphas: Sequence[float] = ALPHAS,
    n_directions: int = 20,
    progress: bool = False,
) -> BandValidation:
    """Necessity, selectivity and sufficiency of a band of blocks for a family, against random layer sets.

    Args:
        model: a hooked model (single blocks are run from a residual).
        family: a shipped family name (``"drugs"``: its pair set, and its control family's pair set for
            selectivity), a :class:`medinterp.techniques.base.Family` with pairs, or pairs (a ``PairSet``, a
            pair-set name or file, a list of 4-tuples).
        band: ``(a, b)`` inclusive blocks, or ``"a-b"``.
        control: the matched control's pairs (default: the shipped family's control pairs; None for user pairs).
        n_random: random sets of ``width`` blocks added to every contiguous band of that width (the null of
            mean-ablation and restore; block skip is compared with the contiguous bands only). The permutation p
            cannot go below ``1 / (1 + number of sets)``: 30 keeps one Gemma 3 270M band near 3 min on 2 cores.
        seed: random sets, the subset of pairs, cross-fitting and the bootstrap.
        max_pairs: use at most this many known pairs (a seeded subset); None = all.
        min_known: fewer known pairs than this (or one item only): a :class:`MedinterpError`.
        min_margin: the known-pair rule of patching (``LD_clean > 0 > LD_corrupted``, margin in logits).
        n_boot, ci: item-cluster bootstrap of each statistic.
        alpha: the permutation level of a "supports" verdict.
        batch_size: prompts per forward of the reference means.
        parts: which of :data:`RUN_PARTS` to run: ``"necessity"`` (mean-ablation, skip, KL and selectivity),
            ``"sufficiency"`` (restore), ``"steering"`` (the class direction added at the band,
            :mod:`~medinterp.techniques.validate.steering`), ``"erasure"`` (LEACE at the band,
            :mod:`~medinterp.techniques.validate.erasure`). Default: the first two; steering and erasure are
            opt-in (measured on Gemma 3 270M, drugs, band 5-12, 32 known pairs, 20 directions, 2 CPU cores
            at load average < 1: necessity 32 s, sufficiency 24 s, steering 18 s, erasure 21 s; under load
            average 6-10 about 8x that). A part not run leaves its arrays NaN and has no check.
        alphas: the steering grid (units of the median centred-residual norm at the band's read position).
        n_directions: random directions (steering) and random subspaces (erasure), the null of those parts.
        progress: unused (kept for the technique contract).

    Returns:
        A :class:`BandValidation` (``summary()``, ``checks``, ``save``/``load``).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    check_stackable(model)
    n = int(model.cfg.n_layers)
    a, b = band_arg(band, n)
    if n_random < 0 or n_boot < 1 or not 0 < ci < 1 or not 0 < alpha < 1:
        raise MedinterpError(f"validate_band: n_random={n_random}, n_boot={n_boot}, ci={ci}, alpha={alpha}; expected "
                             "n_random >= 0, n_boot >= 1, 0 < ci < 1, 0 < alpha < 1")
    parts = tuple(dict.fromkeys(parts))
    bad_parts = [p for p in parts if p not in RUN_PARTS]
    if bad_parts or not parts:
        raise MedinterpError(f"validate_band: parts={list(parts)}; expected one or more of {', '.join(RUN_PARTS)}")
    if ("steering" in parts or "erasure" in parts) and (n_directions < 1 or len(set(alphas)) < 2):
        raise MedinterpError(f"validate_band: n_directions={n_directions}, alphas={list(alphas)}; expected "
                             "n_directions >= 1 and at least 2 distinct alphas")
    fam_name, pairs, ctrl = _family_inputs(family, control)
    if "necessity" not in parts:
        ctrl = None
    name, kept, units, pb, n_valid = _known(model, pairs, max_pairs, seed, min_known, min_margin, "family")
    sets, kind = null_sets((a, b), n, n_random, seed)
    layers = sorted({l for s in sets for l in s})
    timings = {"intact_s": time.perf_counter() - t0}

    t1 = time.perf_counter()
    nan = np.full((len(sets), len(units)), np.nan)
    ld_mean, kl, ld_skip, ld_rest = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    if "necessity" in parts:
        means, fold = _means(model, pb, units, layers, seed, batch_size)
        ld_mean, reads = run_sets(model, pb, sets, "mean", means=means, fold=fold)
        few = [i for i, k in enumerate(kind) if k <= 1]  # skip and KL: the band against the contiguous bands only
        kl[few] = kl_at(model, reads[few], intact_logp(model, pb))
        ld_skip[few] = run_sets(model, pb, [sets[i] for i in few], "skip")[0]
        timings["necessity_s"] = time.perf_counter() - t1
    if "sufficiency" in parts:
        t1 = time.perf_counter()
        ld_rest, _ = run_sets(model, pb, sets, "restore")
        timings["sufficiency_s"] = time.perf_counter() - t1
    extra_checks: dict[str, Any] = {}
    steering: dict[str, Any] = {}
    erasure: dict[str, Any] = {}
    if "steering" in parts:
        from medinterp.techniques.validate.steering import run_steering

        t1 = time.perf_counter()
        steering, extra_checks["steering"] = run_steering(model, pb, units, (a, b), alphas=alphas,
                                                          n_directions=n_directions, seed=seed, n_boot=n_boot,
                                                          ci=ci, alpha=alpha)
        timings["steering_s"] = time.perf_counter() - t1
    if "erasure" in parts:
        from medinterp.techniques.validate.erasure import run_erasure

        t1 = time.perf_counter()
        erasure, extra_checks["erasure"] = run_erasure(model, pb, units, (a, b), n_directions=n_directions,
                                                       seed=seed, n_boot=n_boot, ci=ci, alpha=alpha)
        timings["erasure_s"] = time.perf_counter() - t1

    cl, xl = pb.clean_ld, pb.corrupt_ld
    lost = np.stack([_lost(ld_mean, cl), _lost(ld_skip, cl)])
    recovered = (ld_rest - xl).sum(-1) / (cl - xl).sum()
    boot_mean = ratio_boot(cl - ld_mean[0], cl, units, n_boot, seed)
    boot_skip = ratio_boot(cl - ld_skip[0], cl, units, n_boot, seed)
    boot_rest = ratio_boot(ld_rest[0] - xl, cl - xl, units, n_boot, seed)

    control_info: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    gate = None
    t1 = time.perf_counter()
    if ctrl is not None:
        try:
            c_name, _, c_units, c_pb, _ = _known(model, ctrl, max_pairs, seed, min_known, min_margin, "control")
        except MedinterpError as e:
            control_info = {"error": str(e)}
        else:
            c_means, c_fold = _means(model, c_pb, c_units, list(range(a, b + 1)), seed, batch_size)
            c_ld, _ = run_sets(model, c_pb, [sets[0]], "mean", means=c_means, fold=c_fold)
            c_lost = float(_lost(c_ld, c_pb.clean_ld)[0])
            c_boot = ratio_boot(c_pb.clean_ld - c_ld[0], c_pb.clean_ld, c_units, n_boot, seed + 1)
            diff = boot_mean - c_boot
            lo, hi = (float(x) for x in np.nanpercentile(diff, [50 * (1 - ci), 50 * (1 + ci)]))
            d = float(lost[0, 0] - c_lost)
            verdict = "supports" if lo > 0 else ("does not" if hi <= 0 else "inconclusive")
            checks["selectivity"] = {
                "statistic_name": "family minus control fraction lost", "statistic": d, "ci": [lo, hi],
                "percentile": None, "p": None, "verdict": verdict,
                "reason": f"control {c_name!r} loses {c_lost:.3g}" + (": CI above 0" if lo > 0 else ""),
            }
            control_info = {"pairs": c_name, "frac_lost": c_lost, "n_known": len(c_units)}
            gate = (lo > 0, ("!" if hi <= 0 else "") + "the control family loses as much (selectivity CI includes 0)")
    timings["control_s"] = time.perf_counter() - t1
    if "necessity" in parts:
        checks["necessity"] = _check("fraction of LD lost (mean-ablation)", lost[0], boot_mean, ci, gate=gate,
                                     alpha=alpha)
        checks["necessity_skip"] = _check("fraction of LD lost (block skip)", lost[1], boot_skip, ci, alpha=alpha)
    if "sufficiency" in parts:
        checks["sufficiency"] = _check("fraction of LD recovered (restore at the item span)", recovered, boot_rest,
                                       ci, alpha=alpha)
    checks.update(extra_checks)
    checks = {k: checks[k] for k in PARTS if k in checks}
    timings["total_s"] = time.perf_counter() - t0
    timings["cpu_s"] = time.process_time() - c0  # CPU seconds of this process, all threads (load-independent)
    params = dict(band=[a, b], family=fam_name, pairs=name, control=control_info.get("pairs"), n_random=n_random,
                  seed=seed, max_pairs=max_pairs, min_known=min_known, min_margin=min_margin, n_boot=n_boot, ci=ci,
                  alpha=alpha, n_valid=n_valid, n_known=len(kept), mean_reference="cross-fitted by item halves",
                  parts=list(parts))
    if "steering" in parts or "erasure" in parts:
        params.update(alphas=[float(x) for x in alphas], n_directions=n_directions,
                      steering_scale="median norm of the centred residual (minus its mean over the known "
                                     "prompts) at the read position after the band's last block",
                      fit_split="cross-fitted by item halves (crossfit_folds(units, seed))")
    return BandValidation(
        concept_set=name, params=params, timings=timings, provenance=make_provenance(model, technique="validate", **params),
        family=fam_name, band=[a, b], n_layers=n, sets=np.array(sets, dtype=np.int64),
        set_kind=np.array(kind, dtype=np.int64), frac_lost=lost, recovered=recovered, kl=kl.mean(1),
        ld_ablate=np.stack([ld_mean, ld_skip]), ld_restore=ld_rest, clean_ld=cl, corrupted_ld=xl, units=list(units),
        control=control_info, checks=checks, pairs=[tp.describe() for tp in kept], steering=steering,
        erasure=erasure,
    )
