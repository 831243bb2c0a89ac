"""Every cell of a map says why: one code from a closed vocabulary, a plain reason, the closest miss.

Each code is produced by a constructed case through the map's own marking (:func:`mark_all` on toy unit
scores with known answers: a planted effect, pure noise, two items, unbalanced covariates...), so these
tests hold whatever the shipped techniques deliver. No model is needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import medinterp.viz  # noqa: F401  (registers the renderers)
from medinterp import stats
from medinterp.maps import KnowledgeMap
from medinterp.maps.cells import CODES, CellStatus, cell_table_text, codebook_frame, said
from medinterp.maps.controls import CONTROL_STATS, mark_all
from medinterp.techniques.base import TechniqueResult, UnitScores

L = 6
FAST = dict(n_perm=999, n_boot=50, n_resamples=5)


@dataclasses.dataclass
class Toy(TechniqueResult):
    kind = "test_cell_status_toy"
    values: np.ndarray = None
    units: list = dataclasses.field(default_factory=list)
    tokens: float = 1.0
    known: str = ""

    def layer_curve(self):
        return np.zeros(self.values.shape[1])

    def layer_curve_ci(self):
        return self.layer_curve(), self.layer_curve()

    def unit_scores(self):
        return UnitScores(self.values, self.units, [i % 2 for i in range(len(self.units))], description="toy",
                          covariates={"subject_tokens": np.full(len(self.units), self.tokens)})

    def unavailable(self):
        return self.known or None


@dataclasses.dataclass
class NoUnits(Toy):
    kind = "test_cell_status_nounits"

    def unit_scores(self):
        raise NotImplementedError("no unit scores")


def _toy(rng, n_items, prefix, shift=None, n_layers=L, **kw):
    v = rng.normal(size=(2 * n_items, n_layers))
    if shift is not None:
        v += shift
    return Toy(values=v, units=[f"{prefix}{i}" for i in range(n_items) for _ in range(2)], **kw)


def _plant(layers, size=2.5):
    s = np.zeros(L)
    s[list(layers)] = size
    return s


def _cell(main, ctrl=None, twin=None, *, main_status="ok", ctrl_status="ok", twin_status="ok", controls=True,
          has_control=True, seed=0, **marking):
    """One (family, technique) cell through mark_all: ``(CellStatus, stats array or None, status text)``."""
    rng = np.random.default_rng(seed + 100)
    ctrl = ctrl if ctrl is not None else _toy(rng, 20, "c")
    twin = twin if twin is not None else _toy(rng, 20, "d")
    k = ("fam", "t")
    cells: dict = {}
    out, st = mark_all(["fam"], ["t"], {k: main}, {k: main_status}, {k: ctrl}, {k: ctrl_status},
                       {"fam": True if has_control else None}, {k: twin}, {k: twin_status}, controls=controls,
                       cells_out=cells, **{**FAST, **marking})
    return CellStatus.from_dict(cells["fam"]["t"]), out["fam"].get("t"), st["fam"]["t"]


def test_planted_strong_effect_is_marked_with_its_closest_layer():
    rng = np.random.default_rng(1)
    cell, arr, st = _cell(_toy(rng, 20, "d", _plant([2, 3])))
    assert st == "ok" and cell.code == "marked" and cell.layers == "2–3"
    assert cell.best_layer in (2, 3) and cell.p_adj <= 0.05 and cell.p_adj_twin <= 0.05
    assert cell.robustness >= 0.8 and cell.could_mark and cell.smallest_p_adj <= 0.05
    assert "beat both controls" in cell.reason


def test_same_effect_with_robustness_forced_below_the_threshold_is_not_robust(monkeypatch):
    real = stats.robustness

    def halved(*a, **k):  # the real resamples, each layer's fraction halved (below 0.8 for every layer)
        r = real(*a, **k)
        return dataclasses.replace(r, fraction=r.fraction / 2, stable=np.zeros_like(r.stable))

    monkeypatch.setattr(stats, "robustness", halved)
    rng = np.random.default_rng(1)
    cell, arr, _ = _cell(_toy(rng, 20, "d", _plant([2, 3])))
    assert cell.code == "not_robust", cell  # beats both controls, fails robustness: never "no interval"
    assert cell.best_layer in (2, 3) and cell.robustness < 0.8 and cell.p_adj <= 0.05
    assert "held in ≥ 80%" in cell.reason and not (arr[CONTROL_STATS.index("marked")] > 0).any()


def test_a_single_significant_layer_is_a_short_run():
    rng = np.random.default_rng(1)
    cell, _, _ = _cell(_toy(rng, 20, "d", _plant([3], 3.0)))
    assert cell.code == "short_run" and cell.best_layer == 3 and "no run reaches 2" in cell.reason
    cell1, _, _ = _cell(_toy(np.random.default_rng(1), 20, "d", _plant([3], 3.0)), min_run=1)
    assert cell1.code == "marked"  # the same data with min_run 1


def test_pure_noise_is_not_significant_and_says_what_it_could_have_seen():
    cell, _, _ = _cell(_toy(np.random.default_rng(5), 20, "d"))
    assert cell.code == "not_significant" and cell.could_mark
    assert cell.mde is not None and np.isfinite(cell.mde) and "could have seen an effect" in cell.reason


def test_two_items_are_too_few_to_mark():
    rng = np.random.default_rng(1)
    cell, arr, _ = _cell(_toy(rng, 2, "d", _plant([2, 3], 5.0)), _toy(rng, 2, "c"), _toy(rng, 2, "d"))
    assert cell.code == "too_few_items" and cell.could_mark is False and cell.smallest_p_adj > 0.05
    assert arr is not None and cell.best_layer is not None  # the effect is still shown, with its closest layer
    one, _, _ = _cell(_toy(rng, 1, "d"), _toy(rng, 1, "c"), _toy(rng, 1, "d"))
    assert one.code == "too_few_items"


def test_unbalanced_covariates_are_control_not_comparable():
    rng = np.random.default_rng(1)
    cell, arr, st = _cell(_toy(rng, 20, "d", _plant([2, 3]), tokens=1.0), _toy(rng, 20, "c", tokens=3.0))
    assert cell.code == "control_not_comparable" and st.startswith("control not comparable")
    assert cell.reason == st and "subject_tokens" in cell.reason  # the balance's own line, naming the covariate
    assert cell.could_mark is False and arr is not None and not (arr[CONTROL_STATS.index("marked")] > 0).any()


def test_job_and_data_states_have_their_codes():
    rng = np.random.default_rng(1)
    toy = _toy(rng, 20, "d")
    nan = dataclasses.replace(toy, values=np.full_like(toy.values, np.nan))
    assert _cell(dataclasses.replace(nan, known="not known by the model: 0 of 20 pairs known"))[0].code == "not_known"
    assert _cell(nan)[0].code == "no_scores"
    assert _cell(NoUnits(values=toy.values, units=toy.units))[0].code == "no_scores"
    assert _cell(toy, has_control=False)[0].code == "no_control"
    assert _cell(toy, controls=False)[0].code == "not_run"
    assert _cell(toy, main_status=said("failed", "failed: ValueError: boom"))[0].code == "failed"
    assert _cell(toy, main_status=said("not_run", "not run: no pairs"))[0].code == "not_run"
    assert _cell(toy, ctrl_status=said("failed", "failed: OSError: disk"))[0].code == "failed"
    assert _cell(toy, _toy(rng, 20, "c", n_layers=L + 1))[0].code == "failed"  # layer counts differ


def test_said_rejects_codes_outside_the_vocabulary():
    with pytest.raises(ValueError, match="unknown cell code"):
        said("maybe", "x")
    with pytest.raises(ValueError, match="unknown cell code"):
        CellStatus("maybe", "x")


def _map(tmp_path=None):
    """A two-row map with marked, too_few_items, not_known and (vs the control family alone) not_significant
    cells, from mark_all."""
    rng = np.random.default_rng(1)
    main = {("a", "t"): _toy(rng, 20, "d", _plant([2, 3])), ("b", "t"): _toy(rng, 2, "e", _plant([2, 3], 5.0)),
            ("a", "u"): dataclasses.replace(_toy(rng, 20, "d"), values=np.full((40, L), np.nan), known="not known"),
            ("b", "u"): _toy(rng, 20, "f")}
    ctrl = {k: _toy(rng, 2 if k == ("b", "t") else 20, "c") for k in main}
    twin = {k: dataclasses.replace(v, values=rng.normal(size=v.values.shape)) for k, v in main.items()}
    # b/u: a twin that cannot be measured (knows nothing): marked against the control family alone, twin NaN
    twin["b", "u"] = dataclasses.replace(main["b", "u"], values=np.full((40, L), np.nan), known="not known")
    ok = {k: "ok" for k in main}
    cells, notes, bal = {}, {}, {}
    out, st = mark_all(["a", "b"], ["t", "u"], main, ok, ctrl, ok, {"a": True, "b": True}, twin, ok, controls=True,
                       cells_out=cells, notes=notes, balance_out=bal, **FAST)
    status = {"a": {"t": "ok", "u": "not known"}, "b": {"t": "ok", "u": "ok"}}
    curves = {f: {t: np.arange(float(L)) for t in ("t", "u")} for f in ("a", "b")}
    return KnowledgeMap.from_curves(curves, techniques=["t", "u"], rules={"t": "percentile", "u": "percentile"},
                                    status=status, rule="controls", control_stats=out, control_status=st,
                                    control_params=dict(alpha=0.05, min_run=2, robustness=0.8, **FAST),
                                    control_balance=bal, control_cells=cells)


def test_curves_csv_has_codes_and_a_codebook_that_lists_every_code(tmp_path):
    km = _map()
    assert km.cell("a", "t").code == "marked" and km.cell("a", "u").code == "not_known"
    assert km.cell("b", "t").code == "too_few_items"
    km.save(tmp_path / "m")
    df = pd.read_csv(tmp_path / "m" / "curves.csv")
    cells = pd.read_csv(tmp_path / "m" / "cells.csv")
    book = pd.read_csv(tmp_path / "m" / "curves_codebook.csv")
    assert {"status", "status_code", "status_reason"} <= set(df.columns)  # old text kept, code beside it
    codes = set(book[book.kind == "code"].name)
    assert codes == set(CODES) and set(df.status_code) | set(cells.status_code) <= codes
    assert set(book[(book.kind == "column") & (book.file == "curves.csv")].name) == set(df.columns)
    assert set(book[(book.kind == "column") & (book.file == "cells.csv")].name) == set(cells.columns)
    assert len(cells) == 4 and set(cells.status_code) == {"marked", "not_known", "too_few_items", "not_significant"}
    twin = df[df.control == "random twin"]
    assert not twin.marked.any() and not df[df.effect.isna()].marked.any()  # NaN effects never say marked
    back = KnowledgeMap.load(tmp_path / "m")
    assert back.cell("b", "t") == km.cell("b", "t")  # saved and loaded without pickle


def test_summary_and_cli_table_are_labelled_rounded_and_not_nested():
    km = _map()
    s = km.summary()["a"]
    assert s.startswith("layers 2–3 by 1 of 2 techniques. t marked 2–3: layer ") and "p_adj 0." in s
    assert "u not_known: not known" in s
    text = cell_table_text(km)
    table = text.split("\n\n")[0].splitlines()
    assert table[0].split() == ["family", "t", "u"] and len(table) == 3
    assert all("(" not in line for line in table)  # no parentheses in the table at all
    assert "too_few_items:" in text and "b / t: " in text  # the legend and one plain reason per unmarked cell
    for line in text.splitlines():  # reasons: at most one level of parentheses
        depth = 0
        for ch in line:
            depth += ch == "("
            assert depth <= 1, line
            depth -= ch == ")"


def test_report_hovers_say_the_code_and_reason_never_nan():
    km = _map()
    fig = km.figure()
    hovers = [h for tr in fig.data for h in (getattr(tr, "hovertext", None) or ()) if isinstance(h, str)]
    assert hovers and not any("nan" in h.lower() for h in hovers), [h for h in hovers if "nan" in h.lower()][:3]
    assert any("random twin: not compared" in h for h in hovers)  # the control-family-only cell says so
    assert any("marked:" in h for h in hovers) and any("too_few_items:" in h for h in hovers)
    html = km.to_html()
    assert "not_known: not known" in html and "nan (p_adj nan)" not in html


def test_a_map_saved_without_cells_is_classified_from_its_statistics(monkeypatch):
    """A 0.3 map has no cell codes: its compared cells are classified from the stored statistics, the same
    code as the marking gave (marked, not_robust, short_run), the others are said 'unclassified'."""
    real = stats.robustness
    for plant, expect, patch in (([2, 3], "marked", False), ([2, 3], "not_robust", True), ([3], "short_run", False)):
        if patch:
            monkeypatch.setattr(stats, "robustness", lambda *a, **k: dataclasses.replace(
                r := real(*a, **k), fraction=r.fraction / 2, stable=np.zeros_like(r.stable)))
        cell, arr, st = _cell(_toy(np.random.default_rng(1), 20, "d", _plant(plant, 3.0)))
        monkeypatch.setattr(stats, "robustness", real)
        km = KnowledgeMap.from_curves({"a": {"t": np.zeros(L), "u": np.zeros(L)}}, techniques=["t", "u"],
                                      rules={"t": "percentile", "u": "percentile"}, rule="controls",
                                      control_stats={"a": {"t": arr}}, control_status={"a": {"t": st, "u": "x"}},
                                      control_params={"alpha": 0.05, "min_run": 2})
        assert cell.code == expect and km.cell("a", "t").code == expect
        assert km.cell("a", "t").best_layer == cell.best_layer
        assert km.cell("a", "u").code == "unclassified" and km.cell("a", "u").reason == "x"
        from medinterp.viz.report import _cell as report_cell  # the report's table: the code, not a bare "no interval"

        said_ = report_cell(km, "a", "t")
        assert said_.startswith("2–3" if expect == "marked" else f"{expect}: "), said_


def test_report_extras_of_an_unknown_family_are_noted_not_logged_as_failures(caplog, monkeypatch):
    """An expected state (the model does not know the family, so an attention view has no mover block) is
    not a failure; a decoration that fails on a known family still is."""
    import medinterp.maps as maps
    from medinterp.errors import MedinterpError
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique
    from medinterp.testing import tiny_model

    def run(model, fam, **_):
        known = "" if fam.name == "known" else "not known by the model: 0 of 3 pairs known"
        return Toy(concept_set=fam.name, values=np.zeros((2, model.cfg.n_layers)), units=["x", "x"], known=known)

    def extras(model, res):
        raise MedinterpError("attention view: no mover block")

    monkeypatch.setitem(REGISTRY, "toy_extras", Technique("toy_extras", run, extras=extras,
                                                          presets={"quick": {}, "full": {}}))
    fams = {"unknown": {"concepts": ["a"]}, "known": {"concepts": ["b"]}}
    with caplog.at_level("INFO", logger="medinterp"):
        km = maps.knowledge_map(tiny_model(n_layers=3), fams, ["toy_extras"], progress=False, controls=False,
                                rule="paper")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not any("unknown/toy_extras" in w for w in warned), warned
    assert any("known/toy_extras report extras failed" in w for w in warned), warned
    assert list(km.provenance["extras_skipped"]) == ["unknown/toy_extras"]
    assert list(km.provenance["extras_failed"]) == ["known/toy_extras"]
    assert km.cell("unknown", "toy_extras").code == "not_known"
