"""The learned reward inside an RL stage: score every rollout batch with the reward model, log the RM next to
the simulator's success, and refresh the RM on the policy's own episodes (``reward_model.refresh``).

    hook = make_reward_hook(ctx, recipe, train_cfg, stage_dir)   # None when reward_model.enabled is false
    metrics = hook(batch [B, T], update)                         # writes ("next", reward) etc. into the batch

Labels (what the RL stage may read of the simulator). ``reward_model.mode: rm``: the learner sees no
simulator reward; the simulator's success flag is logged (reward/true_success, reward/rm_auroc) but only a
refresh reads it, and only for at most ``refresh.label_episodes`` episodes per refresh and
``refresh.max_label_episodes`` over the stage (reward/refresh_labeled_episodes counts them). The episodes to
label are chosen WITHOUT looking at their labels: half the ones the current RM rates highest (where a
hacked RM is wrong: its false positives), half drawn at random.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vlaforge import keys
from vlaforge.errors import VlaforgeError

log = logging.getLogger("vlaforge")

_KEEP = [keys.INSTRUCTION, keys.TASK_INDEX, (keys.NEXT, *keys.IMAGE), (keys.NEXT, *keys.STATE),
         (keys.NEXT, keys.SUCCESS), (keys.NEXT, keys.DONE)]  # what a refresh needs of a batch (next frames only)


def rl_gamma(train_cfg) -> float:
    """The discount per env step of the stage's objective: the shaping must use the one the returns use."""
    return float(train_cfg.ppo.gamma if train_cfg.objective == "ppo" else train_cfg.grpo.gamma)


class RewardRefresher:
    """Fine-tunes the scorer's reward model on demonstrations + labelled on-policy episodes, every
    ``cfg.refresh.every`` updates, within the label budget. Batches must be consecutive sync-mode samples of
    one pool (episodes cut by the sample window are joined: episodes_from_rollouts). Only episodes that ended
    inside the window are labelled; with rows that continue across samples (rollout.episode_rows false) the
    first one of a row after a refresh is the tail of an episode that began before it (its frames' labels are
    exact; it counts as one labelled episode)."""

    def __init__(self, cfg, scorer, demo_episodes: list, out_dir: Path, task_names, seed: int = 0,
                 labeled: int = 0):
        self.cfg, self.scorer, self.demos, self.out_dir = cfg, scorer, list(demo_episodes), Path(out_dir)
        self.task_names, self.seed = list(task_names), int(seed)
        self.labeled_count = int(labeled)  # labelled on-policy episodes so far (the budget spent)
        self.labeled: list = []  # their RMEpisodes (a resumed stage restarts this pool from the demos)
        self.window: list = []  # batches since the last refresh (next frames only)
        self.refreshes = 0

    def observe(self, batch, update: int) -> dict[str, float]:
        """Keep the batch; refresh after update ``update`` (0-based) when due and budget is left."""
        r = self.cfg.refresh
        self.window.append(batch.select(*[k for k in _KEEP if k in batch.keys(True)]).clone())
        if (update + 1) % r.every or self.labeled_count >= r.max_label_episodes:
            return {}
        return self.refresh()

    def _choose(self, episodes: list) -> list:
        """Episodes to label: by the RM's own max level (its false positives show there) and at random."""
        from vlaforge.learners.reward_data import build_eval_set

        n = min(self.cfg.refresh.label_episodes, self.cfg.refresh.max_label_episodes - self.labeled_count, len(episodes))
        if n <= 0:
            return []
        frames = build_eval_set(episodes)  # every frame, with its episode position (labels are not read here)
        level = self.scorer.score(frames)  # (N,)
        ep = frames.get(keys.EPISODE_INDEX)
        peak = torch.full((len(episodes),), -1.0).scatter_reduce(0, ep, level, "amax")  # (E,)
        top = torch.argsort(peak, descending=True)[: n // 2].tolist()
        rng = np.random.default_rng([self.seed, self.refreshes])
        rest = [i for i in range(len(episodes)) if i not in top]
        top += [int(i) for i in rng.permutation(rest)[: n - len(top)]]
        return [episodes[i] for i in sorted(top)]

    def refresh(self) -> dict[str, float]:
        from vlaforge.learners.reward_data import build_eval_set, build_success_set, episodes_from_rollouts
        from vlaforge.learners.reward_model import evaluate_reward_model, train_reward_model
        from vlaforge.policies.reward_model import save_reward_model

        episodes = [e for e in episodes_from_rollouts(self.window, self.task_names) if e.complete]
        self.window = []
        chosen = self._choose(episodes)
        if not chosen:
            return {}
        new = build_eval_set(chosen)  # labelled now: the simulator's success flag of every frame
        pre = {f"reward/refresh_pre_{k.split('/')[-1]}": v
               for k, v in evaluate_reward_model(self.scorer.model, self.scorer.processor, new).items()}
        self.labeled += chosen
        self.labeled_count += len(chosen)
        r = self.cfg.refresh
        tune = self.cfg.model_copy(update={"steps": r.steps, "lr": r.lr, "warmup_steps": min(10, r.steps // 10),
                                           "seed": self.seed + 1 + self.refreshes})
        try:
            data = build_success_set(self.demos + self.labeled, tune, seed=tune.seed)
        except ValueError as e:  # e.g. no positive frame anywhere yet: keep the RM, spend no more steps
            log.warning("reward model refresh skipped: %s", e)
            return {**pre, "reward/refresh_labeled_episodes": float(self.labeled_count)}
        model, processor, m = train_reward_model(data, tune, init=(self.scorer.model, self.scorer.processor))
        self.scorer.model = model.eval()
        self.refreshes += 1
        save_reward_model(self.out_dir, model, processor,
                          extra={"labeled_episodes": self.labeled_count, "refreshes": self.refreshes,
                                 "metrics": {**m, **pre}})
        log.info("reward model refreshed (%d labelled on-policy episodes so far): on the new ones before the "
                 "refresh AUROC %.3f, accuracy %.3f", self.labeled_count, pre.get("reward/refresh_pre_auroc", float("nan")),
                 pre.get("reward/refresh_pre_accuracy", float("nan")))
        return {**pre, "reward/refresh_labeled_episodes": float(self.labeled_count),
                "reward/refresh_loss": m["rm/loss"], "reward/refresh_seconds": m["rm/seconds"],
                "reward/refreshes": float(self.refreshes)}


def make_reward_hook(ctx, recipe, train_cfg, stage_dir: Path):
    """-> None (env reward, no RM), or fn(batch [B, T], update) that writes the RM / mixed / shaped reward into
    the batch, refreshes the RM when due and returns reward/* metrics: the RM's level next to the simulator's
    true success per decision, so a rising RM reward with flat true success (reward hacking) is visible."""
    cfg = recipe.reward_model
    if not cfg.enabled:
        return None
    from vlaforge.actors.reward import RewardScorer, reward_metrics
    from vlaforge.platform.stages import dataset_for, reward_model_dir

    refreshed = Path(stage_dir) / "reward_model"  # a refreshed RM of this stage (resume: continue with it)
    model_dir = refreshed if (cfg.refresh.every and refreshed.is_dir()) else reward_model_dir(ctx, recipe)
    if model_dir is None:
        raise VlaforgeError("reward_model.enabled: no reward model to use: set reward_model.model_dir or put a "
                            "reward_model stage before this one")
    scorer = RewardScorer(model_dir, cfg=cfg)
    gamma = rl_gamma(train_cfg)
    log.info("RL reward: %s, output %s, shaping %g (gamma %g), refresh every %d (reward model %s)", cfg.mode,
             cfg.output, cfg.shaping, gamma, cfg.refresh.every, model_dir)
    refresher = None
    if cfg.refresh.every:
        from vlaforge.envs import ALL_TASKS
        from vlaforge.learners.reward_data import episodes_from_dataset
        from vlaforge.policies.reward_model import load_reward_model

        with ctx.timers.phase("reward_model"):
            demos = episodes_from_dataset(dataset_for(ctx, recipe), skip_bad=recipe.data.skip_bad_episodes)
        labeled = load_reward_model(model_dir)[2].get("labeled_episodes", 0) if model_dir == refreshed else 0
        refresher = RewardRefresher(cfg, scorer, demos, refreshed, ALL_TASKS, seed=recipe.seed, labeled=labeled)

    def hook(batch, update: int) -> dict[str, float]:
        with ctx.timers.phase("reward_model"):
            scorer.annotate(batch, gamma)  # ("next", rm_level / rm_shaping / rm_reward / env_reward / reward)
            nxt = batch.get(keys.NEXT)
            m = reward_metrics(nxt.get(keys.RM_LEVEL), nxt.get(keys.SUCCESS), nxt.get(keys.RM_REWARD))
            m["reward/env_mean"] = float(nxt.get(keys.ENV_REWARD).float().mean())  # logged, never learned from in mode rm
            m["reward/shaping_mean"] = float(nxt.get(keys.RM_SHAPING).float().mean())
            if refresher is not None:
                m.update(refresher.observe(batch, update))
        return m

    return hook
