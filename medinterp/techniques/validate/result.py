"""The result of a band validation (:func:`medinterp.techniques.validate.validate_band`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from jaxtyping import Float

from medinterp.techniques.base import TechniqueResult

#: the verdict words (METHOD.md, "Causal validation of a band")
VERDICTS = ("supports", "does not", "inconclusive")
#: the parts of a validation, in the order they are reported
PARTS = ("necessity", "necessity_skip", "selectivity", "sufficiency", "steering", "erasure")
#: what ``validate_band(parts=...)`` accepts (necessity brings necessity_skip and selectivity with it)
RUN_PARTS = ("necessity", "sufficiency", "steering", "erasure")


def _f(x: Any) -> float:
    """A saved number (NaN is saved as null) as a float."""
    return float("nan") if x is None else float(x)


@dataclasses.dataclass
class BandValidation(TechniqueResult):
    """Causal checks of one band of layers for one family, each against random layer sets of the same width.

    Fields:
        band: ``[a, b]`` inclusive blocks tested; n_layers: blocks of the model.
        sets: ``[1 + n_null, width]`` block indices of every set run; row 0 is the band.
        set_kind: ``[1 + n_null]`` 0 the band, 1 a contiguous band of the same width, 2 a random set of width blocks.
        frac_lost: ``[2, 1 + n_null]`` fraction of the clean logit difference lost (ratio of sums over the
            known pairs) with every block of the set mean-ablated (row 0) or skipped (row 1; run on the band and
            the contiguous bands only, NaN for the random sets).
        recovered: ``[1 + n_null]`` fraction of ``LD_clean - LD_corrupted`` recovered when the set's block outputs
            are restored at the item span of the corrupted prompt.
        kl: ``[1 + n_null]`` mean KL(intact || mean-ablated) of the next token at the read position (nats; the band
            and the contiguous bands, NaN for the random sets).
        ld_ablate: ``[2, 1 + n_null, n_pairs]`` per-pair LD under ablation; ld_restore: ``[1 + n_null, n_pairs]``.
        clean_ld, corrupted_ld: ``[n_pairs]`` intact LDs of the known pairs; units: item of each known pair.
        control: the control family's numbers (``frac_lost``, CI, ``n_known``; empty: no control family).
        checks: per part of :data:`PARTS` its statistic, CI, percentile, permutation p, verdict and reason.
        pairs: the known pairs (clean, corrupted, answers).
        steering: the steering part's numbers (:func:`medinterp.techniques.validate.steering.run_steering`:
            ``alphas``, ``scale``, ``slope``, ``slope_ci``, ``slopes_random``, ``curve`` (mean LD per alpha),
            ``curve_random``, ``slope_other`` / ``curve_other`` at ``other_band``, ...); empty: not run.
        erasure: the LEACE part's numbers (:func:`medinterp.techniques.validate.erasure.run_erasure`:
            ``frac_lost``, ``frac_lost_random``, ``frac_lost_other``, ``probe_intact`` / ``probe_erased`` /
            ``probe_random`` (chance-corrected), ``ranks``, ...; ``error`` when not run); empty: not run.
    """

    kind: ClassVar[str] = "band_validation"

    family: str = ""
    band: list = dataclasses.field(default_factory=list)
    n_layers: int = 0
    sets: np.ndarray = None
    set_kind: np.ndarray = None
    frac_lost: np.ndarray = None
    recovered: np.ndarray = None
    kl: np.ndarray = None
    ld_ablate: np.ndarray = None
    ld_restore: np.ndarray = None
    clean_ld: np.ndarray = None
    corrupted_ld: np.ndarray = None
    units: list = dataclasses.field(default_factory=list)
    control: dict = dataclasses.field(default_factory=dict)
    checks: dict = dataclasses.field(default_factory=dict)
    pairs: list = dataclasses.field(default_factory=list)
    steering: dict = dataclasses.field(default_factory=dict)
    erasure: dict = dataclasses.field(default_factory=dict)

    def _after_load(self) -> None:
        self.sets = np.asarray(self.sets, dtype=np.int64)
        self.set_kind = np.asarray(self.set_kind, dtype=np.int64)

    @property
    def width(self) -> int:
        """Blocks in the band."""
        return int(self.band[1]) - int(self.band[0]) + 1

    def verdicts(self) -> dict[str, str]:
        """``{part: verdict}``."""
        return {k: v.get("verdict", "inconclusive") for k, v in self.checks.items()}

    def layer_curve(self) -> Float[np.ndarray, "n_layers"]:
        """Per block: the mean fraction of LD lost (mean-ablation) over the sets run that contain it."""
        curve = np.full(self.n_layers, np.nan)
        for l in range(self.n_layers):
            hit = (self.sets == l).any(1)
            if hit.any():
                curve[l] = float(np.nanmean(self.frac_lost[0][hit]))
        return curve

    def layer_curve_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """10th and 90th percentiles of the fraction lost over the sets that contain each block."""
        lo, hi = np.full(self.n_layers, np.nan), np.full(self.n_layers, np.nan)
        for l in range(self.n_layers):
            hit = (self.sets == l).any(1)
            if hit.any():
                lo[l], hi[l] = np.nanpercentile(self.frac_lost[0][hit], [10, 90])
        return lo, hi

    @property
    def curve_label(self) -> str:
        return "fraction of LD lost, mean over the mean-ablated layer sets containing the block"

    def summary(self) -> str:
        """The band, the family and one line per check."""
        a, b = self.band
        head = (f"band {a}-{b} on {self.family or self.concept_set} ({len(self.clean_ld)} known pairs, "
                f"{len(self.sets) - 1} random sets of {self.width} blocks)")
        lines = [head]
        for part in PARTS:
            c = self.checks.get(part)
            if not c:
                continue
            ci = [_f(x) for x in (c.get("ci") or [None, None])]
            extra = "" if c.get("p") is None else f", percentile {_f(c.get('percentile')):.0f}, p = {_f(c['p']):.3g}"
            lines.append(f"  {part}: {c['statistic_name']} {_f(c.get('statistic')):.3g} [{ci[0]:.3g}, {ci[1]:.3g}]{extra} "
                         f"-> {c['verdict']} ({c['reason']})")
        ran_necessity = "necessity" in self.checks or "necessity" in self.params.get("parts", ["necessity"])
        if not ran_necessity:
            pass
        elif not self.control:
            lines.append("  no control family: selectivity not tested (necessity judged on p and its CI only)")
        elif self.control.get("error"):
            lines.append(f"  control family not usable: {self.control['error']}")
        st, er = self.steering or {}, self.erasure or {}
        if st.get("curve"):
            lines.append(f"  steering: scale {_f(st.get('scale')):.3g} (median centred-residual norm), mean LD over alpha "
                         f"{st['alphas']}: {' '.join(f'{_f(v):.2f}' for v in st['curve'])}; "
                         f"{100 * _f(st.get('monotone_pairs')):.0f}% of pairs monotone")
        lines += [f"  {k}: {d['error']}" for k, d in (("steering", st), ("erasure", er)) if d.get("error")]
        if self.kl is not None and len(self.kl) and np.isfinite(np.asarray(self.kl, float)[0]):
            other = np.asarray(self.kl[1:], float)
            other = other[np.isfinite(other)]
            pct = 100.0 * float(np.mean(other < self.kl[0])) if len(other) else float("nan")
            lines.append(f"  generic damage: next-token KL {self.kl[0]:.3g} nats (percentile {pct:.0f} of the "
                         f"{len(other)} contiguous bands)")
        return "\n".join(lines)

