"""A rollout actor on the default Warp render path, as a real Ray actor, with two tasks in its B simulators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs import EnvConfig
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

S, A, B, T = 4, 4, 4, 3
TASKS = ["reach-v3", "push-v3"]
PCFG = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                    vision={"channels": [8, 16], "keypoints": 4}, language={"vocab_size": 128, "max_tokens": 6, "layers": 1})
STATS = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S},
         "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}


class NoWeights:
    version = 0

    def maybe_load(self, module, handle) -> bool:
        return False


def _args(render_backend: str):
    env_cfg = EnvConfig(image_size=32, tasks=TASKS, state="proprio", max_episode_steps=5, render_backend=render_backend)
    cfg = RolloutConfig(envs_per_actor=B, steps_per_sample=T, seed=11)
    source = PolicySource.from_parts(PCFG, PolicySpec((1, 32, 32, 3), S, A), VLAProcessor.from_stats(PCFG, STATS))
    return dict(env_cfg=env_cfg.model_dump(mode="json"), policy=source, cfg=cfg.model_dump(mode="json"),
                tasks=TASKS, weights=NoWeights(), rank=0)


def test_warp_rollout_actor_with_two_tasks(ray_cluster):
    ray = ray_cluster
    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(**_args("warp"))
    try:
        r = ray.get(actor.sample.remote(None), timeout=300)  # first start may compile Warp's kernels (~40 s)
        tasks = ray.get(actor.__ray_call__.remote(lambda w: list(w.env.spec.tasks)), timeout=60)
    finally:
        ray.kill(actor)
    assert tasks == ["reach-v3", "push-v3", "reach-v3", "push-v3"]  # two task groups of 2 worlds each
    data = r.data
    assert data.batch_size == (B, T) and data[keys.IMAGE].shape == (B, T, 1, 32, 32, 3)
    assert data[keys.NEXT, keys.DONE].any() and len(r.episodes) > 0  # 5-step episodes ended inside the call
    # the first decision saw the reset states: the same seeds as an in-process plain-rendered worker, so
    # the same physics and images within the Warp-vs-plain bound
    plain = RolloutWorker(**_args("plain"))
    first = plain._obs
    plain.close()
    assert torch.equal(data[keys.PRIVILEGED][:, 0], first[keys.PRIVILEGED])
    warp_img, plain_img = data[keys.IMAGE][:, 0].numpy().astype(np.int16), first[keys.IMAGE].numpy().astype(np.int16)
    mad = np.abs(warp_img - plain_img).mean(axis=(1, 2, 3, 4))
    assert (mad <= 8.0).all(), mad
    assert data[keys.TASK_INDEX][:, 0].tolist() == first[keys.TASK_INDEX].tolist()
    assert len(set(data[keys.TASK_INDEX][:, 0].tolist())) == 2
