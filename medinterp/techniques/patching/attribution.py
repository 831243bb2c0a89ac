"""Attribution patching: the first-order (gradient) estimate of a whole sweep in one forward + backward pass."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from medinterp import sites
from medinterp.precision import reduction_dtype
from medinterp.results import make_provenance
from medinterp.techniques.patching.common import (
    Metric,
    check_model,
    correlation,
    device_of,
    heads_arg,
    layers_arg,
    normalise,
    position_specs,
    position_token_labels,
    positions_param,
    prepare_pairs,
    summarise,
    validate_patch_params,
)
from medinterp.techniques.patching.engine import exact_sweep, groups_by_length, patch, run_cached
from medinterp.techniques.patching.result import PatchingResult


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
            ``diagnostics["verified"]`` lists (layer, position, head, approx, exact).
        compare_exact: also run the full exact sweep and store the Pearson correlation of the
            per-pair values in ``diagnostics["correlation_with_exact"]`` (and the exact means in
            ``diagnostics["exact_mean"]``).
        Other arguments as in :func:`medinterp.techniques.patching.patch`.
    """
    site = validate_patch_params(site, positions, "P", method="attribution", layers=layers, heads=heads,
                                 min_denominator=min_denominator, on_bad=on_bad, batch_budget_mb=batch_budget_mb)
    check_model(model)
    met = Metric("P")
    layer_list = layers_arg(model, layers)
    head_list = heads_arg(model, site, heads)
    kept, dropped, name = prepare_pairs(model, pairs, on_bad=on_bad)
    labels, masks = position_specs(kept, positions)
    n_pos = len(labels)
    L = model.cfg.n_layers
    P = len(kept)
    est = np.full((P, len(layer_list), n_pos, len(head_list)), np.nan, np.float32)
    base = np.full((2, P), np.nan, np.float32)
    names = [sites.hook_name(site, l) for l in layer_list]
    lay = sites.layout(site)
    t0 = time.perf_counter()
    dev = device_of(model)
    for idx in groups_by_length(kept):
        ct = torch.tensor([kept[i].clean_tokens for i in idx], device=dev)
        xt = torch.tensor([kept[i].corrupted_tokens for i in idx], device=dev)
        cid = torch.tensor([kept[i].clean_id for i in idx], device=dev)
        xid = torch.tensor([kept[i].corrupted_id for i in idx], device=dev)
        clean_cache, clean_final = run_cached(model, ct, set(names))
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
        for li, hname in enumerate(names):
            a = acts[hname]
            # float32 before the product and the sum over d (a bf16 model's activations and gradients are bf16)
            dt = reduction_dtype(a.dtype)
            per = ((clean_cache[hname].to(dt) - a.detach().to(dt)) * a.grad.to(dt)).sum(-1).float()  # resid [b, pos]; head [b, pos, head]
            if lay == "pattern":
                per = per.transpose(1, 2)  # [b, head, q] -> [b, q, head]
            per = per.cpu().numpy()
            for gi, pi in enumerate(idx):
                for j in range(n_pos):
                    m = masks[pi][j]
                    if m is None:
                        continue
                    if lay == "resid":
                        est[pi, li, j, 0] = per[gi][m].sum()
                    else:
                        est[pi, li, j, :] = per[gi][m][:, head_list].sum(0)
    timings: dict[str, float] = {"sweep": time.perf_counter() - t0}
    cl, xl = base
    lds = est + xl[:, None, None, None]
    vals, cm, xm, included, excluded = normalise(met, est, lds, cl, xl, cl, xl, kept, min_denominator)
    mean, lo, hi = summarise(vals, included)
    params = dict(site=site, positions=positions_param(positions), metric="P", layers=layer_list, heads=head_list,
                  min_denominator=min_denominator, verify_top_k=verify_top_k, compare_exact=compare_exact)
    diagnostics: dict[str, Any] = {}
    if verify_top_k > 0:
        score = np.nan_to_num(np.abs(np.asarray(mean, float)), nan=-1.0)
        flat = np.argsort(score.reshape(-1))[::-1][:verify_top_k]
        cell_filter = np.zeros(score.shape, bool)
        cell_filter.reshape(-1)[flat] = True
        t1 = time.perf_counter()
        ev, el, ecm, exm, ecl, exl, _ = exact_sweep(model, kept, masks, n_pos, site, layer_list, head_list, met,
                                                    batch_budget_mb=batch_budget_mb, progress=progress, checkpoint=None,
                                                    cell_filter=cell_filter, desc="verify top-k")
        evP, *_ = normalise(met, ev, el, ecm, exm, ecl, exl, kept, min_denominator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exact_mean = np.nanmean(evP[included], axis=0) if included.any() else np.full(score.shape, np.nan)
        verified = []
        for f in flat:
            li, j, hj = np.unravel_index(f, score.shape)
            verified.append({"layer": layer_list[li], "position": labels[j], "head": head_list[hj],
                             "approx": float(mean[li, j, hj]), "exact": float(exact_mean[li, j, hj])})
        diagnostics["verified"] = verified
        timings["verify"] = time.perf_counter() - t1
    if compare_exact:
        t1 = time.perf_counter()
        exact = patch(model, [p.pair for p in kept], site=site, positions=positions, metric="P", layers=layer_list,
                      heads=head_list if sites.has_heads(site) else None, min_denominator=min_denominator,
                      progress=progress, batch_budget_mb=batch_budget_mb)
        timings["exact"] = time.perf_counter() - t1
        diagnostics["correlation_with_exact"] = correlation(vals[included], exact.values[included])
        diagnostics["correlation_of_means"] = correlation(mean, exact.mean)
        diagnostics["exact_mean"] = np.asarray(exact.mean).tolist()
    return PatchingResult(
        concept_set=name, params=params, timings=timings,
        values=vals, ld=lds, mean=mean, ci_low=lo, ci_high=hi, clean_metric=cm, corrupted_metric=xm, clean_ld=cl,
        corrupted_ld=xl, included=included, site=site, method="attribution", metric="P",
        position_mode=positions if isinstance(positions, str) else "list", layers=layer_list, positions=labels,
        position_tokens=position_token_labels(model, kept, labels, positions), heads=head_list,
        pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped, diagnostics=diagnostics,
        provenance=make_provenance(model, technique="patching", method="attribution", n_pairs=len(kept), **params),
    )
