"""bf16 vs float32 on the real Gemma 3 270M (issue 23 item 2): the quick map of one family, every technique
with its controls (the control family and the random-init twin, built in bf16 for the bf16 model), run
once with ``dtype="bfloat16"`` and once in float32, compared cell by cell.

Why one family: on two CPU cores a bf16 forward is ~5x slower than a float32 one (no bf16 matrix units),
so one family in both dtypes is what fits the CI budget: this file took 278 s on the 2-core VM at load
average 1.3-2.8 (float32 map 50 s, bf16 map 206 s, the rest loading the bf16 model); drugs is a family with
known pairs (lesion and patching have curves to compare).
Progression, measured once and not in CI: geometry curve 0.020 apart, saliency 0.0005, lesion and patching
"not known" in both dtypes; neither quick map marks a layer in drugs or progression, so no mark could differ.

What is compared, per technique: the layer curve (``km.curves``) and the effect over the control family
(``curves_frame``), as the largest absolute difference over layers, against :data:`TOL`; NaN where one map
has a value and the other not fails (a cell measured in one dtype only). Tolerances are set from the
measured differences (the README gives them), with headroom, in the units of each curve: probe score
(geometry), block share of |g·w| (saliency, shares sum to 1 over the layers), fraction of the logit
difference lost (lesion) or recovered (patching).

Marks: a layer marked in one map and not the other is NAMED in every assertion message and in a warning.
It fails the test only where float32 was decisive there (p_adj <= alpha / 10 and robustness >= 0.95 where
float32 marks it; p_adj >= 10 alpha where float32 does not): a layer whose float32 p-value sits near alpha
can flip under any perturbation of the data as small as bf16's rounding, and that is not a bf16 error,
while a decisive layer flipping is.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.integration

FAMILY = "drugs"
#: largest |bf16 - float32| allowed over the layers, per technique, for the curve and for the effect over the
#: control family: max(absolute, rel x max |float32 curve|). Measured on drugs (CPU, under load), curve / effect:
#: geometry 0.025 / 0.074 (the effect compares probe excesses at a common class structure, a subsample, so
#: it moves more than the curve), saliency 0.0002 / 0.0002, patching 0.005 / 0.005, lesion 0.84 / 0.84 at a
#: curve peak of 3.41 (0.25 of it: the quick lesion cell has 4 known prompts, one with LD_clean = 1.07 logits,
#: just over the known margin, whose fraction of LD lost is its drop divided by ~1, so the bf16 model's own
#: ~0.1-0.2 logit differences come out amplified). The limits are about twice those (ten times for saliency and
#: six for patching, whose measured differences are tiny).
TOL = {"geometry": {"curve": 0.05, "effect": 0.15, "rel": 0.0},
       "saliency": {"curve": 0.002, "effect": 0.002, "rel": 0.0},
       "patching": {"curve": 0.03, "effect": 0.03, "rel": 0.0},
       "lesion": {"curve": 0.1, "effect": 0.1, "rel": 0.4}}


def allowed(technique: str, what: str, curve32: np.ndarray) -> float:
    """The tolerance of ``what`` (``"curve"`` or ``"effect"``) for ``technique`` given the float32 curve."""
    t = TOL[technique]
    peak = float(np.nanmax(np.abs(curve32))) if np.isfinite(curve32).any() else 0.0
    return max(t[what], t["rel"] * peak)


@pytest.fixture(scope="module")
def maps(gemma, tmp_path_factory):
    import medinterp as mi

    work = tmp_path_factory.mktemp("bf16")
    bf = mi.load_model("gemma-3-270m", dtype="bfloat16")
    seconds = {}
    t0 = time.perf_counter()
    km32 = mi.knowledge_map(gemma, concepts=[FAMILY], quick=True, out_dir=work / "float32", progress=False)
    seconds["float32"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    km16 = mi.knowledge_map(bf, concepts=[FAMILY], quick=True, out_dir=work / "bfloat16", progress=False)
    seconds["bfloat16"] = time.perf_counter() - t0
    return km32, km16, work, seconds


def marked(km, technique: str) -> set[int]:
    return {l for iv in km.intervals if iv["technique"] == technique for l in range(iv["start"], iv["end"] + 1)}


def compare(km32, km16) -> dict:
    """Per technique: max |Δ| of the curve and of the effect over the control family, and the differing marks
    (each with float32's p_adj and robustness at that layer)."""
    f32, f16 = km32.curves_frame(), km16.curves_frame()
    out = {}
    for j, t in enumerate(km32.techniques):
        c32, c16 = km32.curves[0, j], km16.curves[0, j]
        sel = lambda f: f[(f.technique == t) & (f.control.isin(["control family", "none"]))].sort_values("layer")  # noqa: E731
        e32, e16 = sel(f32), sel(f16)
        both = np.isfinite(c32) & np.isfinite(c16)
        row = {"curve_max_abs": float(np.abs(c32 - c16)[both].max()) if both.any() else None,
               "curve_nan_differs": [int(l) for l in np.flatnonzero(np.isfinite(c32) != np.isfinite(c16))],
               "code": (km32.cell(FAMILY, t).code, km16.cell(FAMILY, t).code)}
        if len(e32) == len(e16) == 0:  # no effect over control in either map (e.g. a family not known)
            row["effect_max_abs"], row["effect_nan_differs"] = None, []
        elif len(e32) == len(e16):
            a, b = e32.effect.to_numpy(float), e16.effect.to_numpy(float)
            ok = np.isfinite(a) & np.isfinite(b)
            row["effect_max_abs"] = float(np.abs(a - b)[ok].max()) if ok.any() else None
            row["effect_nan_differs"] = [int(l) for l in np.flatnonzero(np.isfinite(a) != np.isfinite(b))]
        else:
            row["effect_max_abs"], row["effect_nan_differs"] = None, f"rows {len(e32)} vs {len(e16)}"
        m32, m16 = marked(km32, t), marked(km16, t)
        diff = []
        for l in sorted(m32 ^ m16):
            r = e32[e32.layer == l]
            p, rob = (float(r.p_adj.iloc[0]), float(r.robustness.iloc[0])) if len(r) else (np.nan, np.nan)
            diff.append({"layer": l, "float32": l in m32, "bfloat16": l in m16, "p_adj_float32": p,
                         "robustness_float32": rob})
        row["marks_float32"], row["marks_bfloat16"], row["marks_differ"] = sorted(m32), sorted(m16), diff
        out[t] = row
    return out


def test_bf16_quick_map_matches_float32(maps):
    km32, km16, work, seconds = maps
    got = compare(km32, km16)
    alpha = float(km32.control_params.get("alpha", 0.05))
    named = {t: r["marks_differ"] for t, r in got.items() if r["marks_differ"]}
    msg = (f"bf16 vs float32 on {FAMILY} ({seconds['bfloat16']:.0f} s vs {seconds['float32']:.0f} s): "
           f"{ {t: {k: v for k, v in r.items() if k != 'marks_differ'} for t, r in got.items()} }; "
           f"marks that differ: {named or 'none'}")
    print(msg)
    if named:
        warnings.warn(f"bf16 marks differ from float32 on {FAMILY}: {named}", stacklevel=1)
    for t, r in got.items():
        assert r["code"][0] == r["code"][1] or "failed" not in r["code"], (t, msg)
        assert not r["curve_nan_differs"], (t, "measured in one dtype only", msg)
        assert not r["effect_nan_differs"], (t, "effect in one dtype only", msg)
        c32 = km32.curves[0, km32.techniques.index(t)]
        for what in ("curve", "effect"):
            tol, got_ = allowed(t, what, c32), r[f"{what}_max_abs"]
            assert got_ is None or got_ <= tol, (t, what, got_, tol, msg)
        for d in r["marks_differ"]:
            decisive = (d["p_adj_float32"] <= alpha / 10 and d["robustness_float32"] >= 0.95) if d["float32"] \
                else d["p_adj_float32"] >= 10 * alpha
            assert not decisive, (t, "a mark float32 was decisive about differs in bf16", d, msg)


def test_bf16_map_ran_in_bf16_with_a_bf16_twin(maps):
    import json

    km32, km16, work, _ = maps
    for t in km16.techniques:
        assert km16.cell(FAMILY, t).code != "failed", (t, km16.status)
    dtypes = {}
    for run in (FAMILY, f"{FAMILY}__control", f"{FAMILY}__twin"):
        for man in (work / "bfloat16" / run).glob("*/manifest.json"):  # each saved result's provenance
            prov = json.loads(man.read_text())["fields"]["provenance"]
            dtypes[(run, man.parent.name)] = prov["model"]["dtype"]
    assert any(r.endswith("__twin") for r, _ in dtypes), dtypes  # the twin ran (geometry at least)
    assert set(dtypes.values()) == {"bfloat16"}, dtypes
