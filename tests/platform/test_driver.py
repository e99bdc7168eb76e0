"""The real entry point on a tiny budget (cleanrl-style smoke test): real Ray, DeepSpeed (2 ranks),
Meta-World demos, evaluation actors; then `vlaforge eval` on the checkpoint and `--resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlaforge.errors import VlaforgeError
from vlaforge.platform.driver import evaluate_checkpoint, train
from vlaforge.platform.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(ray_cluster, tmp_path_factory, tiny_bc):
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    recipe = load_recipe(ROOT / "configs" / "quickstart.yaml", tiny_bc)
    summary = train(recipe, run_dir=run_dir)
    return run_dir, summary


@pytest.mark.slow
def test_run_directory_holds_everything(tiny_run):
    run_dir, summary = tiny_run
    assert load_recipe(run_dir / "recipe.yaml").train.steps == 6  # the resolved recipe, loadable again
    assert "training data" in (run_dir / "run.log").read_text()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
    assert any("eval/bc/mean_success_rate" in r for r in rows) and any("time/learn_s" in r for r in rows)
    assert all(k.split("/")[0] in {"train", "eval", "time", "system", "step", "time"} for r in rows for k in r)
    policy = run_dir / "bc" / "checkpoints" / "step-6" / "policy"
    assert (policy / "model.safetensors").exists() and (policy / "run_card.json").exists()
    assert (run_dir / "bc" / "checkpoints" / "latest").read_text().strip() == "step-6"
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"


@pytest.mark.slow
def test_eval_json_contents(tiny_run):
    run_dir, summary = tiny_run
    res = json.loads((run_dir / "bc" / "eval" / "eval.json").read_text())
    assert set(res["tasks"]) == {"reach-v3", "drawer-close-v3"}
    for t in res["tasks"].values():
        assert t["episodes"] == 2
        assert 0.0 <= t["ci_low"] <= t["success_rate"] <= t["ci_high"] <= 1.0
    assert len(res["episodes"]) == 4
    assert {e["seed"] for e in res["episodes"]} == {1_000_000, 1_000_001}  # the fixed initial-state set
    assert res["mean_success_rate"] == pytest.approx(sum(t["success_rate"] for t in res["tasks"].values()) / 2)
    assert len(res["videos"]) == 2 and all(Path(v).stat().st_size > 0 for v in res["videos"])
    assert summary["stages"]["bc"]["eval_end"]["mean_success_rate"] == res["mean_success_rate"]


@pytest.mark.slow
def test_eval_command_is_deterministic_on_fixed_states(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    res = evaluate_checkpoint(run_dir, overrides=["eval.videos_per_task=0"], out_dir=tmp_path / "ev")
    first = json.loads((run_dir / "bc" / "eval" / "eval.json").read_text())
    # same checkpoint, same fixed seeds, deterministic policy -> the same episodes
    assert [e["success"] for e in res["episodes"]] == [e["success"] for e in first["episodes"]]
    assert [e["length"] for e in res["episodes"]] == [e["length"] for e in first["episodes"]]
    with pytest.raises(VlaforgeError, match="no exported policy found"):
        evaluate_checkpoint(tmp_path)


@pytest.mark.slow
def test_resume_continues_the_run(tiny_run):
    run_dir, _ = tiny_run
    recipe = load_recipe(run_dir / "recipe.yaml", ["train.steps=9", "eval.enabled=false"])
    with pytest.raises(VlaforgeError, match="already holds a run"):
        train(recipe, run_dir=run_dir)
    train(recipe, run_dir=run_dir, resume=True)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6, 9]  # continued at 6, nothing re-run
    assert (run_dir / "bc" / "checkpoints" / "latest").read_text().strip() == "step-9"
    bad = load_recipe(run_dir / "recipe.yaml", ["policy.dim=64"])
    with pytest.raises(VlaforgeError, match="'policy' block differs"):
        train(bad, run_dir=run_dir, resume=True)
