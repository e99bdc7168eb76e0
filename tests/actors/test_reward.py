"""RewardScorer: shapes, output mappings (level / delta / binary), env / rm / mix rewards on rollout
trajectories, loading from a saved model, reward_metrics on crafted cases, and the scorer as a Ray
actor group giving the same rewards as in-process (slow)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.actors.reward import RewardScorer, RewardWorker, mix_rewards, reward_metrics
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import RewardModel, RewardProcessor, rm_spec, save_reward_model

B, T, S = 3, 4, 5


def cfg(**over) -> RewardModelConfig:
    base = dict(enabled=True, dim=16, heads=2, vision={"channels": [8], "keypoints": 0},
                language={"vocab_size": 64, "max_tokens": 4, "layers": 0})
    base.update(over)
    return RewardModelConfig(**base)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    c = cfg()
    return RewardModel(c, rm_spec((1, 16, 16, 3), S)).eval(), RewardProcessor.fit(c)


def obs(b: int, seed: int) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({keys.IMAGE: torch.randint(0, 256, (b, 1, 16, 16, 3), dtype=torch.uint8, generator=g),
                     keys.STATE: torch.randn(b, S, generator=g)}, batch_size=[b])
    td.set(keys.INSTRUCTION, NonTensorStack.from_list(["close the drawer"] * b))
    return td


def trajectory(seed: int = 0) -> TensorDict:
    """A rollout [B, T] as the rollout actor records it (observation, ("next", observation + results))."""
    g = torch.Generator().manual_seed(seed)
    now, nxt = obs(B * T, seed).reshape(B, T), obs(B * T, seed + 1).reshape(B, T)
    nxt.set(keys.REWARD, torch.rand(B, T, 1, generator=g) * 10)
    nxt.set(keys.SUCCESS, torch.rand(B, T, 1, generator=g) > 0.5)
    nxt.set(keys.DONE, torch.zeros(B, T, 1, dtype=torch.bool))
    now.set(keys.NEXT, nxt.exclude(keys.INSTRUCTION))
    return now


def test_score_shapes_and_outputs(model):
    m, proc = model
    o, o2 = obs(B, 0), obs(B, 1)
    scorer = RewardScorer(m, proc, cfg(output="level"))
    p0, p1 = scorer.score(o), scorer.score(o2)
    assert p1.shape == (B,) and ((p1 > 0) & (p1 < 1)).all() and torch.allclose(p1, scorer.logits(o2).sigmoid())
    assert torch.equal(scorer.rm_reward(None, o2), p1)
    assert torch.allclose(RewardScorer(m, proc, cfg(output="delta")).rm_reward(o, o2), p1 - p0)
    thr = float(p1.median())  # both sides of the threshold occur
    binary = RewardScorer(m, proc, cfg(output="binary", threshold=thr)).rm_reward(None, o2)
    assert torch.equal(binary, (p1 >= thr).float()) and 0 < binary.sum() < B
    with pytest.raises(ValueError, match="'delta' needs the observation"):
        RewardScorer(m, proc, cfg(output="delta")).rm_reward(None, o2)
    with pytest.raises(ValueError, match="needs its RewardProcessor"):
        RewardScorer(m)


@pytest.mark.parametrize("mode", ["env", "rm", "mix"])
def test_annotate_mixes_by_mode(model, mode):
    m, proc = model
    c = cfg(mode=mode, mix_weight=0.25)
    traj = trajectory()
    env = traj.get((keys.NEXT, keys.REWARD)).clone()
    expected_rm = RewardScorer(m, proc, c).score(traj.get(keys.NEXT).select(keys.IMAGE, keys.STATE).set(
        keys.INSTRUCTION, traj.get(keys.INSTRUCTION))).unsqueeze(-1)  # p(success | next obs), (B, T, 1)
    out = RewardScorer(m, proc, c).annotate(traj)
    rm = out.get((keys.NEXT, keys.RM_REWARD))
    assert rm.shape == (B, T, 1) and torch.allclose(rm, expected_rm, atol=1e-6)
    assert torch.equal(out.get((keys.NEXT, keys.ENV_REWARD)), env)
    want = {"env": env, "rm": rm, "mix": 0.75 * env + 0.25 * rm}[mode]
    assert torch.allclose(out.get((keys.NEXT, keys.REWARD)), want)
    again = RewardScorer(m, proc, c).annotate(out)  # idempotent: mixes from the kept env reward
    assert torch.allclose(again.get((keys.NEXT, keys.REWARD)), want)


def test_annotate_needs_the_next_image(model):
    traj = trajectory().exclude((keys.NEXT, *keys.IMAGE))
    with pytest.raises(KeyError, match="'next', 'observation', 'image'"):
        RewardScorer(*model, cfg()).annotate(traj)


def test_mix_rewards_checks_shapes():
    c = cfg(mode="mix", mix_weight=0.5)
    assert torch.equal(mix_rewards(torch.tensor([[2.0]]), torch.tensor([[1.0]]), c), torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="differ"):
        mix_rewards(torch.zeros(3, 1), torch.zeros(3), c)


def test_scorer_from_a_saved_model_uses_the_recipe_config(model, tmp_path):
    m, proc = model
    path = save_reward_model(tmp_path / "rm", m, proc)
    o = obs(B, 3)
    assert torch.equal(RewardScorer(path).score(o), RewardScorer(m, proc).score(o))
    assert RewardScorer(path).cfg.mode == "env"  # the model's own config by default
    assert RewardScorer(path, cfg=cfg(mode="rm")).cfg.mode == "rm"  # the recipe's block wins


def test_reward_metrics_on_crafted_cases():
    rm = torch.tensor([0.9, 0.8, 0.1, 0.2])
    ok = torch.tensor([True, True, False, False])
    m = reward_metrics(rm, ok)
    # centred rm = [.4, .3, -.4, -.3], success = [.5, .5, -.5, -.5]: r = .7 / sqrt(.5 * 1) = 0.98995
    assert m["reward/rm_mean"] == pytest.approx(0.5) and m["reward/true_success"] == 0.5
    assert m["reward/rm_success_corr"] == pytest.approx(0.7 / math.sqrt(0.5)) and m["reward/rm_auroc"] == 1.0
    hacked = reward_metrics(torch.tensor([0.1, 0.2, 0.9, 0.8]).reshape(2, 2, 1), ok.reshape(2, 2, 1))
    assert hacked["reward/rm_success_corr"] < -0.9 and hacked["reward/rm_auroc"] == 0.0  # RM rewards the failures
    flat = reward_metrics(rm, torch.zeros(4, dtype=torch.bool))
    assert math.isnan(flat["reward/rm_success_corr"]) and math.isnan(flat["reward/rm_auroc"])
    with pytest.raises(ValueError, match="4 RM rewards vs 3"):
        reward_metrics(rm, ok[:3])


@pytest.mark.slow
def test_reward_workers_as_a_ray_group_match_in_process(ray_cluster, model, tmp_path):
    from vlaforge.runtime.worker_group import WorkerGroup

    m, proc = model
    path = save_reward_model(tmp_path / "rm", m, proc)
    c = cfg(mode="mix", mix_weight=0.5)
    group = WorkerGroup(RewardWorker, 2, cpus_per_worker=0.5, name="rm-scorers", init_args=(str(path), c.model_dump()))
    try:
        shards = [trajectory(10), trajectory(20)]
        got = group.call_each("annotate", [(s,) for s in shards], timeout=120)
        for shard, out in zip(shards, got):
            local = RewardScorer(path, cfg=c).annotate(shard.clone())
            assert torch.equal(out.get((keys.NEXT, keys.RM_REWARD)), local.get((keys.NEXT, keys.RM_REWARD)))
            assert torch.equal(out.get((keys.NEXT, keys.REWARD)), local.get((keys.NEXT, keys.REWARD)))
        assert group.call("reload", str(path)) == [str(path)] * 2
    finally:
        group.shutdown()
