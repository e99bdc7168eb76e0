"""RLLearnerActor on real Ray + real DeepSpeed (ZeRO-1, gloo, 2 ranks): PPO from a BC export without a
value head (critic warm-up, then a full update), weight publication (+1 per update, subscriber gets the
learner's exact weights), then GRPO on the same ranks (a real update; an all-uniform batch is skipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from vlaforge.learners.config import TrainConfig
from vlaforge.learners.rl_learner import RLLearnerActor, load_rl_policy
from vlaforge.learners.synthetic import synthetic_rollout
from vlaforge.runtime.weights import WeightSubscriber
from vlaforge.runtime.worker_group import WorkerGroup
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained

POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})
SPEC = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=3)
STATS = {"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "action": {"min": [-1.0] * 3, "max": [1.0] * 3}}
BASE = dict(num_learners=2, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_steps=0, lr_schedule="constant", seed=5)


def write_bc_policy(directory: Path) -> Path:
    """A BC-stage export: no value head (as vlaforge's BC stage writes it)."""
    torch.manual_seed(0)
    policy = build_policy(POLICY, SPEC)
    return save_pretrained(directory, policy, VLAProcessor.from_stats(POLICY, STATS), POLICY, SPEC, extra={"objective": "bc"})


def test_load_rl_policy_adds_a_fresh_value_head(tmp_path):
    bc = write_bc_policy(tmp_path / "bc")
    model, ref, _, cfg, _ = load_rl_policy(str(bc), value_head=True, seed=1)
    assert cfg.value_head and model.value is not None and ref.value is None
    ref_state = ref.state_dict()
    for name, p in model.state_dict().items():
        if name.startswith("value."):
            continue
        assert torch.equal(p, ref_state[name]), name
    assert not any(p.requires_grad for p in ref.parameters())
    again, *_ = load_rl_policy(str(bc), value_head=True, seed=1)  # seeded: identical on every rank
    assert all(torch.equal(a, b) for a, b in zip(model.value.parameters(), again.value.parameters()))
    other = POLICY.model_copy(update={"dim": 48, "heads": 2})
    torch.manual_seed(0)
    save_pretrained(tmp_path / "bad", build_policy(POLICY, SPEC), VLAProcessor.from_stats(POLICY, STATS), other, SPEC)
    with pytest.raises(ValueError, match="does not match"):
        load_rl_policy(str(tmp_path / "bad"), value_head=True, seed=1)


@pytest.fixture(scope="module")
def learners(ray_cluster, tmp_path_factory):
    group = WorkerGroup(RLLearnerActor, 2, cpus_per_worker=1, name="rl-learner")
    yield group, write_bc_policy(tmp_path_factory.mktemp("rl") / "bc")
    group.shutdown()


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not np.array_equal(a[k], b[k])}


@pytest.mark.slow
def test_ppo_warmup_update_publish_checkpoint_then_grpo(learners, tmp_path):
    group, bc = learners
    run_dir = tmp_path / "run"
    train = TrainConfig(objective="ppo", **BASE, ppo={"epochs": 2, "num_minibatches": 2, "kl_coef": 0.05,
                                                      "critic_warmup_updates": 1, "normalize_reward": True})
    info = group.call("setup_rl", train.model_dump(), str(bc), timeout=300)
    assert [i["rank"] for i in info] == [0, 1] and all(i["value_head"] for i in info)
    h1 = group.call("publish_weights")
    assert h1[0].version == 1 and h1[1] is None

    model, _, processor, cfg, spec = load_rl_policy(str(bc), value_head=True, seed=BASE["seed"])
    batch = synthetic_rollout(model, processor, spec, batch=4, steps=3, n_action_steps=cfg.n_action_steps, seed=1, version=1)
    ref = ray.put(batch)

    # Update 0 = critic warm-up: only the value head moves (weight decay 0: AdamW sees zero grads elsewhere).
    s0 = group.call_rank0("trainable_state")
    m = group.call("train_rl", ref, timeout=300)
    assert m[0] == m[1]  # all-reduced: every rank reports the same
    m0 = m[0]
    assert m0["train/critic_warmup"] == 1.0 and m0["train/skipped"] == 0.0 and m0["train/optimizer_steps"] == 4
    for k in ("train/loss_objective", "train/loss_critic", "train/loss_entropy", "train/loss_kl", "train/clip_fraction",
              "train/approx_kl", "train/entropy", "train/explained_variance", "train/ratio_mean", "train/ratio_max",
              "train/kl_ref", "train/grad_norm", "train/samples_per_s", "train/advantage_std", "train/reward_scale"):
        assert k in m0 and np.isfinite(m0[k]), k
    assert m0["train/clip_fraction"] == 0.0 and abs(m0["train/approx_kl"]) < 1e-6  # the policy did not move
    assert m0["train/samples"] == 2 * 4 * 3 and m0["train/policy_lag"] == 0.0
    s1 = group.call_rank0("trainable_state")
    assert _changed(s0, s1) and all(k.startswith("value.") for k in _changed(s0, s1))

    # Update 1: the whole policy trains; ranks stay bit-identical; one new version per update.
    m1 = group.call("train_rl", ref, timeout=300)[0]
    assert m1["train/critic_warmup"] == 0.0 and m1["train/update"] == 1.0
    assert m1["train/kl_ref"] >= 0.0 and m1["train/policy_lag"] == 0.0  # batch of v1; nothing published since
    sums = group.call("param_checksum")
    assert sums[0] == sums[1]
    s2 = group.call_rank0("trainable_state")
    assert any(not k.startswith("value.") for k in _changed(s1, s2))
    h2 = group.call("publish_weights")
    assert h2[0].version == 2 and h2[1] is None  # +1 per publish (the warm-up's weights were not published)
    assert group.call("publish_weights")[0].version == 2  # no update since: the same handle

    replica, *_ = load_rl_policy(str(bc), value_head=True, seed=99)
    sub = WeightSubscriber()
    assert sub.maybe_load(replica, h2[0]) and sub.version == 2
    for name, p in replica.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), s2[name], err_msg=name)

    # Checkpoint: DeepSpeed state + RL state (update count, version, reward normaliser) restore exactly.
    saved = group.call("save_checkpoint", str(run_dir), timeout=300)
    at_save = group.call("state_checksums")
    assert at_save[0]["rl"]["update"] == 2 and at_save[0]["rl"]["version"] == 2
    assert at_save[0]["rl"]["objective"]["reward_norm"]["count"] == 2 * 4 * 3  # 2 updates x all B x T decisions
    group.call("train_rl", ref, timeout=300)
    assert group.call("state_checksums") != at_save
    assert group.call("load_checkpoint", saved[0], timeout=300) == [at_save[0]["step"]] * 2
    assert group.call("state_checksums") == at_save
    assert group.call("publish_weights")[0].version == 3  # the restored weights go out as the next version

    # GRPO on the same ranks: group-relative advantages, no critic, a real update.
    grpo = TrainConfig(objective="grpo", **BASE, grpo={"epochs": 1, "num_minibatches": 2, "score": "return"})
    group.call("setup_rl", grpo.model_dump(), str(bc), timeout=300)
    gmodel, _, gproc, gcfg, _ = load_rl_policy(str(bc), value_head=False, seed=0)
    gbatch = synthetic_rollout(gmodel, gproc, spec, batch=4, steps=3, n_action_steps=2, seed=2, group_size=2)
    before = group.call("param_checksum")
    gm = group.call("train_rl", gbatch, timeout=300)
    assert gm[0] == gm[1] and gm[0]["train/skipped"] == 0.0 and gm[0]["train/groups"] == 2.0
    after = group.call("param_checksum")
    assert after[0] == after[1] != before[0]
    uniform = gbatch.clone()
    uniform.get("next").get("reward").zero_()  # every return 0: dynamic sampling drops both groups
    skipped = group.call("train_rl", uniform, timeout=300)[0]
    assert skipped["train/skipped"] == 1.0 and skipped["train/groups_kept"] == 0.0
    assert group.call("param_checksum") == after


@pytest.mark.slow
def test_ppo_own_critic_param_group_value_norm_and_task_advantages(learners, tmp_path):
    """Issue 10's critic and ratio options through the real learner: a state critic in its own param group at
    its own lr, per-task value normalisation (stats persisted), per-task advantages, the mean ratio, and a
    warm-up that ends as soon as the rollout explained variance passes the threshold."""
    group, _ = learners
    cfg = POLICY.model_copy(update={"critic": "state",
                                    "head": POLICY.head.model_copy(update={"std": "state", "clip_actions": True})})
    torch.manual_seed(0)
    bc = save_pretrained(tmp_path / "bc", build_policy(cfg, SPEC), VLAProcessor.from_stats(cfg, STATS), cfg, SPEC,
                         extra={"objective": "bc"})
    ppo = {"epochs": 1, "num_minibatches": 2, "ratio": "mean", "value_norm": True, "value_clip": None,
           "advantage_groups": "task", "critic_lr": 1e-2, "critic_warmup_updates": 5, "critic_warmup_ev": -1e9,
           "target_kl": 1e-9, "kl_stop": "minibatch"}
    group.call("setup_rl", TrainConfig(objective="ppo", **BASE, ppo=ppo).model_dump(), str(bc), timeout=300)
    model, _, processor, pcfg, spec = load_rl_policy(str(bc), value_head=True, seed=BASE["seed"])
    assert pcfg.critic == "state" and type(model.value).__name__ == "StateValueHead"
    batch = synthetic_rollout(model, processor, spec, batch=4, steps=3, n_action_steps=pcfg.n_action_steps, seed=3)
    m = group.call("train_rl", ray.put(batch), timeout=300)
    assert m[0] == m[1]
    m0 = m[0]
    # any EV passes a threshold of -1e9: the warm-up (at most 5 updates) ends at once, the policy trains
    assert m0["train/critic_warmup"] == 0.0
    assert m0["train/lr"] == pytest.approx(BASE["lr"]) and m0["train/critic_lr"] == pytest.approx(1e-2)
    for k in ("train/clip_fraction_chunk", "train/clip_fraction_mean", "train/approx_kl_chunk", "train/approx_kl_mean"):
        assert np.isfinite(m0[k]), k
    # kl_stop minibatch: the first step (ratio 1, KL 0) runs; the second sees KL > 1.5 x 1e-9 and stops the update
    assert m0["train/kl_stopped"] == 1.0 and m0["train/optimizer_steps"] == 1 and m0["train/epochs"] == 1
    stats = group.call("state_checksums")[0]["rl"]["objective"]["value_stats"]
    tasks = set(batch.get(("observation", "task_index")).flatten().tolist())
    assert {i for i, c in enumerate(stats["count"]) if c > 0} == tasks  # one running mean/std per task seen
