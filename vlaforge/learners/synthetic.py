"""Synthetic decision-level rollout batches [B, T] for learner tests and benchmarks.

Same keys, shapes and semantics as vlaforge/actors/rollout.py writes (see its docstring), without a
simulator: random images / states, chunks SAMPLED from the given policy with their true log-probs (so the
PPO ratio starts at exactly 1), random rewards, episode ends (terminations and time limits) cutting chunks
short, and terminal observations under ``("next", observation)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tensordict import NonTensorData, NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.policies.processor import VLAProcessor
from vlaforge.policies.spec import PolicySpec

INSTRUCTIONS = ("push the block to the goal", "open the drawer", "press the button from the top")


def _obs(spec: PolicySpec, b: int, t: int, g: torch.Generator) -> TensorDict:
    v, h, w, _ = spec.image_shape
    task = torch.randint(0, len(INSTRUCTIONS), (b, t), generator=g)
    obs = TensorDict(
        {
            "image": torch.randint(0, 256, (b, t, v, h, w, 3), generator=g, dtype=torch.uint8),
            "state": torch.randn(b, t, spec.state_dim, generator=g),
            "task_index": task,
        },
        batch_size=[b, t],
    )
    texts = [[INSTRUCTIONS[int(task[i, j])] for j in range(t)] for i in range(b)]
    obs.set("instruction", NonTensorStack(*[NonTensorStack(*[NonTensorData(s) for s in row]) for row in texts]))
    return obs


@torch.no_grad()
def synthetic_rollout(
    policy: nn.Module,
    processor: VLAProcessor,
    spec: PolicySpec,
    batch: int,
    steps: int,
    n_action_steps: int,
    seed: int = 0,
    p_terminated: float = 0.1,
    p_truncated: float = 0.05,
    group_size: int | None = None,
    version: int = 0,
) -> TensorDict:
    """-> TensorDict [batch, steps]. ``group_size``: rows 0..G-1, G..2G-1, ... share a GROUP_ID (GRPO)."""
    g = torch.Generator().manual_seed(seed)
    b, t = batch, steps
    obs = _obs(spec, b, t, g)
    flat = TensorDict({keys.OBS: obs.reshape(-1)}, batch_size=[b * t])
    was_training = policy.training
    policy.eval()
    out = policy(processor(flat, train=False))
    act = policy.act(out, generator=g)
    chunk, extras = act.get(keys.ACTION_CHUNK), act.get(keys.HEAD_EXTRAS)  # (B*T, K, A) normalised, head extras
    k = chunk.shape[1]
    terminated = torch.rand(b, t, 1, generator=g) < p_terminated
    truncated = (torch.rand(b, t, 1, generator=g) < p_truncated) & ~terminated
    done = terminated | truncated
    # An episode end may cut the chunk short: 1..n steps ran; otherwise all n.
    cut = torch.randint(1, n_action_steps + 1, (b, t), generator=g)
    exec_steps = torch.where(done.squeeze(-1), cut, torch.full_like(cut, n_action_steps))
    pad = torch.arange(k).expand(b, t, k) >= exec_steps.unsqueeze(-1)  # (B, T, K)
    log_prob = policy.log_prob(out, chunk, pad.reshape(-1, k), extras)  # (B*T,)
    policy.train(was_training)

    nxt_obs = _obs(spec, b, t, g)  # terminal obs where done, and after the last decision
    cont = ~done.squeeze(-1)
    cont[:, -1] = False
    nxt_obs[:, :-1][cont[:, :-1]] = obs[:, 1:][cont[:, :-1]]  # inside an episode: the next decision's obs
    reward = torch.randn(b, t, 1, generator=g) * 0.5 + terminated.float()
    td = TensorDict(
        {
            keys.OBS: obs,
            keys.ACTION_CHUNK: chunk.reshape(b, t, k, -1),
            keys.ACTION_PAD: pad,
            keys.LOG_PROB: log_prob.reshape(b, t),
            keys.EXEC_STEPS: exec_steps,
            keys.POLICY_VERSION: torch.full((b, t), int(version), dtype=torch.int64),
            keys.HEAD_EXTRAS: extras.reshape(b, t),
            keys.NEXT: TensorDict(
                {keys.OBS: nxt_obs, keys.REWARD: reward, keys.DONE: done, keys.TERMINATED: terminated,
                 keys.TRUNCATED: truncated, keys.SUCCESS: terminated.clone()},
                batch_size=[b, t],
            ),
        },
        batch_size=[b, t],
    )
    if keys.VALUE in out.keys():
        td.set(keys.VALUE, out.get(keys.VALUE).reshape(b, t, 1))
    if group_size is not None:
        if b % group_size:
            raise ValueError(f"synthetic_rollout: batch {b} is not a multiple of group_size {group_size}")
        td.set(keys.GROUP_ID, (torch.arange(b) // group_size)[:, None].expand(b, t).clone())
    return td
