"""RolloutWorker in-process on real Meta-World (32 px, B=2, tiny policy): the decision-level trajectory,
episodes across calls, log-probs a learner can recompute, env recreation, weight versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutEnvError, RolloutWorker, actor_tasks
from vlaforge.envs import ENV_REGISTRY, EnvConfig
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

S, A, N_EXEC, K = 4, 4, 3, 4  # state "proprio"; chunk of K=4 with n=3 executed
TASKS = ["reach-v3", "push-v3"]


def tiny_policy(value_head: bool = True):
    cfg = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=K, n_action_steps=N_EXEC, value_head=value_head,
                       vision={"channels": [8, 16], "keypoints": 4}, language={"vocab_size": 128, "max_tokens": 6, "layers": 1})
    stats = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S},
             "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}
    spec = PolicySpec((1, 32, 32, 3), S, A)
    torch.manual_seed(0)
    return build_policy(cfg, spec).eval(), VLAProcessor.from_stats(cfg, stats), cfg, spec


class NoWeights:
    """Subscriber stand-in for tests without a broadcast (version 0 = the replica's initial weights)."""

    version = 0

    def maybe_load(self, module, handle) -> bool:
        return False


# -- test-only envs, registered from here (never from the package) --------------------------------------
RECORD: list[dict] = []  # per env.step of the recording env: actions and rewards
FAIL = {"steps": set(), "count": 0}  # flaky env: raise on these global step counts


def _metaworld(cfg, tasks, seed):
    return ENV_REGISTRY["metaworld"](cfg, tasks, seed)


def recording_env(cfg, tasks, seed):
    import vlaforge.envs.metaworld  # noqa: F401 -- registers "metaworld"

    env = _metaworld(cfg, tasks, seed)
    step = env.step

    def recorded(action, **kw):
        out = step(action, **kw)
        RECORD.append({"action": action.clone(), "reward": out["next", keys.REWARD].squeeze(-1).clone()})
        return out

    env.step = recorded
    return env


def flaky_env(cfg, tasks, seed):
    import vlaforge.envs.metaworld  # noqa: F401

    env = _metaworld(cfg, tasks, seed)
    step = env.step

    def maybe_fail(action, **kw):
        FAIL["count"] += 1
        if FAIL["steps"] == "always" or FAIL["count"] in FAIL["steps"]:
            raise RuntimeError(f"simulated simulator crash at step {FAIL['count']}")
        return step(action, **kw)

    env.step = maybe_fail
    return env


def eager_render_env(cfg, tasks, seed):
    """Meta-World rendering at every step (deferred rendering switched off on the instance)."""
    env = _metaworld(cfg, tasks, seed)
    env.supports_deferred_render = False
    return env


ENV_REGISTRY["test_recording"] = recording_env
ENV_REGISTRY["test_flaky"] = flaky_env
ENV_REGISTRY["test_eager_render"] = eager_render_env


def make_worker(backend: str, max_episode_steps: int = 7, policy=None, weights=None, **cfg_over) -> RolloutWorker:
    policy = policy or tiny_policy()
    env_cfg = EnvConfig(backend=backend, image_size=32, tasks=TASKS, state="proprio",
                        max_episode_steps=max_episode_steps, terminate_on_success=False)
    cfg = RolloutConfig(**{"envs_per_actor": 2, "steps_per_sample": 4, "seed": 3, **cfg_over})
    _, proc, pcfg, spec = policy
    return RolloutWorker(env_cfg, PolicySource.from_parts(pcfg, spec, proc), cfg, TASKS, weights or NoWeights(), rank=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_actor_tasks_and_policy_source():
    abc = ["reach-v3", "push-v3", "pick-place-v3"]
    assert actor_tasks(abc, rank=1, num_envs=2) == ["pick-place-v3", "reach-v3"]  # global slots 2, 3
    assert actor_tasks(abc, rank=1, num_envs=2, one_task_per_actor=True) == ["push-v3", "push-v3"]
    assert len(set(actor_tasks(["MT10"], rank=0, num_envs=10))) == 10  # benchmark names expand
    with pytest.raises(ValueError, match="either policy_dir"):
        PolicySource(policy_dir="x", config={})
    with pytest.raises(ValueError, match="either policy_dir"):
        PolicySource(config={}, spec={})
    assert actor_tasks(abc, rank=1, num_envs=4, group_size=2) == ["pick-place-v3"] * 2 + ["reach-v3"] * 2
    with pytest.raises(ValueError, match="multiple of rollout.group_size"):
        RolloutConfig(envs_per_actor=3, group_size=2)


@pytest.mark.slow
def test_group_rollouts_share_initial_states():
    """GRPO: every call restarts the sims; G=2 sims of a group start from the same state, with one group id."""
    w = make_worker("metaworld", max_episode_steps=50, group_size=2, steps_per_sample=2)
    assert w.tasks == ["reach-v3", "reach-v3"]
    r1, r2 = w.sample(), w.sample()
    for r in (r1, r2):
        gid = r.data[keys.GROUP_ID]
        assert gid.shape == (2, 2) and (gid == gid[0, 0]).all()
        assert torch.equal(r.data[keys.IMAGE][0, 0], r.data[keys.IMAGE][1, 0])  # same initial state
        assert torch.equal(r.data[keys.PRIVILEGED][0, 0], r.data[keys.PRIVILEGED][1, 0])  # goal, objects
        assert not torch.equal(r.data[keys.ACTION_CHUNK][0, 0], r.data[keys.ACTION_CHUNK][1, 0])  # own noise
    assert r1.data[keys.GROUP_ID][0, 0] != r2.data[keys.GROUP_ID][0, 0]
    assert not torch.equal(r1.data[keys.PRIVILEGED][0, 0], r2.data[keys.PRIVILEGED][0, 0])  # new goal per call
    w.close()


@pytest.mark.slow
def test_decision_level_trajectory_and_episodes_across_calls():
    RECORD.clear()
    policy = tiny_policy()
    w = make_worker("test_recording", policy=policy)
    r1, r2 = w.sample(), w.sample()
    d = torch.cat([r1.data, r2.data], dim=1)  # [B=2, T=8]: the two calls back to back
    assert r1.data.batch_size == (2, 4) and r1.data[keys.ACTION_CHUNK].shape == (2, 4, K, A)
    assert r1.data[keys.IMAGE].dtype == torch.uint8 and r1.data[keys.IMAGE].shape == (2, 4, 1, 32, 32, 3)
    assert (d[keys.POLICY_VERSION] == 0).all() and r1.version == 0

    # 7-step episodes, chunks of 3: decisions cover 3, 3, 1 steps, then a fresh episode at the boundary.
    exec_steps = d[keys.EXEC_STEPS]
    assert exec_steps.tolist() == [[3, 3, 1, 3, 3, 1, 3, 3]] * 2
    assert torch.equal(exec_steps, (~d[keys.ACTION_PAD]).sum(-1)) and d[keys.ACTION_PAD][..., N_EXEC:].all()
    done = d["next", keys.DONE].squeeze(-1)
    assert done.tolist() == [[False, False, True, False, False, True, False, False]] * 2
    assert torch.equal(done, d["next", keys.TRUNCATED].squeeze(-1)) and not d["next", keys.TERMINATED].any()
    assert r1.env_steps == int(r1.data[keys.EXEC_STEPS].sum()) == 20

    # Rewards: each decision's reward is the sum over ITS executed env steps; idle sims got zero actions.
    rewards = torch.stack([s["reward"] for s in RECORD], 1)  # (B, env calls)
    actions = torch.stack([s["action"] for s in RECORD], 1)  # (B, env calls, A)
    assert rewards.shape[1] == 20  # both sims end together: the cut chunk stops early, no idle steps
    pos = 0
    for t in range(8):
        n = int(exec_steps[0, t])
        torch.testing.assert_close(d["next", keys.REWARD][:, t, 0], rewards[:, pos : pos + n].sum(1))
        pos += n
    assert actions.abs().amax() <= 1.0 and actions.abs().sum() > 0  # clipped raw actions reached the env

    # Episode statistics: the second episode spans both calls and is reported once, by the call it ended in.
    assert len(r1.episodes) == 2 and len(r2.episodes) == 2 and r1.episodes.lengths == [7, 7]
    assert r2.episodes.tasks == TASKS and r2.episodes.lengths == [7, 7]
    ret2 = d["next", keys.REWARD][:, 3:6, 0].sum(1).double()
    np.testing.assert_allclose(r2.episodes.returns, ret2.numpy(), rtol=1e-5)

    # ("next", observation): the next decision's observation, except at episode ends (terminal obs, not reset).
    img, nimg = d[keys.IMAGE], d["next", keys.IMAGE]
    for t in range(7):
        same = torch.equal(nimg[:, t], img[:, t + 1])
        assert same != bool(done[0, t]), t
    assert all(isinstance(s, str) and s for s in d.get(keys.INSTRUCTION).tolist()[0])

    # A learner recomputes exactly the stored log-prob (executed positions only) and value.
    model, proc = w.policy, w.processor  # the replica (a learner holds the same weights version)
    flat = d.reshape(-1)
    with torch.no_grad():
        out = model(proc(flat, train=False))
        lp = model.log_prob(out, flat[keys.ACTION_CHUNK], pad=flat[keys.ACTION_PAD])
        lp_all = model.log_prob(out, flat[keys.ACTION_CHUNK], pad=None)
    torch.testing.assert_close(lp, flat[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[keys.VALUE], flat[keys.VALUE], rtol=1e-4, atol=1e-4)
    assert (lp_all - lp).abs().min() > 1e-3  # the pad really masks positions
    # Stochastic exploration: the chunks are not the policy mean.
    assert (flat[keys.ACTION_CHUNK] - out[keys.ACTION_MEAN]).abs().mean() > 0.05
    w.close()


@pytest.mark.slow
def test_episode_rows_with_a_clipped_gaussian_head():
    """rollout.episode_rows: every call starts fresh episodes, so each row is one whole episode (6 env steps =
    2 decisions of 3); with head.clip_actions the stored chunk is the executed, clamped one and the stored
    log-prob is what the learner recomputes for it."""
    policy, proc, cfg, spec = tiny_policy()
    cfg = cfg.model_copy(update={"head": cfg.head.model_copy(update={"std": "state", "clip_actions": True,
                                                                       "init_log_std": 0.5})})
    torch.manual_seed(0)
    clipped = (build_policy(cfg, spec).eval(), proc, cfg, spec)
    w = make_worker("metaworld", max_episode_steps=6, policy=clipped, episode_rows=True, steps_per_sample=2)
    r1, r2 = w.sample(), w.sample()
    for r in (r1, r2):
        done = r.data["next", keys.DONE].squeeze(-1)
        assert done[:, -1].all() and not done[:, :-1].any()  # one episode per row, ending at the last decision
        assert len(r.episodes) == 2 and r.episodes.lengths == [6, 6]
        chunk = r.data[keys.ACTION_CHUNK]
        assert float(chunk.abs().max()) <= 1.0 and bool((chunk.abs() == 1.0).any())
        flat = r.data.reshape(-1)
        with torch.no_grad():
            out = w.policy(w.processor(flat, train=False))
            lp = w.policy.log_prob(out, flat[keys.ACTION_CHUNK], pad=flat[keys.ACTION_PAD])
        torch.testing.assert_close(lp, flat[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
    # a fresh initial state per call (new goals), not the previous call's continuation
    assert not torch.equal(r1.data[keys.PRIVILEGED][:, 0], r2.data[keys.PRIVILEGED][:, 0])
    w.close()


@pytest.mark.slow
def test_deferred_rendering_records_the_same_trajectory():
    """Rendering only at decision points and episode ends gives the very same data as rendering every step."""
    import vlaforge.envs.metaworld  # noqa: F401 -- registers "metaworld"

    policy = tiny_policy()
    deferred, eager = make_worker("metaworld", policy=policy), make_worker("test_eager_render", policy=policy)
    assert deferred.env.supports_deferred_render and not eager.env.supports_deferred_render
    eager.policy.load_state_dict(deferred.policy.state_dict())
    a, b = deferred.sample(), eager.sample()  # 4 decisions: one 7-step episode ends mid-chunk (terminal images)
    assert a.data["next", keys.DONE].any()
    for key in a.data.keys(True, True):
        if key != keys.INSTRUCTION and key != (keys.NEXT, *keys.INSTRUCTION):
            assert torch.equal(a.data[key], b.data[key]), key
    assert a.data.get(keys.INSTRUCTION).tolist() == b.data.get(keys.INSTRUCTION).tolist()
    deferred.close()
    eager.close()


@pytest.mark.slow
def test_env_that_raises_is_recreated_and_the_call_stays_consistent():
    FAIL.update(steps={5}, count=0)  # decision 0 = steps 1-3; decision 1 crashes on its 2nd step
    w = make_worker("test_flaky", max_episode_steps=50, max_env_retries=1)
    env_before = w.env
    r = w.sample()
    assert w.env is not env_before  # recreated
    assert r.env_restarts == 1 and w.total_env_restarts == 1
    assert r.dropped_steps == 2 * 1  # B sims x the one decision recorded before the crash
    assert r.dropped_env_steps == 2 * N_EXEC
    assert r.data.batch_size == (2, 4) and r.env_steps == 2 * 4 * N_EXEC  # a full, fresh batch
    assert not r.data["next", keys.DONE].any() and len(r.episodes) == 0  # fresh 50-step episodes

    FAIL.update(steps="always", count=0)
    with pytest.raises(RolloutEnvError, match="failed 2 times in one sample call") as info:
        w.sample()  # max_env_retries=1: 2 attempts
    assert info.value.dropped_steps == 0  # every attempt crashed on its first step: nothing was recorded
    w.close()


@pytest.mark.slow
def test_weights_versions_loaded_in_place(ray_cluster):
    from vlaforge.runtime.weights import WeightPublisher, WeightSubscriber

    policy = tiny_policy(value_head=False)
    w = make_worker("metaworld", policy=policy, weights=WeightSubscriber())
    src = tiny_policy(value_head=False)[0]
    pub = WeightPublisher()
    for v in (1, 2):
        with torch.no_grad():
            for p in src.parameters():
                p.add_(0.01 * v)
        handle = pub.publish(src)
        r = w.sample(handle, num_steps=1)
        assert r.version == v and (r.data[keys.POLICY_VERSION] == v).all()
        for (name, a), b in zip(w.policy.state_dict().items(), src.state_dict().values()):
            assert torch.equal(a, b), name
    assert keys.VALUE not in r.data.keys()
    w.close()
