"""``medinterp map --shard i/n`` and ``--executor ray``: the map's jobs spread over processes or a Ray cluster."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer

from medinterp.cli._common import LOAD_OPTIONS, load_model


def run_scaled(a: dict, work: Path) -> None:
    """Run one shard into the work dir, or the whole map as Ray tasks (``a``: the ``map`` command's arguments)."""
    from medinterp.cli._map_output import finish_map

    marking = {k: a[k] for k in ("alpha", "correction", "min_run", "robustness", "n_perm")}
    t0 = time.perf_counter()
    if a["shard_ij"] is not None:
        from medinterp.maps import run_shard

        m = load_model(a["model"], device=a["device"])
        rep = run_shard(m, a["fams"], a["techs"], out_dir=work, shard=a["shard_ij"], quick=a["quick"],
                        controls=a["controls"], twin_seed=a["twin_seed"], progress=a["progress"], marking=marking)
        typer.echo(str(rep))
        i, n = a["shard_ij"]
        typer.echo(f"time {time.perf_counter() - t0:.0f} s. " + (
            f"Shard {i}/{n} is done. When every shard is, assemble the map: the same command with --merge "
            "instead of --shard." if rep.complete else
            f"Shard {i}/{n} is not complete: run it again once every shard has finished (finished jobs load)."))
        return
    from medinterp.maps.ray_executor import knowledge_map_ray

    opts = {k: v for k, v in LOAD_OPTIONS.items() if v is not None}
    device = str(a["device"])
    gpus, why = ray_task_gpus(a["model"], device, a["ray_gpu_mem"], str(opts.get("dtype", "float32")))
    if gpus > 1:
        opts["device_map"] = opts.get("device_map") or "auto"  # spread over the task's GPUs (Ray sets which)
    import medinterp as mi

    factory = functools.partial(mi.load_model, a["model"], device=device, **opts)
    typer.echo(f"ray: one task per job, each with {gpus} GPU(s) ({why}) and 1 CPU; workers load {a['model']} once "
               "each")
    km = knowledge_map_ray(factory, a["fams"], a["techs"], out_dir=work, address=a["address"], num_gpus=gpus,
                           quick=a["quick"], controls=a["controls"], rule=a["rule"], twin_seed=a["twin_seed"],
                           percentile=a["percentile"], sigma=a["sigma"], validate_bands=a["validate_bands"],
                           model_name=a["model"], **marking)
    typer.echo(f"ray: {gpus} GPU(s) a task ({why})")
    finish_map(km, a, t0, 0.0)


def ray_task_gpus(spec: str, device: str, gpu_mem: str = "80GB", dtype: str = "bfloat16") -> tuple[int, str]:
    """GPUs one Ray task (one model replica) asks for: 0 on the CPU; on CUDA the fewest ``gpu_mem`` GPUs on
    which ``medinterp plan`` says every technique of the full map fits; 1 where the plan cannot size the
    model (a built-in offline model, a GGUF file).

    Example:
        >>> ray_task_gpus("gemma-3-270m", "cpu")
        (0, 'CPU device')
        >>> ray_task_gpus("Llama-3.3-70B", "cuda", "80GB")[0] > 1
        True
    """
    if not device.startswith("cuda"):
        return 0, "CPU device"
    from medinterp.errors import MedinterpError
    from medinterp.models.plan import plan_spec

    for n in (1, 2, 4, 8):
        try:
            plan = plan_spec(spec, f"{n}x{gpu_mem}", dtype=dtype if dtype != "float32" else "float32")
        except MedinterpError:
            return 1, "medinterp plan cannot size this model: one GPU"
        if all(r.fits for r in plan.rows):
            return n, f"medinterp plan: the full map fits on {n} x {gpu_mem} in {dtype}"
    return 8, f"medinterp plan: does not fit on 8 x {gpu_mem}; asking for 8"
