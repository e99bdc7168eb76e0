"""A non-Gaussian head through the real RL learner (Ray + DeepSpeed ZeRO-1, gloo, 2 ranks): the flow head's
stored denoising chain goes through PPO with the k3 reference KL (no head-specific learner code), the
velocity field AND the Flow-Noise network train, ranks stay identical, the update's metrics are sane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.rl_learner import RLLearnerActor, load_rl_policy
from vlaforge.learners.synthetic import synthetic_rollout
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained
from vlaforge.runtime.worker_group import WorkerGroup

POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2, head={"type": "flow", "flow": {"inference_steps": 3}},
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})
SPEC = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=3)
STATS = {"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "action": {"min": [-1.0] * 3, "max": [1.0] * 3}}
BASE = dict(num_learners=2, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_steps=0, lr_schedule="constant", seed=5)


def write_bc_policy(directory: Path) -> Path:
    import torch

    torch.manual_seed(0)
    return save_pretrained(directory, build_policy(POLICY, SPEC), VLAProcessor.from_stats(POLICY, STATS), POLICY, SPEC)


@pytest.mark.slow
def test_flow_head_ppo_update_on_two_deepspeed_ranks(ray_cluster, tmp_path):
    bc = write_bc_policy(tmp_path / "bc")
    group = WorkerGroup(RLLearnerActor, 2, cpus_per_worker=1, name="rl-learner-flow")
    try:
        train = TrainConfig(objective="ppo", **BASE, ppo={"epochs": 1, "num_minibatches": 1, "kl_coef": 0.05,
                                                          "critic_warmup_updates": 0, "entropy_coef": 0.01})
        group.call("setup_rl", train.model_dump(), str(bc), timeout=300)
        model, _, processor, cfg, spec = load_rl_policy(str(bc), value_head=True, seed=BASE["seed"])
        batch = synthetic_rollout(model, processor, spec, batch=4, steps=3, n_action_steps=2, seed=1, version=1)
        assert batch[keys.HEAD_EXTRAS][keys.DENOISE_CHAIN].shape == (4, 3, 4, 4, 3)  # (B, T, S+1, K, A)
        s0 = group.call_rank0("trainable_state")
        # one epoch, one minibatch per rank: the only optimizer step sees the rollout's weights -> ratio 1
        m = group.call("train_rl", ray.put(batch), timeout=300)
        assert m[0] == m[1] and m[0]["train/skipped"] == 0.0
        m0 = m[0]
        assert m0["train/ratio_max"] == pytest.approx(1.0, abs=1e-4) and m0["train/approx_kl"] < 1e-6
        assert m0["train/kl_ref"] == pytest.approx(0.0, abs=1e-6)  # k3 against the reference = the same weights
        for k in ("train/loss_objective", "train/loss_critic", "train/loss_entropy", "train/entropy", "train/grad_norm"):
            assert np.isfinite(m0[k]), k
        s1 = group.call_rank0("trainable_state")
        changed = {k for k in s0 if not np.array_equal(s0[k], s1[k])}
        assert any(k.startswith("head.net.") for k in changed)  # the velocity field
        assert any(k.startswith("head.noise.") for k in changed)  # the learned noise std (Flow-Noise)
        sums = group.call("param_checksum")
        assert sums[0] == sums[1]
        # a second update moves away from the rollout's weights: the recomputed chain log-prob changes
        m2 = group.call("train_rl", ray.put(batch), timeout=300)[0]
        assert m2["train/approx_kl"] > 0.0 and m2["train/kl_ref"] > 0.0
    finally:
        group.shutdown()
