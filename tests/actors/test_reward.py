"""RewardScorer: shapes, output mappings (level / binary), env / rm / mix base rewards plus potential-based
shaping (gamma^k, telescoping on a toy episode) on rollout trajectories, loading from a saved model, reward_metrics on crafted cases, and the scorer as a Ray
actor group giving the same rewards as in-process (slow)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.actors.reward import RewardScorer, RewardWorker, mix_rewards, reward_metrics, shaping_terms
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
    o = obs(B, 1)
    p1 = RewardScorer(m, proc, cfg(output="level")).score(o)
    assert p1.shape == (B,) and ((p1 > 0) & (p1 < 1)).all() and torch.allclose(p1, RewardScorer(m, proc).logits(o).sigmoid())
    thr = float(p1.median())  # both sides of the threshold occur
    traj = trajectory()
    level = RewardScorer(m, proc, cfg(mode="rm")).annotate(traj.clone()).get((keys.NEXT, keys.RM_LEVEL))
    binary = RewardScorer(m, proc, cfg(mode="rm", output="binary", threshold=thr)).annotate(traj.clone())
    assert torch.equal(binary.get((keys.NEXT, keys.REWARD)), (level >= thr).float())
    with pytest.raises(ValueError, match="needs its RewardProcessor"):
        RewardScorer(m)
    with pytest.raises(ValueError):  # the old replacing "delta" reward is gone: shaping is added to a base
        cfg(output="delta")


def test_shaping_sums_to_the_discounted_potential_difference():
    """Toy episode of 5 decisions covering k = 4, 4, 3, 4, 2 env steps (T = 17): sum_t gamma^(K_t) F_t with
    K_t = env steps before decision t equals gamma^T Phi_T - Phi_0; with a termination at the end Phi_T = 0."""
    phi = torch.tensor([0.1, 0.3, 0.2, 0.6, 0.9, 0.7])  # Phi(s_0) .. Phi(s_5)
    k = torch.tensor([4, 4, 3, 4, 2])
    gamma, no_term = 0.97, torch.zeros(5, dtype=torch.bool)
    f = shaping_terms(phi[:-1], phi[1:], k, no_term, gamma)
    before = torch.cat([torch.zeros(1, dtype=torch.long), k.cumsum(0)[:-1]])  # K_t
    total = float((gamma ** before.double() * f.double()).sum())
    assert total == pytest.approx(gamma ** 17 * 0.7 - 0.1, abs=1e-6)
    term = no_term.clone()
    term[-1] = True
    f_term = shaping_terms(phi[:-1], phi[1:], k, term, gamma)
    assert float((gamma ** before.double() * f_term.double()).sum()) == pytest.approx(-0.1, abs=1e-6)
    assert float(f.sum()) != pytest.approx(0.7 - 0.1, abs=1e-3)  # without gamma^k it would not telescope
    with pytest.raises(ValueError, match="one shape"):
        shaping_terms(phi[:-1], phi[1:], k[:4], no_term, gamma)


@pytest.mark.parametrize("mode", ["env", "rm", "mix"])
@pytest.mark.parametrize("shaping", [0.0, 2.0])
def test_annotate_adds_shaping_to_the_base_of_the_mode(model, mode, shaping):
    m, proc = model
    c = cfg(mode=mode, mix_weight=0.25, shaping=shaping)
    traj = trajectory()
    traj.set(keys.EXEC_STEPS, torch.randint(1, 5, (B, T)))
    term = torch.zeros(B, T, 1, dtype=torch.bool)
    term[0, 2] = True
    traj.get(keys.NEXT).set(keys.TERMINATED, term)
    env = traj.get((keys.NEXT, keys.REWARD)).clone()
    scorer = RewardScorer(m, proc, c)
    level = scorer.score(traj.get(keys.NEXT).select(keys.IMAGE, keys.STATE).set(
        keys.INSTRUCTION, traj.get(keys.INSTRUCTION))).unsqueeze(-1)  # p(success | next obs), (B, T, 1)
    phi = scorer.score(traj).unsqueeze(-1)  # p(success | obs)
    out = scorer.annotate(traj, gamma=0.9)
    nxt = out.get(keys.NEXT)
    assert torch.allclose(nxt.get(keys.RM_LEVEL), level, atol=1e-6)
    want_shaping = 0.9 ** traj.get(keys.EXEC_STEPS).unsqueeze(-1).float() * level * (~term).float() - phi
    assert torch.allclose(nxt.get(keys.RM_SHAPING), want_shaping if shaping else torch.zeros_like(level), atol=1e-6)
    base = {"env": env, "rm": level, "mix": 0.75 * env + 0.25 * level}[mode]
    want = base + shaping * want_shaping
    assert torch.allclose(nxt.get(keys.REWARD), want, atol=1e-5)
    assert torch.allclose(nxt.get(keys.RM_REWARD), want - {"env": env, "rm": 0 * env, "mix": 0.75 * env}[mode], atol=1e-5)
    assert torch.equal(nxt.get(keys.ENV_REWARD), env)
    again = scorer.annotate(out, gamma=0.9)  # idempotent: mixes from the kept env reward
    assert torch.allclose(again.get((keys.NEXT, keys.REWARD)), want, atol=1e-5)


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


def test_reward_metrics_score_the_level_against_the_level_flag():
    level = torch.tensor([0.9, 0.8, 0.1, 0.2])
    ok = torch.tensor([True, True, False, False])
    m = reward_metrics(level, ok, rm_reward=torch.tensor([1.0, 0.0, 0.0, 1.0]))
    # centred level = [.4, .3, -.4, -.3], success = [.5, .5, -.5, -.5]: r = .7 / sqrt(.5 * 1) = 0.98995
    assert m["reward/rm_level_mean"] == pytest.approx(0.5) and m["reward/true_success"] == 0.5
    assert m["reward/rm_success_corr"] == pytest.approx(0.7 / math.sqrt(0.5)) and m["reward/rm_auroc"] == 1.0
    assert m["reward/rm_pos_level"] == pytest.approx(0.85) and m["reward/rm_neg_level"] == pytest.approx(0.15)
    assert m["reward/rm_mean"] == 0.5
    perfect = reward_metrics(ok.float(), ok)  # a perfect RM's level scores 1 (its delta would not)
    assert perfect["reward/rm_success_corr"] == pytest.approx(1.0) and perfect["reward/rm_auroc"] == 1.0
    hacked = reward_metrics(torch.tensor([0.1, 0.2, 0.9, 0.8]).reshape(2, 2, 1), ok.reshape(2, 2, 1))
    assert hacked["reward/rm_success_corr"] < -0.9 and hacked["reward/rm_auroc"] == 0.0  # RM rewards the failures
    flat = reward_metrics(level, torch.zeros(4, dtype=torch.bool))
    assert math.isnan(flat["reward/rm_success_corr"]) and math.isnan(flat["reward/rm_auroc"])
    with pytest.raises(ValueError, match="4 RM levels vs 3"):
        reward_metrics(level, ok[:3])


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
