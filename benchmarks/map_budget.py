"""Wall time and peak memory of the knowledge map with controls, per stage (technique x run kind).

Budget (issue 15): the full map with controls on Gemma 3 270M in <= 15 min wall and <= 6 GB on 2 cores;
``--quick`` in <= 3 min. Run on a quiet machine for numbers worth quoting:

    OMP_NUM_THREADS=2 python benchmarks/map_budget.py --quick
    OMP_NUM_THREADS=2 python benchmarks/map_budget.py            # the full map

Stages are read from the map's own provenance: ``timing_s`` (seconds per job, keyed
``family/technique``, ``family__control/technique``, ``family__twin/technique``, plus ``twin_load`` and
``marking``) and ``peak_rss_mb_after`` (the process's peak resident memory when that job ended; the
peak of a stage is the running peak at its last job, so it includes everything before it). A fresh
work directory is used unless ``--work`` is given (a warm one measures resume, not work).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's medinterp, not an installed one


def _kind(key: str) -> tuple[str, str]:
    if key.startswith("batch:"):  # a shared run_many over the families: "batch:<run kind>/<technique>"
        kind, tech = key[len("batch:"):].rsplit("/", 1)
        return tech, kind
    fam, tech = key.rsplit("/", 1)
    kind = "control family" if fam.endswith("__control") else "random twin" if fam.endswith("__twin") else "model"
    return tech, kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--quick", action="store_true", help="the --quick map (budget 3 min)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the budget is for 2 cores)")
    ap.add_argument("--concepts", default=None, help="comma-separated families (default: all)")
    ap.add_argument("--techniques", default=None, help="comma-separated techniques (default: all)")
    ap.add_argument("--work", default=None, help="work directory (default: a fresh temporary one)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--from-map", default=None, metavar="DIR",
                    help="print the stages of a map already run (e.g. `medinterp map`'s report.map/) and exit")
    args = ap.parse_args()
    if args.from_map:
        from medinterp.maps import KnowledgeMap

        km = KnowledgeMap.load(args.from_map)
        prov = km.provenance
        print(f"map {args.from_map}: {km.model_name} ({km.n_layers} layers), {(prov.get('params') or {}).get('size')} map; "
              f"peak RSS of the run {prov.get('peak_rss_mb', float('nan')):.0f} MB")
        _stage_table(prov.get("timing_s", {}), prov.get("peak_rss_mb_after", {}))
        return

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("medinterp").setLevel(logging.INFO)  # one line per finished job, as it happens
    import medinterp as mi
    from medinterp.maps import peak_rss_mb

    t0 = time.perf_counter()
    model = mi.load_model(args.model)
    t_load = time.perf_counter() - t0
    work = args.work or tempfile.mkdtemp(prefix="medinterp-map-budget-")
    t1 = time.perf_counter()
    km = mi.knowledge_map(model, concepts=args.concepts.split(",") if args.concepts else None,
                          techniques=args.techniques.split(",") if args.techniques else None,
                          quick=args.quick, out_dir=work, progress=False)
    wall = time.perf_counter() - t1
    timing = km.provenance.get("timing_s", {})
    peaks = km.provenance.get("peak_rss_mb_after", {})
    print(f"model {args.model} ({km.n_layers} layers), {'quick' if args.quick else 'full'} map with controls, "
          f"{args.threads} torch threads; work dir {work}")
    secs, peak = _stage_table(timing, peaks)
    print(f"{'model load':<28} {t_load:8.1f}")
    print(f"{'map total':<28} {wall:8.1f}   (budget {'180' if args.quick else '900'} s)")
    print(f"{'peak RSS of the process':<28} {peak_rss_mb():8.0f} MB (budget 6144 MB)")
    cells = collections.Counter(v for row in km.control_status.values() for v in row.values())
    print("effect-over-control cells:", dict(cells))
    for c, s in km.summary().items():
        print(f"  {c:<12} {s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_s": wall, "model_load_s": t_load, "peak_rss_mb": peak_rss_mb(),
                       "stages": {f"{a}/{b}": {"s": secs[(a, b)], "peak_mb": peak[(a, b)]} for a, b in secs},
                       "timing_s": timing}, f, indent=2)


def _stage_table(timing: dict, peaks: dict) -> tuple[dict, dict]:
    """Print seconds and peak RSS per (technique, run kind) from a map's provenance."""
    secs: dict = collections.defaultdict(float)
    peak: dict = collections.defaultdict(float)
    for key, s in timing.items():
        if "/" not in key or not isinstance(s, (int, float)):
            continue
        stage = _kind(key)
        secs[stage] += s
        peak[stage] = max(peak[stage], peaks.get(key, 0.0))
    print(f"{'technique':<12} {'run':<15} {'wall s':>8} {'peak RSS MB':>12}")
    for stage in sorted(secs):
        print(f"{stage[0]:<12} {stage[1]:<15} {secs[stage]:8.1f} {peak[stage]:12.0f}")
    for k in ("twin_load", "marking", "total"):
        if k in timing:
            print(f"{k:<28} {timing[k]:8.1f}")
    return secs, peak


if __name__ == "__main__":
    main()
