"""Sharded knowledge maps: run a deterministic slice of the job matrix into a shared work dir.

``medinterp map --shard i/n`` (or :func:`run_shard`) runs the jobs of shard ``i`` of ``n``
(:func:`medinterp.maps.matrix.shard_of`) and saves each as it finishes; ``medinterp map`` without
``--shard`` (or with ``--merge``, which computes nothing) then assembles the map, loading every finished job.
Works under any scheduler that can start ``n`` processes with the same arguments: a Slurm array
(``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``), submitit, or a shell loop over GPUs.

The random twin's jobs depend on the model and control-family results (only twin jobs that can change a
cell are run: :func:`medinterp.maps.twin_plan.plan_twin_skips`), so a shard runs its twin jobs only once
every model and control job of the matrix is saved; otherwise it says which it waits for, and a second
pass of the shards (or the merge, which computes what is missing) runs them.

Processes sharing a work dir never run one job at once (each job is claimed while it runs:
:func:`medinterp.maps.matrix.claim_job`), and every file is written atomically with the job's checksums
last, so a job is either complete and verified or recomputed.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from medinterp.errors import MedinterpError
from medinterp.maps.cells import said
from medinterp.maps.jobs import _load_finished, check_family_inputs
from medinterp.maps.matrix import CONTROL, MODEL, TWIN, Job, job_matrix, shard_of
from medinterp.maps.families import check_techniques, control_specs, family_specs
from medinterp.maps.run import _run_jobs, _Run
from medinterp.maps.twin_plan import plan_twin_skips
from medinterp.models.twin import parked, random_twin, twin_needs_room
from medinterp.techniques import REGISTRY


@dataclasses.dataclass
class ShardReport:
    """What one shard did.

    Attributes:
        shard: ``(i, n)``, or None for an explicit job list.
        jobs: the keys (``<family dir>/<technique>``) of the jobs this shard owns.
        status: ``{job key: "ok" | reason}`` of the jobs it ran or loaded ("ok": saved and verified).
        elsewhere: jobs another process held while this one ran (key → who).
        waiting: its random-twin jobs that wait for model/control jobs not yet saved (run the shard again,
            or the merge, once every shard has finished).
        twin_not_needed: its twin jobs that cannot change the map (not run, by design).
    """

    shard: tuple[int, int] | None
    jobs: list[str]
    status: dict[str, str]
    elsewhere: dict[str, str]
    waiting: list[str]
    twin_not_needed: list[str]

    @property
    def complete(self) -> bool:
        """Every job of the shard is saved, planned out, or cannot run for a missing input."""
        return not self.waiting and not self.elsewhere and all(
            s == "ok" or str(s).startswith("not run:") for s in self.status.values())

    def __str__(self) -> str:
        ok = sum(s == "ok" for s in self.status.values())
        bad = {k: s for k, s in self.status.items() if s != "ok"}
        name = f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else "jobs"
        lines = [f"{name}: {len(self.jobs)} jobs; {ok} saved, {len(self.twin_not_needed)} twin jobs not needed, "
                 f"{len(self.waiting)} waiting, {len(self.elsewhere)} held by other processes, {len(bad)} not saved"]
        lines += [f"  {k}: {s}" for k, s in list(bad.items())[:20]]
        if self.waiting:
            lines.append(f"  random-twin jobs wait for model/control jobs of other shards ({', '.join(self.waiting[:4])}"
                         f"{' ...' if len(self.waiting) > 4 else ''}): run this shard again, or the merge, when "
                         "every shard has finished")
        return "\n".join(lines)


def run_shard(
    model: Any,
    concepts: Sequence[str] | Mapping[str, Any] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike,
    shard: tuple[int, int] | None = None,
    jobs: Sequence[str] | None = None,
    quick: bool = False,
    technique_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    controls: bool = True,
    twin_seed: int = 0,
    twin: Any = None,
    progress: bool = True,
    marking: Mapping[str, Any] | None = None,
) -> ShardReport:
    """Run one shard (or an explicit list of jobs) of a knowledge map into the work dir ``out_dir``.

    The arguments that define the map (``concepts``, ``techniques``, ``quick``, ``technique_kwargs``,
    ``controls``, ``twin_seed``, ``marking``) must be the ones the merge is given: they define the jobs'
    fingerprints, and a saved job is reused only when its fingerprint matches.

    Args:
        model: the model, as for :func:`~medinterp.maps.knowledge_map`.
        concepts, techniques, quick, technique_kwargs, controls, twin_seed, twin: as for ``knowledge_map``.
        out_dir: the shared work dir.
        shard: ``(i, n)``: the jobs ``k`` of the matrix with ``k mod n == i``.
        jobs: instead of ``shard``, the job keys to run (``<family dir>/<technique>``, as
            :class:`~medinterp.maps.matrix.Job.key`).
        progress: progress bars.
        marking: the marking's keyword arguments (``alpha``, ``correction``, ...) if not the defaults: the
            twin plan reads them.

    Returns:
        A :class:`ShardReport`.

    Example:
        >>> from medinterp.testing import tiny_model
        >>> import tempfile
        >>> rep = run_shard(tiny_model(n_layers=2), ["dosage"], out_dir=tempfile.mkdtemp(), shard=(0, 2),
        ...                 quick=True, progress=False)   # doctest: +SKIP
    """
    if (shard is None) == (jobs is None):
        raise MedinterpError("run_shard: give exactly one of shard=(i, n) and jobs=[...]")
    techniques = check_techniques(techniques)
    fams = family_specs(concepts)
    ctrl_fams = control_specs(concepts) if controls else {}
    check_family_inputs([*fams.values(), *ctrl_fams.values()])
    size = "quick" if quick else "full"
    kw = {t: REGISTRY[t].params(size, (technique_kwargs or {}).get(t)) for t in techniques}
    matrix = job_matrix(model, fams, ctrl_fams, techniques, kw, controls=controls, twin_seed=twin_seed, twin=twin)
    if shard is not None:
        mine = shard_of(matrix, shard)
    else:
        known = {j.key: j for j in matrix}
        bad = [k for k in jobs if k not in known]
        if bad:
            raise MedinterpError(f"run_shard: unknown job(s) {bad[:5]}; this map's jobs are e.g. {list(known)[:4]}")
        mine = [known[k] for k in jobs]
    work = Path(out_dir)
    run = _Run(int(model.cfg.n_layers), {}, {}, {})
    own = {(j.kind, j.row, j.technique) for j in mine}
    results: dict[str, dict] = {MODEL: {}, CONTROL: {}}
    status: dict[str, dict] = {MODEL: {}, CONTROL: {}}
    report_status: dict[str, str] = {}
    by_key = {(j.kind, j.row, j.technique): j for j in matrix}
    for kind in (MODEL, CONTROL):
        kjobs = [j for j in matrix if j.kind == kind]
        if not kjobs:
            continue
        kfams = {j.row: j.family for j in kjobs}
        fps = {(j.row, j.technique): j.fingerprint for j in kjobs}
        skip = {(j.row, j.technique): "another shard's job" for j in kjobs if (kind, j.row, j.technique) not in own}
        res, st = _run_jobs(model, kfams, techniques, kw, work, fps, rerun=False, progress=progress, run=run,
                            desc=f"shard: {kind}", label=kind, skip=skip)
        results[kind].update(res)
        status[kind].update({k: v for k, v in st.items() if k not in skip})
        for (row, t), v in st.items():
            if (row, t) not in skip:
                report_status[by_key[kind, row, t].key] = v
    waiting: list[str] = []
    not_needed: list[str] = []
    mine_twin = [j for j in mine if j.kind == TWIN]
    if mine_twin:
        missing = _load_phase_one(matrix, work, results, status)
        if missing:
            waiting = [j.key for j in mine_twin]
        else:
            twin_keys = [(j.row, j.technique) for j in matrix if j.kind == TWIN]
            marking_kw = {**_marking_defaults(), **dict(marking or {})}
            skipped, _ = plan_twin_skips(results[MODEL], status[MODEL], results[CONTROL], status[CONTROL], twin_keys,
                                         marking_kw, REGISTRY)
            not_needed = [j.key for j in mine_twin if (j.row, j.technique) in skipped]
            _run_twin_jobs(model, matrix, mine_twin, skipped, techniques, kw, work, run, progress, twin, twin_seed,
                           report_status)
    return ShardReport(shard, [j.key for j in mine], report_status, dict(run.elsewhere), waiting, not_needed)


def _marking_defaults() -> dict:
    """knowledge_map's own marking defaults (read from its signature, so a shard plans the twin as the merge
    will, and the two cannot drift apart)."""
    import inspect

    from medinterp.maps.run import knowledge_map

    sig = inspect.signature(knowledge_map)
    return {k: sig.parameters[k].default for k in ("alpha", "correction", "min_run", "robustness", "n_perm",
                                                    "n_boot", "n_resamples")}


def _load_phase_one(matrix: Sequence[Job], work: Path, results: dict, status: dict) -> list[str]:
    """Load every saved model / control-family job of the matrix not run here (the twin plan reads them all);
    the keys of those not saved yet."""
    missing = []
    for j in matrix:
        k = (j.row, j.technique)
        if j.kind == TWIN or k in status[j.kind]:
            continue
        res = _load_finished(j.dir(work), j.fingerprint, j.key)
        if res is not None:
            results[j.kind][k], status[j.kind][k] = res, "ok"
        elif any(getattr(j.family, need) is None for need in REGISTRY[j.technique].needs):
            status[j.kind][k] = said("not_run", f"not run: {j.technique}: family {j.family.name!r} lacks an input")
        else:
            missing.append(j.key)
    return missing


def _run_twin_jobs(model: Any, matrix: Sequence[Job], mine: Sequence[Job], skipped: Mapping, techniques: Sequence[str],
                   kw: Mapping[str, dict], work: Path, run: _Run, progress: bool, twin: Any, twin_seed: int,
                   report_status: dict) -> None:
    """Run this shard's twin jobs that can change the map (the twin is built only if one needs running)."""
    tjobs = [j for j in matrix if j.kind == TWIN]
    todo = {(j.row, j.technique) for j in mine if (j.row, j.technique) not in skipped}
    skip = {(j.row, j.technique): "not this shard's, or cannot change the map" for j in tjobs
            if (j.row, j.technique) not in todo}
    if not todo:
        return
    tfams = {j.row: j.family for j in tjobs}
    fps = {(j.row, j.technique): j.fingerprint for j in tjobs}
    saved = {(j.row, j.technique): r for j in tjobs if (j.row, j.technique) in todo
             and (r := _load_finished(j.dir(work), j.fingerprint, j.key)) is not None}
    own_twin = twin is None and len(saved) < len(todo)  # built only when a job of it needs running
    with parked(model, own_twin and twin_needs_room(model)) as park:  # see knowledge_map
        tw_model = random_twin(model, seed=twin_seed, device=park.device) if own_twin else twin
        try:
            _, st = _run_jobs(tw_model, tfams, techniques, kw, work, fps, rerun=False, progress=progress, run=run,
                              desc="shard: random twin", label="random twin", skip=skip, loaded=saved)
        finally:
            if own_twin:
                del tw_model
                gc.collect()
    for j in tjobs:
        if (j.row, j.technique) in todo:
            report_status[j.key] = st.get((j.row, j.technique), "stopped")


__all__ = ["ShardReport", "run_shard"]
