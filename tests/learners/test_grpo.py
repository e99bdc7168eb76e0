"""GRPO / RLOO group advantages (zero-sum per group, by-hand values), first-episode masking, dynamic
sampling of uniform groups, and the split of decisions over ranks."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.learners.config import GRPOConfig, TrainConfig
from vlaforge.learners.grpo import GRPOObjective, group_advantages, uniform_groups
from vlaforge.learners.ppo import RLContext
from vlaforge.learners.registry import build_objective

K, A = 4, 2


def group_batch(success_rows: list[list[int]], group_id: list[int], t: int = 4) -> TensorDict:
    """Rows succeed (and terminate) at the decision given per row (-1: never within T)."""
    b = len(group_id)
    success = torch.zeros(b, t, 1, dtype=torch.bool)
    for i, (when,) in enumerate(success_rows):
        if when >= 0:
            success[i, when] = True
    obs = TensorDict({"state": torch.arange(b * t, dtype=torch.float32).reshape(b, t, 1)}, batch_size=[b, t])
    return TensorDict(
        {
            keys.OBS: obs,
            keys.ACTION_CHUNK: torch.zeros(b, t, K, A),
            keys.ACTION_PAD: torch.zeros(b, t, K, dtype=torch.bool),
            keys.LOG_PROB: torch.zeros(b, t),
            keys.EXEC_STEPS: torch.full((b, t), 2),
            keys.GROUP_ID: torch.tensor(group_id)[:, None].expand(b, t).clone(),
            keys.NEXT: TensorDict(
                {keys.REWARD: success.float(), keys.SUCCESS: success, keys.TERMINATED: success,
                 keys.TRUNCATED: torch.zeros(b, t, 1, dtype=torch.bool), keys.DONE: success},
                batch_size=[b, t]),
        },
        batch_size=[b, t],
    )


def test_group_advantages_sum_to_zero_and_match_by_hand():
    torch.manual_seed(0)
    scores = torch.rand(12)
    gid = torch.tensor([3, 3, 3, 3, 7, 7, 7, 7, 1, 1, 1, 1])
    for baseline in ("grpo", "rloo"):
        a = group_advantages(scores, gid, baseline)
        for g in (1, 3, 7):
            assert abs(float(a[gid == g].sum())) < 1e-5, (baseline, g)
    s = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    gid = torch.tensor([0, 0, 0, 0, 5, 5])
    # group 0: mean 0.5, std 0.5 -> +-1 ; group 5: all equal -> 0
    torch.testing.assert_close(group_advantages(s, gid, "grpo", eps=0.0)[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert group_advantages(s, gid, "grpo").tolist()[4:] == [0.0, 0.0]
    # rloo: 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(group_advantages(s, gid, "rloo")[:4], torch.tensor([2, -2, -2, 2]) / 3.0)
    assert uniform_groups(s, gid).tolist() == [False] * 4 + [True] * 2
    with pytest.raises(ValueError, match="min_group_size"):
        group_advantages(s, torch.tensor([0, 0, 0, 0, 5, 6]), "grpo")


def test_prepare_masks_later_episodes_and_drops_uniform_groups():
    # group 0: rows 0 (succeeds at t=1), 1 (fails); group 1: both succeed (uniform); group 2: both fail.
    td = group_batch([[1], [-1], [0], [2], [-1], [-1]], [0, 0, 1, 1, 2, 2])
    obj = build_objective("grpo", TrainConfig(objective="grpo"), torch.nn.Linear(1, 1))
    samples, m = obj.prepare(td, RLContext())
    assert m["groups"] == 3 and m["groups_kept"] == 1 and m["groups_uniform_frac"] == pytest.approx(2 / 3)
    assert m["success_rate"] == pytest.approx(0.5) and m["score_mean"] == pytest.approx(0.5)
    # Row 0: first episode = t 0..1 (2 decisions); row 1: never done -> all 4 decisions.
    assert samples.batch_size[0] == 6 and m["decisions"] == 6
    state = samples.get((keys.OBS, "state")).flatten().tolist()
    assert state == [0.0, 1.0, 4.0, 5.0, 6.0, 7.0]
    a = samples.get(keys.ADVANTAGE).flatten()
    assert a[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-5) and a[2:].tolist() == pytest.approx([-1.0] * 4, abs=1e-5)
    for k in (keys.ACTION_CHUNK, keys.ACTION_PAD, keys.LOG_PROB):
        assert k in samples.keys()

    keep_all = GRPOObjective(torch.nn.Linear(1, 1), GRPOConfig(dynamic_sampling=False), "rloo")
    samples, m = keep_all.prepare(td, RLContext())
    # rows: 2 + 4 + 1 + 3 + 4 + 4 decisions; uniform groups stay with zero advantage
    assert samples.batch_size[0] == 18 and m["groups_kept"] == 3
    assert float(samples.get(keys.ADVANTAGE)[6:].abs().max()) == 0.0


def test_decisions_split_over_ranks_and_empty_batches():
    td = group_batch([[1], [-1], [0], [2]], [0, 0, 1, 1])
    obj = build_objective("grpo", TrainConfig(objective="grpo"), torch.nn.Linear(1, 1))
    full, _ = obj.prepare(td, RLContext())
    parts = [obj.prepare(td, RLContext(rank=r, world_size=2))[0] for r in (0, 1)]
    assert [p.batch_size[0] for p in parts] == [full.batch_size[0] // 2 + full.batch_size[0] % 2, full.batch_size[0] // 2]
    joined = torch.cat([p.get((keys.OBS, "state")) for p in parts])
    assert torch.equal(joined, full.get((keys.OBS, "state")))
    uniform = group_batch([[0], [1]], [0, 0])  # all succeed: dynamic sampling leaves nothing
    for r in (0, 1):
        assert obj.prepare(uniform, RLContext(rank=r, world_size=2))[0].batch_size[0] == 0
    with pytest.raises(KeyError, match="group_id"):
        obj.prepare(td.exclude(keys.GROUP_ID), RLContext())
