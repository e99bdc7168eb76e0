"""Fault handling of the driver: the fault log of a run, stage restarts from the last checkpoint, and the
rollback after a run of non-finite (NaN/Inf) optimizer steps.

    stage fn raises WorkerError(lost: a rank died or hung)  ->  new ranks, load latest checkpoint, go on
                                                                (runtime.max_stage_restarts times, then a report)
    learner metrics: train/nonfinite_streak >= N             ->  every rank back to the latest checkpoint,
                                                                LR x lr_factor (runtime.nonfinite), or a report

Every fault seen (and every chaos injection, vlaforge/platform/chaos.py) lands in the ``FaultLog``; the run
summary (summary.json, faults.json, the end-of-run printout) lists each with how it was handled.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from vlaforge.errors import VlaforgeError

log = logging.getLogger("vlaforge")


class FaultLog:
    """What went wrong during a run and what vlaforge did about it (chaos injections listed apart)."""

    def __init__(self) -> None:
        self.injected: list[dict[str, Any]] = []  # chaos mode: what was done to the run
        self.handled: list[dict[str, Any]] = []  # every fault seen and how it was handled

    def inject(self, stage: str, step: int, fault: str, detail: str) -> None:
        self.injected.append({"stage": stage, "step": int(step), "fault": fault, "detail": detail, "time": time.time()})
        log.warning("chaos: %s at %s step %d (%s)", fault, stage, step, detail)

    def handle(self, stage: str, step: int | None, fault: str, handled: str, detail: str = "") -> None:
        self.handled.append({"stage": stage, "step": step, "fault": fault, "handled": handled, "detail": detail[:500],
                             "time": time.time()})

    def to_dict(self) -> dict[str, list]:
        return {"injected": self.injected, "handled": self.handled}

    def lines(self) -> list[str]:
        out = []
        for e in self.injected:
            out.append(f"injected:    {e['stage']} step {e['step']}: {e['fault']} ({e['detail']})")
        for e in self.handled:
            at = f" step {e['step']}" if e["step"] is not None else ""
            out.append(f"fault:       {e['stage']}{at}: {e['fault']} -> {e['handled']}")
        return out

    def write(self, run_dir: Path) -> None:
        tmp = Path(run_dir) / "faults.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(Path(run_dir) / "faults.json")


def run_with_restarts(ctx: Any, stage: Any, fn: Callable[..., Path], recipe: Any, stage_dir: Path,
                      init: Path | None) -> Path:
    """Run a stage; a learner rank that died or hung (``WorkerError.lost``) restarts it from its last
    checkpoint with a new worker group, at most ``runtime.max_stage_restarts`` times. Anything else (a bug,
    a bad recipe, a user error) propagates at once: repeating it would fail the same way."""
    from vlaforge.runtime import checkpoint as ckpt
    from vlaforge.runtime.worker_group import WorkerError

    budget = recipe.runtime.max_stage_restarts
    attempt = 0
    while True:
        ctx.attempt, ctx.stage_step = attempt, None
        try:
            return fn(ctx, stage, recipe, stage_dir, init)
        except WorkerError as e:
            if not e.lost:
                raise
            try:
                latest = ckpt.find_latest(stage_dir)  # the newest that verifies (falls back past corrupt ones)
            except ckpt.CheckpointError as ce:  # none verifies: the restart will say so again, plainly
                latest = None
                log.warning("stage %s: %s", stage.name, ce)
            where = latest.name if latest is not None else "its start (no usable checkpoint)"
            fault = f"learner rank {e.rank} {e.kind}"
            if attempt >= budget:
                ctx.faults.handle(stage.name, ctx.stage_step, fault, "run stopped: stage restart budget spent", str(e))
                raise VlaforgeError(
                    f"stage {stage.name}: {e}\n  the stage was restarted {attempt} times (runtime.max_stage_restarts="
                    f"{budget}); stopping. Its last checkpoint: {latest or 'none'}. Fix the cause, then continue with "
                    "--resume (it starts from that checkpoint)") from e
            attempt += 1
            ctx.faults.handle(stage.name, ctx.stage_step, fault,
                              f"stage restarted from {where} with new ranks (restart {attempt}/{budget})", str(e))
            log.warning("stage %s: %s; restarting it from %s with new ranks (%d/%d)", stage.name, e, where, attempt, budget)


def load_latest(ctx: Any, stage: Any, learners: Any, stage_dir: Path) -> Path | None:
    """On --resume or a stage restart: every rank loads the stage's latest usable checkpoint. A newer
    checkpoint folder that was passed over (corrupt or incomplete: runtime.checkpoint falls back) is
    reported. Re-applies the LR scale of earlier rollbacks (the checkpoint may predate them)."""
    from vlaforge.runtime import checkpoint as ckpt

    if not (ctx.resume or ctx.attempt):
        return None
    try:
        latest = ckpt.find_latest(stage_dir)
    except ckpt.CheckpointError as e:  # no checkpoint of the stage verifies: say so, no traceback
        raise VlaforgeError(f"stage {stage.name}: cannot {'resume' if ctx.resume else 'restart'}: {e}") from None
    if latest is None:
        return None
    learners.call("load_checkpoint", str(latest))
    folders = ckpt.committed(ckpt.checkpoints_dir(stage_dir))  # oldest first, verified or not
    newest = folders[-1] if folders else None
    if newest is not None and newest != latest:
        ctx.faults.handle(stage.name, None, f"checkpoint {newest.name} unusable",
                          f"fell back to the previous complete checkpoint {latest.name}")
    scale = ctx.lr_scale.get(stage.name)
    if scale is not None:
        learners.call("set_lr_scale", scale)
    return latest


class NonFiniteWatch:
    """Driver side of NaN/Inf handling in one stage: logs skipped steps, rolls back after N in a row."""

    def __init__(self, ctx: Any, stage: Any, recipe: Any, stage_dir: Path, learners: Any):
        self.ctx, self.stage, self.stage_dir, self.learners = ctx, stage, stage_dir, learners
        self.cfg = recipe.runtime.nonfinite

    @property
    def limit(self) -> int:
        return self.cfg.max_consecutive

    def check(self, m: dict[str, float], step: int) -> int | None:
        """After a training call: None, or the step the stage rolled back to."""
        skips = int(m.get("train/nonfinite_skips", 0))
        if skips:
            self.ctx.faults.handle(self.stage.name, step, "non-finite loss or gradient",
                                   f"{skips} optimizer step(s) skipped on every rank (parameters and optimizer "
                                   f"state unchanged); {int(m.get('train/nonfinite_streak', 0))} in a row")
        if m.get("train/nonfinite_streak", 0) < self.cfg.max_consecutive:
            return None
        return self._rollback(step, int(m["train/nonfinite_streak"]))

    def _rollback(self, step: int, streak: int) -> int:
        from vlaforge.runtime import checkpoint as ckpt

        name = self.stage.name
        done = self.ctx.rollbacks.get(name, 0)
        latest = ckpt.find_latest(self.stage_dir)
        if done >= self.cfg.max_rollbacks or latest is None:
            why = (f"{done} rollbacks done (runtime.nonfinite.max_rollbacks={self.cfg.max_rollbacks})" if latest is not None
                   else "no checkpoint to roll back to yet")
            self.ctx.faults.handle(name, step, f"{streak} non-finite steps in a row", f"run stopped: {why}")
            raise VlaforgeError(
                f"stage {name}: {streak} optimizer steps in a row had a NaN/Inf loss or gradient at step {step} "
                f"(runtime.nonfinite.max_consecutive={self.cfg.max_consecutive}); {why}. Lower train.lr, check the "
                f"data for NaN/Inf values, or raise runtime.nonfinite.max_rollbacks. Last checkpoint: {latest or 'none'}")
        done += 1
        scale = self.cfg.lr_factor ** done
        self.ctx.rollbacks[name], self.ctx.lr_scale[name] = done, scale
        back = int(self.learners.call("rollback", str(latest), scale)[0])
        self.ctx.faults.handle(name, step, f"{streak} non-finite steps in a row",
                               f"rolled back to {latest.name} (step {back}) with the LR scaled to x{scale:g} "
                               f"(rollback {done}/{self.cfg.max_rollbacks})")
        log.warning("stage %s: %d non-finite steps in a row; rolled back to %s, LR x%g", name, streak, latest, scale)
        return back
