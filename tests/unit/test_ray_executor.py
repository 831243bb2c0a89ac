"""The Ray executor (issue #23 item 4) on a local Ray cluster: the map is the single-process map bit for bit,
and a worker killed mid-map loses no finished job (only its own job is run again)."""

from __future__ import annotations

import collections
import functools

import pytest
import torch

from medinterp import maps
from medinterp.errors import MedinterpError
from medinterp.testing import CrashWorkerOnce, assert_same_map, tiny_model

ray = pytest.importorskip("ray")  # the test extra installs it: CI runs this

FAMS = ["drugs", "dosage"]
KW = dict(quick=True, n_perm=999, n_boot=200, n_resamples=5)
FACTORY = functools.partial(tiny_model, n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0)


def test_ray_map_is_the_single_process_map_and_a_killed_worker_loses_nothing(tmp_path):
    from medinterp.maps.matrix import job_keys
    from medinterp.maps.ray_executor import knowledge_map_ray

    # a Ray task with num_cpus=1 runs torch on one thread; CPU float sums depend on the thread count, so the
    # reference runs on one thread too (bit-identity holds at equal thread counts, as on equal GPUs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = maps.knowledge_map(FACTORY(), FAMS, out_dir=tmp_path / "ref", progress=False, **KW)
    finally:
        torch.set_num_threads(threads)
    first, twins = job_keys(FAMS, None)
    crash = CrashWorkerOnce("dosage/lesion", str(tmp_path / "crashed"), str(tmp_path / "starts.log"))
    km = knowledge_map_ray(FACTORY, FAMS, out_dir=tmp_path / "w", num_cpus=1, before_job=crash, progress=False,
                           init_kwargs={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}, **KW)
    assert (tmp_path / "crashed").exists()  # the worker did die
    starts = collections.Counter((tmp_path / "starts.log").read_text().split())
    assert set(starts) == set(first) | set(twins)
    # only the killed worker's job ran twice: every finished job survived the crash
    assert {k: n for k, n in starts.items() if n != 1} == {"dosage/lesion": 2}
    assert_same_map(reference, km)


def test_ray_executor_refuses_arguments_it_cannot_honour(tmp_path):
    from medinterp.maps.ray_executor import knowledge_map_ray

    with pytest.raises(MedinterpError, match="cannot be passed here"):
        knowledge_map_ray(FACTORY, FAMS, out_dir=tmp_path, rerun=True)
