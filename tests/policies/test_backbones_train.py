"""`vlaforge train` end to end with backbone.type hf: a tiny Idefics3 folder made here, BC on 2 DeepSpeed
ranks (real Ray), evaluation episodes in Meta-World, a checkpoint that loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlaforge.platform.driver import train
from vlaforge.platform.recipe import load_recipe


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_bc_with_hf_backbone(ray_cluster, tmp_path_factory):
    from vlaforge.policies import load_pretrained
    from vlaforge.policies.backbones.tiny_vlm import write_tiny_idefics3

    vlm = write_tiny_idefics3(tmp_path_factory.mktemp("vlm") / "tiny-idefics3")
    run_dir = tmp_path_factory.mktemp("run") / "hf"
    recipe = load_recipe(ROOT / "configs" / "quickstart.yaml", [
        "envs.tasks=[reach-v3]", "envs.image_size=32", "envs.max_episode_steps=100",
        "demos.episodes_per_task=2", "policy.dim=32", "policy.layers=1", "policy.heads=2",
        "policy.backbone.type=hf", f"policy.backbone.path={vlm}",
        "policy.backbone.lora={r: 2, target_modules: [q_proj, v_proj]}",
        "train.steps=4", "train.log_every=2", "train.checkpoint_every=4", "train.batch_size=8",
        "train.warmup_steps=0", "eval.episodes_per_task=2", "eval.envs_per_worker=2", "eval.num_workers=1",
        "eval.videos_per_task=0", "logging.wandb_mode=disabled", "stages=[{name: bc, kind: bc}]",
    ])
    assert recipe.train.num_learners == 2
    summary = train(recipe, run_dir=run_dir)

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(l == l for l in losses)  # finite (NaN != NaN)
    res = json.loads((run_dir / "bc" / "eval" / "eval.json").read_text())
    assert res["tasks"]["reach-v3"]["episodes"] == 2
    assert summary["stages"]["bc"]["eval_end"]["mean_success_rate"] == res["mean_success_rate"]
    policy, proc, cfg, _, _ = load_pretrained(run_dir / "bc" / "checkpoints" / "step-4" / "policy")
    assert cfg.backbone.type == "hf" and cfg.backbone.lora.r == 2 and proc.vlm is not None
    assert any(".lora_B." in n for n, _ in policy.named_parameters())
