"""Shared fixtures: ONE embedded Ray cluster per test session (ray.init costs 3-5 s, shutdown 1.3 s)."""

from __future__ import annotations

import pytest
import torch

from vlaforge.runtime.process import apply_process_env

apply_process_env()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from vlaforge.runtime.process import init_ray

    # 4 logical CPUs on 2 cores: 2 learner ranks + 2 env/eval actors fit at once; tests are small.
    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast, and does not thrash when the 2 cores are shared with
    Ray actors or other jobs (2 spinning OpenMP threads under load made a 1 s test take 70 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
