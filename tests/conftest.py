"""Shared fixtures: ONE embedded Ray cluster per test session (ray.init costs 3-5 s, shutdown 1.3 s)."""

from __future__ import annotations

import pytest

from vlaforge.platform.runtime import apply_process_env

apply_process_env()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from vlaforge.platform.runtime import init_ray

    # 4 logical CPUs on 2 cores: 2 learner ranks + 2 env/eval actors fit at once; tests are small.
    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()
