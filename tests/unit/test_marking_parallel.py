"""The map's compared cells are marked on a thread pool: the same numbers, statuses and order as one at a time."""

from __future__ import annotations

import numpy as np

import medinterp.maps.controls as C
from tests.unit.test_cell_status import FAST, NoUnits, _plant, _toy


REAL = C._mark_cells_parallel


def _run(n_workers, monkeypatch):
    monkeypatch.setattr(C, "_mark_cells_parallel", lambda keys, *a: REAL(keys, *a, n_workers=n_workers))
    rng = np.random.default_rng(3)
    fams, techs = ["a", "b", "c"], ["t1", "t2"]
    main, ctrl, twin = {}, {}, {}
    for i, f in enumerate(fams):
        for j, t in enumerate(techs):
            k = (f, t)
            main[k] = (NoUnits(values=np.zeros((2, 6)), units=["x0", "x0"]) if (f, t) == ("b", "t2")
                       else _toy(rng, 12 + i, "d", _plant([1 + i, 2 + i]) if j == 0 else None))
            ctrl[k], twin[k] = _toy(rng, 12, "c"), _toy(rng, 12, "d")
    ok = {k: "ok" for k in main}
    cells: dict = {}
    out, status = C.mark_all(fams, techs, main, ok, ctrl, ok, {f: True for f in fams}, twin, ok, controls=True,
                             cells_out=cells, **FAST)
    return out, status, cells


def test_thread_pool_gives_the_same_map_as_one_worker(monkeypatch):
    one, four = _run(1, monkeypatch), _run(4, monkeypatch)
    for f in one[0]:
        assert list(one[0][f]) == list(four[0][f]) and list(one[1][f]) == list(four[1][f])
        for t in one[0][f]:
            np.testing.assert_array_equal(one[0][f][t], four[0][f][t])
    assert one[1] == four[1] and one[2] == four[2]
    # the planted layers were found, and the cell without unit scores kept its own status
    assert one[1]["b"]["t2"].startswith("no unit scores") and one[2]["a"]["t1"]["code"] in ("marked", "short_run")
