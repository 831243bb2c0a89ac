"""Technique 1 (activation geometry): metric functions on synthetic data with known structure,
then the pipeline end to end on a tiny random-init model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from medinterp.errors import MedinterpError
from medinterp.results import Result
from medinterp.techniques import geometry as G
from medinterp.techniques.geometry import metrics as GM


def clusters(k=3, per=30, d=10, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (k, d))
    X = np.concatenate([c + rng.normal(0, 0.5, (per, d)) for c in centers])
    return X, np.repeat([f"c{i}" for i in range(k)], per).tolist()


# ------------------------------------------------------------------ silhouette
def test_silhouette_samples_matches_sklearn_including_singletons():
    from sklearn.metrics import silhouette_samples as sk

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 5))
    codes = rng.integers(0, 4, 40)
    codes[7] = 4  # a singleton cluster: sklearn gives it 0
    D = GM._pairwise(X)
    np.testing.assert_allclose(G.silhouette_samples(D, codes), sk(X, codes), atol=1e-10)
    # stacked label vectors give the same as one at a time
    perms = np.stack([rng.permutation(codes) for _ in range(3)])
    stacked = G.silhouette_samples(D, perms)
    for i in range(3):
        np.testing.assert_allclose(stacked[i], sk(X, perms[i]), atol=1e-10)


def test_separated_clusters_score_high_and_beat_permutation_baseline():
    X, y = clusters()
    s = G.silhouette(X, y, n_perm=100, n_boot=200)
    assert s["value"] > 0.7
    assert s["ci_low"] <= s["value"] <= s["ci_high"]
    assert s["ci_high"] - s["ci_low"] < 0.2
    assert abs(s["baseline"]) < 0.1 and s["baseline_high"] < 0.15
    assert s["p_value"] <= 1 / 101 + 1e-12


def test_shuffled_labels_score_near_permutation_baseline():
    X, y = clusters()
    y_shuf = list(np.random.default_rng(5).permutation(y))
    s = G.silhouette(X, y_shuf, n_perm=200)
    assert abs(s["value"] - s["baseline"]) < 0.1
    assert s["p_value"] > 0.01
    assert s["value"] < G.silhouette(X, y, n_perm=0)["value"] - 0.5


def test_silhouette_rejects_single_label():
    with pytest.raises(MedinterpError, match="distinct labels"):
        G.silhouette(np.zeros((5, 2)), ["a"] * 5)


# ------------------------------------------------------------------ anisotropy, linearity
def test_line_gives_anisotropy_and_linearity_near_one():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 100, 200))
    direction = rng.normal(size=30)
    X = np.outer(t, direction) + rng.normal(0, 0.01, (200, 30))
    a = G.anisotropy(X, k=20, n_boot=100)
    assert a["value"] > 0.99 and a["ci_low"] > 0.98
    r = G.linearity_r2(X, t, n_boot=100)
    assert r["value"] > 0.99 and r["ci_low"] > 0.98


def test_isotropic_cloud_gives_low_anisotropy_and_no_linearity():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = rng.uniform(0, 100, 300)  # unrelated to X
    assert G.anisotropy(X, n_boot=0)["value"] < 0.7
    assert G.linearity_r2(X, y, n_boot=0)["value"] < 0.05


def test_nonlinear_curve_is_locally_anisotropic_but_not_linear():
    t = np.linspace(0, 4 * np.pi, 600)
    X = np.c_[np.cos(t), np.sin(t)]  # a circle walked twice: locally a line, age not linear in it
    assert G.anisotropy(X, n_boot=0)["value"] > 0.95
    assert G.linearity_r2(X, t, n_boot=0)["value"] < 0.5


# ------------------------------------------------------------------ discontinuity
def age_data(jump_at=18, size=20.0, per=3, seed=0, sexes=("female", "male"), jump_sexes=None):
    rng = np.random.default_rng(seed)
    ages, sex, rows = [], [], []
    direction = rng.normal(size=16)
    other = rng.normal(size=16)
    for s in sexes:
        for a in range(1, 61):
            for _ in range(per):
                v = a * direction / np.linalg.norm(direction)
                if a >= jump_at and (jump_sexes is None or s in jump_sexes):
                    v = v + size * other / np.linalg.norm(other)
                rows.append(v + rng.normal(0, 0.2, 16))
                ages.append(a)
                sex.append(s)
    return np.array(rows), np.array(ages), sex


def test_planted_jump_is_found_by_the_discontinuity_profile():
    X, ages, sex = age_data(jump_at=18)
    prof = G.discontinuity_profile(X, ages)
    top = prof.loc[prof.ratio.idxmax()]
    assert (top.age_from, top.age_to) == (17.0, 18.0)
    assert top.ratio > 5
    r = G.step_ratio(X, ages, (17, 18), n_boot=100)
    assert r["ci_low"] > 5 and r["value"] > r["baseline_high"]
    # a non-boundary pair is an ordinary step
    r30 = G.step_ratio(X, ages, (30, 31), n_boot=100)
    assert r30["ci_low"] < 1.5 < r["ci_low"]


def test_discontinuity_per_sex_separates_a_jump_in_one_sex():
    X, ages, sex = age_data(jump_at=18, jump_sexes=("male",))
    prof = G.discontinuity_profile(X, ages, sex)
    at = prof[(prof.age_from == 17) & (prof.age_to == 18)].set_index("group").ratio
    assert at["male"] > 5 and at["female"] < 2


def test_step_ratio_rejects_missing_ages():
    X, ages, _ = age_data()
    with pytest.raises(MedinterpError, match="17"):
        G.step_ratio(X[ages > 20], ages[ages > 20], (17, 18))


# ------------------------------------------------------------------ progression
def test_circle_gives_circular_pattern_and_line_gives_monotone_pattern():
    K = 10
    t = np.linspace(0, 0.9 * 2 * np.pi, K)
    rng = np.random.default_rng(0)
    stage = np.repeat(np.arange(K), 4)
    circle = np.c_[np.cos(t), np.sin(t)][stage] + rng.normal(0, 0.02, (4 * K, 2))
    line = np.c_[t, 0.5 * t][stage] + rng.normal(0, 0.02, (4 * K, 2))
    X = np.r_[circle, line]
    disease = ["circle"] * (4 * K) + ["line"] * (4 * K)
    df = G.progression_scores(X, disease, np.r_[stage, stage], n_boot=100)
    c = df[df.group == "circle"].set_index("metric")
    ln = df[df.group == "line"].set_index("metric")
    assert c.loc["csls", "value"] == 0  # the last stage is nearest to the first
    assert c.loc["circularity", "value"] > 0.6 and c.loc["circularity", "ci_low"] > 0.5
    assert c.loc["spearman", "value"] < 0.5
    assert ln.loc["csfs", "value"] == 1 and ln.loc["csls", "value"] == K - 2
    assert ln.loc["spearman", "value"] == pytest.approx(1.0)
    assert ln.loc["circularity", "value"] == pytest.approx(0.0, abs=1e-9)


def test_progression_single_prompt_per_stage_has_no_ci():
    X = np.c_[np.arange(6.0), np.zeros(6)]
    df = G.progression_scores(X, ["d"] * 6, range(6), n_boot=50)
    assert df.ci_low.isna().all() and df.set_index("metric").loc["spearman", "value"] == pytest.approx(1.0)


# ------------------------------------------------------------------ collapse
def test_collapse_closed_form_bootstrap_equals_explicit_resampling():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(25, 6)) + 2.0
    idx = rng.integers(0, 25, 25)
    drop = np.ones(25)
    drop[4] = 0  # a jackknife replicate
    W = np.r_[np.ones((1, 25)), np.bincount(idx, minlength=25).astype(float)[None], drop[None]]
    norm_b, cos_b, pr_b = GM._collapse_weighted(X, W)
    for row, Xs in ((0, X), (1, X[idx]), (2, np.delete(X, 4, axis=0))):
        Xc = Xs - Xs.mean(0)
        lam = np.linalg.eigvalsh(Xc.T @ Xc)
        U = Xs / np.linalg.norm(Xs, axis=1, keepdims=True)
        C = U @ U.T
        assert pr_b[row] == pytest.approx(lam.sum() ** 2 / (lam**2).sum())
        m = len(Xs)
        assert cos_b[row] == pytest.approx((C.sum() - np.trace(C)) / (m * (m - 1)))
        assert norm_b[row] == pytest.approx(np.linalg.norm(Xs, axis=1).mean())


def test_collapse_is_told_apart_from_a_norm_change():
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(200, 32))
    collapsed = np.outer(rng.uniform(1, 2, 200), rng.normal(size=32)) + 0.01 * rng.normal(size=(200, 32))
    h, c = G.collapse_metrics(healthy, n_boot=50), G.collapse_metrics(collapsed, n_boot=50)
    s = G.collapse_metrics(healthy * 100, n_boot=50)  # only the norm changes
    assert c["mean_cosine"]["value"] > 0.99 and c["eff_rank"]["value"] < 1.1
    assert abs(h["mean_cosine"]["value"]) < 0.1 and h["eff_rank"]["value"] > 20
    assert s["resid_norm"]["value"] == pytest.approx(100 * h["resid_norm"]["value"])
    assert s["eff_rank"]["value"] == pytest.approx(h["eff_rank"]["value"])
    assert s["mean_cosine"]["value"] == pytest.approx(h["mean_cosine"]["value"])
    for d in (h, c):
        for m in d.values():
            assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["ci_high"] - m["ci_low"] < abs(m["value"]) + 0.1


# ------------------------------------------------------------------ UMAP
def test_embed_layers_is_deterministic_and_keeps_cluster_structure():
    X, y = clusters(k=3, per=20, d=40)
    noise = np.random.default_rng(9).normal(size=X.shape)
    vals = np.stack([noise, X]).astype(np.float32)
    e30, e2, secs = G.embed_layers(vals, n_epochs=50, progress=False)
    assert e30.shape == (2, 60, 30) and e2.shape == (2, 60, 2) and len(secs) == 2
    again, _, _ = G.embed_layers(vals, n_epochs=50, progress=False)
    np.testing.assert_allclose(e30, again)
    s_noise = G.silhouette(e30[0], y, n_perm=0)["value"]
    s_clusters = G.silhouette(e30[1], y, n_perm=0)["value"]
    assert s_clusters > 0.6 and s_clusters > s_noise + 0.4


def test_embed_layers_survives_identical_points_and_tiny_sets():
    vals = np.zeros((1, 12, 8), np.float32)
    e30, e2, _ = G.embed_layers(vals, progress=False)
    assert np.isfinite(e30).all() and e30.shape == (1, 12, 30)
    small = np.random.default_rng(0).normal(size=(1, 8, 5)).astype(np.float32)
    e30, e2, _ = G.embed_layers(small, n_epochs=20, progress=False)
    assert e30.shape == (1, 8, 30) and np.isfinite(e2).all()


# ------------------------------------------------------------------ pipeline on a tiny model
@dataclasses.dataclass(frozen=True)
class _Prompt:
    text: str
    item: str
    item_index: int
    template_index: int
    labels: dict
    span: tuple
    answer: str | None = None


class _FakeSet:
    """A stand-in ConceptSet (the contract in DESIGN.md): prompts() with labels and spans."""

    def __init__(self, name, items, categorical, continuous, templates=("A patient with {item}", "Signs of {item}")):
        self.name, self.version = name, "test"
        self.items, self.categorical_labels, self.continuous_labels = items, categorical, continuous
        self.templates = list(templates)

    def prompts(self, templates=None):
        out = []
        for ti, t in enumerate(self.templates):
            for ii, it in enumerate(self.items):
                text = t.format(item=it["item"])
                start = text.index(it["item"])
                out.append(_Prompt(text, it["item"], ii, ti, {k: v for k, v in it.items() if k != "item"},
                                   (start, start + len(it["item"]))))
        return out


WORDS = ["fever", "cough", "angina", "asthma", "nausea", "rash", "migraine", "stroke", "gout", "anemia",
         "sepsis", "edema", "ulcer", "hepatitis", "colitis", "psoriasis", "eczema", "dementia"]


def drug_like_set():
    items = [{"item": w, "specialty": ["cardio", "pulm", "neuro"][i % 3], "mechanism": ["a", "b"][i % 2]}
             for i, w in enumerate(WORDS)]
    return _FakeSet("toy_drugs", items, ["specialty", "mechanism"], [])


def test_geometry_end_to_end_on_tiny_model_and_save_load(tiny, tmp_path):
    res = G.geometry(tiny, drug_like_set(), n_epochs=30, n_perm=20, n_boot=30, progress=False,
                     positions="span_mean", paper=True)
    n_layers = tiny.cfg.n_layers
    assert res.layers == [-1, *range(n_layers)]
    n = 2 * len(WORDS)
    assert res.embedding_2d.shape == (n_layers + 1, n, 2) and res.embedding.shape == (n_layers + 1, n, 30)
    t = res.table
    assert set(t.columns) == set(G.TABLE_COLUMNS)
    for lab in ("specialty", "mechanism"):
        for sp in ("umap", "raw"):
            m = res.metric("silhouette", space=sp, label=lab)
            assert len(m) == n_layers + 1 and m.value.between(-1, 1).all() and m.baseline.notna().all()
    for metric in ("resid_norm", "mean_cosine", "eff_rank"):
        m = res.metric(metric, space="raw")
        assert (m.ci_low <= m.value + 1e-9).all() and (m.value <= m.ci_high + 1e-9).all()
    assert res.paper_primary == {"metric": "silhouette", "space": "umap", "label": "specialty", "group": ""}
    assert res.primary == {"metric": "probe", "space": "span", "label": "specialty", "group": ""}
    curve = res.layer_curve(**res.paper_primary)
    lo, hi = res.layer_curve_ci(**res.paper_primary)
    assert curve.shape == lo.shape == hi.shape == (n_layers,)
    np.testing.assert_allclose(curve, res.metric("silhouette", label="specialty").value.to_numpy()[1:])
    assert res.provenance["params"]["concepts"] == "toy_drugs" and res.concept_set == "toy_drugs"
    assert res.items[0] == "fever" and "fever" in res.texts[0]

    res.save(tmp_path / "g")
    back = Result.load(tmp_path / "g")
    assert isinstance(back, G.GeometryResult)
    pd.testing.assert_frame_equal(back.table, res.table, check_dtype=False)
    np.testing.assert_array_equal(back.embedding_2d, res.embedding_2d)
    assert back.labels == res.labels and back.layers == res.layers and back.primary == res.primary
    np.testing.assert_allclose(back.layer_curve(**back.paper_primary), curve)
    np.testing.assert_allclose(back.layer_curve(), res.layer_curve())
    np.testing.assert_allclose(back.unit_scores().values, res.unit_scores().values)
    # issue 20: the probe features, CV groups and structure covariates survive a save, so the refit tests
    # need no model
    np.testing.assert_array_equal(back.probe_features, res.probe_features)
    assert back.probe_features.shape[:2] == (n_layers + 1, n) and back.cv_groups == res.cv_groups
    assert back.unit_scores().covariates["n_classes"].tolist() == [3.0] * n
    pi = back.probe_inputs()
    assert pi.embedding is not None and pi.features.shape[0] == n_layers and pi.splits is not None
    assert back.concept_set == "toy_drugs" and back.curve_label.startswith("item-grouped probe")
    text = back.summary()
    assert isinstance(text, str) and text.startswith("[toy_drugs] layer curve: item-grouped probe")
    assert "best_silhouette_umap[mechanism]: layer" in text
    assert back.summary_dict()["best_silhouette_umap[specialty]"] == back.best("silhouette", label="specialty")

    import medinterp.viz  # registers the geometry renderer

    figs = back.figures()
    assert len(figs) == 4  # headline, specialty, mechanism, curves
    assert back.figure().to_json() == figs[0].to_json()  # figure(): one plotly Figure, the first of figures()
    assert "lexical baseline" in str([tr.name for tr in figs[0].data])
    umap_fig = figs[1]
    assert len(umap_fig.layout.sliders[0].steps) == n_layers + 1
    assert any("fever" in str(tx) for tr in umap_fig.data for tx in (tr.text or []))
    html = back.to_html(tmp_path / "g.html")
    assert "<script src=" not in html and "toy_drugs" in html
    with pytest.raises(MedinterpError, match="color_by"):
        medinterp.viz.geometry.umap_figure(back, "nope")


def test_geometry_reuses_precomputed_activations_and_scores_age_geometry(tiny):
    from medinterp.activations import collect_activations

    items = [{"item": f"{a}", "age": a, "sex": s} for a in range(10, 26) for s in ("man", "woman")]
    aset = _FakeSet("toy_age", items, ["sex"], ["age"], templates=("A {item} year old",))
    prompts = aset.prompts()
    acts = collect_activations(tiny, prompts, include_embed=True, progress=False)
    res = G.geometry(concepts=aset, activations=acts, n_epochs=30, n_perm=10, n_boot=20, progress=False, paper=True)
    assert res.paper_primary["metric"] == "anisotropy"
    assert set(res.table.metric) >= {"anisotropy", "linearity_r2", "step_ratio", "silhouette", "eff_rank"}
    groups = set(res.table[res.table.metric == "step_ratio"].group)
    assert groups == {"all", "man", "woman"}
    assert res.age_steps is not None and {"layer", "space", "group", "ratio"} <= set(res.age_steps.columns)
    # identical input activations give identical metrics: the activations were reused, not recomputed
    res2 = G.geometry(concepts=aset, activations=acts, n_epochs=30, n_perm=10, n_boot=20, progress=False, paper=True)
    pd.testing.assert_frame_equal(res.table, res2.table)


def test_geometry_progression_set(tiny):
    items = [{"item": f"{d} stage {s}", "disease": d, "stage": s} for d in ("gout", "asthma") for s in range(6)]
    pset = _FakeSet("toy_progression", items, ["disease"], ["stage"], templates=("{item}", "Patient: {item}"))
    res = G.geometry(tiny, pset, n_epochs=30, n_perm=10, n_boot=20, progress=False, paper=True)
    assert res.paper_primary == {"metric": "spearman", "space": "umap", "label": "stage", "group": "mean"}
    assert set(res.progression.metric) == {"csfs", "csls", "spearman", "circularity"}
    assert set(res.progression.group) == {"gout", "asthma"}
    assert res.layer_curve().shape == (tiny.cfg.n_layers,)


def test_geometry_input_errors(tiny):
    with pytest.raises(MedinterpError, match="model and concepts"):
        G.geometry(None, None)
    with pytest.raises(MedinterpError, match="positions"):
        G.geometry(tiny, drug_like_set(), positions="first")
    with pytest.raises(MedinterpError, match="labelling 'organ'"):
        G.geometry(tiny, drug_like_set(), labels=["organ"], progress=False)


def test_step_ratio_template_bootstrap_keeps_the_estimate_inside_its_ci():
    # three templates far apart (as on Gemma), ages along a line, a jump at 18: resampling single
    # prompts within each age would mix templates differently per age and swamp the steps
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 50, (3, 8))
    ages = np.repeat(np.arange(1, 41), 3)
    tmpl = np.tile(np.arange(3), 40)
    X = offsets[tmpl] + ages[:, None] * 0.5 * np.eye(8)[0] + (ages[:, None] >= 18) * 5.0 * np.eye(8)[1]
    X = X + rng.normal(0, 0.05, X.shape) * (1 + tmpl[:, None])  # templates differ a little in noise too
    r = G.step_ratio(X, ages, (17, 18), n_boot=200, units=tmpl)
    assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_low"] > 5
    naive = G.step_ratio(X, ages, (17, 18), n_boot=200)
    assert naive["ci_high"] < r["value"]  # the within-age bootstrap is biased far below the estimate


def test_eff_rank_is_nan_without_variance():
    out = G.collapse_metrics(np.ones((10, 4)), n_boot=10)
    assert math.isnan(out["eff_rank"]["value"]) and out["mean_cosine"]["value"] == pytest.approx(1.0)


def test_a_one_class_label_is_a_clear_error(tiny):
    items = [{"item": w, "specialty": ["cardio", "pulm"][i % 2], "mechanism": "a"} for i, w in enumerate(WORDS)]
    one = _FakeSet("toy_one", items, ["specialty", "mechanism"], [])
    with pytest.raises(MedinterpError, match="'mechanism' has 1 distinct value"):
        G.geometry(tiny, one, progress=False)


def test_is_constant_uses_relative_spread():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 30, 64)
    X = np.tile(v, (20, 1)).astype(np.float32)
    assert G.is_constant(X)  # identical rows
    noisy = X * (1 + rng.normal(0, 1e-7, X.shape)).astype(np.float32)  # float32 rounding-sized noise
    assert not np.allclose(noisy - noisy.mean(0), 0) and G.is_constant(noisy)
    assert not G.is_constant(X + rng.normal(0, 0.01 * 30, X.shape))  # a real 1% spread


def test_constant_layer_gives_nan_metrics_and_a_saved_warning(tiny, tmp_path):
    # every prompt ends on the token "old": the embedding output (layer -1) is one vector for all prompts
    items = [{"item": f"{a}", "age": a, "sex": s} for a in range(10, 26) for s in ("man", "woman")]
    aset = _FakeSet("toy_age", items, ["sex"], ["age"], templates=("A {item} year old",))
    with pytest.warns(G.ConstantLayerWarning, match="embedding output"):
        res = G.geometry(tiny, aset, n_epochs=30, n_perm=10, n_boot=20, progress=False, paper=True, positions="last")
    assert len(res.warnings) == 1 and "layer -1" in res.warnings[0]
    t = res.table
    emb_rows = t[(t.layer == -1) & t.space.isin(["umap", "raw"])]
    probe = t[(t.layer == -1) & (t.metric == "probe")]
    assert len(probe) and (probe.value == 0).all()  # the headline scores a constant layer as chance
    spread = emb_rows[~emb_rows.metric.isin(["resid_norm", "mean_cosine"])]
    assert len(spread) > 5 and spread.value.isna().all() and spread.ci_low.isna().all()
    assert (emb_rows[emb_rows.metric == "resid_norm"].value > 0).all()
    assert np.isfinite(t[t.layer >= 0].value[t.metric == "anisotropy"]).all()
    assert not np.asarray(res.embedding_2d[0]).any()  # not embedded
    res.save(tmp_path / "a")
    assert Result.load(tmp_path / "a").warnings == res.warnings


def test_family_labels_come_from_concept_families(tiny):
    from medinterp.concepts import CONCEPT_FAMILIES

    assert G.family_labels("dosage_drugs") == CONCEPT_FAMILIES["dosage"]["labels"]
    assert G.family_labels("not_a_shipped_set") is None
    # a set named like a shipped family scores that family's categorical labels only
    items = [{"item": w, "specialty": ["cardio", "pulm", "neuro"][i % 3], "mechanism": ["a", "b"][i % 2],
              "extra": ["x", "y"][i % 2]} for i, w in enumerate(WORDS)]
    res = G.geometry(tiny, _FakeSet("drugs", items, ["specialty", "mechanism", "extra"], []), n_epochs=20,
                     n_perm=0, n_boot=0, layers=[0], include_embed=False, progress=False, paper=True)
    assert set(res.table[res.table.metric == "silhouette"].label) == {"specialty", "mechanism"}


def test_geometry_rejects_unknown_parameters_and_other_activation_shapes(tiny):
    with pytest.raises(MedinterpError, match="unknown parameter"):
        G.geometry_many(tiny, [drug_like_set()], n_boots=3)
    with pytest.raises(MedinterpError, match="ActivationSet"):
        G.geometry(concepts=drug_like_set(), activations=np.zeros((2, 18, 8)))


def test_two_worker_path_gives_the_same_numbers_as_one_worker(tiny):
    # n_jobs=2 runs the per-layer UMAP + metric jobs in loky worker processes: same seeds, same order,
    # so the table, the embeddings and the 2-D pictures must equal the in-process run.
    kw = dict(n_epochs=20, n_perm=10, n_boot=10, n_boot_items=20, n_null=10, progress=False, paper=True,
              layers=[0, 1], include_embed=False, positions="span_mean")
    one = G.geometry(tiny, drug_like_set(), n_jobs=1, **kw)
    two = G.geometry(tiny, drug_like_set(), n_jobs=2, **kw)
    assert len(one.table) > 0 and one.table["value"].notna().any()
    pd.testing.assert_frame_equal(one.table, two.table)
    np.testing.assert_array_equal(one.embedding, two.embedding)
    np.testing.assert_array_equal(one.embedding_2d, two.embedding_2d)
    np.testing.assert_array_equal(one.layer_curve(**one.paper_primary), two.layer_curve(**two.paper_primary))
