"""Tests of medinterp.stats against known answers: pure noise, planted effects, brute force.

Each validation test also runs the broken variant it guards against (prompts as units, no correction,
KFold over prompts, per-prompt shuffles) and checks that variant fails, so the test can fail.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from medinterp.errors import MedinterpError
from medinterp.stats import (
    adjust,
    cluster_bootstrap,
    grouped_r2,
    intervals_from_mask,
    item_permutation_null,
    item_permutations,
    layer_effects,
    mark_layer_effects,
    mark_layers,
    permutation_pvalue,
    probe_balanced_accuracy,
    robustness,
    unit_means,
)

N_LAYERS = 18


def noise_curves(rng, n_items, n_templates=3, n_layers=N_LAYERS, item_sd=1.0, template_sd=0.3):
    """Prompt-level curves ``[n_items * n_templates, n_layers]`` with item-level noise.

    Each item has its own curve (offset + random walk over layers, so layers are correlated as real
    curves are); its templates scatter around it with ``template_sd``. Returns (values, units).
    """
    item = item_sd * (rng.normal(size=(n_items, 1, 1))
                      + np.cumsum(0.5 * rng.normal(size=(n_items, 1, n_layers)), axis=2))
    values = item + template_sd * rng.normal(size=(n_items, n_templates, n_layers))
    return values.reshape(n_items * n_templates, n_layers), np.repeat(np.arange(n_items), n_templates)


# ---------------------------------------------------------------------------------------------- (a)
def test_pure_noise_marks_a_layer_in_at_most_5_percent_of_1000_runs():
    """Validation (a): 1,000 null runs of the whole pipeline (effects → Holm → runs of >= 2).

    n_perm = 999 (not smaller): with Holm over 18 layers the smallest layer must reach p <= 0.05/18 =
    0.0028, and the smallest attainable permutation p is 1/(n_perm+1); with n_perm < 359 nothing could
    ever be marked and the test would be vacuous. n_boot is small because CIs do not enter the marking.
    The same data analysed with prompts as units, or without correction, must exceed 5%.
    """
    n_runs = 1000
    marked = prompt_units = uncorrected = 0
    for run in range(n_runs):
        rng = np.random.default_rng(run)
        med, mu = noise_curves(rng, 20)
        ctl, cu = noise_curves(rng, 20)
        out = mark_layer_effects(med, ctl, medicine_units=mu, control_units=cu, n_perm=999, n_boot=50, seed=run)
        marked += out.marked.any()
        if run < 300:  # the broken variants, on the first 300 runs
            prompt_units += mark_layer_effects(med, ctl, n_perm=999, n_boot=50, seed=run).marked.any()
            uncorrected += mark_layer_effects(med, ctl, medicine_units=mu, control_units=cu, method="none",
                                              n_perm=999, n_boot=50, seed=run).marked.any()
    assert marked / n_runs <= 0.05, marked
    assert prompt_units / 300 > 0.10, prompt_units    # prompts as units: anti-conservative
    assert uncorrected / 300 > 0.05, uncorrected      # no correction across layers: too many marks


def test_pure_noise_paired_sign_flip_is_calibrated():
    """Paired (trained vs random-init on the same items) null: per-layer p uniform, marking <= 5%."""
    n_runs, marked, small_p = 300, 0, 0
    for run in range(n_runs):
        rng = np.random.default_rng(10_000 + run)
        a, _ = noise_curves(rng, 20, n_templates=1)
        b = a + rng.normal(size=a.shape)          # same items, condition difference is pure noise
        out = mark_layer_effects(a, b, paired=True, n_perm=999, n_boot=50, seed=run)
        marked += out.marked.any()
        small_p += (out.effects.p <= 0.05).sum()
    assert marked / n_runs <= 0.05
    assert 0.03 <= small_p / (n_runs * N_LAYERS) <= 0.07   # per-layer size at alpha = 0.05


# ---------------------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("paired", [False, True])
def test_planted_effect_at_layers_5_to_7_is_found_there_and_nowhere_else(paired):
    """Validation (b): a shift at layers 5-7 is marked there in every run; off-target marks stay within
    the family-wise rate (each run may err with probability <= 5%, so 20 runs may hold one or two)."""
    exact = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ctl, cu = noise_curves(rng, 24)
        if paired:
            med = ctl + 0.3 * rng.normal(size=ctl.shape)
        else:
            med, _ = noise_curves(rng, 24)
        med[:, 5:8] += 3.0
        out = mark_layer_effects(med, ctl, paired=paired, medicine_units=cu, control_units=cu,
                                 n_perm=999, n_boot=200, seed=seed)
        assert out.marked[5:8].all(), (seed, out.intervals)
        assert np.all(out.effects.ci_low[5:8] > 0)
        exact += out.intervals == [(5, 7)]
    assert exact >= 18, exact


def test_single_layer_effect_needs_min_run_and_direction():
    rng = np.random.default_rng(0)
    med, mu = noise_curves(rng, 24)
    ctl, cu = noise_curves(rng, 24)
    med[:, 10] += 4.0
    kw = dict(medicine_units=mu, control_units=cu, n_perm=999, n_boot=50)
    assert mark_layer_effects(med, ctl, **kw).intervals == []                 # "no interval"
    assert mark_layer_effects(med, ctl, min_run=1, **kw).intervals == [(10, 10)]
    assert mark_layer_effects(ctl, med, min_run=1, **kw).intervals == []      # wrong direction
    assert mark_layer_effects(ctl, med, min_run=1, alternative="less", **kw).intervals == [(10, 10)]


def test_layer_effects_pvalue_matches_exact_enumeration():
    """Unpaired: scipy's exact test (all 70 splits) vs a brute-force loop; paired: all 2^5 sign flips."""
    rng = np.random.default_rng(3)
    med, ctl = rng.normal(size=(4, 2)) + [0.8, 0.0], rng.normal(size=(4, 2))
    pooled = np.vstack([med, ctl])
    obs = med.mean(0) - ctl.mean(0)
    null = np.array([pooled[list(s)].mean(0) - np.delete(pooled, list(s), axis=0).mean(0)
                     for s in itertools.combinations(range(8), 4)])
    eff = layer_effects(med, ctl, n_perm=1000, n_boot=100)
    np.testing.assert_allclose(eff.p, (null >= obs - 1e-12).mean(0))
    np.testing.assert_allclose(eff.effect, obs)
    a, b = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    d = a - b
    flips = np.array([(np.array(s)[:, None] * d).mean(0) for s in itertools.product([1, -1], repeat=5)])
    eff = layer_effects(a, b, paired=True, n_perm=1000, n_boot=100)
    np.testing.assert_allclose(eff.p, (flips >= d.mean(0) - 1e-12).mean(0))


def test_layer_effects_rejects_bad_input():
    with pytest.raises(MedinterpError, match="layers"):
        layer_effects(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(MedinterpError, match="paired"):
        layer_effects(np.zeros((5, 3)), np.zeros((6, 3)), paired=True)
    with pytest.raises(MedinterpError, match="NaN"):
        layer_effects(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ---------------------------------------------------------------------------------- corrections, marks
def holm_brute_force(p):
    """Step-down Holm by hand: adj_(i) = max_{j <= i} min(1, (n - j) p_(j)) in sorted order."""
    n, order = len(p), np.argsort(p)
    out, running = np.empty(n), 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (n - rank) * p[idx]))
        out[idx] = running
    return out


def bh_brute_force(p):
    """BH by hand: adj_(i) = min_{j >= i} min(1, n p_(j) / j) (1-based ranks)."""
    n, order = len(p), np.argsort(p)
    out, running = np.empty(n), 1.0
    for rank in range(n - 1, -1, -1):
        running = min(running, n * p[order[rank]] / (rank + 1))
        out[order[rank]] = running
    return out


@pytest.mark.parametrize("seed", range(5))
def test_adjust_matches_brute_force_and_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=14), rng.uniform(0, 0.01, size=4)])
    p[3] = p[5]  # a tie
    np.testing.assert_allclose(adjust(p, "holm"), holm_brute_force(p))
    np.testing.assert_allclose(adjust(p, "holm"), multipletests(p, method="holm")[1])
    np.testing.assert_allclose(adjust(p, "fdr_bh"), bh_brute_force(p))
    np.testing.assert_allclose(adjust(p, "none"), p)
    with pytest.raises(MedinterpError):
        adjust(np.array([0.1, np.nan]))
    with pytest.raises(MedinterpError):
        adjust(p, "nope")


def test_mark_layers_and_intervals():
    p = np.array([0.01, 0.5, 0.01, 0.02, 0.5, 0.01, 0.01, 0.01, 0.5])
    assert intervals_from_mask(mark_layers(p)) == [(2, 3), (5, 7)]
    assert intervals_from_mask(mark_layers(p, min_run=3)) == [(5, 7)]
    assert intervals_from_mask(mark_layers(p, min_run=1)) == [(0, 0), (2, 3), (5, 7)]
    effect = np.array([1, 1, 1, -1, 1, 1, 1, 1, 1.0])
    assert intervals_from_mask(mark_layers(p, effect=effect)) == [(5, 7)]
    assert intervals_from_mask(mark_layers(p, effect=effect, direction="two-sided")) == [(2, 3), (5, 7)]
    assert not mark_layers(np.full(18, 0.2)).any()
    assert intervals_from_mask(np.zeros(5, bool)) == []
    assert intervals_from_mask(np.ones(3, bool)) == [(0, 2)]


# ---------------------------------------------------------------------------------------- robustness
def test_robustness_fraction_and_threshold():
    def fn(rng):
        m = np.zeros(6, bool)
        m[0] = True
        m[1] = rng.random() < 0.5
        return m

    rob = robustness(fn, 400, seed=1)
    assert rob.fraction[0] == 1.0 and rob.fraction[2:].sum() == 0
    assert 0.4 < rob.fraction[1] < 0.6
    assert rob.stable.tolist() == [True] + [False] * 5
    assert robustness(fn, 400, seed=1).fraction.tolist() == rob.fraction.tolist()  # seeded
    assert not robustness(fn, 10, marked=np.zeros(6, bool)).stable.any()


def test_robustness_keeps_a_strong_effect_and_drops_a_marginal_one():
    rng = np.random.default_rng(0)
    med, mu = noise_curves(rng, 30)
    ctl, cu = noise_curves(rng, 30)
    med[:, 5:8] += 3.0
    med[:, 12:14] += 0.9   # marginal: marked on some subsamples only

    def fn(r):
        keep_m = r.choice(30, 24, replace=False)     # 80% of items, 2 of 3 templates
        keep_c = r.choice(30, 24, replace=False)
        tpl = r.choice(3, 2, replace=False)
        rows_m = (keep_m[:, None] * 3 + tpl).ravel()
        rows_c = (keep_c[:, None] * 3 + tpl).ravel()
        return mark_layer_effects(med[rows_m], ctl[rows_c], medicine_units=mu[rows_m],
                                  control_units=cu[rows_c], n_perm=999, n_boot=20,
                                  seed=int(r.integers(1 << 30))).marked

    rob = robustness(fn, 20)
    assert rob.stable[5:8].all()
    assert rob.fraction[[0, 1, 2, 3, 9, 10, 16, 17]].max() <= 0.1
    assert not rob.stable[12:14].all() or rob.fraction[12:14].min() < 1.0


# -------------------------------------------------------------------------------- cluster bootstrap
def clustered(rng, n_items=30, n_templates=3, icc_sd=1.0, noise_sd=0.3):
    item = icc_sd * rng.normal(size=n_items)
    values = np.repeat(item, n_templates) + noise_sd * rng.normal(size=n_items * n_templates)
    return values, np.repeat(np.arange(n_items), n_templates)


def test_cluster_bootstrap_covers_at_nominal_rate_and_prompt_bootstrap_does_not():
    cover = {"cluster": 0, "cluster_hand": 0, "prompt": 0}
    n_sims = 200
    for s in range(n_sims):
        v, u = clustered(np.random.default_rng(s))           # true mean 0
        for name, kw in [("cluster", dict(units=u)), ("prompt", dict(units=np.arange(len(v))))]:
            r = cluster_bootstrap(v, units=kw["units"], n_boot=500, seed=s)
            cover[name] += r.low <= 0 <= r.high
        if s < 60:  # the hand-written ragged path (median; symmetric noise so the true median is 0)
            r = cluster_bootstrap(v, np.median, units=u, n_boot=300, seed=s)
            cover["cluster_hand"] += r.low <= 0 <= r.high
    assert cover["cluster"] / n_sims >= 0.89, cover
    assert cover["cluster_hand"] / 60 >= 0.85, cover
    assert cover["prompt"] / n_sims <= 0.82, cover


def test_cluster_bootstrap_paths_agree():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(60, 4)) + np.repeat(rng.normal(size=(20, 4)), 3, axis=0)
    u = np.repeat(np.arange(20), 3)
    ratio = cluster_bootstrap(v, units=u, n_boot=4000, seed=1)
    per_unit = cluster_bootstrap(unit_means(v, u), n_boot=4000, seed=2)
    hand = cluster_bootstrap(v, lambda x, axis: np.mean(x, axis=axis), units=u, n_boot=4000, seed=3)
    np.testing.assert_allclose(ratio.estimate, v.mean(0))
    assert ratio.low.shape == (4,)
    for other in (per_unit, hand):   # same estimator, different draws: Monte-Carlo error only
        np.testing.assert_allclose(other.low, ratio.low, atol=0.05)
        np.testing.assert_allclose(other.high, ratio.high, atol=0.05)
    # the seed decides the draws: the same seed repeats them, another seed gives other draws (a seed that
    # were ignored, e.g. a fixed global generator, would fail the second line)
    s7, s7b, s8 = (cluster_bootstrap(v, units=u, n_boot=200, seed=k).low for k in (7, 7, 8))
    assert s7.tolist() == s7b.tolist() and s7.tolist() != s8.tolist()
    with pytest.raises(MedinterpError):
        cluster_bootstrap(v, units=np.zeros(60), n_boot=10)


def test_unit_means_unequal_sizes():
    v = np.array([1.0, 3.0, 10.0, 2.0, 4.0, 6.0])
    u = np.array(["b", "b", "a", "c", "c", "c"])
    assert unit_means(v, u).tolist() == [10.0, 2.0, 4.0]


# ---------------------------------------------------------------------------------- permutations
def test_item_permutations_keep_items_together_and_strata_counts():
    units = np.repeat(np.arange(8), 3)
    labels = np.repeat(np.array(list("aabbccdd")), 3)
    strata = np.repeat(np.array([0, 1, 0, 1, 0, 1, 0, 1]), 3)
    perms = item_permutations(labels, units, strata=strata, n_perm=500, seed=0)
    assert perms.shape == (500, 24)
    by_item = perms.reshape(500, 8, 3)
    assert (by_item == by_item[:, :, :1]).all()                 # all templates of an item move together
    for s in (0, 1):
        cols = np.flatnonzero(strata == s)
        assert all(sorted(row) == sorted(labels[cols]) for row in perms[:, cols])
    assert len({tuple(r) for r in perms}) > 20                  # actually shuffles
    with pytest.raises(MedinterpError, match="vary within"):
        item_permutations(np.arange(24), units)


def test_item_permutations_are_uniform_over_labellings():
    """Brute force: 4 items, labels a,a,b,b → 6 distinct item labellings, each with frequency 1/6."""
    perms = item_permutations(np.repeat(list("aabb"), 2), np.repeat(np.arange(4), 2), n_perm=6000, seed=1)
    _, counts = np.unique(perms[:, ::2], axis=0, return_counts=True)
    assert len(counts) == 6
    assert np.all(np.abs(counts / 6000 - 1 / 6) < 0.02)


def test_permutation_pvalue_formula():
    null = np.arange(99.0)[:, None] * np.ones((1, 2))
    np.testing.assert_allclose(permutation_pvalue(np.array([97.5, 98.0]), null), [2 / 100, 2 / 100])
    assert permutation_pvalue(200.0, null[:, 0]) == 1 / 100
    assert permutation_pvalue(-1.0, null[:, 0]) == 1.0
    assert permutation_pvalue(0.5, null[:, 0], "less") == 2 / 100
    assert permutation_pvalue(0.5, null[:, 0], "two-sided") == 4 / 100
    assert permutation_pvalue(0.1 + 0.2, np.array([0.3, 0.0])) == 2 / 3   # float tie counts


def test_item_null_is_calibrated_and_prompt_null_is_not():
    """Labels with no information, 3 templates per item whose prompts sit together (item identity).

    Statistic: 1-NN label agreement. The nearest neighbour of a prompt is another template of the same
    item, so agreement is 1 for any item-level labelling: a per-prompt shuffle breaks this and calls it
    significant; the per-item null keeps it and does not. (The issue measured 40/40 vs 1/40.)
    """
    hits_item = hits_prompt = 0
    for run in range(40):
        rng = np.random.default_rng(run)
        X = np.repeat(rng.normal(size=(24, 16)), 3, axis=0) + 0.3 * rng.normal(size=(72, 16))
        units = np.repeat(np.arange(24), 3)
        labels = np.repeat(rng.permutation(np.arange(24) % 2), 3)
        dist = ((X[:, None] - X[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        nn = dist.argmin(1)

        def stat(lab):
            return (lab == lab[..., nn]).mean(-1)

        obs = stat(labels)
        for units_, key in ((units, "item"), (np.arange(72), "prompt")):
            null = item_permutation_null(stat, labels, units_, n_perm=999, seed=run, vectorized=True)
            hit = permutation_pvalue(obs, null) <= 0.05
            hits_item += hit and key == "item"
            hits_prompt += hit and key == "prompt"
    assert hits_item <= 6, hits_item         # binomial(40, 0.05): P(X >= 7) < 0.005
    assert hits_prompt >= 36, hits_prompt


def test_item_permutation_null_loop_equals_vectorized():
    labels, units = np.repeat([0, 0, 1, 1, 1], 2), np.repeat(np.arange(5), 2)
    values = np.arange(10.0)

    def stat(lab):
        return values[lab == 1].mean() - values[lab == 0].mean()

    def vstat(lab):
        return (values * (lab == 1)).sum(-1) / 6 - (values * (lab == 0)).sum(-1) / 4

    a = item_permutation_null(stat, labels, units, n_perm=50, seed=4)
    b = item_permutation_null(vstat, labels, units, n_perm=50, seed=4, vectorized=True)
    np.testing.assert_allclose(a, b)


# ------------------------------------------------------------------------------------ grouped CV (e)
def age_data(rng, lookup: bool, n_templates=4, d=64):
    ages = np.arange(18, 78, 2)
    y = np.repeat(ages, n_templates).astype(float)
    if lookup:   # one random vector per age: no ordinal structure at all
        X = np.repeat(rng.normal(size=(len(ages), d)), n_templates, axis=0)
    else:        # a real linear age direction
        X = np.outer((y - y.mean()) / y.std(), rng.normal(size=d))
    return X + 0.3 * rng.normal(size=X.shape), y


@pytest.mark.parametrize("seed", range(3))
def test_age_lookup_table_gets_no_grouped_r2_but_kfold_leaks(seed):
    X, y = age_data(np.random.default_rng(seed), lookup=True)
    assert grouped_r2(X, y, groups=y, seed=seed) <= 0.0
    assert grouped_r2(X, y, groups=y, seed=seed, grouped=False) >= 0.7   # the leak: test ages in training


@pytest.mark.parametrize("seed", range(3))
def test_linear_age_direction_gets_grouped_r2_near_1(seed):
    X, y = age_data(np.random.default_rng(seed), lookup=False)
    assert grouped_r2(X, y, groups=y, seed=seed) >= 0.9


def test_probe_balanced_accuracy_signal_vs_item_identity():
    rng = np.random.default_rng(0)
    n_items, T, d = 30, 3, 16
    items = rng.normal(size=(n_items, d))
    y = np.repeat(np.arange(n_items) % 3, T)
    groups = np.repeat(np.arange(n_items), T)
    X_noise = np.repeat(items, T, axis=0) + 0.2 * rng.normal(size=(n_items * T, d))
    # No class information: item-grouped CV is at chance, prompt-level CV memorises items.
    assert probe_balanced_accuracy(X_noise, y, groups) < 0.55
    assert probe_balanced_accuracy(X_noise, y, np.arange(len(y))) > 0.7  # chance is 1/3; the grouped probe above stays < 0.55
    # A class direction: found under item-grouped CV.
    X_sig = X_noise + 5.0 * np.eye(d)[y]
    assert probe_balanced_accuracy(X_sig, y, groups) > 0.9
    with pytest.raises(MedinterpError, match="groups"):
        probe_balanced_accuracy(X_sig, y, np.zeros(len(y)), n_splits=5)


def test_item_null_has_nominal_size_for_a_continuous_statistic():
    """Difference of prompt means between two item labels that carry no information, 400 runs.

    Per-item null: the rejection rate at alpha = 0.05 is about 0.05. Per-prompt null: prompts of an
    item are correlated (item effect sd 1, template noise sd 0.3), so it rejects far more often.
    """
    n_runs, hits_item, hits_prompt = 400, 0, 0
    for run in range(n_runs):
        rng = np.random.default_rng(50_000 + run)
        values = np.repeat(rng.normal(size=20), 3) + 0.3 * rng.normal(size=60)
        units = np.repeat(np.arange(20), 3)
        labels = np.repeat(rng.permutation(np.arange(20) % 2), 3)

        def stat(lab):
            return (values * lab).sum(-1) / 30 - (values * (1 - lab)).sum(-1) / 30

        obs = stat(labels)
        for units_, is_item in ((units, True), (np.arange(60), False)):
            null = item_permutation_null(stat, labels, units_, n_perm=999, seed=run, vectorized=True)
            hit = bool(permutation_pvalue(obs, null, "two-sided") <= 0.05)
            hits_item += hit and is_item
            hits_prompt += hit and not is_item
    assert 0.025 <= hits_item / n_runs <= 0.075, hits_item
    assert hits_prompt / n_runs >= 0.2, hits_prompt


# --- the closed-form probes equal sklearn's pipelines (the reference they replace for speed) ---

@pytest.mark.parametrize("n, d, k", [(300, 64, 15), (42, 64, 3), (120, 8, 2), (60, 80, 4)])
def test_ridge_classifier_oof_equals_sklearn_cross_val_predict(n, d, k):
    import warnings

    from sklearn.model_selection import cross_val_predict

    from medinterp.stats.cv import grouped_folds, linear_probe, ridge_classifier_oof

    rng = np.random.default_rng(n + d + k)
    items = np.repeat(np.arange(n // 3), 3)
    codes = items % k
    y = np.array([f"class{c}" for c in codes])
    X = rng.normal(size=(n, d))
    X[:, 0] += 0.7 * codes
    X[:, 3] = 2.5  # a constant feature: StandardScaler keeps its scale at 1
    cv = grouped_folds(y, items, n_splits=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cross_val_predict(linear_probe(1.0), X, y, cv=cv)
    got = ridge_classifier_oof(X, y, cv, 1.0)
    assert (got == ref).all()
    assert 0.0 < (got == y).mean() < 1.0  # a case where the probe errs, so ties in the rule would show


def test_ridge_classifier_oof_with_a_class_missing_from_a_training_fold_matches_sklearn():
    from sklearn.model_selection import cross_val_predict

    from medinterp.stats.cv import linear_probe, ridge_classifier_oof

    rng = np.random.default_rng(3)
    y = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 2)
    X = rng.normal(size=(22, 5)) + (y == "b")[:, None]
    idx = np.arange(22)
    test_a = np.r_[10:15, 20:22]  # fold a never trains on "c", fold b never on "a"
    cv = [(np.setdiff1d(idx, test_a), test_a), (test_a, np.setdiff1d(idx, test_a))]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cross_val_predict(linear_probe(1.0), X, y, cv=cv)
    assert (ridge_classifier_oof(X, y, cv, 1.0) == ref).all()


@pytest.mark.parametrize("n, d", [(90, 16), (40, 64)])
def test_out_of_fold_ridge_equals_sklearn_pipeline(n, d):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medinterp.stats.cv import out_of_fold_ridge

    rng = np.random.default_rng(d)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
    y = X[:, 1] * 3 + rng.normal(size=n)
    groups = np.arange(n) // 2
    cv = list(GroupKFold(n_splits=5).split(X, y, groups))
    ref = cross_val_predict(make_pipeline(StandardScaler(), Ridge(alpha=1.0)), X, y, cv=cv)
    np.testing.assert_allclose(out_of_fold_ridge(X, y, cv, 1.0), ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(MedinterpError, match="cover every row"):
        out_of_fold_ridge(X, y, cv[:-1], 1.0)
