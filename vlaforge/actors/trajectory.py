"""Decision-level trajectory pieces of RL rollouts: run one chunk open-loop, record it, keep episode stats.

One trajectory time step = one policy DECISION (see vlaforge/actors/rollout.py for why). Shapes below:
B simulators, n = n_action_steps executed per chunk, K = chunk_size >= n, A = action dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.envs.base import BatchedEnv

STEP_RESULT_KEYS = (keys.REWARD, keys.DONE, keys.TERMINATED, keys.TRUNCATED, keys.SUCCESS)


@dataclass
class ChunkOutcome:
    """What running one chunk on B simulators produced (flags/rewards over the EXECUTED steps only)."""

    executed: torch.Tensor  # bool (B, n): step j of the chunk ran in the sim's episode
    reward: torch.Tensor  # float32 (B, 1): sum of env rewards over the executed steps
    success: torch.Tensor  # bool (B, 1): success at any executed step
    terminated: torch.Tensor  # bool (B, 1)
    truncated: torch.Tensor  # bool (B, 1)
    next_obs: TensorDict  # [B]: each sim's observation after its LAST executed step (terminal obs if done)
    last_obs: TensorDict  # [B]: every sim's observation after the last env step (idle sims included)
    env_calls: int  # env.step calls made (each steps all B simulators, idle ones included)

    @property
    def done(self) -> torch.Tensor:  # bool (B, 1)
        return self.terminated | self.truncated

    @property
    def exec_steps(self) -> torch.Tensor:  # int64 (B,)
        return self.executed.sum(-1)


def run_chunk(env: BatchedEnv, actions: torch.Tensor) -> ChunkOutcome:
    """Execute ``actions`` float (B, n, A) open-loop, one env step per chunk position.

    A simulator whose episode ends at position j < n-1 idles for the rest of the chunk: the env contract
    steps all B at once, so it gets a zero action and its results are ignored (the caller resets it at
    the decision boundary). When every simulator has ended the chunk stops early.

    Rendering (the dominant cost on CPU) is deferred when the env supports it: intermediate steps run
    physics only; images are rendered after the last step (the next decision's observation) and, right
    after their step, for the simulators whose episode just ended (their terminal observation). The
    recorded trajectory is the same as with a render at every step.
    """
    b, n, _ = actions.shape
    defer = bool(getattr(env, "supports_deferred_render", False))
    active = torch.ones(b, dtype=torch.bool)
    executed = torch.zeros(b, n, dtype=torch.bool)
    reward = torch.zeros(b, 1)
    flags = {k: torch.zeros(b, 1, dtype=torch.bool) for k in (keys.SUCCESS, keys.TERMINATED, keys.TRUNCATED)}
    step_obs: list[TensorDict] = []
    last_step = torch.zeros(b, dtype=torch.long)  # per sim: index into step_obs of its last executed step
    for j in range(n):
        act = torch.where(active[:, None], actions[:, j], torch.zeros_like(actions[:, j]))  # (B, A)
        final = j == n - 1
        nxt = (env.step(act, render=final) if defer else env.step(act)).get(keys.NEXT)
        executed[:, j] = active
        mask = active[:, None]  # (B, 1)
        reward += nxt.get(keys.REWARD).float() * mask
        for k, v in flags.items():
            v |= nxt.get(k).bool() & mask
        obs = nxt.exclude(*STEP_RESULT_KEYS)
        step_obs.append(obs)
        last_step[active] = j
        ended = active & nxt.get(keys.DONE).bool().squeeze(-1)  # (B,) episodes that ended at this step
        active &= ~ended
        if defer and not final and ended.any():  # their terminal images, before idle steps move them
            ids = ended.nonzero().flatten()
            obs.get(keys.IMAGE)[ids] = env.render(ids.tolist())  # (n_ended, V, H, W, 3)
        if not active.any():
            break
    last = len(step_obs) - 1
    if bool((last_step == last).all()):
        next_obs = step_obs[last]
    else:  # some sims ended earlier: take each one's own last executed step (terminal obs, for bootstrapping)
        next_obs = torch.stack([step_obs[int(last_step[i])][i] for i in range(b)])
    return ChunkOutcome(
        executed=executed,
        reward=reward,
        success=flags[keys.SUCCESS],
        terminated=flags[keys.TERMINATED],
        truncated=flags[keys.TRUNCATED],
        next_obs=next_obs,
        last_obs=step_obs[last],
        env_calls=len(step_obs),
    )


def decision_row(
    obs: TensorDictBase,
    chunk: torch.Tensor,
    pad: torch.Tensor,
    log_prob: torch.Tensor,
    value: torch.Tensor | None,
    outcome: ChunkOutcome,
    version: int,
    extras: TensorDictBase | None = None,
) -> TensorDict:
    """One time step [B] of the trajectory (keys: see the RolloutWorker docstring). ``extras``: the head's
    HEAD_EXTRAS from ``policy.act`` (what its log_prob needs besides the chunk); None = none."""
    b = chunk.shape[0]
    row = TensorDict(
        {
            keys.ACTION_CHUNK: chunk,  # (B, K, A) normalised, as sampled
            keys.ACTION_PAD: pad,  # (B, K) True = not executed
            keys.LOG_PROB: log_prob,  # (B,) over the executed positions
            keys.EXEC_STEPS: outcome.exec_steps,  # (B,)
            keys.POLICY_VERSION: torch.full((b,), int(version), dtype=torch.int64),
            keys.HEAD_EXTRAS: extras if extras is not None else TensorDict({}, batch_size=[b]),
        },
        batch_size=[b],
    )
    row.update(obs.select(keys.OBS))
    if value is not None:
        row.set(keys.VALUE, value)  # (B, 1) at decision time
    nxt = outcome.next_obs.select(keys.OBS).clone(recurse=False)
    nxt.update(
        {
            keys.REWARD: outcome.reward,
            keys.DONE: outcome.done,
            keys.TERMINATED: outcome.terminated,
            keys.TRUNCATED: outcome.truncated,
            keys.SUCCESS: outcome.success,
        }
    )
    row.set(keys.NEXT, nxt)
    return row


@dataclass
class EpisodeStats:
    """Episodes that ENDED inside one sample call (an episode spanning calls is reported when it ends)."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # env steps
    successes: list[bool] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.returns)

    def extend(self, other: "EpisodeStats") -> None:
        self.returns += other.returns
        self.lengths += other.lengths
        self.successes += other.successes
        self.tasks += other.tasks


class EpisodeTracker:
    """Running return / length / success of the B in-progress episodes (they continue across calls)."""

    def __init__(self, tasks: tuple[str, ...]):
        self.tasks = tasks
        b = len(tasks)
        self.ret = torch.zeros(b, dtype=torch.float64)
        self.length = torch.zeros(b, dtype=torch.long)
        self.success = torch.zeros(b, dtype=torch.bool)

    def add(self, outcome: ChunkOutcome, into: EpisodeStats) -> torch.Tensor:
        """Account one decision; finished episodes go to ``into``. Returns the done env ids (int64)."""
        self.ret += outcome.reward.squeeze(-1).double()
        self.length += outcome.exec_steps
        self.success |= outcome.success.squeeze(-1)
        done = outcome.done.squeeze(-1).nonzero().flatten()
        for i in done.tolist():
            into.returns.append(float(self.ret[i]))
            into.lengths.append(int(self.length[i]))
            into.successes.append(bool(self.success[i]))
            into.tasks.append(self.tasks[i])
        self.ret[done], self.length[done], self.success[done] = 0.0, 0, False
        return done


@dataclass
class RolloutResult:
    """What one ``RolloutWorker.sample`` call returns."""

    data: TensorDict  # [B, T] decision-level trajectory
    episodes: EpisodeStats
    version: int  # policy version of every row (one version per call)
    rank: int
    env_steps: int  # executed env steps in ``data`` (= data[EXEC_STEPS].sum())
    dropped_steps: int = 0  # trajectory steps (sims x decisions) discarded after env failures in this call
    dropped_env_steps: int = 0  # executed env steps of that discarded data
    env_restarts: int = 0  # envs recreated in this call
    timing: dict[str, float] = field(default_factory=dict)  # load_s, policy_s, env_s, sample_s
