"""LEACE erasure at a band (issue 22, part 4 of the validation): remove the answer class linearly, read the answer.

Labels are the answer classes of :mod:`medinterp.techniques.validate.steering` (each prompt: the answer token
it should produce). For each item half (the cross-fitting halves of parts 1-2) and each block ``l`` of the
band, a LEACE eraser (Belrose et al. 2023, ``concept_erasure.LeaceFitter``, one-hot labels) is fitted on the
residual after block ``l`` at the read position of the *other* half's clean and corrupted prompts (intact
runs); on the held-out half it is applied after every block of the band, at the read position (each block's
eraser to that block's output, the edits compounding through the band).

Measured on the held-out prompts:

* the **answer metric**: fraction of the clean LD lost, ``sum(LD_clean - LD_erased) / sum(LD_clean)`` over
  the clean prompts (the necessity unit);
* a **downstream probe**: the answer class decoded from the residual after the block after the band (after
  the last block when the band ends there) at the read position, by an L2 logistic regression (sklearn),
  out-of-fold over items (``GroupKFold``), chance-corrected balanced accuracy (0 = chance, 1 = perfect;
  classes with prompts from at least 2 items, at least 2 such classes), intact and erased.

Controls: ``n_directions`` random orthogonal projections removing a random subspace of the same rank as each
fitted eraser (about the same mean, ``x - Q Q^T (x - mean)``) at the same blocks (the null of the percentile,
permutation p and verdict), and the same LEACE erasure fitted and applied at a same-width band elsewhere
(:func:`medinterp.techniques.validate.steering.other_band`; reported).

Needs the ``concept-erasure`` package (a dependency of medinterp); when it cannot be imported the part says
``not run: concept-erasure not installed``. Cost: (2 + n_directions) forwards of the known prompts from the
band's first block, plus 7 probes; on Gemma 3 270M (drugs, band 5-12, 32 known pairs, 20 subspaces) 21 s on 2
CPU cores (load average < 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from medinterp.errors import MedinterpError
from medinterp.techniques.validate.checks import _check, ratio_boot
from medinterp.techniques.validate.engine import PairBatch, read_ld, run_edited
from medinterp.techniques.validate.steering import class_reads, other_band

NOT_INSTALLED = "not run: concept-erasure not installed"


def leace_eraser(x: Float[torch.Tensor, "N d"], labels: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Fit a LEACE eraser of the (one-hot) labels on ``x`` (float64).

    Returns:
        ``(proj_left [d, k], proj_right [k, d], bias [d], rank)``; erase with :func:`apply_eraser`.

    Raises:
        ImportError: concept-erasure is not installed. MedinterpError: fewer than 2 classes.
    """
    from concept_erasure import LeaceFitter

    lab = np.asarray([str(v) for v in labels])
    classes = np.unique(lab)
    if len(classes) < 2:
        raise MedinterpError(f"leace_eraser: {len(classes)} class(es) in the labels; erasure needs at least 2")
    z = torch.as_tensor((lab[:, None] == classes[None]).astype(np.float64), device=x.device)
    e = LeaceFitter.fit(x.double(), z).eraser
    rank = int((e.proj_left.abs().sum(0) > 0).sum())
    return e.proj_left, e.proj_right, e.bias, rank


def apply_eraser(x: Float[torch.Tensor, "N d"], eraser: tuple) -> Float[torch.Tensor, "N d"]:
    """``x - ((x - bias) @ proj_right^T) @ proj_left^T`` (what ``LeaceEraser.__call__`` does)."""
    left, right, bias = eraser[0], eraser[1], eraser[2]
    xd = x.double()
    return (xd - ((xd - bias) @ right.T) @ left.T).to(x.dtype)


def random_eraser(d: int, rank: int, bias: torch.Tensor, gen: torch.Generator) -> tuple:
    """An orthogonal projection removing a random ``rank``-dimensional subspace (about ``bias``), as an eraser."""
    q, _ = torch.linalg.qr(torch.randn(d, max(rank, 1), generator=gen, dtype=torch.float64))
    q = q[:, :rank].to(bias.device)
    return q, q.T, bias, rank


def probe_accuracy(x: Float[np.ndarray, "N d"], labels: Sequence[Any], groups: Sequence[Any], seed: int = 0) -> float:
    """Out-of-fold (``GroupKFold`` by item) chance-corrected balanced accuracy of an L2 logistic regression on
    standardised features; NaN when fewer than 2 classes have prompts from at least 2 items.

    Example:
        >>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 20)
        >>> x = rng.normal(size=(40, 5)) + 4 * y[:, None]
        >>> probe_accuracy(x, y, np.arange(40)) > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lab = np.asarray([str(v) for v in labels])
    grp = np.asarray([str(v) for v in groups])
    keep = np.zeros(len(lab), bool)
    for c in np.unique(lab):
        if len(set(grp[lab == c])) >= 2:
            keep |= lab == c
    if len(np.unique(lab[keep])) < 2:
        return float("nan")
    x, lab, grp = np.asarray(x, float)[keep], lab[keep], grp[keep]
    k = min(5, len(set(grp)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pred = cross_val_predict(clf, x, lab, groups=grp, cv=GroupKFold(n_splits=k))
    return float(balanced_accuracy_score(lab, pred, adjusted=True))


def _fit(pb: PairBatch, fold: np.ndarray, blocks: Sequence[int]) -> dict[tuple[int, int], tuple]:
    """``{(held-out half, block): eraser}`` fitted on the other half's prompts after each block."""
    f2 = np.concatenate([fold, fold])
    out = {}
    for l in blocks:
        x, labels = class_reads(pb, l + 1)
        lab = labels.cpu().numpy()
        for f in (0, 1):
            tr = torch.as_tensor(f2 != f, device=x.device)
            out[(f, l)] = leace_eraser(x[tr], lab[f2 != f])
    return out


def _erase_run(model: Any, pb: PairBatch, fold: np.ndarray, blocks: Sequence[int], erasers: dict,
               capture: int) -> tuple[np.ndarray, torch.Tensor]:
    """Clean then corrupted prompts with each row's half's erasers after the blocks: (clean LD [P], captured
    residual at the read position [2P, d])."""
    P = len(fold)
    start = min(blocks)
    x0 = torch.cat([pb.clean_pre[start], pb.corrupt_pre[start]])
    mask, last = pb.mask.repeat(2, 1), pb.last.repeat(2)
    f2 = torch.as_tensor(np.concatenate([fold, fold]), device=x0.device)

    def edit(l, rows, xr):
        out = xr.clone()
        for f in (0, 1):
            m = f2[rows] == f
            if bool(m.any()):
                out[m] = apply_eraser(xr[m], erasers[(f, l)])
        return out

    final, cap = run_edited(model, x0, mask, last, start, blocks, edit, capture=capture)
    return read_ld(model, final[:P], pb.good, pb.bad), cap


@torch.no_grad()
def run_erasure(model: Any, pb: PairBatch, units: Sequence[str], band: tuple[int, int], *, n_directions: int = 20,
                seed: int = 0, n_boot: int = 1000, ci: float = 0.95, alpha: float = 0.05
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """LEACE at the band against random subspaces of equal rank and the same erasure elsewhere (module doc).

    Args:
        model: the hooked model; pb: the known pairs; units: item of each pair; band: ``(a, b)``.
        n_directions: random subspaces (the null); seed, n_boot, ci, alpha: draws, bootstrap, verdict level.

    Returns:
        ``(info, check)``: ``info`` saved in :attr:`BandValidation.erasure`; ``check`` the verdict entry. Without
        concept-erasure both say :data:`NOT_INSTALLED`.
    """
    from medinterp.techniques.lesion import crossfit_folds

    name = "fraction of LD lost (LEACE of the answer class at the band)"
    try:
        import concept_erasure  # noqa: F401
    except ImportError:
        return ({"error": NOT_INSTALLED}, {"statistic_name": name, "statistic": float("nan"), "ci": [None, None],
                                          "percentile": None, "p": None, "verdict": "inconclusive",
                                          "reason": NOT_INSTALLED})
    a, b = band
    n = int(model.cfg.n_layers)
    blocks = list(range(a, b + 1))
    fold = np.asarray(crossfit_folds(units, seed))
    probe_at = min(b + 2, n)
    erasers = _fit(pb, fold, blocks)
    labels = torch.cat([pb.good, pb.bad]).cpu().numpy()
    groups = list(units) + list(units)
    x_int, _ = class_reads(pb, probe_at)
    ld_band, cap = _erase_run(model, pb, fold, blocks, erasers, probe_at)
    g = torch.Generator().manual_seed(seed + 11)
    d = pb.clean_pre.shape[-1]
    ld_rnd, probe_rnd = [], []
    for j in range(n_directions):
        rnd = {k: random_eraser(d, e[3], e[2], g) for k, e in erasers.items()}
        ld_j, cap_j = _erase_run(model, pb, fold, blocks, rnd, probe_at)
        ld_rnd.append(ld_j)
        if j < 5:  # the probe of the first 5 draws (the probe is the slow part)
            probe_rnd.append(probe_accuracy(cap_j.double().cpu().numpy(), labels, groups, seed))
    cl = pb.clean_ld
    lds = np.stack([ld_band, *ld_rnd])
    lost = (cl - lds).sum(-1) / cl.sum()
    boot = ratio_boot(cl - ld_band, cl, units, n_boot, seed)
    check = _check(name, lost, boot, ci, alpha=alpha)
    info: dict[str, Any] = {
        "frac_lost": float(lost[0]), "frac_lost_ci": check["ci"], "frac_lost_random": lost[1:].tolist(),
        "ranks": sorted({int(e[3]) for e in erasers.values()}), "probe_block": probe_at - 1,
        "probe_intact": probe_accuracy(x_int.double().cpu().numpy(), labels, groups, seed),
        "probe_erased": probe_accuracy(cap.double().cpu().numpy(), labels, groups, seed),
        "probe_random": float(np.nanmean(probe_rnd)) if probe_rnd and np.isfinite(probe_rnd).any() else float("nan"),
        "n_directions": n_directions, "ld_erased": ld_band.tolist(),
        "labels": "answer token of each prompt; erasers fitted per item half and block on the other half",
    }
    ob = other_band(a, b, n)
    info["other_band"] = list(ob) if ob else None
    if ob is not None:
        ob_blocks = list(range(ob[0], ob[1] + 1))
        ld_o, _ = _erase_run(model, pb, fold, ob_blocks, _fit(pb, fold, ob_blocks), n)
        info["frac_lost_other"] = float((cl - ld_o).sum() / cl.sum())
    check["reason"] += (f"; probe after block {probe_at - 1}: {info['probe_intact']:.2f} intact, "
                        f"{info['probe_erased']:.2f} erased, {info['probe_random']:.2f} random subspace (chance 0)"
                        + (f"; same erasure at {ob[0]}-{ob[1]} loses {info['frac_lost_other']:.3g}" if ob else ""))
    return info, check

