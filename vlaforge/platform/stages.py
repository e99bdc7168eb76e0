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


# (context, stage, the recipe as the stage sees it (its `set:` merged), stage folder, start policy) -> policy
StageFn = Callable[[StageContext, StageConfig, Recipe, Path, "Path | None"], Path]
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


def final_policy(stage: StageConfig, stage_dir: Path) -> Path:
    """The policy export inside the stage's newest checkpoint (every checkpoint carries one)."""
    from vlaforge.platform import checkpoint as ckpt

    final = ckpt.find_latest(stage_dir)
    if final is None:
        raise VlaforgeError(f"{stage_dir}: stage {stage.name} ended without a checkpoint")
    return final / "policy"


def dataset_for(ctx: StageContext, recipe: Recipe) -> Path:
    """The stage's training data, built (or found in the demo cache) once per distinct config."""
    key = ("dataset", recipe.envs.model_dump_json(), recipe.demos.model_dump_json(), recipe.data.model_dump_json())
    if key not in ctx.cache:
        from vlaforge.platform.driver import make_demos

        with ctx.timers.phase("demos"):
            ctx.cache[key] = make_demos(recipe)
        log.info("training data: %s", ctx.cache[key])
    return ctx.cache[key]


@register_stage("bc")
def run_bc(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    """Behaviour cloning on N DeepSpeed ranks with periodic atomic checkpoints; resumable."""
    from tqdm import tqdm

    from vlaforge.learners.deepspeed_learner import LearnerActor
    from vlaforge.platform import checkpoint as ckpt
    from vlaforge.platform.metrics import system_metrics
    from vlaforge.platform.worker_group import WorkerGroup

    t = recipe.train
    dataset = dataset_for(ctx, recipe)
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
        return final_policy(stage, stage_dir)
    finally:
        learners.shutdown()


def _rl_train_config(recipe: Recipe, stage: StageConfig):
    t = recipe.train
    if t.objective == "bc":  # the stage kind names the objective unless the stage's `set:` chose one
        t = t.model_copy(update={"objective": stage.kind})
    return t


def run_rl(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    """RL fine-tuning: rollout actors (weights v) -> DeepSpeed update -> broadcast v+1, ``train.steps`` times.

    One iteration reads like the algorithm: sample with the current handle, score (env or reward model),
    one PPO/GRPO update on every rank, publish the new weights. ``train.steps`` counts updates here.
    """
    import ray
    from tqdm import tqdm

    from vlaforge.actors.rollout import PolicySource
    from vlaforge.envs import resolve_tasks
    from vlaforge.learners.rl_learner import RLLearnerActor
    from vlaforge.platform import checkpoint as ckpt
    from vlaforge.platform.metrics import system_metrics
    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.platform.worker_group import WorkerGroup

    if init is None:
        raise VlaforgeError(
            f"stage '{stage.name}' ({stage.kind}) needs a policy to fine-tune: put a bc stage before it or set "
            f"stages[].init to an exported policy / checkpoint / run folder"
        )
    t = _rl_train_config(recipe, stage)
    learners = WorkerGroup(RLLearnerActor, t.num_learners, cpus_per_worker=t.cpus_per_learner,
                           gpus_per_worker=t.gpus_per_learner, name=f"{stage.name}-learners")
    pool = None
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup_rl", t, str(init))[0]
            update = 0
            latest = ckpt.find_latest(stage_dir) if ctx.resume else None
            if latest is not None:
                learners.call("load_checkpoint", str(latest))
                update = int(learners.call("rl_status")[0]["update"])
                log.info("resumed %s from %s at update %d", stage.name, latest, update)
            start_dir = stage_dir / "start-policy"  # the policy actors are built from (value head included)
            learners.call("export_policy", str(start_dir))
            handle = learners.call("publish_weights")[0]
        log.info("%s: %s on %d DeepSpeed ranks, %.2fM parameters (%s value head)", stage.name, t.objective,
                 info["world_size"], info["num_params"] / 1e6, "with" if info["value_head"] else "no")
        with ctx.timers.phase("rollout_setup"):
            pool = RolloutPool(recipe.envs, PolicySource.from_dir(start_dir), recipe.rollout,
                               resolve_tasks(recipe.envs.tasks), seed=recipe.seed)
        scorer = make_reward_hook(ctx, recipe)
        base = ctx.step
        bar = tqdm(total=t.steps, initial=update, desc=f"{stage.name} ({t.objective})", unit="update")
        while update < t.steps:
            with ctx.timers.phase("rollout"):
                batch = pool.sample(handle)
            reward_metrics = scorer(batch.data) if scorer is not None else {}
            with ctx.timers.phase("learn"):
                m = learners.call("train_rl", ray.put(batch.data))[0]
            with ctx.timers.phase("broadcast"):
                handle = learners.call("publish_weights")[0]
            update += 1
            bar.update(1)
            if "rollout/success_rate" in batch.metrics:
                bar.set_postfix(success=f"{batch.metrics['rollout/success_rate']:.2f}")
            ctx.metrics.log({**m, **batch.metrics, **reward_metrics, **system_metrics(),
                             "train/version": float(handle.version)}, step=base + update)
            if update % t.checkpoint_every == 0 or update >= t.steps:
                with ctx.timers.phase("checkpoint"):
                    learners.call("save_checkpoint", str(stage_dir))
        bar.close()
        ctx.step = base + update
        return final_policy(stage, stage_dir)
    finally:
        if pool is not None:
            pool.shutdown()
        learners.shutdown()


for _kind in ("ppo", "grpo"):
    register_stage(_kind)(run_rl)


def make_reward_hook(ctx: StageContext, recipe: Recipe):
    """None for env rewards; reward-model scoring is wired in by the reward-model integration."""
    return None
