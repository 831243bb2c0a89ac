"""Sharded maps (issue #23 item 3): one job matrix, deterministic shards, a merge that computes nothing, and
processes sharing one work dir without running a job twice or corrupting it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from medinterp import maps
from medinterp.errors import MedinterpError
from medinterp.maps.jobs import load_saved
from medinterp.testing import assert_same_map
from medinterp.maps.matrix import CLAIM_LEASE_S, RUN_KINDS, job_keys, job_matrix, parse_shard, shard_of

FAMS = ["drugs", "dosage"]
MARKING = dict(n_perm=999, n_boot=200, n_resamples=5)
KW = dict(quick=True, progress=False, **MARKING)
TINY = dict(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0)


def _model():
    from medinterp.testing import tiny_model

    return tiny_model(**TINY)


same_map = assert_same_map


@pytest.fixture
def one_thread():
    """CPU float sums depend on torch's thread count (another test may leave it changed, and a subprocess starts
    with the default): every map these tests compare bit for bit runs on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process map of the same jobs (one torch thread)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return maps.knowledge_map(_model(), FAMS, out_dir=tmp_path_factory.mktemp("ref"), **KW)
    finally:
        torch.set_num_threads(n)


def _matrix(model):
    fams = maps.family_specs(FAMS)
    ctrl = maps.control_specs(FAMS)
    techs = maps.check_techniques(None)
    from medinterp.techniques import REGISTRY

    kw = {t: REGISTRY[t].params("quick") for t in techs}
    return job_matrix(model, fams, ctrl, techs, kw)


def test_shards_cover_the_matrix_exactly_once_in_a_fixed_order():
    model = _model()
    m = _matrix(model)
    assert [j.kind for j in m] == sorted((j.kind for j in m), key=RUN_KINDS.index)  # run kinds in run order
    assert len({j.key for j in m}) == len(m)
    first, twins = job_keys(FAMS, None)  # the model-free key list (the Ray driver's) is the matrix's
    assert first + twins == [j.key for j in m]
    again = _matrix(model)
    assert [(j.key, j.fingerprint) for j in m] == [(j.key, j.fingerprint) for j in again]
    for n in range(1, 8):
        parts = [shard_of(m, (i, n)) for i in range(n)]
        keys = [j.key for p in parts for j in p]
        assert sorted(keys) == sorted(j.key for j in m) and len(keys) == len(set(keys))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    with pytest.raises(MedinterpError, match="0 <= i < n"):
        shard_of(m, (2, 2))


@pytest.mark.parametrize("bad", ["2/2", "-1/3", "1", "a/b", "0/0"])
def test_parse_shard_says_what_it_expects(bad):
    with pytest.raises(MedinterpError, match="expected i/n"):
        parse_shard(bad)


def test_sharded_map_is_the_single_process_map_bit_for_bit(reference, tmp_path, one_thread):
    model = _model()
    work = tmp_path / "w"
    first = [maps.run_shard(model, FAMS, out_dir=work, shard=(i, 3), quick=True, progress=False, marking=MARKING)
             for i in range(3)]
    assert sum(len(r.jobs) for r in first) == len(_matrix(model))
    assert any(r.waiting for r in first[:2])  # an early shard's twin jobs wait for later shards' model jobs
    second = [maps.run_shard(model, FAMS, out_dir=work, shard=(i, 3), quick=True, progress=False, marking=MARKING)
              for i in range(3)]
    assert all(r.complete for r in second), [str(r) for r in second]
    merged = maps.knowledge_map(model, FAMS, out_dir=work, merge_only=True, **KW)  # computes nothing: or raises
    same_map(reference, merged)


def test_merge_names_the_jobs_it_lacks(tmp_path):
    model = _model()
    maps.run_shard(model, ["dosage"], ["lesion"], out_dir=tmp_path, shard=(0, 2), quick=True, progress=False)
    lacking = [j.key for j in shard_of(_matrix_of(model, ["dosage"], ["lesion"]), (1, 2)) if j.kind != "random twin"]
    with pytest.raises(MedinterpError, match="no saved result") as e:
        maps.knowledge_map(model, ["dosage"], ["lesion"], out_dir=tmp_path, merge_only=True, **KW)
    assert lacking[0] in str(e.value)


def _matrix_of(model, fams, techs):
    from medinterp.techniques import REGISTRY

    kw = {t: REGISTRY[t].params("quick") for t in techs}
    return job_matrix(model, maps.family_specs(fams), maps.control_specs(fams), techs, kw)


_SHARD_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)  # as the reference: CPU float sums depend on the thread count
from medinterp import maps
from medinterp.testing import tiny_model
i, n, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
r = maps.run_shard(tiny_model(**{tiny}), {fams}, out_dir=work, shard=(i, n), quick=True, progress=False,
                   marking={marking})
print("REPORT", len(r.jobs), len(r.elsewhere))
"""


def test_processes_sharing_a_work_dir_never_corrupt_it(reference, tmp_path, one_thread):
    """Two shards and a duplicate of one run at once, twice (the twin pass): every saved job verifies, no
    job is saved twice at once, and the merged map is the single-process map."""
    script = _SHARD_SCRIPT.format(tiny=TINY, fams=FAMS, marking=MARKING)
    work = str(tmp_path / "w")
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(n), work], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i, n in ((0, 2), (1, 2), (0, 2))]
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    saved = sorted(tmp_path.glob("w/*/*/job.json"))
    assert saved
    for job in saved:  # checksums of every file of every saved job match (load_saved raises otherwise)
        load_saved(job.parent)
    assert not list(tmp_path.glob("w/*/*/.lock"))  # no claim outlives its process
    merged = maps.knowledge_map(_model(), FAMS, out_dir=work, merge_only=True, **KW)
    same_map(reference, merged)


def _lock(dir_, pid, host=None, age=0.0):
    dir_.mkdir(parents=True, exist_ok=True)
    p = dir_ / ".lock"
    p.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "x"}))
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
    return p


def test_a_job_another_live_process_holds_is_not_run_here(tmp_path):
    model = _model()
    job = next(j for j in _matrix_of(model, ["dosage"], ["lesion"]) if j.kind == "model")
    _lock(job.dir(tmp_path), os.getppid())  # a live process on this host
    rep = maps.run_shard(model, ["dosage"], ["lesion"], out_dir=tmp_path, jobs=[job.key], quick=True,
                         progress=False)
    assert job.key in rep.elsewhere and str(os.getppid()) in rep.elsewhere[job.key]
    assert not (job.dir(tmp_path) / "job.json").exists()
    with pytest.raises(MedinterpError, match="being run by other processes"):
        maps.knowledge_map(model, ["dosage"], ["lesion"], out_dir=tmp_path, **KW)


def test_stale_claims_are_taken_over(tmp_path):
    """A claim of a process that ended (this host) or of one on another host not renewed for the lease is
    stale; a fresh claim from another host is respected."""
    model = _model()
    job = next(j for j in _matrix_of(model, ["dosage"], ["lesion"]) if j.kind == "model")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, host, age, taken in ((dead.pid, None, 0.0, True), (1, "node-elsewhere", 2 * CLAIM_LEASE_S, True),
                                  (1, "node-elsewhere", 0.0, False)):
        d = job.dir(tmp_path)
        for p in d.glob("*") if d.exists() else ():
            p.unlink()
        _lock(d, pid, host, age)
        rep = maps.run_shard(model, ["dosage"], ["lesion"], out_dir=tmp_path, jobs=[job.key], quick=True,
                             progress=False)
        assert (rep.status.get(job.key) == "ok") is taken, (pid, host, age, rep)
        assert (job.key in rep.elsewhere) is (not taken)


def test_cli_rejects_bad_shard_options_before_the_model_loads(tmp_path):
    from typer.testing import CliRunner

    from medinterp.cli import app

    r = CliRunner().invoke(app, ["map", "--model", "does-not-exist", "--shard", "3/3", "--out", str(tmp_path / "r.html")])
    assert r.exit_code != 0 and "expected i/n" in (r.output + str(r.exception))
    r = CliRunner().invoke(app, ["map", "--model", "does-not-exist", "--shard", "0/2", "--merge",
                                 "--out", str(tmp_path / "r.html")])
    assert r.exit_code != 0 and "one of --shard" in (r.output + str(r.exception))


def test_cli_shards_then_merge_end_to_end(monkeypatch, tmp_path, capsys):
    """`medinterp map --shard i/n` twice per shard (the twin pass), then `--merge`: the report is written and
    the merge computes nothing (a missing job would be an error)."""
    import medinterp.models
    from medinterp.cli import main

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **kw: _model())
    base = ["map", "--model", "tiny", "--out", str(tmp_path / "r.html"), "--concepts", "dosage", "--techniques",
            "lesion,patching", "--quick", "--no-progress", "--n-perm", "999"]

    def run(extra):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        out, err = capsys.readouterr()
        assert e.value.code in (0, None) and "Traceback" not in err, out[-2000:] + err[-2000:]
        return out

    with pytest.raises(SystemExit):  # nothing saved yet: the merge names what it lacks
        main(base + ["--merge"])
    assert "no saved result" in capsys.readouterr().err
    texts = [run(["--shard", f"{i}/2"]) for _ in range(2) for i in range(2)]
    assert "is done" in texts[-1] and "is done" in texts[-2]
    text = run(["--merge"])
    assert (tmp_path / "r.html").is_file() and "report:" in text


def test_the_model_steps_aside_for_its_twin_only_where_both_do_not_fit():
    """On one GPU a full-size model and its random twin do not both fit (Gemma-3-27B bf16: 54 GB each on 80 GB):
    the map parks the model in host memory while the twin runs, and brings it back unchanged."""
    import torch

    from medinterp.models.twin import parked, twin_needs_room

    m = _model()
    nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
    assert not twin_needs_room(m, free_bytes=0)  # on the CPU: never
    m.cfg.device = "cuda:0"  # the decision only (no GPU here): room for 1.2x the parameters, or park
    try:
        assert twin_needs_room(m, free_bytes=int(nbytes * 1.1)) and not twin_needs_room(m, free_bytes=nbytes * 2)
    finally:
        m.cfg.device = "cpu"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with parked(m, True) as park:
        assert park.device == "cpu"
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
