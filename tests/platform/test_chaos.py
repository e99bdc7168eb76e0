"""Chaos mode on a very short quickstart (BC -> PPO; real Ray, DeepSpeed with 2 ranks, rollout actors,
Meta-World): every fault is injected for real during the run -- a NaN batch and a run of them, a corrupt
newest checkpoint, SIGKILL of a learner rank mid-call, SIGKILL and SIGSTOP of a rollout actor mid-sample --
and the run finishes, losing only the work since the last checkpoint, with each fault listed in the summary
with how it was handled."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from vlaforge.platform.driver import train
from vlaforge.platform.recipe import load_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LR = 1e-3
# The same envs/demos as tests/platform/test_driver.py (the demo cache is shared).
TINY = [
    "envs.tasks=[reach-v3,drawer-close-v3]", "envs.image_size=32", "envs.max_episode_steps=120",
    "demos.episodes_per_task=2", "policy.dim=32", "policy.layers=1", "policy.heads=2",
    "policy.vision.channels=[8,16]", "train.steps=30", "train.log_every=10", "train.checkpoint_every=10",
    "train.batch_size=8", "train.warmup_steps=0", "train.lr_schedule=constant", f"train.lr={LR}",
    "logging.wandb=false",  # no evaluation: the stages' eval_start / eval_end are off (test time)
    "rollout.envs_per_actor=2", "rollout.steps_per_sample=4",
    "stages=[{name: bc, kind: bc, eval_end: false}, {name: ppo, kind: ppo, eval_start: false, eval_end: false, set: {envs:"
    " {terminate_on_success: false}, train: {objective: ppo, steps: 4, checkpoint_every: 2, log_every: 1,"
    " lr: 1.0e-5, ppo: {epochs: 1, num_minibatches: 2, critic_warmup_updates: 1}}}}]",
    # short deadlines: a stopped rollout actor is found in 20 s; 2 skipped steps in a row roll back
    "runtime.timeouts.rollout_sample_s=20", "runtime.timeouts.probe_s=5", "runtime.nonfinite.max_consecutive=2",
    "runtime.nonfinite.lr_factor=0.5",
    "chaos.enabled=true", "chaos.seed=3", "chaos.nan_steps=2",
    "chaos.schedule=[{stage: bc, step: 10, fault: nan_batch}, {stage: bc, step: 20, fault: corrupt_checkpoint},"
    " {stage: bc, step: 20, fault: kill_learner}, {stage: ppo, step: 1, fault: kill_rollout_actor},"
    " {stage: ppo, step: 2, fault: stop_rollout_actor}, {stage: ppo, step: 3, fault: nan_batch}]",
]


@pytest.fixture(scope="module")
def chaos_run(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("chaos") / "run"
    recipe = load_recipe(ROOT / "configs" / "quickstart.yaml", TINY)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = train(recipe, run_dir=run_dir)
    summary["printed"] = out.getvalue()
    return run_dir, summary


def _handled(summary, stage: str, fault: str) -> list[dict]:
    return [e for e in summary["faults"]["handled"] if e["stage"] == stage and fault in e["fault"]]


def test_the_run_finishes_and_lists_every_injected_fault(chaos_run):
    run_dir, summary = chaos_run
    assert Path(summary["policy_dir"], "model.safetensors").is_file()
    assert json.loads((run_dir / "ppo" / "stage.json").read_text())["policy_dir"] == summary["policy_dir"]
    injected = [(e["stage"], e["fault"]) for e in summary["faults"]["injected"]]
    assert injected == [("bc", "nan_batch"), ("bc", "corrupt_checkpoint"), ("bc", "kill_learner"),
                        ("ppo", "kill_rollout_actor"), ("ppo", "stop_rollout_actor"), ("ppo", "nan_batch")]
    assert json.loads((run_dir / "faults.json").read_text()) == summary["faults"]
    printed = summary["printed"]  # the end-of-run printout: one line per injection and per handled fault
    assert printed.count("injected:    ") == 6 and printed.count("fault:       ") == len(summary["faults"]["handled"])
    assert "kill_learner (SIGKILL of learner rank" in printed and "-> stage restarted from step-10" in printed
    assert json.loads((run_dir / "summary.json").read_text())["faults"] == summary["faults"]


def test_bc_nan_batches_are_skipped_then_rolled_back_with_a_lower_lr(chaos_run):
    run_dir, summary = chaos_run
    skips = _handled(summary, "bc", "non-finite loss or gradient")
    assert skips and skips[0]["step"] == 10
    [rollback] = _handled(summary, "bc", "2 non-finite steps in a row")
    assert rollback["handled"].startswith("rolled back to step-10 (step 10) with the LR scaled to x0.5")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in rows if "train/lr" in r and r["step"] <= 30]
    assert lrs[0] == pytest.approx(LR) and lrs[-1] == pytest.approx(0.5 * LR)  # kept after the restart too


def test_a_killed_learner_rank_restarts_bc_from_the_last_good_checkpoint(chaos_run):
    run_dir, summary = chaos_run
    [restart] = _handled(summary, "bc", "learner rank")
    assert restart["fault"].endswith("died") and restart["step"] == 20
    # step-20 was truncated by the chaos: the restart falls back to step-10 and loses only steps 10-20
    assert restart["handled"] == "stage restarted from step-10 with new ranks (restart 1/2)"
    [fallback] = _handled(summary, "bc", "checkpoint step-20 unusable")
    assert "fell back to the previous complete checkpoint step-10" in fallback["handled"]
    log = (run_dir / "run.log").read_text()
    assert "resumed bc from" in log and "at step 10" in log
    assert json.loads((run_dir / "bc" / "stage.json").read_text())["policy_dir"].endswith("step-30/policy")


def test_rollout_actor_kill_and_stop_are_replaced_and_resynced(chaos_run):
    _, summary = chaos_run
    died = _handled(summary, "ppo", "rollout actor died")
    hung = _handled(summary, "ppo", "rollout actor hung")
    assert died and hung
    for e in died + hung:
        assert e["handled"].startswith("killed and replaced") and "which the new actor loads first" in e["handled"]
    assert "runtime.timeouts.rollout_sample_s=20" in hung[0]["detail"]


def test_ppo_nan_batch_rolls_back_and_versions_stay_monotonic(chaos_run):
    run_dir, summary = chaos_run
    [rollback] = _handled(summary, "ppo", "non-finite steps in a row")
    assert rollback["handled"].startswith("rolled back to step-")
    versions = [json.loads(x).get("train/version") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    versions = [v for v in versions if v is not None]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)  # still monotonic after rollback
