"""Expert demonstrations: real Ray actors, real Meta-World, written as one LeRobot v3 dataset + cache."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vlaforge.errors import VlaforgeError

from vlaforge.data import format as F
from vlaforge.data.config import EVAL_SEED_START, DemoConfig
from vlaforge.data.dataset import ChunkDataset
from vlaforge.data.demos import dataset_hash, generate_demos
from vlaforge.data.reader import DatasetReader
from vlaforge.envs.config import EnvConfig
from vlaforge.envs.instructions import instructions_for

TASKS = ["reach-v3", "drawer-close-v3"]  # the experts solve these in ~40-80 steps


def _env(**over) -> EnvConfig:
    return EnvConfig(**{"tasks": TASKS, "image_size": 32, "max_episode_steps": 120, "state": "proprio_goal", **over})


def test_hash_covers_what_changes_the_data(tmp_path):
    demo = DemoConfig(cache_dir=str(tmp_path))
    h = dataset_hash(_env(), demo)
    # scheduling and where the cache lives do not change the data ...
    assert dataset_hash(_env(), demo.model_copy(update={"num_workers": 7, "envs_per_worker": 1})) == h
    assert dataset_hash(_env(instructions="heldout"), demo) == h  # demos always use train paraphrases
    # ... everything else does
    for env_over in ({"image_size": 64}, {"cameras": ["topview"]}, {"state": "full"}, {"max_episode_steps": 99},
                     {"tasks": TASKS[:1]}, {"render_backend": "plain"}, {"heldout_paraphrases": 2}):
        assert dataset_hash(_env(**env_over), demo) != h, env_over
    for demo_over in ({"episodes_per_task": 3}, {"seed": 5}, {"action_noise": 0.1}, {"video_codec": "av1"},
                      {"only_success": False}, {"success_extra_steps": 2}):
        assert dataset_hash(_env(), demo.model_copy(update=demo_over)) != h, demo_over


def test_demo_seeds_stay_below_eval_seeds():
    with pytest.raises(ValueError, match="evaluation seeds"):
        DemoConfig(seed=EVAL_SEED_START - 10, episodes_per_task=5, max_attempts_factor=3)


@pytest.mark.slow
def test_generate_demos_and_cache(ray_cluster, tmp_path):
    demo = DemoConfig(episodes_per_task=2, num_workers=2, envs_per_worker=2, cache_dir=str(tmp_path / "cache"))
    path = generate_demos(_env(), demo, progress=False)
    assert path.parent == tmp_path / "cache" and path.name == dataset_hash(_env(), demo)

    r = DatasetReader(path)
    assert r.info["total_episodes"] == 4 and r.info["robot_type"] == "sawyer"
    ep = r.episodes
    assert list(ep["env_task"]) == ["reach-v3", "reach-v3", "drawer-close-v3", "drawer-close-v3"]
    assert (ep["seed"] < EVAL_SEED_START).all()
    for task, instr in zip(ep["env_task"], ep["tasks"]):
        assert list(instr)[0] in instructions_for(task, "train", 1)  # a training paraphrase
    d = r.load()
    ends = np.r_[ep["dataset_to_index"].to_numpy()] - 1
    assert d[F.SUCCESS_KEY][ends].all() and d[F.DONE_KEY][ends].all()  # each ends at its first success
    assert d[F.SUCCESS_KEY].sum() == 4 and d[F.DONE_KEY].sum() == 4
    assert d[F.STATE_KEY].shape[1] == 7 and d[F.PRIVILEGED_KEY].shape[1] == 39
    np.testing.assert_array_equal(d[F.STATE_KEY][:, 4:], d[F.PRIVILEGED_KEY][:, 36:39])  # goal in state
    assert d[F.IMAGE_PREFIX + "corner"].shape[1:] == (32, 32, 3) and d[F.IMAGE_PREFIX + "corner"].std() > 10
    assert (np.abs(d[F.ACTION_KEY]) <= 1).all()

    ds = ChunkDataset(path, chunk_size=4)
    assert len(ds) == r.info["total_frames"] and ds.images.shape[1:] == (1, 32, 32, 3)

    t0 = time.perf_counter()
    assert generate_demos(_env(), demo.model_copy(update={"num_workers": 1}), progress=False) == path
    assert time.perf_counter() - t0 < 1.0  # cache hit: no actor started

    # Same seeds with other scheduling (1 worker, 3 slots) reproduce the reach episodes exactly.
    again = generate_demos(_env(tasks=["reach-v3"]), demo.model_copy(update={"num_workers": 1, "envs_per_worker": 3}),
                           out_dir=tmp_path / "again", progress=False)
    d2 = DatasetReader(again).load(cameras=False)
    n = int(ep["length"].iloc[0] + ep["length"].iloc[1])
    np.testing.assert_array_equal(d2[F.ACTION_KEY], d[F.ACTION_KEY][:n])


@pytest.mark.slow
def test_failing_expert_names_the_task(ray_cluster, tmp_path):
    # 5 steps are too few for any expert: every attempt fails, the error names the task and the count
    demo = DemoConfig(episodes_per_task=1, max_attempts_factor=2, num_workers=1, envs_per_worker=2,
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(VlaforgeError, match=r"task 'drawer-close-v3' succeeded in 0 of 2 attempts"):
        generate_demos(_env(tasks=["drawer-close-v3"], max_episode_steps=5), demo, progress=False)
    # nothing half-written: only the cache entry's lock file (kept: deleting a lock file races with waiters)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{dataset_hash(_env(tasks=['drawer-close-v3'], max_episode_steps=5), demo)}.lock"]
