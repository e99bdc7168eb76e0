"""Stages in one recipe: bc -> reward_model -> ppo on real Ray, DeepSpeed (2 ranks), rollout actors and
Meta-World, each stage in its own folder with its start/end evaluation; resume skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from vlaforge.errors import VlaforgeError
from vlaforge.platform.driver import train
from vlaforge.platform.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "envs.image_size=32", "envs.max_episode_steps=80", "demos.episodes_per_task=2", "policy.dim=32",
    "policy.layers=1", "policy.heads=2", "policy.vision.channels=[8,16]", "train.steps=6", "train.batch_size=8",
    "train.warmup_steps=0", "train.log_every=3", "train.checkpoint_every=3", "rollout.envs_per_actor=2", "rollout.episode_rows=false",
    "rollout.steps_per_sample=4", "eval.episodes_per_task=2", "eval.envs_per_worker=2", "eval.videos_per_task=0",
    "reward_model.steps=20", "reward_model.rollout_batches=1", "logging.wandb=false",
    "stages=[{name: bc, kind: bc, eval_end: false}, {name: rm, kind: reward_model, eval_start: false, eval_end: false},"
    " {name: ppo, kind: ppo, set: {train: {objective: ppo, steps: 3, checkpoint_every: 3,"
    " ppo: {epochs: 1, num_minibatches: 2, critic_warmup_updates: 1}}}}]",
]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def staged_run(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("staged") / "run"
    recipe = load_recipe(ROOT / "configs" / "ppo_metaworld_rm.yaml", TINY[:-1] + ["reward_model.refresh.every=3", TINY[-1]])
    return run_dir, recipe, train(recipe, run_dir=run_dir)


@pytest.mark.slow
def test_each_stage_has_its_folder_and_evaluations(staged_run):
    run_dir, _, summary = staged_run
    assert [json.loads((run_dir / s / "stage.json").read_text())["stage"] for s in ("bc", "rm", "ppo")] == ["bc", "rm", "ppo"]
    assert (run_dir / "rm" / "reward_model").is_dir()
    start = json.loads((run_dir / "ppo" / "eval-start" / "eval.json").read_text())
    end = json.loads((run_dir / "ppo" / "eval" / "eval.json").read_text())
    assert start["seeds"] == end["seeds"]  # the same fixed initial states before and after
    assert start["policy"].endswith("bc/checkpoints/step-6/policy")
    assert summary["stages"]["ppo"]["eval_start"]["mean_success_rate"] == start["mean_success_rate"]


@pytest.mark.slow
def test_ppo_updates_weights_and_bumps_the_broadcast_version(staged_run):
    run_dir, _, summary = staged_run
    versions = [r["train/version"] for r in rows(run_dir) if "train/version" in r]
    assert versions == [versions[0], versions[0] + 1, versions[0] + 2]  # one new version per update
    bc = load_file(run_dir / "bc" / "checkpoints" / "step-6" / "policy" / "model.safetensors")
    ppo = load_file(Path(summary["policy_dir"]) / "model.safetensors")
    assert any(k.startswith("value.") for k in ppo) and not any(k.startswith("value.") for k in bc)
    changed = [k for k in bc if not (bc[k] == ppo[k]).all()]
    assert changed and not any(k.startswith("value.") for k in changed)


@pytest.mark.slow
def test_reward_model_reward_is_logged_next_to_true_success(staged_run):
    run_dir, _, _ = staged_run
    rl = [r for r in rows(run_dir) if "train/version" in r]
    for key in ("reward/rm_mean", "reward/rm_level_mean", "reward/true_success", "reward/rm_success_corr",
                "reward/rm_auroc", "reward/env_mean", "reward/shaping_mean"):
        assert all(key in r for r in rl), key
    assert any("reward/rm_eval_auroc" in r for r in rows(run_dir))


@pytest.mark.slow
def test_resume_skips_finished_stages(staged_run):
    run_dir, recipe, summary = staged_run
    before = len(rows(run_dir))
    again = train(recipe, run_dir=run_dir, resume=True)
    assert again["policy_dir"] == summary["policy_dir"]
    assert not any("train/loss" in r for r in rows(run_dir)[before:])  # nothing retrained


@pytest.mark.slow
def test_rl_stage_needs_a_policy(ray_cluster, tmp_path):
    from vlaforge.platform.config import StageConfig

    with pytest.raises(VlaforgeError, match="needs a policy to start from"):  # refused when the recipe loads ...
        load_recipe(ROOT / "configs" / "ppo_metaworld.yaml", TINY[:-1] + ["stages=[{name: ppo, kind: ppo}]"])
    recipe = load_recipe(ROOT / "configs" / "ppo_metaworld.yaml", TINY[:-1])
    recipe = recipe.model_copy(update={"stages": [StageConfig(name="ppo", kind="ppo")]})  # bypasses the check
    with pytest.raises(VlaforgeError, match="needs a policy to fine-tune"):  # ... and by the stage itself
        train(recipe, run_dir=tmp_path / "r")
