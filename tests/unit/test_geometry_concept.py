"""The concept-level geometry headline (METHOD §0-§1): per-prompt probe scores with known answers, the
family questions, and the validation cases of issue 15: (b) item-shuffled labels score chance, (d) a
label direction planted at one layer of a tiny model is found there and nowhere else, (e) random
per-age vectors get grouped R² <= 0."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medinterp import stats
from medinterp.errors import MedinterpError
from medinterp.techniques import geometry as G
from medinterp.techniques.base import UnitScores

sys.path.insert(0, str(Path(__file__).parent))
from test_geometry import _FakeSet  # noqa: E402  (the stand-in ConceptSet of the geometry tests)


def items_design(n_items=60, n_tpl=4, d=16, seed=0, item_sd=1.0, tpl_sd=5.0):
    """Prompts = item vector + template offset + noise; item ids and template ids per prompt."""
    rng = np.random.default_rng(seed)
    item_vec = rng.normal(0, item_sd, (n_items, d))
    tpl_vec = rng.normal(0, tpl_sd, (n_tpl, d))
    items = np.repeat(np.arange(n_items), n_tpl)
    tpls = np.tile(np.arange(n_tpl), n_items)
    X = item_vec[items] + tpl_vec[tpls] + rng.normal(0, 0.3, (len(items), d))
    return X, items, tpls


# ------------------------------------------------------------------ primitives with known answers
def test_probe_scores_average_to_chance_corrected_balanced_accuracy_and_match_stats():
    X, items, tpls = items_design()
    y = np.asarray(["a", "b", "c"])[items % 3]
    X[:, 0] += 4.0 * (items % 3 == 0)  # class a is separable, b and c are not
    X = G.template_centre(X, tpls)
    s, ba = G.probe_unit_scores(X, y, items, n_splits=5, seed=0)
    k = 3
    assert s.mean() == pytest.approx((ba - 1 / k) / (1 - 1 / k), abs=1e-12)
    # same folds and probe as the shared statistic (which returns only the pooled score)
    assert ba == pytest.approx(stats.probe_balanced_accuracy(X, y, items, n_splits=5, seed=0), abs=1e-12)
    assert 0.2 < s.mean() < 0.8


def test_ridge_scores_average_to_grouped_r2():
    X, items, tpls = items_design()
    y = items.astype(float)
    X[:, 0] += 0.2 * y
    s, r2 = G.ridge_unit_scores(X, y, items, n_splits=5, seed=0)
    assert r2 == pytest.approx(stats.grouped_r2(X, y, items, n_splits=5, seed=0), abs=1e-10)
    assert s.mean() == pytest.approx(r2) and r2 > 0.9


def test_template_centring_removes_the_frame():
    X, items, tpls = items_design(tpl_sd=50.0)
    Xc = G.template_centre(X, tpls)
    for t in np.unique(tpls):
        np.testing.assert_allclose(Xc[tpls == t].mean(0), 0, atol=1e-9)
    # the items' own structure is kept: same-item rows are closer than other-item rows after centring
    d_same = np.linalg.norm(Xc[0] - Xc[1])
    d_other = np.linalg.norm(Xc[0] - Xc[5])
    assert d_same < d_other


def test_collapse_centred_cosine_ignores_a_shared_offset():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 20))
    shifted = X + 100.0  # a big shared direction: raw cosine ~1, centred cosine unchanged
    a, b = G.collapse_stats(X), G.collapse_stats(shifted)
    assert b["mean_cosine"] > 0.95 and a["mean_cosine"] < 0.1
    assert b["mean_cosine_centred"] == pytest.approx(a["mean_cosine_centred"], abs=1e-9)
    assert b["participation_ratio"] == pytest.approx(a["participation_ratio"], rel=1e-9)
    line = np.outer(rng.normal(size=100), rng.normal(size=20))  # rank one: participation ratio 1
    assert G.collapse_stats(line)["participation_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_age_step_finds_a_planted_jump_and_not_a_smooth_trend():
    ages = np.repeat(np.arange(1, 101), 6).astype(float)
    tpl = np.tile(np.arange(6), 100)
    rng = np.random.default_rng(0)
    smooth = np.c_[ages / 10, rng.normal(0, 0.05, (600, 5))]
    r = G.age_step(smooth, ages, tpl, n_boot=300)
    assert not r["outlier"] and 0.5 < r["ratio"] < 2 and r["ci_low"] <= r["ratio"] <= r["ci_high"]
    jumped = smooth.copy()
    jumped[ages >= 18, 0] += 3.0
    r = G.age_step(jumped, ages, tpl, n_boot=300)
    assert r["outlier"] and r["ratio"] > 5 and r["ci_low"] > 2
    assert r["n_matched"] == 8 and r["p_rank"] == pytest.approx(1 / 9)


def test_progression_order_line_vs_circle_and_ties_are_undefined():
    stages = np.arange(10)
    per = 3
    st = np.repeat(stages, per).astype(float)
    items = np.repeat(np.arange(10), per)
    dis = ["d"] * len(st)
    rng = np.random.default_rng(0)
    line = np.c_[st, np.zeros_like(st)] + rng.normal(0, 0.01, (len(st), 2))
    r = G.progression_order(line, dis, st, items, n_perm=1000)
    assert r["spearman"] > 0.99 and r["p_value"] < 0.01 and r["null_mean"] < 0.3
    assert r["per_disease"]["d"]["csfs"] == 1 and r["per_disease"]["d"]["csls"] == 8
    ang = 2 * np.pi * st / 10
    circle = np.c_[np.cos(ang), np.sin(ang)] + rng.normal(0, 0.001, (len(st), 2))
    r = G.progression_order(circle, dis, st, items, n_perm=200)
    assert r["per_disease"]["d"]["csls"] == 0 and r["closes"] == 1.0  # the last stage comes back to the first
    assert r["spearman"] < 0.5
    tied = np.zeros((len(st), 2))  # every stage at the same place: nearest stage undefined, not stage 0
    r = G.progression_order(tied, dis, st, items, n_perm=0)
    assert np.isnan(r["per_disease"]["d"]["csfs"]) and np.isnan(r["per_disease"]["d"]["csls"])


def test_paired_item_difference_ci_covers_a_known_difference():
    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(50), 4)
    a = rng.normal(0.3, 1, 200)
    b = rng.normal(0.0, 1, 200)
    d = G.paired_item_difference(a, b, units, n_boot=2000)
    assert d["ci_low"] < 0.3 < d["ci_high"] and d["n_items"] == 50
    same = G.paired_item_difference(b, b, units, n_boot=200)
    assert same["diff"] == 0


# ------------------------------------------------------------------ validation (issue 15)
def test_b_item_shuffled_labels_give_chance_probe_scores():
    """(b) labels shuffled at item level carry no information: the mean score is ~0 with a CI covering 0;
    the same data with real labels scores high (so the test can fail)."""
    covered, means = 0, []
    for seed in range(10):
        X, items, tpls = items_design(seed=seed)
        y_item = np.asarray(["a", "b", "c"])[np.arange(60) % 3]
        for c, lab in enumerate("abc"):  # real structure exists for the true labels
            X[:, c] += 4.0 * (y_item[items] == lab)
        true_s, _ = G.probe_unit_scores(G.template_centre(X, tpls), y_item[items], items, seed=seed)
        assert true_s.mean() > 0.3
        shuf = np.random.default_rng(100 + seed).permutation(y_item)[items]  # item-level shuffle
        s, _ = G.probe_unit_scores(G.template_centre(X, tpls), shuf, items, seed=seed)
        bs = stats.cluster_bootstrap(s, units=items, n_boot=1000, seed=seed)
        covered += bool(bs.low <= 0 <= bs.high)
        means.append(s.mean())
    assert covered >= 9 and abs(np.mean(means)) < 0.1


def test_e_random_per_age_vectors_get_grouped_r2_at_most_zero():
    """(e) a lookup table (one random vector per age, shared by its prompts) has no ordinal structure:
    GroupKFold by age gives R² <= 0, while the leaky KFold over prompts would score it high."""
    rng = np.random.default_rng(0)
    ages = np.repeat(np.arange(1, 101), 6).astype(float)
    table = rng.normal(size=(100, 256))  # more dims than ages: a linear map can memorise them
    X = table[(ages - 1).astype(int)] + rng.normal(0, 0.1, (600, 256))
    s, r2 = G.ridge_unit_scores(X, ages, ages, seed=0)
    assert r2 <= 0
    assert stats.grouped_r2(X, ages, ages, grouped=False) > 0.8


WORDS60 = ("pain chest fever cough headache nausea vomiting fatigue shortness breath rash angina pneumonia asthma "
           "diabetes hypertension stroke migraine infection cancer heart lung liver kidney brain skin blood bone "
           "aspirin ibuprofen metformin insulin lisinopril amoxicillin warfarin heparin atorvastatin omeprazole "
           "parkinson copd tremor dyspnea exertion productive sputum wheezing clinical examination shows reports "
           "acute chronic progressive normal healthy tablet oral intravenous").split()[:60]


def _planted_set():
    items = [{"item": w, "cls": ["x", "y"][i % 2]} for i, w in enumerate(WORDS60)]
    return _FakeSet("toy_planted", items, ["cls"], [],
                    templates=("A patient with {item}", "Signs of {item} today", "Notes : {item}"))


@dataclasses.dataclass
class _Plant:
    """Hooks that add a label direction at blocks.k.hook_resid_post on the item tokens and take it away at
    blocks.{k+1}.hook_resid_pre, so it exists in the layer-k read only."""

    model: object
    k: int
    token_sign: dict
    strength: float

    def __enter__(self):
        d = self.model.cfg.d_model
        self.v = torch.zeros(d)
        self.v[0] = self.strength
        self.tokens = None

        def grab(mod, inputs):
            self.tokens = inputs[0]

        def delta(act):
            sign = torch.zeros(self.tokens.shape, dtype=act.dtype)
            for tid, sg in self.token_sign.items():
                sign[self.tokens == tid] = sg
            return sign[..., None] * self.v

        def add(act, hook):
            return act + delta(act)

        def sub(act, hook):
            return act - delta(act)

        self.handle = self.model.embed.register_forward_pre_hook(grab)
        self.model.add_hook(f"blocks.{self.k}.hook_resid_post", add)
        if self.k + 1 < self.model.cfg.n_layers:
            self.model.add_hook(f"blocks.{self.k + 1}.hook_resid_pre", sub)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.model.reset_hooks()


def test_d_planted_direction_is_found_at_its_layer_only():
    """(d) a label direction planted at layer k of a tiny model: the unit scores beat the unplanted model
    (paired, items as units, Holm across layers) at k and nowhere else."""
    from medinterp.testing import tiny_model

    model = tiny_model(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=0)
    cset = _planted_set()
    k = 2
    ids = {w: model.to_single_token(w) for w in WORDS60}
    sign = {ids[it["item"]]: (1.0 if it["cls"] == "x" else -1.0) for it in cset.items}
    kw = dict(include_embed=False, progress=False, read_last=True, n_boot_items=500, n_null=0)
    base = G.geometry(model, cset, **kw)
    with _Plant(model, k, sign, strength=3.0):
        planted = G.geometry(model, cset, **kw)
    assert not model.hook_dict[f"blocks.{k}.hook_resid_post"].fwd_hooks  # hooks removed
    us_p, us_b = planted.unit_scores(), base.unit_scores()
    n_items = len(WORDS60)
    assert isinstance(us_p, UnitScores) and us_p.values.shape == (3 * n_items, 4) and n_items >= 50
    assert us_p.units == us_b.units and len(set(us_p.units)) == n_items
    eff = stats.layer_effects(us_p.values, us_b.values, paired=True, medicine_units=np.asarray(us_p.units),
                              control_units=np.asarray(us_b.units), n_boot=500, n_perm=1000)
    p_adj = stats.adjust(eff.p, "holm")
    assert p_adj[k] < 0.01 and eff.effect[k] > 0.5
    others = [l for l in range(4) if l != k]
    assert (p_adj[others] > 0.05).all(), (eff.effect, p_adj)
    # the curve itself: high at k, near chance elsewhere (random-init model, random words)
    curve = planted.layer_curve()
    assert curve[k] > 0.8 and (np.abs(curve[others]) < 0.4).all()


def test_headline_end_to_end_with_matched_labels_age_and_progression(tiny):
    items = [{"item": w, "specialty": ["s1", "s2", "s3"][i % 3], "mechanism": ["m1", "m2"][i % 2],
              "mc": ["ma", "mb", "ungrouped"][i % 3], "sm": ["sa", "sb", "ungrouped"][(i + 1) % 3 and i % 3]}
             for i, w in enumerate(WORDS60)]
    for it in items:  # both matched labellings must leave out the same items
        it["sm"] = "ungrouped" if it["mc"] == "ungrouped" else ("sa" if WORDS60.index(it["item"]) % 2 else "sb")
    dset = _FakeSet("toy_drugs2", items, ["specialty", "mechanism", "mc", "sm"], [])
    res = G.geometry(tiny, dset, labels=["specialty", "mechanism"], matched_labels=["sm", "mc"], progress=False,
                     n_boot_items=200, n_null=100)
    t = res.table
    md = t[t.metric == "matched_diff"]
    n_kept = sum(it["mc"] != "ungrouped" for it in items)
    assert len(md) == len(res.layers) and set(md.label) == {"sm-mc"} and (md.n == n_kept).all()
    assert res.lexical_scores.shape == (len(res.unit_ids),)
    assert set(res.findings["lexical"]) == {"specialty", "mechanism", "sm", "mc"}
    assert res.unit_values.shape == res.unit_values_last.shape == (len(res.unit_ids), len(res.layers))
    assert res.unit_scores("last").values.shape[1] == tiny.cfg.n_layers
    h = res.headline_dict()
    assert {"best_layer", "probe", "lexical", "matched_diff"} <= set(h)
    with pytest.raises(MedinterpError, match="matched_labels"):
        G.geometry(tiny, dset, matched_labels=["sm", "nope"], progress=False)

    ages = [{"item": str(a), "age": a, "sex": s} for a in range(14, 41) for s in ("male", "female")]
    aset = _FakeSet("toy_age", ages, ["sex"], ["age"], templates=("Age {item} patient", "Patient aged {item}"))
    res = G.geometry(tiny, aset, labels=["age"], progress=False, n_boot_items=200)
    steps = res.table[res.table.metric == "age_step_ratio"]
    assert len(steps) == len(res.layers) and (steps.n == 2).all()  # 27->28 and 37->38 matched
    assert res.curve_label.endswith("grouped R²")
    # issue 20: the units are the CV groups (the age: both sexes and both templates of an age are one unit)
    us = res.unit_scores()
    assert sorted(set(us.units), key=float) == [str(a) for a in range(14, 41)] and len(us.units) == 2 * len(ages)
    assert np.isnan(us.covariates["n_classes"]).all()  # continuous: no class structure
    pi = res.probe_inputs()
    assert pi.continuous and pi.embedding is not None and pi.features.shape[:2] == (tiny.cfg.n_layers, 2 * len(ages))
    np.testing.assert_array_equal(pi.groups, np.asarray(us.units))

    prog = [{"item": f"{d} stage {s}", "disease": d, "stage": s} for d in ("gout", "asthma") for s in range(6)]
    pset = _FakeSet("toy_progression", prog, ["disease"], ["stage"], templates=("{item}", "Patient: {item}"))
    res = G.geometry(tiny, pset, labels=["stage"], progress=False, n_boot_items=200, n_null=200)
    sp = res.table[res.table.metric == "stage_spearman"]
    assert len(sp) == len(res.layers) and sp.p_value.between(0, 1).all()
    assert {"spearman", "p_value"} <= set(res.findings["progression_lexical"])
    assert set(res.progression.metric) == {"spearman", "csfs", "csls"}


def test_collect_reads_equals_one_collect_activations_per_read(tiny):
    from medinterp.activations import collect_activations, collect_reads

    prompts = _planted_set().prompts()[50:70]  # templates 0 and 1 (template 1 ends after the item)
    both = collect_reads(tiny, prompts, ["span_mean", "last"], include_embed=True, batch_size=7, progress=False)
    for mode in ("span_mean", "last"):
        one = collect_activations(tiny, prompts, positions=mode, include_embed=True, batch_size=7, progress=False)
        np.testing.assert_allclose(both[mode].values, one.values, atol=1e-5)
        assert both[mode].positions == mode and both[mode].token_positions == one.token_positions
    assert not np.allclose(both["span_mean"].values, both["last"].values)


def test_geometry_reuses_shared_reads(tiny):
    from medinterp.activations import collect_reads

    cset = _planted_set()
    kw = dict(include_embed=False, progress=False, n_boot_items=100, n_null=0)
    direct = G.geometry(tiny, cset, **kw)
    reads = collect_reads(tiny, cset.prompts(), ["span_mean", "last"], include_embed=False, progress=False)
    shared = G.geometry(concepts=cset, activations=reads, **kw)
    np.testing.assert_allclose(shared.unit_values, direct.unit_values)
    np.testing.assert_allclose(shared.unit_values_last, direct.unit_values_last)
    with pytest.raises(MedinterpError, match="collect_reads"):
        G.geometry(concepts=cset, activations={"span_mean": np.zeros(3)}, **kw)


def test_probe_with_every_class_smaller_than_the_folds_uses_grouped_folds():
    """90 mechanisms of 152 drugs: no class has 5 items, so stratified folds are impossible (sklearn
    raised); the probe falls back to item-grouped folds and still finds a planted class signal."""
    import numpy as np

    from medinterp.techniques.geometry.concept import probe_unit_scores

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(20), 3)                      # 20 classes of 3 items
    groups = np.arange(60)                               # one prompt per item
    X = rng.normal(size=(60, 30)) + 4.0 * np.eye(30)[y]  # a direction per class
    scores, ba = probe_unit_scores(X, y, groups, n_splits=5, seed=0)
    assert scores.shape == (60,) and ba > 0.25           # chance is 0.05 (measured 0.38)
    Xn = rng.normal(size=(60, 30))
    _, ba0 = probe_unit_scores(Xn, y, groups, n_splits=5, seed=0)
    assert ba0 < 0.2


# ------------------------------------------------------------------ issue 20: inference that refits the probe
from medinterp.stats.cv import grouped_folds, out_of_fold_ridge, ridge_fold_operator  # noqa: E402
import types  # noqa: E402

from medinterp.techniques.geometry import contrast as _GI_con  # noqa: E402
from medinterp.techniques.geometry import inference as _GI_inf  # noqa: E402

GI = types.SimpleNamespace(**{**vars(_GI_inf), **vars(_GI_con)})  # the inference API across its two modules

#: the shipped class structures of issue 20 (classes / items), drugs and its control at the time
DRUGS, DRUGS_CONTROL = (15, 152), (10, 63)


def _structure_family(rng, k, n_items, n_tpl=2, d=8, n_layers=2, signal=None, class_means=None):
    """Items spread over ``k`` classes as evenly as possible; per item a Gaussian vector shared by its
    templates plus per-prompt noise; ``signal[l]`` adds that multiple of ``class_means`` at layer l."""
    per = np.full(k, n_items // k)
    per[: n_items % k] += 1
    cls = np.repeat(np.arange(k), per)
    groups = np.repeat(np.arange(n_items), n_tpl)
    y = cls[groups]
    X = rng.normal(size=(n_layers, n_items, d))[:, groups] + 0.5 * rng.normal(size=(n_layers, n_items * n_tpl, d))
    if signal is not None:
        for l, s in enumerate(signal):
            X[l] += s * class_means[y]
    return X, y, groups, np.tile(np.arange(n_tpl), n_items)


def test_fold_operator_and_refit_statistic_equal_the_headline_probe():
    from medinterp.stats.cv import _ridge_fold, weighted_ridge_fold

    rng = np.random.default_rng(0)
    X, y, groups, tpl = _structure_family(rng, 4, 40, n_layers=2, d=6)
    X[1, :, 0] += 1.5 * (y == 1)
    folds = grouped_folds([str(v) for v in y], groups, False, n_splits=5, seed=0)
    for train, test in folds:  # the closed-form operator is the fold's StandardScaler -> Ridge
        M = ridge_fold_operator(X[0, train], X[0, test])
        Y = rng.normal(size=(len(train), 3))
        np.testing.assert_allclose(M @ Y + Y.mean(0), _ridge_fold(X[0, train], Y, X[0, test], 1.0), atol=1e-9)
    M = ridge_fold_operator(X[0, :5], X[0, 5:9])  # dual form (fewer rows than features)
    Y = rng.normal(size=(5, 2))
    np.testing.assert_allclose(M @ Y + Y.mean(0), _ridge_fold(X[0, :5], Y, X[0, 5:9], 1.0), atol=1e-9)
    # the refit statistic of the observed labels is the headline's level on the same folds
    r = GI.permutation_levels(X, y, groups, continuous=False, n_perm=9, splits=folds, templates=tpl)
    for l in range(2):
        s, _ = G.probe_unit_scores(X[l], y, groups, splits=folds)
        assert r.statistic[l] == pytest.approx(s.mean(), abs=1e-12)
    yc = groups.astype(float)
    rc = GI.permutation_levels(X, yc, groups, continuous=True, n_perm=9, n_splits=5, fold_seed=0)
    _, r2 = G.ridge_unit_scores(X[0], yc, groups, n_splits=5, seed=0)
    assert rc.statistic[0] == pytest.approx(r2, abs=1e-10)
    # a bootstrap refit with integer weights is the refit on repeated rows
    w = rng.integers(0, 3, size=60).astype(float)
    rep = np.repeat(np.arange(60), w.astype(int))
    Yw = rng.normal(size=(60, 2))
    np.testing.assert_allclose(weighted_ridge_fold(X[0, :60], w, Yw, X[0, 60:]),
                               _ridge_fold(X[0, :60][rep], Yw[rep], X[0, 60:], 1.0), atol=1e-9)
    # and the bootstrap is seeded: same inputs and seed, bit-identical replicates
    b1 = GI.bootstrap_levels(X, y, groups, continuous=False, n_boot=5, seed=3)
    np.testing.assert_array_equal(b1, GI.bootstrap_levels(X, y, groups, continuous=False, n_boot=5, seed=3))


def test_c_refit_null_at_the_shipped_class_structure_holds_and_the_item_level_test_does_not():
    """Issue 20 8(c): pure-noise families at drugs' structure (15 classes / 152 items, 2 templates), real
    out-of-fold probes, 500 runs x 2 layers. The refit permutation test rejects at its nominal rate (an exact
    test: with n_perm = 39, p <= .05 in 2/40 of runs under H0); the old item-level permutation of out-of-fold
    scores (medicine vs a noise control of the control's structure, ``stats.layer_effects``) rejects far
    more (first 100 runs)."""
    from medinterp import stats

    rng0 = np.random.default_rng(0)
    _, y, g, tpl = _structure_family(rng0, *DRUGS)
    _, yc, gc, _ = _structure_family(rng0, *DRUGS_CONTROL)
    folds = grouped_folds([str(v) for v in y], g, False, n_splits=5, seed=0)  # folds depend on labels only
    folds_c = grouped_folds([str(v) for v in yc], gc, False, n_splits=5, seed=0)
    new, old = [], []
    for run in range(500):
        rng = np.random.default_rng(1000 + run)
        X = _structure_family(rng, *DRUGS)[0]
        r = GI.permutation_levels(X, y, g, continuous=False, n_perm=39, seed=run, splits=folds, templates=tpl)
        new.append(r.p <= 0.05)
        if run < 100:
            Xc = _structure_family(rng, *DRUGS_CONTROL)[0]
            med = np.stack([G.probe_unit_scores(X[l], y, g, splits=folds)[0] for l in range(2)], 1)
            ctl = np.stack([G.probe_unit_scores(Xc[l], yc, gc, splits=folds_c)[0] for l in range(2)], 1)
            le = stats.layer_effects(med, ctl, medicine_units=g, control_units=gc, n_perm=199, n_boot=10, seed=run)
            old.append(le.p <= 0.05)
    rate_new, rate_old = float(np.mean(new)), float(np.mean(old))
    print(f"per-layer rejection at .05: refit {rate_new:.3f}, item-level on out-of-fold scores {rate_old:.3f}")
    # 1,000 layer tests of an exact 5% test: SE 0.007
    assert rate_new <= 0.05 + 2 * 0.0069, rate_new
    assert rate_old > 0.08 and rate_old > rate_new + 0.03, (rate_old, rate_new)


def test_refit_permutation_test_finds_a_planted_class_signal_at_its_layer():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(DRUGS[0], 8))
    found = []
    for run in range(10):
        X, y, g, tpl = _structure_family(np.random.default_rng(run), *DRUGS, signal=[0.0, 0.6], class_means=means)
        stat, null, p = GI.geometry_permutation_test(X, y, g, n_perm=199, seed=run, templates=tpl)
        assert null.shape == (199, 2)
        found.append((p[1] <= 0.01, p[0] <= 0.01))
    found = np.asarray(found)
    assert found[:, 0].mean() >= 0.9 and found[:, 1].mean() <= 0.2


def test_bootstrap_se_of_the_excess_is_calibrated_where_the_permutation_null_is_too_narrow():
    """Two families of identical construction with a real class signal (so the permutation null, which has
    none, is the wrong spread): the refit bootstrap SE of "level minus lexical" matches the run-to-run SD of
    that excess, and the two-family test's z has variance about 1 (rejects at about its nominal rate)."""
    k, n = 8, 48
    means = np.random.default_rng(7).normal(size=(k, 6))
    ex, se, perm_sd, z = [], [], [], []
    for run in range(30):
        fam = []
        for f in range(2):
            rng = np.random.default_rng(100 * run + f)
            X, y, g, tpl = _structure_family(rng, k, n, d=6, n_layers=1, signal=[0.6], class_means=means)
            lex = X[0][:, ::-1] * 0.5 + rng.normal(size=X[0].shape)  # a weaker "lexical" read of the same items
            inp = GI.ProbeInputs(layers=[0], features=X, lexical=lex, embedding=None, y=y, groups=g.astype(str),
                                 templates=tpl, continuous=False)
            fam.append(GI.family_levels(inp, n_perm=99, n_boot=40, seed=run))
        c = GI.contrast_families(*fam)
        ex.append(fam[0].excess[0])
        se.append(fam[0].excess_se[0])
        z.append(c.z[0])
    ex, se, z = np.asarray(ex), np.asarray(se), np.asarray(z)
    ratio = se.mean() / ex.std(ddof=1)
    assert 0.75 < ratio < 1.5, ratio
    assert np.mean(z ** 2) < 1.6 and np.mean(z > 1.645) <= 0.15


def test_geometry_cell_detects_a_medicine_excess_and_reports_embedding_gain():
    k, n = 6, 36
    means = np.random.default_rng(3).normal(size=(k, 6))

    def family(seed, s):
        rng = np.random.default_rng(seed)
        X, y, g, tpl = _structure_family(rng, k, n, d=6, n_layers=3, signal=[0.0, s, s], class_means=means)
        emb = rng.normal(size=X[0].shape)  # the embedding layer carries no class signal
        lex = rng.normal(size=X[0].shape)
        return GI.ProbeInputs(layers=[0, 1, 2], features=X, lexical=lex, embedding=emb, y=y.astype(str),
                              groups=g.astype(str), templates=tpl, continuous=False)

    cell = GI.geometry_cell(family(0, 1.0), family(1, 0.0), n_perm=199, n_boot=60, seed=0)
    assert cell.structure == (6, 6)
    assert cell.p[0] > 0.05 and (cell.p[1:] < 0.005).all()
    med = cell.medicine
    assert (med.p_level[1:] < 0.01).all() and med.p_level[0] > 0.01
    assert (med.over_embedding[1:] > 0.3).all() and (med.p_over_embedding[1:] < 0.01).all()
    assert np.isfinite(cell.se).all() and "lexical baseline" in cell.null


def test_class_structure_subsampling_and_covariates():
    y = ["a"] * 8 + ["b"] * 6 + ["c"] * 2
    g = [f"i{j}" for j in range(16)]
    assert GI.class_structure(y, g) == {"a": 8, "b": 6, "c": 2}
    assert GI.common_structure({"a": 8, "b": 6, "c": 2}, {"p": 5, "q": 5, "r": 5}) == (2, 5)
    assert GI.common_structure({"a": 3, "b": 3, "c": 3}, {"p": 9, "q": 9, "r": 9, "s": 9}) == (3, 3)
    keep = GI.subsample_structure(y, g, 2, 5, seed=0)
    assert sorted(GI.class_structure(np.asarray(y)[keep], np.asarray(g)[keep]).values()) == [5, 5]
    np.testing.assert_array_equal(keep, GI.subsample_structure(y, g, 2, 5, seed=0))  # seeded
    with pytest.raises(MedinterpError, match="classes have >= 7"):
        GI.subsample_structure(y, g, 2, 7)
    with pytest.raises(MedinterpError, match="no common class structure"):
        GI.common_structure({"a": 1}, {"b": 1})
    cov = GI.structure_covariates(y, g, continuous=False)
    assert cov["n_classes"].tolist() == [3.0] * 16 and cov["items_per_class"][[0, 8, 15]].tolist() == [8, 6, 2]
    with pytest.raises(MedinterpError, match="different labels"):
        GI.permutation_levels([np.zeros((6, 2))], list("abaabb"), list("xxyzuv"), continuous=False)
    with pytest.raises(MedinterpError, match="at least 4 CV groups"):
        GI.permutation_levels([np.zeros((4, 2))], list("abab"), list("xxyz"), continuous=False)
    with pytest.raises(MedinterpError, match="must be \\[n, d\\]"):
        GI.bootstrap_levels([np.zeros((4, 2))], list("ababa"), list("vwxyz"), continuous=False)


def test_paired_contrast_finds_the_model_over_its_twin_and_not_a_twin_over_itself():
    k, n = 6, 36
    means = np.random.default_rng(3).normal(size=(k, 6))
    rng = np.random.default_rng(5)
    X, y, g, tpl = _structure_family(rng, k, n, d=6, n_layers=2, signal=[0.0, 1.0], class_means=means)
    twin = rng.normal(size=X.shape)  # the random-init twin's reads: no class structure

    def inp(F):
        return GI.ProbeInputs(layers=[0, 1], features=F, lexical=None, embedding=None, y=y.astype(str),
                              groups=g.astype(str), templates=tpl, continuous=False)

    c = GI.paired_contrast(inp(X), inp(twin), n_boot=60, seed=0)
    assert c.p[1] < 0.001 and c.p[0] > 0.01 and c.effect[1] > 0.3
    same = GI.paired_contrast(inp(X), inp(X), n_boot=20, seed=0)
    np.testing.assert_allclose(same.effect, 0.0, atol=1e-12)
    with pytest.raises(MedinterpError, match="same prompts"):
        GI.paired_contrast(inp(X), inp(X[:, :10]))


def test_reduce_keeps_probe_features_narrow_when_there_are_fewer_rows_than_components():
    """0.4.0 returned X itself when n <= pca_dims: the quick map's progression cell (60 prompts) got 640-wide
    probe features and a 3,926-wide TF-IDF baseline, and its refit bootstrap ran > 10 min at ~12 GB."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 640))
    Z = G.concept.reduce(X, 64)
    assert Z.shape == (60, 59)  # the n - 1 directions centred rows span
    # nothing is lost: the scores reproduce every centred pairwise distance
    Xc = X - X.mean(0)
    d_x = ((Xc[:, None] - Xc[None]) ** 2).sum(-1)
    d_z = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d_z, d_x, rtol=1e-8, atol=1e-6)
    assert G.concept.reduce(X[:, :50], 64).shape == (60, 50)  # already narrow: as it is
    assert G.concept.lexical_features([f"item{i} drug{i * 7}" for i in range(30)], 64).shape[1] <= 64


def test_bootstrap_levels_do_not_depend_on_how_feature_sets_are_chunked():
    rng = np.random.default_rng(1)
    y = np.repeat(np.array(list("abc")), 12)
    groups = np.arange(36)
    X = [rng.normal(size=(36, 8)) + (j == 2) * (y == "a")[:, None] for j in range(5)]
    whole = _GI_inf.bootstrap_levels(X, y, groups, continuous=False, n_boot=6, seed=4, layer_chunk=20)
    one_by_one = _GI_inf.bootstrap_levels(X, y, groups, continuous=False, n_boot=6, seed=4, layer_chunk=1)
    # batched products sum in another order: equal to rounding (the chunk is fixed by the inputs, so one
    # input still gives one result bit for bit)
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-12)
