"""Issue 24 item 7: saved state is verified, not trusted. Each saved job records the sha256 of its files
(an edited, truncated or missing file is recomputed, with a log line); a work dir is claimed by one run at
a time (a stale claim of a dead process is taken over); a rerun says it resumes; job counts are right."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from medinterp.errors import MedinterpError
from medinterp.techniques.base import TechniqueResult


@dataclasses.dataclass
class SavedStateToy(TechniqueResult):
    kind = "test_saved_state_toy"
    curve: np.ndarray = None

    def layer_curve(self):
        return self.curve

    def layer_curve_ci(self):
        return self.curve, self.curve

    @property
    def curve_label(self):
        return "toy"


@pytest.fixture
def toy(monkeypatch):
    """A registered technique ``toy_saved`` that counts its runs (per family)."""
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    calls: list[str] = []

    def run(model, fam, *, progress=True, **kw):
        calls.append(fam.name)
        return SavedStateToy(concept_set=fam.name, curve=np.arange(float(model.cfg.n_layers)))

    monkeypatch.setitem(REGISTRY, "toy_saved", Technique("toy_saved", run))
    return calls


def _map(tiny, work, **kw):
    from medinterp.maps import knowledge_map

    return knowledge_map(tiny, concepts=["age", "drugs"], techniques=["toy_saved"], controls=False, rule="paper",
                         progress=False, out_dir=work, **kw)


# ---------------------------------------------------------------- checksums
def test_job_json_records_a_checksum_of_every_saved_file(tiny, toy, tmp_path):
    _map(tiny, tmp_path / "w")
    job = json.loads((tmp_path / "w" / "age" / "toy_saved" / "job.json").read_text())
    assert "manifest.json" in job["files"] and all(len(h) == 64 for h in job["files"].values())


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete"])
def test_a_changed_saved_result_is_recomputed_with_a_log_line(tiny, toy, tmp_path, caplog, damage):
    work = tmp_path / "w"
    _map(tiny, work)
    _map(tiny, work)
    assert toy == ["age", "drugs"]  # the second run loaded both
    d = work / "drugs" / "toy_saved"
    victim = d / "manifest.json" if damage == "edit" else next(p for p in d.iterdir() if p.suffix != ".json")
    if damage == "edit":  # a valid JSON edit that Result.load would accept: only the checksum can catch it
        m = json.loads(victim.read_text())
        m["fields"]["concept_set"] = "edited"
        victim.write_text(json.dumps(m))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-1] if victim.stat().st_size else b"x")
    else:
        victim.unlink()
    with caplog.at_level(logging.WARNING, logger="medinterp"):
        _map(tiny, work)
    assert toy == ["age", "drugs", "drugs"]
    assert "drugs/toy_saved: saved result in" in caplog.text and "was changed after it was saved" in caplog.text
    assert caplog.text.count("was changed after it was saved") == 1  # said once, not again when claimed
    assert json.loads((d / "manifest.json").read_text())["fields"]["concept_set"] == "drugs"  # saved again


def test_a_job_saved_without_checksums_is_recomputed_and_said_so(tiny, toy, tmp_path, caplog):
    work = tmp_path / "w"
    _map(tiny, work)
    job = work / "age" / "toy_saved" / "job.json"
    old = json.loads(job.read_text())
    job.write_text(json.dumps({"fingerprint": old["fingerprint"], "job": old["job"]}))  # 0.3.1's job.json
    with caplog.at_level(logging.WARNING, logger="medinterp"):
        _map(tiny, work)
    assert toy == ["age", "drugs", "age"]
    assert "has no file checksums" in caplog.text
    assert "files" in json.loads(job.read_text())  # rewritten with them


# ---------------------------------------------------------------- one run per work dir
def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _lock(work, pid):
    import socket

    work.mkdir(parents=True, exist_ok=True)
    (work / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then"}))


def test_a_work_dir_held_by_a_live_process_is_refused(tiny, toy, tmp_path):
    work = tmp_path / "w"
    _lock(work, os.getppid())  # a process that runs (our parent), not this one
    with pytest.raises(MedinterpError, match=rf"in use by process {os.getppid()} on"):
        _map(tiny, work)
    assert toy == []
    assert json.loads((work / ".lock").read_text())["pid"] == os.getppid()  # left to its owner


def test_the_cli_refuses_a_held_work_dir_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    monkeypatch.setattr(medinterp.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    _lock(tmp_path / "r.work", os.getppid())
    with pytest.raises(SystemExit) as e:
        main(["map", "--out", str(tmp_path / "r.html"), "--concepts", "age", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"in use by process {os.getppid()}" in err and "Traceback" not in err


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny, toy, tmp_path, caplog):
    work = tmp_path / "w"
    pid = _dead_pid()
    _lock(work, pid)
    with caplog.at_level(logging.WARNING, logger="medinterp"):
        _map(tiny, work)
    assert toy == ["age", "drugs"]
    assert f"taking over the lock of process {pid}" in caplog.text
    assert not (work / ".lock").exists()  # released at the end


def test_the_lock_is_released_when_the_run_fails(tiny, tmp_path, monkeypatch):
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    def run(model, fam, **kw):
        raise KeyboardInterrupt

    monkeypatch.setitem(REGISTRY, "toy_saved", Technique("toy_saved", run))
    with pytest.raises(KeyboardInterrupt):
        _map(tiny, tmp_path / "w")
    assert not (tmp_path / "w" / ".lock").exists()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    from medinterp.store import WorkDirLock

    with WorkDirLock(tmp_path / "w"):
        with WorkDirLock(tmp_path / "w"):
            pass
        assert (tmp_path / "w" / ".lock").exists()  # still held by the outer claim
    assert not (tmp_path / "w" / ".lock").exists()


# ---------------------------------------------------------------- resume message and job counts
def test_cli_says_it_resumes(tiny, toy, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main

    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    argv = ["map", "--out", str(tmp_path / "r.html"), "--concepts", "age,drugs", "--techniques", "toy_saved",
            "--no-progress", "--no-controls", "--rule", "paper"]
    for _ in range(2):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.count("resuming: 2 saved jobs in") == 1 and "(of 2 planned;" in out
    assert toy == ["age", "drugs"]


def test_planned_jobs_count_only_jobs_that_can_run():
    from medinterp.maps.planned import planned_jobs

    assert planned_jobs(["age"], ["geometry"], controls=False) == ["age/geometry"]
    assert sorted(planned_jobs(["age"], ["geometry"], controls=True)) == [
        "age/geometry", "age__control/geometry", "age__twin/geometry"]
    # a user row without pairs: a pairs technique has nothing to run (was counted as 3 jobs)
    assert planned_jobs({"mine": {"concepts": "age"}}, ["patching"], controls=True) == []


def test_interrupt_without_concepts_gives_the_resume_hint(tiny, tmp_path, monkeypatch, capsys):
    import medinterp.models
    from medinterp.cli import main
    from medinterp.concepts import CONCEPT_FAMILIES
    from medinterp.techniques import REGISTRY
    from medinterp.techniques.base import Technique

    def run(model, fam, **kw):
        raise KeyboardInterrupt

    monkeypatch.setitem(REGISTRY, "toy_saved", Technique("toy_saved", run))
    monkeypatch.setattr(medinterp.models, "load_model", lambda spec, **k: tiny)
    with pytest.raises(SystemExit) as e:
        main(["map", "--out", str(tmp_path / "r.html"), "--techniques", "toy_saved", "--no-progress",
              "--no-controls", "--rule", "paper"])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert f"interrupted: 0 of {len(CONCEPT_FAMILIES)} jobs are saved in" in err and "TypeError" not in err


def test_map_from_work_dir_shows_a_changed_result_as_failed_not_its_numbers(tiny, toy, tmp_path):
    from medinterp.maps import map_from_work_dir

    work = tmp_path / "w"
    _map(tiny, work)
    m = work / "drugs" / "toy_saved" / "manifest.json"
    m.write_text(m.read_text().replace('"drugs"', '"edited"'))
    km = map_from_work_dir(work, ["age", "drugs"], ["toy_saved"])
    assert "changed after it was saved" in str(km.status["drugs"]["toy_saved"])
    assert km.status["age"]["toy_saved"] == "ok"
