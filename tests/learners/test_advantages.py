"""Decision-level GAE / returns against hand-computed cases: chunks covering different env-step counts,
truncation (bootstrap from the terminal observation) vs termination (no bootstrap), [B, T] layout guards."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.learners import advantages as adv


def rollout(rewards, values, exec_steps, terminated, truncated, next_state) -> TensorDict:
    """A [B, T] batch as the rollout actor writes it; ("next", observation, state)[..., 0] is the value
    our fake value_fn returns for that next observation."""
    r = torch.tensor(rewards, dtype=torch.float32)
    b, t = r.shape
    term = torch.tensor(terminated, dtype=torch.bool).unsqueeze(-1)
    trunc = torch.tensor(truncated, dtype=torch.bool).unsqueeze(-1)
    nxt_state = torch.zeros(b, t, 3)
    nxt_state[..., 0] = torch.tensor(next_state, dtype=torch.float32)
    return TensorDict(
        {
            keys.VALUE: torch.tensor(values, dtype=torch.float32).unsqueeze(-1),
            keys.EXEC_STEPS: torch.tensor(exec_steps, dtype=torch.int64),
            keys.NEXT: TensorDict(
                {keys.REWARD: r.unsqueeze(-1), keys.TERMINATED: term, keys.TRUNCATED: trunc, keys.DONE: term | trunc,
                 keys.OBS: TensorDict({"state": nxt_state}, batch_size=[b, t])},
                batch_size=[b, t],
            ),
        },
        batch_size=[b, t],
    )


class ValueFn:
    def __init__(self):
        self.calls = []

    def __call__(self, obs):
        s = obs.get(keys.STATE)
        self.calls.append(s[:, 0].tolist())
        return s[:, :1]


def test_gae_truncation_bootstraps_with_chunk_discount():
    # gamma 0.5, lambda 0.5; chunks cover 2, 1, 2 env steps; decision 1 hits the time limit (truncated).
    td = rollout([[1, 1, 1]], [[1, 2, 4]], [[2, 1, 2]], [[0, 0, 0]], [[0, 1, 0]], [[99, 6, 8]])
    vf = ValueFn()
    adv.gae(td, gamma=0.5, lmbda=0.5, value_fn=vf)
    # V(terminal obs of decision 1) = 6 and V(last next obs) = 8 come from value_fn; 99 (inside the
    # episode: V(s_1) = 2 from the batch) is never asked for.
    assert vf.calls == [[6.0, 8.0]]
    # d0 = 1 + 0.5^2 * 2 - 1 = 0.5 ; d1 = 1 + 0.5^1 * 6 - 2 = 2 ; d2 = 1 + 0.5^2 * 8 - 4 = -1
    # A2 = -1 ; A1 = d1 (done stops the recursion) = 2 ; A0 = d0 + 0.5^2 * 0.5 * A1 = 0.75
    torch.testing.assert_close(td.get(keys.ADVANTAGE).flatten(), torch.tensor([0.75, 2.0, -1.0]))
    torch.testing.assert_close(td.get(keys.VALUE_TARGET).flatten(), torch.tensor([1.75, 4.0, 3.0]))
    torch.testing.assert_close(td.get((keys.NEXT, keys.VALUE)).flatten(), torch.tensor([2.0, 6.0, 8.0]))


def test_gae_termination_does_not_bootstrap():
    td = rollout([[1, 1, 1]], [[1, 2, 4]], [[2, 1, 2]], [[0, 1, 0]], [[0, 0, 0]], [[99, 6, 8]])
    vf = ValueFn()
    adv.gae(td, gamma=0.5, lmbda=0.5, value_fn=vf)
    assert vf.calls == [[8.0]]  # only the row's last decision; the terminal obs's value is not needed
    # d1 = 1 - 2 = -1 (no bootstrap) ; A0 = 0.5 + 0.125 * -1 = 0.375
    torch.testing.assert_close(td.get(keys.ADVANTAGE).flatten(), torch.tensor([0.375, -1.0, -1.0]))


def test_terminated_and_truncated_together_counts_as_terminated():
    td = rollout([[1, 1]], [[1, 2]], [[1, 1]], [[0, 1]], [[0, 1]], [[0, 5]])
    vf = ValueFn()
    adv.gae(td, gamma=0.9, lmbda=1.0, value_fn=vf)
    assert vf.calls == []
    # A1 = 1 - 2 = -1 ; A0 = 1 + 0.9 * 2 - 1 + 0.9 * A1 = 0.9
    torch.testing.assert_close(td.get(keys.ADVANTAGE).flatten(), torch.tensor([0.9, -1.0]))


def test_gae_two_rows_match_a_scalar_reference():
    torch.manual_seed(0)
    b, t, gamma, lam = 3, 7, 0.97, 0.9
    term = torch.rand(b, t) < 0.15
    trunc = (torch.rand(b, t) < 0.15) & ~term
    steps = torch.randint(1, 5, (b, t))
    td = rollout(torch.randn(b, t).tolist(), torch.randn(b, t).tolist(), steps.tolist(), term.tolist(),
                 trunc.tolist(), torch.randn(b, t).tolist())
    adv.gae(td, gamma, lam, value_fn=ValueFn())
    v, nv = td.get(keys.VALUE)[..., 0], td.get((keys.NEXT, keys.VALUE))[..., 0]
    r, nxt = td.get((keys.NEXT, keys.REWARD))[..., 0], td.get((keys.NEXT, keys.OBS, "state"))[..., 0]
    for i in range(b):
        a = 0.0
        for j in reversed(range(t)):
            g = gamma ** int(steps[i, j])
            if term[i, j]:
                nxt_v = 0.0
            elif trunc[i, j] or j == t - 1:
                nxt_v = float(nxt[i, j])  # V(terminal / last next obs)
            else:
                nxt_v = float(v[i, j + 1])
            assert float(nv[i, j]) == pytest.approx(nxt_v, abs=1e-6)
            delta = float(r[i, j]) + g * nxt_v - float(v[i, j])
            a = delta + (0.0 if (term[i, j] or trunc[i, j]) else g * lam * a)
            assert float(td.get(keys.ADVANTAGE)[i, j, 0]) == pytest.approx(a, abs=1e-5)


def test_one_step_chunks_agree_with_torchrl_vectorised_gae():
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    torch.manual_seed(1)
    b, t = 4, 9
    term = torch.rand(b, t) < 0.2
    td = rollout(torch.randn(b, t).tolist(), torch.randn(b, t).tolist(), torch.ones(b, t, dtype=torch.int64).tolist(),
                 term.tolist(), torch.zeros(b, t, dtype=torch.bool).tolist(), torch.randn(b, t).tolist())
    adv.gae(td, 0.99, 0.95, value_fn=ValueFn())
    ref, _ = vec_generalized_advantage_estimate(
        0.99, 0.95, td.get(keys.VALUE), td.get((keys.NEXT, keys.VALUE)), td.get((keys.NEXT, keys.REWARD)),
        td.get((keys.NEXT, keys.DONE)), td.get((keys.NEXT, keys.TERMINATED)), time_dim=-2)
    torch.testing.assert_close(td.get(keys.ADVANTAGE), ref, atol=1e-5, rtol=1e-5)


def test_discounted_returns_and_first_episode_mask():
    reward = torch.tensor([[1.0, 1.0, 1.0, 2.0]]).unsqueeze(-1)
    done = torch.tensor([[0, 1, 0, 0]], dtype=torch.bool).unsqueeze(-1)
    steps = torch.tensor([[2, 1, 2, 3]])
    g = adv.discounted_returns(reward, done, steps, 0.5)
    # G3 = 2 ; G2 = 1 + 0.25 * 2 = 1.5 ; G1 = 1 (done) ; G0 = 1 + 0.25 * 1 = 1.25
    torch.testing.assert_close(g.flatten(), torch.tensor([1.25, 1.0, 1.5, 2.0]))
    assert adv.first_episode_mask(done).tolist() == [[True, True, False, False]]


def test_advantage_normalisation_and_running_return_std():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    y = adv.normalize_advantages(x, mask)
    assert float(y[:3].mean()) == pytest.approx(0.0, abs=1e-6) and float(y[:3].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert float(y[3]) == 0.0
    rs = adv.RunningReturnStd()
    a, b = torch.randn(50) * 3 + 1, torch.randn(70) * 2
    rs.update(a)
    rs.update(b)
    both = torch.cat([a, b]).double()
    assert rs.count == 120 and rs.mean == pytest.approx(float(both.mean()), abs=1e-6)
    assert rs.var == pytest.approx(float(both.var(unbiased=False)), rel=1e-6)
    assert rs.scale == pytest.approx(1 / float(both.var(unbiased=False)) ** 0.5, rel=1e-5)
    restored = adv.RunningReturnStd()
    restored.load_state_dict(rs.state_dict())
    assert restored.scale == rs.scale


def test_layout_guards_name_the_fix():
    td = rollout([[1, 1, 1]], [[1, 2, 4]], [[2, 1, 2]], [[0, 0, 0]], [[0, 1, 0]], [[0, 6, 8]])
    with pytest.raises(KeyError, match="exec_steps"):
        adv.gae(td.exclude(keys.EXEC_STEPS), 0.9, 0.9, ValueFn())
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        adv.gae(td.reshape(-1), 0.9, 0.9, ValueFn())
    zero = td.clone()
    zero.set(keys.EXEC_STEPS, torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="exec_steps must be >= 1"):
        adv.gae(zero, 0.9, 0.9, ValueFn())
    with pytest.raises(ValueError, match="no value_fn"):
        adv.gae(td, 0.9, 0.9, None)


def test_per_task_advantage_normalisation_and_running_value_stats():
    g = torch.Generator().manual_seed(0)
    task = torch.tensor([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]])  # (B, T): rows of two tasks
    x = torch.randn(4, 3, 1, generator=g) * torch.where(task == 0, 0.01, 10.0).unsqueeze(-1) + task.unsqueeze(-1) * 5
    y = adv.normalize_by_group(x, task)
    for k in (0, 1):  # each task's advantages get mean 0, std 1 whatever the other task's scale
        v = y[task == k]
        assert float(v.mean()) == pytest.approx(0.0, abs=1e-5) and float(v.std(unbiased=False)) == pytest.approx(1.0, rel=1e-3)
    # two "ranks" summing their moments = one process over all rows
    halves = [(x[:2], task[:2]), (x[2:], task[2:])]
    tables = [adv.group_moments(a, b) for a, b in halves]
    torch.testing.assert_close(tables[0] + tables[1], adv.group_moments(x, task))

    stats = adv.GroupRunningStats()
    for a, b in halves:  # merged batch by batch = the moments of everything seen
        stats.update(a, b)
    for k in (0, 1):
        v = x[task == k].double()
        assert float(stats.mean[k]) == pytest.approx(float(v.mean()), rel=1e-6)
        assert float(stats.var[k]) == pytest.approx(float(v.var(unbiased=False)), rel=1e-5)
    z = stats.normalize(x, task)
    torch.testing.assert_close(stats.denormalize(z, task), x)
    assert float(z[task == 1].std(unbiased=False)) == pytest.approx(1.0, rel=1e-3)
    assert float(stats.mean[7]) == 0.0 and float(stats.var[7]) == 1.0  # an unseen task: identity
    again = adv.GroupRunningStats()
    again.load_state_dict(stats.state_dict())
    torch.testing.assert_close(again.normalize(x, task), z)
    with pytest.raises(ValueError, match="group"):
        adv.group_moments(x, task + adv.MAX_GROUPS)
