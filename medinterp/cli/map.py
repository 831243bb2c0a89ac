"""``medinterp map`` (the main job: every registered technique on every concept family → HTML report)
and ``medinterp compare`` (two or more saved maps side by side on a relative-depth axis)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from medinterp.cli._common import (
    ChatTemplateOpt,
    chat_template_option,
    DEFAULT_MODEL,
    ModelOpt,
    ProgressOpt,
    QuickOpt,
    check_out_dir,
    check_device,
    check_out_file,
    load_model,
    positive,
    split_list,
)
from medinterp.cli.app import app


@app.command("map")
def map_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Report file (self-contained HTML)."),
    quick: QuickOpt = False,
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Where each technique's result is saved as it finishes; a rerun resumes "
        "from it. Default: OUT without .html + '.work'."),
    concepts: Optional[str] = typer.Option(None, "--concepts", help="Comma-separated families (default: all)."),
    techniques: Optional[str] = typer.Option(None, "--techniques",
                                             help="Comma-separated (default: every registered technique)."),
    relative_depth: bool = typer.Option(False, "--relative-depth", help="x axis = layer / n_layers."),
    rerun: bool = typer.Option(False, "--rerun", help="Ignore finished results in the work dir."),
    percentile: float = typer.Option(75.0, help="Threshold percentile of the percentile-rule techniques."),
    sigma: float = typer.Option(1.0, help="Gaussian smoothing of the layer curves (layers)."),
    controls: bool = typer.Option(True, "--controls/--no-controls",
                                  help="Also run each technique on the control family and on the random-init twin."),
    rule: str = typer.Option("controls", "--rule", help="'controls' (effect over control) or 'paper' (paper rules)."),
    alpha: float = typer.Option(0.05, help="Significance level after correction across layers."),
    correction: str = typer.Option("holm", help="'holm' or 'fdr_bh'."),
    min_run: int = typer.Option(2, "--min-run", help="Shortest run of marked layers."),
    robustness: float = typer.Option(0.8, help="Fraction of resamples a marked layer must be marked in."),
    n_perm: int = typer.Option(20000, "--n-perm", help="Random permutations per test (exact enumeration up to 65,536 assignments)."),
    twin_seed: int = typer.Option(0, "--twin-seed", help="Init seed of the random-init twin."),
    validate_bands: Optional[bool] = typer.Option(
        None, "--validate-bands/--no-validate-bands",
        help="Check each marked band causally (necessity, sufficiency vs random layer sets; ~1 min a band on "
        "Gemma 3 270M): the report's 'causal check'. Default: on for a full map, off with --quick."),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="Run only shard I/N of the map's jobs (I from 0) into the work dir, e.g. "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; then run without --shard (or with --merge) to assemble."),
    merge: bool = typer.Option(False, "--merge", help="Assemble the map from the jobs saved in the work dir by "
                               "shards or workers; compute none (a missing job is an error naming it)."),
    executor: str = typer.Option("local", "--executor", help="'local' (this process) or 'ray' (each job a Ray task; "
                                 "needs the medinterp[ray] extra)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (--executor ray; default: "
                                          "a running cluster if any, else a local one)."),
    ray_gpu_mem: str = typer.Option("80GB", "--ray-gpu-mem", help="Memory of one GPU of the Ray cluster: each "
                                    "task asks for the fewest GPUs medinterp plan says the model fits on."),
    device: str = typer.Option("cpu", "--device", help="torch device of the model (cpu, cuda, cuda:1, mps); "
                               "several GPUs: the global --device-map."),
    progress: ProgressOpt = True,
    chat_template: ChatTemplateOpt = False,
) -> None:
    """Run the techniques on every concept family and write the knowledge-map report.

    The map is also saved beside the report as OUT.map/ (for `medinterp compare` and re-thresholding).
    Interrupted (Ctrl-C)? Rerun the same command: finished jobs load from the work dir.
    Several GPUs or a cluster: run `--shard i/n` for i in 0..n-1 (all with the same options and --work-dir),
    each a second time once all have finished (the random-twin jobs wait for the others), then `--merge`;
    or `--executor ray`.
    """
    chat_template_option(chat_template)  # the model option, also accepted after the command
    from medinterp.maps import check_techniques, family_specs, validate_params
    from medinterp.maps.planned import planned_jobs
    from medinterp.store import WorkDirLock

    # validate every argument before the model loads
    check_out_file(out)
    techs = check_techniques(split_list(techniques))
    fams = split_list(concepts)
    family_specs(fams)  # unknown family names fail here, before the model loads
    validate_params(percentile=percentile, sigma=sigma)
    if rule not in ("controls", "paper") or (rule == "controls" and not controls):
        raise typer.BadParameter("--rule must be 'controls' (needs --controls) or 'paper'", param_hint="--rule")
    if correction not in ("holm", "fdr_bh") or not 0 < alpha < 1 or not 0 <= robustness <= 1 or min_run < 1:
        raise typer.BadParameter("need --correction holm|fdr_bh, 0 < --alpha < 1, 0 <= --robustness <= 1, --min-run >= 1")
    positive(n_perm=n_perm)
    work = work_dir or out.with_suffix(".work")
    check_out_dir(work, "--work-dir" if work_dir else "--out (its work dir)")
    check_out_dir(out.with_suffix(".map"), "--out (its saved map)")
    planned = planned_jobs(fams, techs, controls)
    check_device(device)
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"--executor must be 'local' or 'ray', not {executor!r}", param_hint="--executor")
    if sum([shard is not None, merge, executor == "ray"]) > 1:
        raise typer.BadParameter("use one of --shard, --merge and --executor ray")
    if shard is not None or executor == "ray":
        from medinterp.cli._scale import run_scaled
        from medinterp.maps.matrix import parse_shard

        shard_ij = parse_shard(shard) if shard is not None else None  # noqa: F841 (read by run_scaled)
        run_scaled(locals(), work)  # shards and workers claim jobs, not the whole work dir
        return
    existed = work.exists()
    lock = WorkDirLock(work).acquire()  # a second run on this work dir stops here, before the model loads
    try:
        _run_map(locals(), planned, work)
    finally:
        lock.release()
        if not existed and work.is_dir() and not any(work.iterdir()):  # nothing saved (e.g. the model did not
            work.rmdir()  # load): leave no empty work dir behind


def _run_map(a: dict, planned: list[str], work: Path) -> None:
    """The work of ``map`` once every option is checked and the work dir is claimed (``a``: its arguments)."""
    from medinterp.maps import knowledge_map, peak_rss_mb, saved_jobs

    model, out, controls, rule = a["model"], a["out"], a["controls"], a["rule"]
    saved = [j for j in saved_jobs(work) if j in set(planned)]
    if saved and not a["rerun"]:
        typer.echo(f"resuming: {len(saved)} saved jobs in {work} (of {len(planned)} planned; each is reused only "
                   "if its inputs, parameters and files match)")
    t0 = time.perf_counter()
    m = load_model(model, device=a["device"])
    t_load = time.perf_counter() - t0
    try:
        km = knowledge_map(m, concepts=a["fams"], techniques=a["techs"], quick=a["quick"], out_dir=work,
                           progress=a["progress"], rerun=a["rerun"], model_name=model, percentile=a["percentile"],
                           sigma=a["sigma"], controls=controls, rule=rule, alpha=a["alpha"],
                           correction=a["correction"], min_run=a["min_run"], robustness=a["robustness"],
                           n_perm=a["n_perm"], twin_seed=a["twin_seed"], validate_bands=a["validate_bands"],
                           merge_only=a["merge"])
    except KeyboardInterrupt:
        n = len(set(saved_jobs(work)) & set(planned))
        of = (f"{n} of at most {len(planned)} jobs are saved in {work} (random-twin jobs that cannot change the "
              "map are not run)" if controls else f"{n} of {len(planned)} jobs are saved in {work}")
        print(f"\ninterrupted: {of}; run the same command again to resume "
              "(saved jobs are loaded, not recomputed)", file=sys.stderr)
        raise typer.Exit(130) from None
    from medinterp.cli._map_output import finish_map

    finish_map(km, a, t0, t_load)


@app.command("compare")
def compare_cmd(
    maps: List[Path] = typer.Argument(..., help="Saved maps (X.map/ directories, or the X.html reports beside them)."),
    out: Path = typer.Option(Path("compare.html"), "--out", "-o"),
    names: Optional[str] = typer.Option(None, "--names", help="Comma-separated display names, one per map."),
) -> None:
    """Put two or more models' maps side by side on a relative-depth axis, with a table of the findings that
    compare models (fragility, first half, collapse by relative depth; each map against the first)."""
    import medinterp.viz  # noqa: F401  (registers the renderers the comparison page needs)
    from medinterp.maps import compare, load_maps
    from medinterp.maps.findings_models import compare_findings

    check_out_file(out)
    loaded = load_maps(maps)
    shown = split_list(names)
    compare(loaded, shown, out=out)
    typer.echo("findings that compare models (each map against the first):")
    for row in compare_findings(loaded, shown):
        claim, stat, a, b, diff, verdict = row.as_row()
        typer.echo(f"  {claim}: {stat}; {a}, {b}; difference {diff}; {verdict}")
    typer.echo(f"comparison of {len(maps)} maps: {out}")
