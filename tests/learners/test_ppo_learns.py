"""PPO must LEARN, not only run: the real objective (PPOObjective: GAE, per-task value normalisation and
advantages, the critic, the mean ratio) and a real tiny VLA on a small torch "reach" task, updated with
plain Adam in-process (no Ray, no DeepSpeed: those are tested elsewhere; this is the learning regression
test CI runs in well under a minute).

The task: B simulators, a 2-d point ``pos`` that each action moves by 0.25 x a (clamped to the box), a goal
drawn per episode; reward per env step -|pos - goal|_1; state = (pos, goal); whole-episode rows. A policy that
ignores its state earns about the random return; one that reads (goal - pos) earns far more.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.learners.config import PPOConfig
from vlaforge.learners.ppo import PPOObjective, RLContext
from vlaforge.learners.registry import total_loss
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

A, S, K, N = 2, 4, 2, 2  # action dims, state (pos, goal), chunk, executed per decision
B, T = 16, 6  # simulators x decisions: one whole 12-step episode per row
SPEC = PolicySpec(image_shape=(1, 16, 16, 3), state_dim=S, action_dim=A)
STATS = {"observation.state": {"mean": [0.0] * S, "std": [0.5] * S}, "action": {"min": [-1.0] * A, "max": [1.0] * A}}
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=K, n_action_steps=N, value_head=True, critic="state",
                      vision={"channels": [4, 8], "keypoints": 4}, language={"vocab_size": 64, "max_tokens": 4, "layers": 0},
                      head={"std": "state", "clip_actions": True, "init_log_std": -0.5, "min_log_std": -1.5})


def _obs(pos: torch.Tensor, goal: torch.Tensor) -> TensorDict:
    b = pos.shape[0]
    td = TensorDict({"image": torch.zeros(b, *SPEC.image_shape, dtype=torch.uint8), "state": torch.cat([pos, goal], -1),
                     "task_index": (torch.arange(b) % 2)}, batch_size=[b])
    td.set("instruction", NonTensorStack(*[NonTensorData("reach the goal") for _ in range(b)]))
    return td


@torch.no_grad()
def rollout(policy, processor, g: torch.Generator) -> TensorDict:
    """One [B, T] batch of whole episodes, with the keys the rollout actor writes."""
    pos, goal = torch.rand(B, A, generator=g) * 2 - 1, torch.rand(B, A, generator=g) * 1.6 - 0.8
    rows = []
    for t in range(T):
        obs = _obs(pos, goal)
        out = policy(processor(TensorDict({keys.OBS: obs}, batch_size=[B])))
        act = policy.act(out, generator=g)
        chunk = act.get(keys.ACTION_CHUNK)  # (B, K, A) normalised = raw (min_max on [-1, 1])
        reward = torch.zeros(B, 1)
        for j in range(N):
            pos = (pos + 0.25 * chunk[:, j]).clamp(-1, 1)
            reward += -(pos - goal).abs().sum(-1, keepdim=True)
        pad = torch.zeros(B, K, dtype=torch.bool)
        pad[:, N:] = True
        last = torch.full((B, 1), t == T - 1)
        rows.append(TensorDict({
            keys.OBS: obs, keys.ACTION_CHUNK: chunk, keys.ACTION_PAD: pad,
            keys.LOG_PROB: policy.log_prob(out, chunk, pad), keys.VALUE: out.get(keys.VALUE),
            keys.EXEC_STEPS: torch.full((B,), N), keys.HEAD_EXTRAS: TensorDict({}, batch_size=[B]),
            keys.NEXT: TensorDict({keys.OBS: _obs(pos, goal), keys.REWARD: reward, keys.DONE: last,
                                   keys.TERMINATED: torch.zeros(B, 1, dtype=torch.bool), keys.TRUNCATED: last,
                                   keys.SUCCESS: torch.zeros(B, 1, dtype=torch.bool)}, batch_size=[B]),
        }, batch_size=[B]))
    return torch.stack(rows, dim=1)


def train(updates: int, cfg: PPOConfig, lr: float = 3e-3, seed: int = 0) -> tuple[list[float], list[float]]:
    """-> (mean episode return per update, rollout explained variance per update)."""
    torch.manual_seed(seed)
    policy, processor = build_policy(POLICY, SPEC).eval(), VLAProcessor.from_stats(POLICY, STATS)
    obj = PPOObjective(policy, cfg)
    critic = list(policy.value.parameters())
    actor = [p for n, p in policy.named_parameters() if not n.startswith("value.")]
    opt = torch.optim.Adam([{"params": actor, "lr": lr}, {"params": critic, "lr": cfg.critic_lr or lr}])

    def value_fn(obs):
        with torch.no_grad():
            return policy(processor(obs)).get(keys.VALUE)

    g = torch.Generator().manual_seed(seed + 1)
    returns, evs = [], []
    for update in range(updates):
        batch = rollout(policy, processor, g)
        returns.append(float(batch.get((keys.NEXT, keys.REWARD)).sum(1).mean()))
        obj.set_update(update)
        samples, m = obj.prepare(batch, RLContext(value_fn=value_fn, update=update))
        evs.append(m["explained_variance_rollout"])
        n = samples.batch_size[0]
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n, generator=g).chunk(cfg.num_minibatches):
                mb = samples[idx]
                inp = processor(mb.select(keys.OBS))
                inp.update(mb.exclude(keys.OBS))
                loss = total_loss(obj(inp.update(policy(inp))))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
    return returns, evs


CFG = dict(epochs=4, num_minibatches=2, ratio="mean", gamma=0.9, gae_lambda=0.9, normalize_reward=True,
           advantage_groups="task", value_norm=True, value_clip=None, critic_lr=3e-3, critic_warmup_updates=3)


@pytest.mark.usefixtures("one_torch_thread")
def test_ppo_improves_the_return_and_the_critic_fits():
    returns, evs = train(24, PPOConfig(**CFG))
    first, last = sum(returns[:4]) / 4, sum(returns[-4:]) / 4
    # the critic warm-up (3 updates, policy frozen: the same return distribution) fits the value
    assert evs[0] < 0.3 < max(evs[1:4]), evs[:4]
    # learning: the episode return (about -20 for a random policy) rises by a margin that noise does not reach
    assert last > first + 4.0, (first, last, returns)
