"""Job identity and persistence of the knowledge map: fingerprints, job directories, save and resume.

Each finished job is saved to ``<work>/<family>/<technique>/`` (control runs: ``<family>__control/``,
``<family>__twin/``) with a ``job.json`` holding its fingerprint (:func:`medinterp.store.fingerprint`
over the *content* of the family's inputs, the technique parameters, the run kind, the model identity
and the medinterp version) and the sha256 of every file of the saved result. A saved result is loaded
only when the fingerprint matches, its files are the ones written (not edited, truncated or missing) and
it loads; otherwise it is recomputed and the log says why. A ``job.json`` without checksums (written
before medinterp 0.3.1's work-dir checksums) cannot be verified, so its job is recomputed too.

One run at a time per work dir: :func:`claims_work_dir` holds a :class:`~medinterp.store.WorkDirLock`
while a map runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medinterp.errors import MedinterpError
from medinterp.results import Result, _jsonable
from medinterp.store import WorkDirLock, changed_files, file_checksums, fingerprint
from medinterp.techniques import REGISTRY
from medinterp.techniques.base import Family

log = logging.getLogger("medinterp")

_JOB_FILE = "job.json"


def input_content(x: Any) -> Any:
    """What a family input *contains*, for the job fingerprint (never just its name or path).

    A shipped name is loaded and its content used (an upgrade that edits a shipped set changes it);
    a file is hashed by its bytes; a loaded concept/pair set by its fields (items, labels, templates,
    pairs), without the path it was read from; a list of prompts by its items.
    """
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.is_file():
            return p  # store.fingerprint hashes the file's bytes
        from medinterp.concepts import SHIPPED, load_concepts

        if str(x) in SHIPPED:
            return input_content(load_concepts(str(x)))
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type) and hasattr(x, "to_dataframe"):
        return {"__set__": type(x).__name__,
                **{f.name: getattr(x, f.name) for f in dataclasses.fields(x) if f.name != "path"}}
    if isinstance(x, (list, tuple)):
        return [input_content(v) for v in x]
    return x


def job_fingerprint(model: Any, family: Family, technique: str, params: Mapping[str, Any],
                    run: Mapping[str, Any] | None = None) -> str:
    """Fingerprint of one job (see module docstring); ``run`` names a control run (which control, twin seed)."""
    job = {"technique": technique, "params": _jsonable(dict(params)),
           "concepts": input_content(family.concepts), "pairs": input_content(family.pairs)}
    if run is not None:
        job["run"] = dict(run)
    tech = REGISTRY.get(technique)
    if tech is not None and tech.reads_variants and getattr(family, "variants", ()):  # only then: the other
        # jobs keep their fingerprints (and saved results) when a row gains variants
        job["variants"] = [input_content(v) for v in family.variants]
    return fingerprint(job, model=model)


def _safe_dirname(name: str) -> str:
    """A family name as a directory name: itself when plain, else a slug plus a short hash."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", name) and name not in (".", ".."):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "family"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def job_dir(work_dir: str | os.PathLike, family: str, technique: str) -> Path:
    """Where the result of one job is saved inside a work dir."""
    return Path(work_dir) / _safe_dirname(family) / technique


def _load_finished(rdir: Path | None, fp: str, key: str, *, quiet: bool = False) -> Result | None:
    """The saved result of the same job, or None (absent, other inputs, or unreadable: recomputed).

    ``quiet``: a second look at a job already looked at (after claiming it): why it is recomputed was said
    the first time, so it is logged at debug level only."""
    warn = log.debug if quiet else log.warning
    if rdir is None or not (rdir / "manifest.json").is_file():
        return None
    try:
        job = json.loads((rdir / _JOB_FILE).read_text())
        saved, files = job.get("fingerprint"), job.get("files")
    except (OSError, json.JSONDecodeError, AttributeError):
        saved, files = None, None
    if saved != fp:
        log.info("%s: saved result in %s is of other inputs or parameters (fingerprint %s, now %s); recomputing",
                 key, rdir, saved, fp)
        return None
    if not isinstance(files, dict) or not files:
        warn("%s: saved result in %s has no file checksums (saved before they were recorded), so it "
                    "cannot be verified; recomputing", key, rdir)
        return None
    bad = changed_files(rdir, files)
    if bad:
        warn("%s: saved result in %s was changed after it was saved (%s edited, truncated or missing); "
                    "recomputing", key, rdir, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        return None
    try:
        return Result.load(rdir)
    except MedinterpError as e:
        warn("%s: saved result in %s does not load (%s); recomputing", key, rdir, e)
        return None


def load_saved(rdir: Path, key: str = "") -> Result:
    """A saved job's result for viewing without a model (:func:`~medinterp.maps.map_from_work_dir`): its files
    are checked against the checksums of its ``job.json`` (a changed file is a :class:`MedinterpError`,
    shown as that cell's status); a result saved before checksums were recorded loads with a log line
    saying it is unverified (there is no model here to recompute it)."""
    try:
        files = json.loads((rdir / _JOB_FILE).read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError):
        files = None
    if isinstance(files, dict) and files:
        bad = changed_files(rdir, files)
        if bad:
            raise MedinterpError(f"{rdir}: changed after it was saved ({', '.join(bad[:5])} edited, truncated or "
                                 "missing); rerun the map to recompute it")
    elif (rdir / "manifest.json").is_file():
        log.info("%s: saved result in %s has no file checksums (saved before they were recorded): unverified",
                 key or rdir.name, rdir)
    return Result.load(rdir)


def _save_job(res: Result, rdir: Path, fp: str, key: str) -> None:
    job = rdir / _JOB_FILE
    if job.exists():
        job.unlink()  # a half-written result never looks finished
    res.save(rdir)
    tmp = rdir / f".{_JOB_FILE}.tmp"
    files = file_checksums(rdir, skip=(_JOB_FILE,))
    tmp.write_text(json.dumps({"fingerprint": fp, "job": key, "files": files}))
    os.chmod(tmp, 0o644)
    os.replace(tmp, job)


def saved_jobs(work_dir: str | os.PathLike) -> list[str]:
    """``family/technique`` keys of the finished jobs saved in a work dir (for progress and resume)."""
    work = Path(work_dir)
    out = []
    if not work.is_dir():
        return out
    for job in sorted(work.glob(f"*/*/{_JOB_FILE}")):
        if (job.parent / "manifest.json").is_file():
            try:
                out.append(str(json.loads(job.read_text()).get("job")))
            except (OSError, json.JSONDecodeError):
                continue
    return out




def claims_work_dir(fn: Callable) -> Callable:
    """Decorator of a map run taking ``out_dir`` (and ``rerun``): holds the work dir's
    :class:`~medinterp.store.WorkDirLock` for the run, and logs how many saved jobs it may resume."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind_partial(*args, **kwargs)
        work = bound.arguments.get("out_dir")
        if work is None:
            return fn(*args, **kwargs)
        with WorkDirLock(work):
            n = len(saved_jobs(work))
            if n and not bound.arguments.get("rerun", False):
                log.info("resuming: %d saved jobs in %s (each is reused only if its inputs, parameters and files "
                         "match)", n, work)
            return fn(*args, **kwargs)

    return run


def check_family_inputs(families: Sequence[Family | None]) -> None:
    """Load every family input that is a file (shipped names are checked by the package's tests), so that a
    malformed concept or pair file is an error before any job runs, not a failed cell in a finished map."""
    from medinterp.concepts import SHIPPED, load_concepts

    for fam in families:
        if fam is None:
            continue
        for x in (fam.concepts, fam.pairs):
            if isinstance(x, (str, os.PathLike)) and str(x) not in SHIPPED:
                load_concepts(x)

