"""A knowledge map run as Ray tasks: each job of the matrix a task, on an existing cluster or a local one.

Needs the optional ``ray`` package (``pip install 'medinterp[ray]'``). The driver never loads the model:
it knows the jobs' keys from the map's arguments (:func:`medinterp.maps.matrix.job_keys`), submits one task per job with
``num_gpus`` / ``num_cpus`` set for a model replica, and each worker process loads the model once (kept
for the next task it runs: Ray reuses worker processes). Results land in the shared work dir exactly as a
single-process map saves them (:func:`medinterp.maps.shards.run_shard` with one job), so a failed or
interrupted task is simply rerun (Ray retries a task whose worker died, ``max_retries``; a rerun of the
map loads every finished job), and the map is the single-process map bit for bit.

Order: the model and control-family jobs, then the random-twin jobs (their plan reads the first two), then
one assembling task (:func:`~medinterp.maps.knowledge_map` on the work dir: loads every job, computes any a
task could not finish, marks, saves ``<work>/map``), which the driver loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medinterp.errors import MedinterpError
from medinterp.maps.matrix import job_keys

#: knowledge_map keyword arguments that the shard runner's twin plan also reads
_MARKING = ("alpha", "correction", "min_run", "robustness", "n_perm", "n_boot", "n_resamples")
#: knowledge_map keyword arguments that define the jobs themselves
_JOB_ARGS = ("quick", "technique_kwargs", "controls", "twin_seed")

_WORKER_MODEL: dict[str, Any] = {}  # in a Ray worker: the model of the last factory it loaded


def _model(factory: Callable[[], Any]) -> Any:
    key = repr(factory)
    if key not in _WORKER_MODEL:
        _WORKER_MODEL.clear()  # one model per worker process
        _WORKER_MODEL[key] = factory()
    return _WORKER_MODEL[key]


def _job_task(factory: Callable[[], Any], concepts: Any, techniques: Any, out_dir: str, key: str,
              shard_kw: dict, before_job: Callable[[str], None] | None) -> dict:
    from medinterp.maps.shards import run_shard

    model = _model(factory)
    if before_job is not None:
        before_job(key)
    rep = run_shard(model, concepts, techniques, out_dir=out_dir, jobs=[key], progress=False, **shard_kw)
    return {"status": rep.status, "waiting": rep.waiting, "elsewhere": rep.elsewhere}


def _merge_task(factory: Callable[[], Any], concepts: Any, techniques: Any, out_dir: str, map_kw: dict) -> str:
    from medinterp.maps.run import knowledge_map

    knowledge_map(_model(factory), concepts, techniques, out_dir=out_dir, progress=False, **map_kw)
    return str(Path(out_dir) / "map")


def knowledge_map_ray(
    model_factory: Callable[[], Any],
    concepts: Sequence[str] | Mapping[str, Any] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 3,
    init_kwargs: Mapping[str, Any] | None = None,
    before_job: Callable[[str], None] | None = None,
    progress: bool = True,
    **map_kwargs: Any,
):
    """Run a knowledge map as Ray tasks into the work dir ``out_dir`` and return it.

    Args:
        model_factory: a picklable callable that loads the model in a worker, e.g.
            ``functools.partial(medinterp.load_model, "gemma-3-270m", dtype="bfloat16", device="cuda")``.
        concepts, techniques: as for :func:`~medinterp.maps.knowledge_map`.
        out_dir: the work dir, on storage every worker sees.
        address: a Ray cluster's address (None: the running cluster if this process has one, else a new
            local one, ``ray.init(**init_kwargs)``).
        num_cpus, num_gpus: resources of one task (one model replica): e.g. ``num_gpus=1`` for a model that
            fits one GPU, 2 for one spread over two.
        max_retries: Ray reruns a task whose worker died this many times.
        init_kwargs: ``ray.init`` keyword arguments for a local cluster (e.g. ``num_cpus=2``).
        before_job: called in the worker with the job key before the job runs (tests use it to kill a worker).
        progress: print one line per finished phase.
        **map_kwargs: the other ``knowledge_map`` keyword arguments (``quick``, ``controls``, marking ...).

    Returns:
        The :class:`~medinterp.maps.KnowledgeMap` (also saved in ``<out_dir>/map``).

    Raises:
        MedinterpError: ``ray`` is not installed.
    """
    try:
        import ray
    except ImportError:
        raise MedinterpError("--executor ray needs the ray package: pip install 'medinterp[ray]'") from None
    from medinterp.maps.synthesis import KnowledgeMap

    bad = sorted({"out_dir", "progress", "merge_only", "twin", "rerun"} & set(map_kwargs))
    if bad:
        raise MedinterpError(f"knowledge_map_ray: {bad} cannot be passed here (a twin is built in each worker; "
                             "a rerun: empty the work dir)")
    out = str(Path(out_dir).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    first, twins = job_keys(concepts, techniques, bool(map_kwargs.get("controls", True)))
    shard_kw = {k: map_kwargs[k] for k in _JOB_ARGS if k in map_kwargs}
    shard_kw["marking"] = {k: map_kwargs[k] for k in _MARKING if k in map_kwargs}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **dict(init_kwargs or {}))
    try:
        opts = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries}
        job = ray.remote(_job_task).options(**opts)
        for phase, keys in (("model and control-family jobs", first), ("random-twin jobs", twins)):
            refs = {k: job.remote(model_factory, concepts, techniques, out, k, shard_kw, before_job) for k in keys}
            failed = {}
            for k, ref in refs.items():
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task that failed after its retries: the merge reruns it
                    failed[k] = f"{type(e).__name__}: {e}"[:200]
            if progress:
                print(f"[ray] {phase}: {len(keys) - len(failed)} of {len(keys)} tasks finished"
                      + (f"; failed (the merge reruns them): {sorted(failed)[:5]}" if failed else ""), flush=True)
        merge = ray.remote(_merge_task).options(**opts)
        path = ray.get(merge.remote(model_factory, concepts, techniques, out, dict(map_kwargs)))
    finally:
        if started:
            ray.shutdown()
    return KnowledgeMap.load(path)


__all__ = ["job_keys", "knowledge_map_ray"]
