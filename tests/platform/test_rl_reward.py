"""The RM refresh during RL (platform/rl_reward.py) on crafted rollout batches: it labels at most the stated
budget of whole on-policy episodes, picks half of them by the RM's own peak level (without reading labels),
fine-tunes the RM toward the new labels, saves it with its label count; the recipe rules that guard it."""

from __future__ import annotations

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.actors.reward import RewardScorer
from vlaforge.platform.rl_reward import RewardRefresher, rl_gamma
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import RewardModel, RewardProcessor, load_reward_model, rm_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
B, T, S = 4, 5, 3


def cfg(**refresh) -> RewardModelConfig:
    return RewardModelConfig(enabled=True, mode="rm", dim=16, heads=2, vision={"channels": [8], "keypoints": 0},
                             language={"vocab_size": 64, "max_tokens": 4, "layers": 0}, batch_size=32,
                             refresh={"every": 2, "label_episodes": 6, "max_label_episodes": 8, "steps": 60, "lr": 3e-3,
                                      **refresh})


def batches(n: int, seed: int = 0) -> list[TensorDict]:
    """n consecutive samples [B, T]: every row runs 3-decision episodes; odd-numbered ones succeed on their
    last frame, whose image is bright (dark otherwise) -- an RM can learn it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = torch.arange(i * T, (i + 1) * T)
        done = ((t + 1) % 3 == 0).expand(B, T)
        ep = (t // 3).expand(B, T) + 100 * torch.arange(B)[:, None]
        success = done & (ep % 2 == 1)
        img = torch.randint(0, 40, (B, T, 1, 16, 16, 3), dtype=torch.uint8, generator=g)
        img[success] = 220
        nxt = TensorDict({keys.IMAGE: img, keys.STATE: torch.zeros(B, T, S), keys.SUCCESS: success[..., None],
                          keys.DONE: done[..., None]}, batch_size=[B, T])
        td = TensorDict({keys.TASK_INDEX: torch.zeros(B, T, dtype=torch.long), keys.NEXT: nxt}, batch_size=[B, T])
        td.set(keys.INSTRUCTION, NonTensorStack.from_list([["reach the goal"] * T] * B))
        out.append(td)
    return out


def demos() -> list:
    from vlaforge.learners.reward_data import RMEpisode

    img = torch.randint(0, 40, (2, 3, 1, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    img[0, 2] = 220
    ok = torch.tensor([False, False, True])
    return [RMEpisode(img[0], torch.zeros(3, S), ok, True, True, "reach the goal", "reach-v3", "demo"),
            RMEpisode(img[1], torch.zeros(3, S), ~ok & False, False, True, "reach the goal", "reach-v3", "demo")]


def test_refresh_spends_the_stated_budget_and_learns_the_new_labels(tmp_path):
    c = cfg()
    torch.manual_seed(0)
    model = RewardModel(c, rm_spec((1, 16, 16, 3), S)).eval()
    scorer = RewardScorer(model, RewardProcessor.fit(c), cfg=c)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = RewardRefresher(c, scorer, demos(), tmp_path / "rm", ["reach-v3"], seed=0)
    data = batches(6)
    assert ref.observe(data[0], update=0) == {}  # not due
    m = ref.observe(data[1], update=1)  # due: 10 decisions x 4 rows -> 12 complete episodes, 6 labelled
    assert m["reward/refresh_labeled_episodes"] == 6 == ref.labeled_count and m["reward/refreshes"] == 1
    assert 0 < sum(e.outcome for e in ref.labeled) < 6  # both kinds among them (labels read after choosing)
    assert 0.0 <= m["reward/refresh_pre_auroc"] <= 1.0  # the old RM on the new episodes, before it learns them
    assert any(not torch.equal(before[k], v) for k, v in scorer.model.state_dict().items())  # the scorer uses the new RM
    _, _, extra = load_reward_model(tmp_path / "rm")
    assert extra["labeled_episodes"] == 6 and extra["refreshes"] == 1
    m = ref.observe(data[2], 2) or ref.observe(data[3], 3)
    assert m["reward/refresh_labeled_episodes"] == 8  # only 2 left in the budget of 8
    assert ref.observe(data[4], 4) == {} and ref.observe(data[5], 5) == {} and ref.labeled_count == 8  # spent
    frames = torch.cat([d.get((keys.NEXT, *keys.IMAGE)) for d in data[2:4]], 1).reshape(-1, 1, 16, 16, 3)
    probe = TensorDict({keys.IMAGE: frames, keys.STATE: torch.zeros(len(frames), S)}, batch_size=[len(frames)])
    probe.set(keys.INSTRUCTION, NonTensorStack.from_list(["reach the goal"] * len(frames)))
    p, bright = scorer.score(probe), frames.float().mean((1, 2, 3, 4)) > 150
    assert p[bright].mean() > p[~bright].mean() + 0.2, (p[bright].mean(), p[~bright].mean())


def test_half_the_labelled_episodes_are_the_rms_top_rated():
    c = cfg(label_episodes=4, max_label_episodes=8)
    torch.manual_seed(1)
    model = RewardModel(c, rm_spec((1, 16, 16, 3), S)).eval()
    scorer = RewardScorer(model, RewardProcessor.fit(c), cfg=c)
    ref = RewardRefresher(c, scorer, [], "unused", ["reach-v3"])
    from vlaforge.learners.reward_data import build_eval_set, episodes_from_rollouts

    eps = [e for e in episodes_from_rollouts(batches(2), ["reach-v3"]) if e.complete]
    frames = build_eval_set(eps)
    peak = torch.full((len(eps),), -1.0).scatter_reduce(0, frames.get(keys.EPISODE_INDEX), scorer.score(frames), "amax")
    chosen = ref._choose(eps)
    ids = {id(e) for e in chosen}
    assert len(chosen) == 4 and all(id(eps[i]) in ids for i in torch.argsort(peak, descending=True)[:2].tolist())


def test_rl_gamma_follows_the_objective():
    from vlaforge.learners.config import TrainConfig

    assert rl_gamma(TrainConfig(objective="ppo", ppo={"gamma": 0.9})) == 0.9
    assert rl_gamma(TrainConfig(objective="rloo", grpo={"gamma": 0.8})) == 0.8


def test_refresh_needs_an_enabled_success_rm():
    with pytest.raises(ValueError, match="refresh.every > 0"):
        RewardModelConfig(refresh={"every": 5})
    with pytest.raises(ValueError, match="kind must be 'success'"):
        RewardModelConfig(enabled=True, kind="preference", refresh={"every": 5})
    with pytest.raises(ValueError, match="shaping"):
        RewardModelConfig(shaping=1.0)
