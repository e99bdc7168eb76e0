"""``rollout.broadcast: collective`` in RL, on real Ray + real DeepSpeed (2 learner ranks, ZeRO-1) + gloo:
the RL loop's pieces as run_rl wires them (WeightSync, RLLearnerActor, RolloutPool) with the actors' weights
compared to learner rank 0's bit for bit after every update and after an actor restart re-forms the group;
then a whole PPO stage through ``train`` with the collective broadcast. The zero-cost synthetic env keeps it
cheap (no physics, no rendering). NCCL is not exercised (no GPU here); it runs the same code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs import EnvConfig
from vlaforge.learners.config import TrainConfig
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained
from vlaforge.runtime.config import TimeoutsConfig

pytestmark = pytest.mark.slow

try:  # the probe worker below travels by value: this test module is not importable inside Ray workers
    import ray.cloudpickle as _cp

    _cp.register_pickle_by_value(sys.modules[__name__])
except (ImportError, KeyError):
    pass

ROOT = Path(__file__).resolve().parents[2]
ENV = EnvConfig(backend="synthetic", tasks=["reach-v3"], image_size=32, state="proprio", max_episode_steps=12)
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})
SPEC = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=4)
STATS = {"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "action": {"min": [-1.0] * 4, "max": [1.0] * 4}}


class ProbeWorker(RolloutWorker):
    """A rollout actor that also reports its trainable parameters (what the test compares)."""

    def trainable_state(self) -> dict[str, np.ndarray]:
        return {k: p.detach().cpu().numpy().copy() for k, p in self.policy.named_parameters() if p.requires_grad}


def write_policy(directory: Path) -> Path:
    torch.manual_seed(0)
    return save_pretrained(directory, build_policy(POLICY, SPEC), VLAProcessor.from_stats(POLICY, STATS), POLICY, SPEC,
                           extra={"objective": "bc"})


def assert_actors_hold_learner_weights(learners, pool) -> None:
    import ray

    want = learners.call_rank0("trainable_state")
    for state in ray.get([a.trainable_state.remote() for a in pool.group.actors]):
        assert list(state) == list(want)
        for k in want:
            assert state[k].tobytes() == want[k].tobytes(), k  # bit for bit


def test_collective_broadcast_through_updates_and_an_actor_restart(ray_cluster, tmp_path):
    from vlaforge.learners.rl_learner import RLLearnerActor
    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.platform.weight_sync import WeightSync
    from vlaforge.runtime.worker_group import WorkerGroup

    train = TrainConfig(objective="ppo", num_learners=2, batch_size=2, lr=1e-3, warmup_steps=0, seed=3,
                        lr_schedule="constant", ppo={"epochs": 1, "num_minibatches": 2, "critic_warmup_updates": 0})
    learners = WorkerGroup(RLLearnerActor, 2, cpus_per_worker=1, name="wsync-learners")
    pool = None
    try:
        learners.call("setup_rl", train.model_dump(), str(write_policy(tmp_path / "bc")), timeout=600)
        learners.call("export_policy", str(tmp_path / "start"))
        cfg = RolloutConfig(num_actors=2, envs_per_actor=2, steps_per_sample=3, seed=1, broadcast="collective",
                            broadcast_backend="gloo", broadcast_bucket_mb=0.01, cpus_per_actor=0.5)  # several buckets
        recipe = SimpleNamespace(rollout=cfg, runtime=SimpleNamespace(timeouts=TimeoutsConfig(weights_s=120)))
        sync = WeightSync(recipe, learners)
        assert sync.publish() is None  # no group yet: the actors start from the exported start policy
        pool = RolloutPool(ENV, PolicySource.from_dir(tmp_path / "start"), cfg, ["reach-v3"], worker_cls=ProbeWorker,
                           timeouts_cfg=recipe.runtime.timeouts)
        handle = sync.attach(pool, None)
        assert handle.version == 1 and handle.ref is None and sync.groups_formed == 1
        assert_actors_hold_learner_weights(learners, pool)
        for update in range(2):
            if update == 1:  # a dead actor: the pool restarts it, the group is re-formed and re-broadcast
                import ray

                ray.kill(pool.group.actors[1])
            batch, handle = sync.sample(pool, handle)
            assert set(batch.versions) == {handle.version}
            before = learners.call_rank0("trainable_state")
            m = learners.call("train_rl", ray_cluster.put(batch.data))[0]
            assert m["train/skipped"] == 0.0
            after = learners.call_rank0("trainable_state")
            assert any(not np.array_equal(before[k], after[k]) for k in after)  # the update moved the weights
            handle = sync.publish()
            assert_actors_hold_learner_weights(learners, pool)  # ... and every actor holds the new ones
        assert sync.groups_formed == 2 and pool.counters["actor_restarts"] == 1
        # 1 (attach) + 1 (update 0) + 1 (re-formed group) + 1 (update 1)
        assert handle.version == 4 and {i["version"] for i in pool.info()} == {4}
    finally:
        if pool is not None:
            pool.shutdown()
        learners.shutdown()


def test_ppo_stage_runs_with_the_collective_broadcast(ray_cluster, tmp_path):
    from vlaforge.platform.driver import train
    from vlaforge.platform.recipe import load_recipe

    policy = write_policy(tmp_path / "bc")
    overrides = [
        "envs.backend=synthetic", "envs.tasks=[reach-v3]", "envs.image_size=32", "envs.state=proprio",
        "envs.max_episode_steps=12", "rollout.num_actors=2", "rollout.envs_per_actor=2", "rollout.steps_per_sample=3",
        "rollout.broadcast=collective", "rollout.broadcast_backend=gloo", "rollout.cpus_per_actor=0.5",
        "train.batch_size=4", "logging.wandb=false",
        f"stages=[{{name: ppo, kind: ppo, init: {policy}, eval_start: false, eval_end: false, set: {{train: "
        "{objective: ppo, steps: 2, checkpoint_every: 2, log_every: 1, ppo: {epochs: 1, num_minibatches: 2}}}}]",
    ]
    recipe = load_recipe(ROOT / "configs" / "ppo_metaworld.yaml", overrides)
    run_dir = tmp_path / "run"
    train(recipe, run_dir=run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    versions = [r["train/version"] for r in rows if "train/version" in r]
    assert versions == [2.0, 3.0]  # v1 = the start weights broadcast when the group formed; +1 per update
    assert all(r["train/skipped"] == 0.0 for r in rows if "train/skipped" in r)
