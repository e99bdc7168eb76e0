"""The driver's fault handling without Ray: stage restarts (budget, report, which errors restart) and the
non-finite rollback (LR scale, budget, report) against stand-in stage functions and learner groups. The
real faults (SIGKILL / SIGSTOP, NaN batches on DeepSpeed ranks) are injected in test_chaos.py and in the
learner / rollout-pool / worker-group tests."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlaforge.errors import VlaforgeError
from vlaforge.manifest import write_manifest
from vlaforge.platform.recovery import FaultLog, NonFiniteWatch, run_with_restarts
from vlaforge.runtime.config import RuntimeConfig
from vlaforge.runtime.worker_group import WorkerError


def fake_checkpoint(stage_dir: Path, step: int) -> Path:
    d = stage_dir / "checkpoints" / f"step-{step}"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"world_size": 2}))
    write_manifest(d)
    (stage_dir / "checkpoints" / "latest").write_text(d.name)
    return d


def make_ctx(**runtime) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    ctx = SimpleNamespace(faults=FaultLog(), attempt=0, stage_step=None, rollbacks={}, lr_scale={}, resume=False)
    recipe = SimpleNamespace(runtime=RuntimeConfig.model_validate(runtime))
    return ctx, SimpleNamespace(name="bc"), recipe


def test_a_lost_rank_restarts_the_stage_until_the_budget_then_reports(tmp_path):
    ctx, stage, recipe = make_ctx(max_stage_restarts=2)
    fake_checkpoint(tmp_path, 3)
    attempts = []

    def flaky(ctx, stage, recipe, stage_dir, init):
        attempts.append(ctx.attempt)
        ctx.stage_step = 4
        if len(attempts) < 3:
            raise WorkerError("bc-learners", 1, 2, "train_steps", "ActorDiedError", "died")
        return stage_dir / "policy"

    assert run_with_restarts(ctx, stage, flaky, recipe, tmp_path, None) == tmp_path / "policy"
    assert attempts == [0, 1, 2]  # attempt > 0 makes the stage load its latest checkpoint
    assert [e["handled"] for e in ctx.faults.handled] == [
        "stage restarted from step-3 with new ranks (restart 1/2)", "stage restarted from step-3 with new ranks (restart 2/2)"]
    assert ctx.faults.handled[0]["fault"] == "learner rank 1 died" and ctx.faults.handled[0]["step"] == 4

    def always(ctx, stage, recipe, stage_dir, init):
        raise WorkerError("bc-learners", 0, 2, "train_steps", "rank 0 is not responding", "hung", "no probe answer")

    ctx, stage, recipe = make_ctx(max_stage_restarts=1)
    with pytest.raises(VlaforgeError, match=r"(?s)rank 0/2 hung in train_steps.*restarted 1 times.*"
                                            r"max_stage_restarts=1.*step-3.*--resume"):
        run_with_restarts(ctx, stage, always, recipe, tmp_path, None)
    assert ctx.faults.handled[-1]["handled"] == "run stopped: stage restart budget spent"


def test_a_python_error_on_a_rank_is_not_retried(tmp_path):
    ctx, stage, recipe = make_ctx(max_stage_restarts=5)
    calls = []

    def buggy(ctx, stage, recipe, stage_dir, init):
        calls.append(1)
        raise WorkerError("bc-learners", 0, 2, "setup", ValueError("bad policy spec"), "raised")

    with pytest.raises(WorkerError, match="bad policy spec"):
        run_with_restarts(ctx, stage, buggy, recipe, tmp_path, None)
    assert calls == [1] and ctx.faults.handled == []


class FakeLearners:
    def __init__(self, step: int):
        self.step, self.calls = step, []

    def call(self, method, *args, **kw):
        self.calls.append((method, *args))
        return [self.step, self.step]


def test_nonfinite_streak_rolls_back_with_a_lower_lr_then_stops_with_a_report(tmp_path):
    ctx, stage, recipe = make_ctx(nonfinite={"max_consecutive": 3, "lr_factor": 0.5, "max_rollbacks": 2})
    learners = FakeLearners(step=6)
    watch = NonFiniteWatch(ctx, stage, recipe, tmp_path, learners)
    assert watch.limit == 3
    assert watch.check({"train/nonfinite_skips": 0, "train/nonfinite_streak": 0}, 7) is None
    assert ctx.faults.handled == []
    assert watch.check({"train/nonfinite_skips": 2, "train/nonfinite_streak": 2}, 8) is None  # counted, no rollback
    assert "2 optimizer step(s) skipped on every rank" in ctx.faults.handled[-1]["handled"]
    with pytest.raises(VlaforgeError, match="no checkpoint to roll back to yet"):
        watch.check({"train/nonfinite_skips": 3, "train/nonfinite_streak": 3}, 9)
    ckpt6 = fake_checkpoint(tmp_path, 6)
    assert watch.check({"train/nonfinite_skips": 3, "train/nonfinite_streak": 3}, 9) == 6
    assert watch.check({"train/nonfinite_skips": 3, "train/nonfinite_streak": 5}, 9) == 6
    assert learners.calls == [("rollback", str(ckpt6), 0.5), ("rollback", str(ckpt6), 0.25)]  # compounding
    assert ctx.rollbacks == {"bc": 2} and ctx.lr_scale == {"bc": 0.25}
    assert "rolled back to step-6 (step 6) with the LR scaled to x0.25 (rollback 2/2)" in ctx.faults.handled[-1]["handled"]
    with pytest.raises(VlaforgeError, match=r"(?s)3 optimizer steps in a row had a NaN/Inf.*max_rollbacks=2.*Lower train.lr"):
        watch.check({"train/nonfinite_skips": 3, "train/nonfinite_streak": 3}, 9)
    assert ctx.faults.handled[-1]["handled"].startswith("run stopped")
