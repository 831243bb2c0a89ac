"""The knowledge map's jobs as one explicit matrix: family × technique × run kind, each with its fingerprint.

One list, built the same way by :func:`~medinterp.maps.knowledge_map`, by the shard runner
(:func:`~medinterp.maps.shards.run_shard`, ``medinterp map --shard i/n``) and by the Ray executor
(:mod:`medinterp.maps.ray_executor`), so that every process that touches a work dir agrees on what a job
is, where it is saved and when a saved result is the same job.

Run kinds, in the order they run: ``"model"`` (the model on the family), ``"control family"`` (the model
on the row's matched control family) and ``"random twin"`` (the random-init twin on the family). The twin
jobs depend on the first two: which of them can change the map is known only once the model and control
results exist (:func:`medinterp.maps.twin_plan.plan_twin_skips`).

A shard is a deterministic slice of the matrix: job ``k`` (in matrix order) belongs to shard ``k mod n``,
so every shard gets a mix of techniques and run kinds, and ``n`` shards cover the matrix exactly once.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from medinterp.errors import MedinterpError
from medinterp.maps.families import CONTROL_SUFFIX, TWIN_SUFFIX, check_techniques, control_specs, family_specs
from medinterp.maps.jobs import job_dir, job_fingerprint
from medinterp.store import WorkDirLock, model_identity
from medinterp.techniques.base import Family

MODEL, CONTROL, TWIN = "model", "control family", "random twin"
#: run kinds in the order a map runs them (the twin's plan reads the first two)
RUN_KINDS = (MODEL, CONTROL, TWIN)
#: a claim on a job whose holder has not renewed it for this long is stale, on any host (a killed worker on
#: another node cannot be asked whether it still runs); holders renew every CLAIM_LEASE_S / 4
CLAIM_LEASE_S = 600.0


@dataclasses.dataclass(frozen=True)
class Job:
    """One job of the map: a technique on one family for one run kind.

    Attributes:
        kind: ``"model"``, ``"control family"`` or ``"random twin"``.
        row: the map row (family key) the job belongs to.
        technique: a registered technique name.
        family: the family the job runs on (the control family for a control job; for a twin job the
            row's family renamed ``<name>__twin``, which names its directory).
        fingerprint: what a saved result must match to be reused (inputs' content, parameters, run kind,
            model identity, medinterp version).
    """

    kind: str
    row: str
    technique: str
    family: Family
    fingerprint: str

    @property
    def key(self) -> str:
        """``<family dir>/<technique>``: the name :func:`~medinterp.maps.jobs.saved_jobs` lists it under."""
        return f"{self.family.name}/{self.technique}"

    def dir(self, work: str | os.PathLike) -> Path:
        """Where the job's result is saved in the work dir ``work``."""
        return job_dir(work, self.family.name, self.technique)


def job_matrix(model: Any, fams: Mapping[str, Family], ctrl_fams: Mapping[str, Family | None],
               techniques: Sequence[str], kw: Mapping[str, Mapping[str, Any]], *, controls: bool = True,
               twin_seed: int = 0, twin: Any = None) -> list[Job]:
    """Every job a map of these rows may run, in run order (kind, then technique, then row).

    Args:
        model: the model (its identity enters every fingerprint).
        fams: ``{row: Family}`` (:func:`~medinterp.maps.family_specs`).
        ctrl_fams: ``{row: control Family or None}`` (:func:`~medinterp.maps.control_specs`).
        techniques: registered technique names.
        kw: each technique's parameters (its preset with the user's overrides).
        controls: include the control-family and random-twin jobs.
        twin_seed: the random twin's init seed (in the twin jobs' fingerprints).
        twin: a ready twin model, fingerprinted by its own identity instead of the seed.

    Returns:
        The jobs; a job whose family lacks an input its technique needs is included (it ends "not run").
    """
    out = [Job(MODEL, f, t, fams[f], job_fingerprint(model, fams[f], t, kw[t])) for t in techniques for f in fams]
    if not controls:
        return out
    out += [Job(CONTROL, f, t, c, job_fingerprint(model, c, t, kw[t], run={"kind": CONTROL, "of": f}))
            for t in techniques for f, c in ctrl_fams.items() if c is not None]
    which = {"seed": twin_seed} if twin is None else {"twin": model_identity(twin)}  # a given twin: its identity
    out += [Job(TWIN, f, t, dataclasses.replace(fams[f], name=fams[f].name + TWIN_SUFFIX, variants=()),
                job_fingerprint(model, fams[f], t, kw[t], run={"kind": TWIN, **which}))
            for t in techniques for f in fams]
    return out


def job_keys(concepts: Sequence[str] | Mapping[str, Any] | None, techniques: Sequence[str] | None,
             controls: bool = True) -> tuple[list[str], list[str]]:
    """The keys of :func:`job_matrix`'s jobs, known without a model (for a driver that never loads it, and
    for job counts before the model loads): ``(model and control-family jobs, random-twin jobs)``, in order.

    Example:
        >>> first, twins = job_keys(["dosage"], None)
        >>> first[0].startswith("dosage/"), first[-1].startswith("dosage__control/"), twins[0].startswith("dosage__twin/")
        (True, True, True)
    """
    techniques = check_techniques(techniques)
    fams = family_specs(concepts)
    first = [f"{fams[f].name}/{t}" for t in techniques for f in fams]
    if not controls:
        return first, []
    ctrl = control_specs(concepts)
    first += [f"{c.name}/{t}" for t in techniques for c in ctrl.values() if c is not None]
    return first, [f"{fams[f].name}{TWIN_SUFFIX}/{t}" for t in techniques for f in fams]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
        >>> parse_shard("4/4")
        Traceback (most recent call last):
        ...
        medinterp.errors.MedinterpError: shard '4/4': expected i/n with 0 <= i < n (shards are numbered from 0, e.g. 0/4 ... 3/4)
    """
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise MedinterpError(f"shard {text!r}: expected i/n with 0 <= i < n (shards are numbered from 0, "
                             "e.g. 0/4 ... 3/4)")
    return i, n


def shard_of(matrix: Sequence[Job], shard: tuple[int, int]) -> list[Job]:
    """The jobs of shard ``(i, n)``: job ``k`` of the matrix belongs to shard ``k mod n``.

    Example:
        >>> from medinterp.techniques.base import Family
        >>> m = [Job("model", "r", str(t), Family("r"), "fp") for t in range(5)]
        >>> [j.technique for j in shard_of(m, (1, 2))]
        ['1', '3']
    """
    i, n = shard
    if not 0 <= i < n:
        raise MedinterpError(f"shard {i}/{n}: expected 0 <= i < n")
    return [j for k, j in enumerate(matrix) if k % n == i]


def claim_job(work: str | os.PathLike, job_family: str, technique: str) -> WorkDirLock | str:
    """Claim one job's directory for this process, or say who holds it.

    Two processes writing one work dir (shards, Ray workers, a shard beside a full run) must never run the
    same job at once: the claim is an atomic ``<job dir>/.lock`` (O_EXCL), renewed while held, taken over
    when its holder no longer runs on this host or has not renewed it for :data:`CLAIM_LEASE_S` seconds.

    Returns:
        The held claim (release it when the job is saved), or a sentence naming the process that holds it.
    """
    lock = WorkDirLock(job_dir(work, job_family, technique), lease_s=CLAIM_LEASE_S)
    try:
        return lock.acquire()
    except MedinterpError as e:
        return str(e)


__all__ = ["CLAIM_LEASE_S", "CONTROL", "CONTROL_SUFFIX", "TWIN_SUFFIX", "Job", "job_keys", "MODEL", "RUN_KINDS", "TWIN", "claim_job", "job_matrix",
           "parse_shard", "shard_of"]
