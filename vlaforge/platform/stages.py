"""Stage runners: one function per stage kind, in a registry (not an if/elif chain).

A stage gets the policy it starts from (an exported policy folder, or None for scratch), trains in its
own folder ``<run>/<stage>/`` and returns the exported policy folder it produced. The driver evaluates
before and after, so the gain of every stage is visible on the same fixed initial states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vlaforge.errors import VlaforgeError
from vlaforge.platform.config import Recipe, StageConfig

log = logging.getLogger("vlaforge")


@dataclass
class StageContext:
    recipe: Recipe
    run_dir: Path
    metrics: object  # MetricsLogger
    timers: object  # driver.Timers
    resume: bool
    step: int = 0  # global metric step across stages (wandb needs it monotonic)
    cache: dict = field(default_factory=dict)  # e.g. the demo dataset path, built once per run


StageFn = Callable[[StageContext, StageConfig, Path, "Path | None"], Path]
STAGES: dict[str, StageFn] = {}


def register_stage(kind: str):
    def deco(fn: StageFn) -> StageFn:
        STAGES[kind] = fn
        return fn

    return deco


# recipe blocks whose values a finished stage's result depends on (a resumed run re-enters a finished
# stage when one of them changed, e.g. more train.steps, and continues from its latest checkpoint)
STAGE_BLOCKS: dict[str, tuple[str, ...]] = {"bc": ("train", "policy", "demos", "data")}


def stage_fingerprint(recipe: Recipe, stage: StageConfig) -> dict:
    blocks = STAGE_BLOCKS.get(stage.kind, ())
    return {"stage": stage.model_dump(mode="json"), **{b: getattr(recipe, b).model_dump(mode="json") for b in blocks}}


def dataset_for(ctx: StageContext) -> Path:
    if "dataset" not in ctx.cache:
        from vlaforge.platform.driver import make_demos

        with ctx.timers.phase("demos"):
            ctx.cache["dataset"] = make_demos(ctx.recipe)
        log.info("training data: %s", ctx.cache["dataset"])
    return ctx.cache["dataset"]


@register_stage("bc")
def run_bc(ctx: StageContext, stage: StageConfig, stage_dir: Path, init: Path | None) -> Path:
    """Behaviour cloning on N DeepSpeed ranks with periodic atomic checkpoints; resumable."""
    from tqdm import tqdm

    from vlaforge.learners.deepspeed_learner import LearnerActor
    from vlaforge.platform import checkpoint as ckpt
    from vlaforge.platform.metrics import system_metrics
    from vlaforge.platform.worker_group import WorkerGroup

    recipe, t = ctx.recipe, ctx.recipe.train
    dataset = dataset_for(ctx)
    learners = WorkerGroup(LearnerActor, t.num_learners, cpus_per_worker=t.cpus_per_learner,
                           gpus_per_worker=t.gpus_per_learner, name=f"{stage.name}-learners")
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup", t, recipe.policy, str(dataset),
                                 init_policy=str(init) if init else None)[0]
        log.info("%s: %d DeepSpeed ranks, %.2fM parameters, %d samples%s", stage.name, info["world_size"],
                 info["num_params"] / 1e6, info["num_samples"], f", from {init}" if init else "")
        step = 0
        latest = ckpt.find_latest(stage_dir) if ctx.resume else None
        if latest is not None:
            step = learners.call("load_checkpoint", str(latest))[0]
            log.info("resumed %s from %s at step %d", stage.name, latest, step)
        base = ctx.step  # metric steps of this stage follow the previous stages'
        bar = tqdm(total=t.steps, initial=step, desc=f"{stage.name} (BC)", unit="step")
        while step < t.steps:
            n = min(t.log_every, t.steps - step)
            with ctx.timers.phase("learn"):
                m = learners.call("train_steps", n)[0]
            step = int(m["train/step"])
            bar.update(n)
            bar.set_postfix(loss=f"{m['train/loss']:.4f}")
            ctx.metrics.log({**m, **system_metrics()}, step=base + step)
            if step % t.checkpoint_every == 0 or step >= t.steps:
                with ctx.timers.phase("checkpoint"):
                    learners.call("save_checkpoint", str(stage_dir))
        bar.close()
        ctx.step = base + step
        final = ckpt.find_latest(stage_dir)
        if final is None:
            raise VlaforgeError(f"{stage_dir}: stage {stage.name} ended without a checkpoint")
        return final / "policy"  # every checkpoint carries the safetensors export
    finally:
        learners.shutdown()
