"""Path patching from a sender component to chosen receivers (IOI style, Wang et al. 2022)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from medinterp import sites
from medinterp.errors import MedinterpError
from medinterp.hooks import patch_hook
from medinterp.models.backends import run_from_layer
from medinterp.results import make_provenance
from medinterp.techniques.patching.common import (
    PATH_SENDER_SITES,
    Metric,
    check_model,
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
from medinterp.techniques.patching.engine import Group, cells, groups_by_length, make_group
from medinterp.techniques.patching.result import PatchingResult

_RECEIVER_HOOK = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z", "mlp": "hook_mlp_out"}


def make_freeze_hook(value: torch.Tensor, record: dict | None = None, key: Any = None) -> Callable:
    """A hook that replaces an activation by ``value`` (freezing it); optionally records the
    activation it received into ``record[key]`` first (used by path patching)."""

    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if record is not None:
            record[key] = act.detach().clone()
        return value.to(act.dtype).expand_as(act)

    return hook


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
        if kind not in _RECEIVER_HOOK:
            raise MedinterpError(f"receiver kind {kind!r}; expected q, k, v, z, mlp or 'logits'")
        if len(r) < 2:
            raise MedinterpError(f"receiver {r!r}: give (kind, layer[, head])")
        layer = int(r[1]) % model.cfg.n_layers
        head = int(r[2]) if len(r) > 2 and r[2] is not None else None
        if kind == "mlp" and head is not None:
            raise MedinterpError(f"receiver {r!r}: an MLP has no heads")
        out.append((kind, layer, head))
    return out


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
    n_boot: int = 1000,
    seed: int = 0,
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
        Other arguments as in :func:`medinterp.techniques.patching.patch`.
    """
    sender_site = validate_patch_params(sender_site, positions, metric, layers=layers, heads=heads,
                                        min_denominator=min_denominator, on_bad=on_bad, n_boot=n_boot)
    if sender_site not in PATH_SENDER_SITES:
        raise MedinterpError(f"sender_site must be one of {', '.join(PATH_SENDER_SITES)}, got {sender_site!r}")
    check_model(model)
    met = Metric(metric)
    recv = _parse_receivers(model, receivers)
    L = model.cfg.n_layers
    layer_list = layers_arg(model, layers)
    head_list = heads_arg(model, sender_site, heads)
    kept, dropped, name = prepare_pairs(model, pairs, on_bad=on_bad)
    labels, masks = position_specs(kept, positions)
    n_pos = len(labels)
    P = len(kept)
    shape = (P, len(layer_list), n_pos, len(head_list))
    vals = np.full(shape, np.nan, np.float32)
    lds = np.full(shape, np.nan, np.float32)
    base = np.full((4, P), np.nan, np.float32)
    from tqdm.auto import tqdm

    corr_names = ({f"blocks.{l}.hook_resid_pre" for l in range(L)} | {f"blocks.{l}.hook_attn_out" for l in range(L)}
                  | {f"blocks.{l}.hook_mlp_out" for l in range(L)} | {f"blocks.{l}.attn.hook_z" for l in range(L)})
    clean_names = {sites.hook_name(sender_site, l) for l in layer_list}
    t0 = time.perf_counter()
    groups = groups_by_length(kept)
    bar = tqdm(total=len(groups) * len(layer_list), desc="path patching", disable=not progress, leave=False)
    for idx in groups:
        group, clean_final, corr_final = make_group(model, kept, idx, corr_names, clean_names)
        with torch.no_grad():
            cm, cl = met(model, clean_final, group.cid, group.xid)
            xm, xl = met(model, corr_final, group.cid, group.xid)
        base[:, idx] = torch.stack([cm, xm, cl, xl]).float().cpu().numpy()
        for li, l in enumerate(layer_list):
            bar.update(1)
            valid = [r for r in recv if r[1] > l or (r[0] == "mlp" and r[1] == l and sender_site != "mlp_out")]
            if len(valid) != len(recv):
                continue  # some receiver does not lie after this sender: undefined, stays NaN
            rows = cells(n_pos, head_list, group, masks, None, li)
            if not rows:
                continue
            v, d = _path_rows(model, group, sender_site, l, rows, head_list, recv, met)
            v, d = v.float().cpu().numpy(), d.float().cpu().numpy()
            for r, (gi, j, hj, _) in enumerate(rows):
                vals[idx[gi], li, j, hj], lds[idx[gi], li, j, hj] = v[r], d[r]
    bar.close()
    seconds = time.perf_counter() - t0
    vals, cm, xm, included, excluded = normalise(met, vals, lds, base[0], base[1], base[2], base[3], kept, min_denominator)
    mean, lo, hi = summarise(vals, included, n_boot=n_boot, seed=seed)
    params = dict(sender_site=sender_site, receivers=[list(r) for r in recv], positions=positions_param(positions),
                  metric=met.name, layers=layer_list, heads=head_list, min_denominator=min_denominator,
                  n_boot=n_boot, seed=seed)
    return PatchingResult(
        concept_set=name, params=params, timings={"sweep": seconds},
        values=vals, ld=lds, mean=mean, ci_low=lo, ci_high=hi, clean_metric=cm, corrupted_metric=xm,
        clean_ld=base[2], corrupted_ld=base[3], included=included, site=sender_site, method="path", metric=met.name,
        position_mode=positions if isinstance(positions, str) else "list", layers=layer_list, positions=labels,
        position_tokens=position_token_labels(model, kept, labels, positions), heads=head_list,
        pairs=[p.describe() for p in kept], excluded=excluded, dropped=dropped,
        diagnostics={"receivers": [list(r) for r in recv]},
        provenance=make_provenance(model, technique="patching", method="path", **params),
    )


def _path_rows(model: Any, group: Group, sender_site: str, layer: int, rows: list, heads: list[int], recv: list,
               met: Metric):
    dev = device_of(model)
    L = model.cfg.n_layers
    row_pair = torch.tensor([r[0] for r in rows], device=dev)
    pos_mask = torch.from_numpy(np.stack([r[3] for r in rows])).to(dev)
    cid, xid = group.cid[row_pair], group.xid[row_pair]
    cc = group.corr_cache
    head_mask = None
    if sender_site == "z":
        head_mask = torch.zeros(len(rows), model.cfg.n_heads, dtype=torch.bool, device=dev)
        head_mask[torch.arange(len(rows)), torch.tensor([heads[r[2]] for r in rows])] = True
    sname = sites.hook_name(sender_site, layer)
    hooks = [(sname, patch_hook(group.clean_cache[sname], pos_mask, rows=row_pair, heads=head_mask,
                                layout=sites.layout(sender_site)))]
    logits_recv = recv[0][0] == "logits"
    record: dict = {}
    recv_hooks = {f"blocks.{rl}.{_RECEIVER_HOOK[k]}" for k, rl, _ in recv} if not logits_recv else set()
    stop = L if logits_recv else max(r[1] for r in recv) + 1
    # freeze every other component of the sender's layer and later layers
    for m in range(layer, stop):
        if m > layer:  # attention of later layers (a head sender's own layer: z is patched there)
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
        tokens = group.corr_tokens[row_pair]  # rerun by the hook path where there is no start_at_layer
        resid = run_from_layer(model, tokens, x, layer, stop_at_layer=stop, fwd_hooks=hooks)
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
        resid = run_from_layer(model, tokens, x, start, stop_at_layer=L, fwd_hooks=hooks2)
        return met(model, resid, cid, xid)
