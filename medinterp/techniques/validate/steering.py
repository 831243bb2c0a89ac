"""Steering a band (issue 22, part 3 of the validation): add a fixed class direction at the band, read the answer.

The direction is **fitted, not optimised**: the answer classes are the answer tokens (each clean prompt is of
the class of its clean answer, each corrupted prompt of its corrupted answer); the class means are taken of
the residual after the band's last block at the read position (the last token, where parts 1-2 read the
answer). Items are cross-fitted (the two seeded item halves of the mean-ablation): a pair is scored with the
means of the *other* half only, and only when both its answers occur there. For a scored pair with answers
``(g, b)`` the direction is ``mu_g - mu_b``, unit-normalised (a binary family: the one difference of class
means, signed by the pair).

On the pair's **corrupted** prompt the vector ``alpha * s * direction`` is added at the read position, spread
evenly over the band's blocks (``1 / width`` of it after each block, so the total added is ``alpha * s``);
``s`` is the median norm of the *centred* residual at that read position (the residual minus its mean over
all known prompts, label-free: the typical deviation of one prompt's residual; the raw norm is no unit: on
Gemma 3 270M a few massive dimensions shared by every prompt make it ~1.6e4, and alpha = 0.25 of it already
jumped the mean LD by 11.5 logits). ``alpha`` runs over :data:`ALPHAS` (-1 .. 1). Metric: the pair's LD
(``logit(clean answer) - logit(corrupted answer)``). Statistic: the mean over scored pairs of each pair's
least-squares slope of LD on alpha (logits per unit alpha), with an item-cluster bootstrap CI.

Controls: ``n_directions`` random unit directions (isotropic Gaussian, one per draw for all pairs; the null
of the percentile and permutation p and of the verdict, :func:`medinterp.techniques.validate.checks._check`) and
the same per-pair direction added at a same-width band elsewhere (:func:`other_band`; reported, not part of
the verdict: a residual direction added closer to the output is read at least as directly, so a later band is
no null for a linear read-out).

Cost: (2 + n_directions) x len(ALPHAS) forwards of the scored prompts from the band's first block; on Gemma 3
270M (drugs, band 5-12, 9 scored pairs, 20 directions) 18 s on 2 CPU cores (load average < 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from medinterp.techniques.validate.checks import _check, ratio_boot
from medinterp.techniques.validate.engine import PairBatch, read_ld, reads_at, run_edited

#: the steering grid, in units of the median centred-residual norm at the read position after the band's last block
ALPHAS = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)


def other_band(a: int, b: int, n_layers: int) -> tuple[int, int] | None:
    """A same-width band elsewhere: the adjacent one after the band, else before it, else the contiguous band
    of the same width overlapping it least (the earlier on a tie); None when the band is the whole model.

    Example:
        >>> other_band(2, 3, 10), other_band(8, 9, 10), other_band(5, 12, 18), other_band(0, 3, 4)
        ((4, 5), (6, 7), (0, 7), None)
    """
    w = b - a + 1
    if b + w < n_layers:
        return b + 1, b + w
    if a - w >= 0:
        return a - w, a - 1
    cands = [s for s in range(0, n_layers - w + 1) if s != a]
    if not cands:
        return None
    s = min(cands, key=lambda s: (len(set(range(s, s + w)) & set(range(a, b + 1))), s))
    return s, s + w - 1


def class_reads(pb: PairBatch, index: int) -> tuple[Float[torch.Tensor, "two_P d"], torch.Tensor]:
    """``([2P, d] residuals entering block index at the read position (clean prompts, then corrupted), [2P]
    answer-token labels)``."""
    x = torch.cat([reads_at(pb.clean_pre, index, pb.last), reads_at(pb.corrupt_pre, index, pb.last)])
    return x, torch.cat([pb.good, pb.bad])


def pair_directions(x: torch.Tensor, labels: torch.Tensor, fold: np.ndarray, good: torch.Tensor,
                    bad: torch.Tensor) -> tuple[Float[torch.Tensor, "P d"], np.ndarray]:
    """Cross-fitted per-pair unit directions ``mu_good - mu_bad`` (class means of the other fold's prompts).

    Args:
        x, labels: :func:`class_reads` (rows 0..P-1 the clean prompts, P..2P-1 the corrupted ones).
        fold: ``[P]`` item half of each pair; good, bad: ``[P]`` answer ids.

    Returns:
        ``(directions [P, d] (zero where not scored), scored [P] bool)``.
    """
    P = len(fold)
    f2 = np.concatenate([fold, fold])
    lab = labels.cpu().numpy()
    dirs = torch.zeros((P, x.shape[1]), dtype=torch.float64, device=x.device)
    scored = np.zeros(P, bool)
    for f in (0, 1):
        train = f2 != f
        means = {int(c): x[torch.as_tensor(train & (lab == c), device=x.device)].double().mean(0)
                 for c in np.unique(lab[train])}
        for i in np.flatnonzero(fold == f):
            g, b = int(good[i]), int(bad[i])
            if g in means and b in means:
                d = means[g] - means[b]
                if float(d.norm()) > 0:
                    dirs[i], scored[i] = d / d.norm(), True
    return dirs, scored


def slopes(alphas: Sequence[float], ld: Float[np.ndarray, "... A P"]) -> Float[np.ndarray, "... P"]:
    """Least-squares slope of LD on alpha, per pair.

    Example:
        >>> slopes([-1, 0, 1], np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])).tolist()
        [1.0, 0.0]
    """
    a = np.asarray(alphas, float)
    a = a - a.mean()
    ld = np.asarray(ld, float)
    return np.einsum("a,...ap->...p", a, ld - ld.mean(-2, keepdims=True)) / float((a ** 2).sum())


def _steer(model: Any, pb: PairBatch, idx: np.ndarray, blocks: Sequence[int], vecs: torch.Tensor,
           alphas: Sequence[float], scale: float) -> np.ndarray:
    """LD ``[K, A, len(idx)]`` with ``alpha * scale * vecs[k, i] / width`` added after each block of ``blocks``.

    vecs: ``[K, len(idx), d]`` unit directions per row of direction kind and pair."""
    K, Ps = vecs.shape[0], len(idx)
    A = len(alphas)
    sel = torch.as_tensor(idx, device=pb.clean.device)
    start = min(blocks)
    x0 = pb.corrupt_pre[start][sel].repeat(K * A, 1, 1)
    mask, last = pb.mask[sel].repeat(K * A, 1), pb.last[sel].repeat(K * A)
    al = torch.tensor(list(alphas), dtype=torch.float64, device=vecs.device)
    add = (al[None, :, None, None] * vecs[:, None]).reshape(K * A * Ps, -1) * (scale / len(blocks))

    def edit(l, rows, xr):
        return xr + add[rows].to(xr.dtype)

    final, _ = run_edited(model, x0, mask, last, start, blocks, edit)
    return read_ld(model, final, pb.good[sel].repeat(K * A), pb.bad[sel].repeat(K * A)).reshape(K, A, Ps)


@torch.no_grad()
def run_steering(model: Any, pb: PairBatch, units: Sequence[str], band: tuple[int, int], *,
                 alphas: Sequence[float] = ALPHAS, n_directions: int = 20, seed: int = 0, n_boot: int = 1000,
                 ci: float = 0.95, alpha: float = 0.05) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steering of the band along its cross-fitted class direction against random directions (module doc).

    Args:
        model: the hooked model; pb: the known pairs (:func:`medinterp.techniques.validate.engine.pair_batch`).
        units: item of each pair; band: ``(a, b)``.
        alphas: the grid (units of the median centred-residual norm); n_directions: random directions (the null).
        seed, n_boot, ci, alpha: random directions and folds, bootstrap, verdict level.

    Returns:
        ``(info, check)``: ``info`` the numbers saved in :attr:`BandValidation.steering`, ``check`` the verdict
        entry (statistic, CI, percentile, p) or an ``inconclusive`` entry when no pair can be scored.
    """
    from medinterp.techniques.lesion import crossfit_folds

    a, b = band
    n = int(model.cfg.n_layers)
    fold = np.asarray(crossfit_folds(units, seed))
    x, labels = class_reads(pb, b + 1)
    dirs, scored = pair_directions(x, labels, fold, pb.good, pb.bad)
    xd = x.double()
    scale = float((xd - xd.mean(0)).norm(dim=1).median())
    ob = other_band(a, b, n)
    info: dict[str, Any] = {"alphas": [float(v) for v in alphas], "scale": scale, "n_directions": n_directions,
                            "other_band": list(ob) if ob else None, "n_scored": int(scored.sum()),
                            "direction": "mean(answer g) - mean(answer b) after the band's last block, read "
                                         "position, cross-fitted by item halves; added on the corrupted prompt"}
    idx = np.flatnonzero(scored)
    su = [units[i] for i in idx]
    if len(idx) < 2 or len(set(su)) < 2:
        info["error"] = (f"{len(idx)} pairs over {len(set(su))} items have both answers in the other item half: "
                         "nothing to steer with")
        return info, {"statistic_name": "mean slope of LD per unit alpha", "statistic": float("nan"),
                      "ci": [None, None], "percentile": None, "p": None, "verdict": "inconclusive",
                      "reason": info["error"]}
    g = torch.Generator().manual_seed(seed + 7)
    rnd = torch.randn(n_directions, x.shape[1], generator=g, dtype=torch.float64).to(dirs.device)
    rnd = rnd / rnd.norm(dim=1, keepdim=True)
    vecs = torch.cat([dirs[idx][None], rnd[:, None].expand(-1, len(idx), -1)])
    ld = _steer(model, pb, idx, range(a, b + 1), vecs, alphas, scale)
    sl = slopes(alphas, ld)  # [1 + n_dir, Ps]
    boot = ratio_boot(sl[0], np.ones(len(idx)), su, n_boot, seed)
    check = _check("mean slope of LD per unit alpha (class direction at the band)", sl.mean(1), boot, ci,
                   alpha=alpha)
    curve = ld[0].mean(1)
    info.update(slope=float(sl[0].mean()), slope_ci=check["ci"], slopes_random=sl[1:].mean(1).tolist(),
                pair_slopes=sl[0].tolist(), scored_units=su, curve=curve.tolist(),
                curve_random=ld[1:].mean(2).tolist(),
                monotone_pairs=float(np.mean(np.all(np.diff(ld[0], axis=0) >= 0, axis=0))),
                monotone_curve=bool(np.all(np.diff(curve) >= 0)))
    if ob is not None:
        lo = _steer(model, pb, idx, range(ob[0], ob[1] + 1), dirs[idx][None], alphas, scale)
        info.update(slope_other=float(slopes(alphas, lo)[0].mean()), curve_other=lo[0].mean(1).tolist())
    rs = np.asarray(info["slopes_random"])
    check["reason"] += (f"; {int(scored.sum())} pairs scored; random directions' slopes median {np.median(rs):.3g}"
                        + (f"; same direction at {ob[0]}-{ob[1]}: slope {info['slope_other']:.3g}" if ob else ""))
    return info, check
