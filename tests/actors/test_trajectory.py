"""run_chunk on a scripted batched env (no simulator): executed masks, idle sims, terminal observations."""

from __future__ import annotations

import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.actors.trajectory import EpisodeStats, EpisodeTracker, run_chunk
from vlaforge.envs.base import BatchedEnv, EnvSpec


class ScriptedEnv(BatchedEnv):
    """B sims; sim i's episode ends after lengths[i] steps; reward = 10 * step index + sim id;
    the image holds the sim's step count, so observations are traceable."""

    def __init__(self, lengths: list[int], success_at: dict[int, int] | None = None):
        b = len(lengths)
        self.spec = EnvSpec(tasks=("t",) * b, image_shape=(1, 2, 2, 3), state_dim=1, privileged_dim=1, action_dim=2,
                            action_low=-1.0, action_high=1.0, max_episode_steps=max(lengths), cameras=("c",), fps=10)
        self.lengths, self.success_at = lengths, success_at or {}
        self.count = torch.zeros(b, dtype=torch.long)
        self.actions: list[torch.Tensor] = []

    def _obs(self) -> TensorDict:
        b = self.num_envs
        td = TensorDict({keys.IMAGE: self.count.view(b, 1, 1, 1, 1).expand(b, 1, 2, 2, 3).to(torch.uint8).clone(),
                         keys.STATE: self.count.float()[:, None]}, batch_size=[b])
        td.set(keys.INSTRUCTION, NonTensorStack.from_list([f"sim{i}" for i in range(b)]))
        return td

    def reset(self, env_ids=None, seeds=None) -> TensorDict:
        ids = range(self.num_envs) if env_ids is None else env_ids
        for i in ids:
            self.count[i] = 0
        return self._obs()

    def step(self, action: torch.Tensor) -> TensorDict:
        self.actions.append(action.clone())
        self.count += 1
        b = self.num_envs
        succ = torch.tensor([self.success_at.get(i) == int(self.count[i]) for i in range(b)])[:, None]
        trunc = (self.count >= torch.tensor(self.lengths))[:, None]
        nxt = self._obs()
        nxt.update({keys.REWARD: (10.0 * self.count + torch.arange(b)).float()[:, None], keys.SUCCESS: succ,
                    keys.TERMINATED: succ, keys.TRUNCATED: trunc, keys.DONE: succ | trunc})
        return TensorDict({keys.NEXT: nxt}, batch_size=[b])


def test_run_chunk_masks_idles_and_keeps_terminal_obs():
    env = ScriptedEnv([5, 2, 9], success_at={2: 3})  # sim 1 truncates at step 2, sim 2 succeeds at step 3
    env.reset()
    actions = torch.ones(3, 4, 2)  # (B, n=4, A)
    out = run_chunk(env, actions)
    assert out.executed.tolist() == [[True] * 4, [True, True, False, False], [True, True, True, False]]
    assert out.exec_steps.tolist() == [4, 2, 3] and out.env_calls == 4
    assert out.reward.squeeze(-1).tolist() == [100.0, 32.0, 66.0]  # 10*(1+2+3+4), 10*(1+2)+2*1, 10*(1+2+3)+3*2
    assert out.done.squeeze(-1).tolist() == [False, True, True]
    assert out.truncated.squeeze(-1).tolist() == [False, True, False]
    assert out.success.squeeze(-1).tolist() == [False, False, True] and torch.equal(out.success, out.terminated)
    # idle sims got zero actions after their end
    sent = torch.stack(env.actions, 1)  # (B, 4, A)
    assert sent[1, 2:].abs().sum() == 0 and sent[2, 3:].abs().sum() == 0 and (sent[0] == 1).all()
    # next_obs = each sim's last executed step (terminal), last_obs = after the last env call
    assert out.next_obs[keys.STATE].squeeze(-1).tolist() == [4.0, 2.0, 3.0]
    assert out.next_obs.get(keys.INSTRUCTION).tolist() == ["sim0", "sim1", "sim2"]
    assert out.last_obs[keys.STATE].squeeze(-1).tolist() == [4.0, 4.0, 4.0]

    # all sims ended: the chunk stops early
    env = ScriptedEnv([1, 1])
    env.reset()
    out = run_chunk(env, torch.ones(2, 3, 2))
    assert out.env_calls == 1 and out.exec_steps.tolist() == [1, 1] and out.next_obs is out.last_obs


def test_episode_tracker_reports_finished_episodes_once():
    env = ScriptedEnv([2, 3])
    env.reset()
    tracker, stats = EpisodeTracker(("a", "b")), EpisodeStats()
    out = run_chunk(env, torch.ones(2, 2, 2))  # sim 0 ends (2 steps), sim 1 runs on
    assert tracker.add(out, stats).tolist() == [0]
    env.reset([0])
    out = run_chunk(env, torch.ones(2, 1, 2))  # sim 1 ends after 1 more step, sim 0 runs on
    assert tracker.add(out, stats).tolist() == [1]
    assert tracker.length.tolist() == [1, 0] and tracker.ret.tolist() == [10.0, 0.0]
    assert stats.tasks == ["a", "b"] and stats.lengths == [2, 3]
    assert stats.returns == [30.0, 10 + 20 + 30 + 3.0] and len(stats) == 2


class DeferringEnv(ScriptedEnv):
    """ScriptedEnv whose images only change when rendered (step(render=...) / render(ids))."""

    supports_deferred_render = True

    def __init__(self, lengths):
        super().__init__(lengths)
        self.frames = torch.zeros(len(lengths), dtype=torch.long)  # the step count each image shows
        self.render_flags: list[bool] = []
        self.rendered_ids: list[list[int]] = []

    def _obs(self) -> TensorDict:
        td = super()._obs()
        b = self.num_envs
        td.set(keys.IMAGE, self.frames.view(b, 1, 1, 1, 1).expand(b, 1, 2, 2, 3).to(torch.uint8).clone())
        return td

    def reset(self, env_ids=None, seeds=None) -> TensorDict:
        super().reset(env_ids, seeds)
        self.frames[:] = self.count
        return self._obs()

    def step(self, action, render: bool = True) -> TensorDict:
        self.render_flags.append(render)
        if render:
            self.frames = self.count + 1  # the state after this step
        return super().step(action)

    def render(self, env_ids=None):
        ids = list(range(self.num_envs)) if env_ids is None else list(env_ids)
        self.rendered_ids.append(ids)
        self.frames[ids] = self.count[ids]
        return self._obs()[keys.IMAGE][ids]


def test_run_chunk_defers_rendering_to_decision_points_and_episode_ends():
    env = DeferringEnv([2, 9, 3])
    env.reset()
    out = run_chunk(env, torch.ones(3, 4, 2))
    assert env.render_flags == [False, False, False, True]  # physics only until the chunk's last step
    assert env.rendered_ids == [[0], [2]]  # sim 0 ended at step 2, sim 2 at step 3: their terminal frames
    frames = out.next_obs[keys.IMAGE][:, 0, 0, 0, 0].tolist()
    assert frames == [2, 4, 3] == out.next_obs[keys.STATE].squeeze(-1).long().tolist()  # images match states
    assert out.last_obs[keys.IMAGE][1, 0, 0, 0, 0] == 4  # the next decision's observation, rendered
