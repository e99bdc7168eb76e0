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
from vlaforge.platform.recovery import FaultLog, NonFiniteWatch, load_latest

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
    faults: FaultLog = field(default_factory=FaultLog)  # every fault seen / injected, and how it was handled
    chaos: object = None  # platform.chaos.Chaos when the recipe's chaos block is enabled
    attempt: int = 0  # restarts of the current stage so far (> 0: load its latest checkpoint first)
    stage_step: int | None = None  # progress of the current stage (step / update), for fault reports
    rollbacks: dict = field(default_factory=dict)  # stage -> non-finite rollbacks done
    lr_scale: dict = field(default_factory=dict)  # stage -> LR scale after its rollbacks
    warnings: list = field(default_factory=list)  # results that ran but are suspect (e.g. a collapsed codebook): summary


def learner_group(ctx: StageContext, actor_cls: type, recipe: Recipe, stage: StageConfig, t):
    """The stage's DeepSpeed ranks: bounded calls (runtime.timeouts.learner_call_s), liveness probes so a
    failure names the rank that hung or died."""
    from vlaforge.runtime.worker_group import WorkerGroup

    to = recipe.runtime.timeouts
    return WorkerGroup(actor_cls, t.num_learners, cpus_per_worker=t.cpus_per_learner, gpus_per_worker=t.gpus_per_learner,
                       name=f"{stage.name}-learners", timeout_s=to.learner_call_s, probe_s=to.probe_s, probe=True)


def chaos_tick(ctx: StageContext, stage: StageConfig, step: int, learners, stage_dir: Path, pool=None,
               steps_in_call: int = 1) -> None:
    if ctx.chaos is not None:
        ctx.chaos.before_train(stage.name, step, learners, stage_dir, pool, steps_in_call)


# (context, stage, the recipe as the stage sees it (its `set:` merged), stage folder, start policy) -> policy
StageFn = Callable[[StageContext, StageConfig, Recipe, Path, "Path | None"], Path]
STAGES: dict[str, StageFn] = {}


@dataclass(frozen=True)
class StageKind:
    """What `recipe check` needs to know of a stage kind, declared where it is registered (one registration)."""

    # train.objective values the stage runs; the first is its default (replaces the recipe's "bc" in an RL
    # stage). Empty: the stage builds no DeepSpeed learners from the train block.
    objectives: tuple[str, ...] = ()
    needs_policy: bool = False  # it fine-tunes / passes on a starting policy (no start from scratch)
    # Components the stage starts at the same time, phase after phase (CPU check): "demos" (demo workers),
    # "learners" (train.num_learners ranks), "rollout" (rollout.num_actors actors).
    phases: tuple[tuple[str, ...], ...] = ()
    reward_model: str | None = None  # "uses": RL reward from reward_model.* when enabled; "makes": trains one
    grouped: bool = False  # its objectives compare G rollouts per initial state (rollout.group_size, train.grpo)
    own_vision: bool = False  # it trains the policy's own vision encoder (policy.backbone.type "vlaforge")
    # What the stage returns: "policy" (one that acts in the env: evaluated), "same" (the policy it started from,
    # passed on, possibly none: lam), "latent" (a policy that predicts latent actions, not env actions: never
    # evaluated; a bc stage must follow before anything that acts).
    result: str = "policy"


STAGE_KINDS: dict[str, StageKind] = {}


def register_stage(kind: str, **meta):
    def deco(fn: StageFn) -> StageFn:
        STAGES[kind] = fn
        STAGE_KINDS[kind] = StageKind(**meta)
        return fn

    return deco


# recipe blocks whose values a finished stage's result depends on (a resumed run re-enters a finished
# stage when one of them changed, e.g. more train.steps, and continues from its latest checkpoint)
_RL_BLOCKS = ("train", "rollout", "reward_model", "envs")
STAGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "bc": ("train", "policy", "demos", "data"),
    "ppo": _RL_BLOCKS,
    "grpo": _RL_BLOCKS,
    "reward_model": ("reward_model", "rollout", "demos", "data"),
}


def stage_fingerprint(recipe: Recipe, stage: StageConfig) -> dict:
    blocks = STAGE_BLOCKS.get(stage.kind, ())
    return {"stage": stage.model_dump(mode="json"), **{b: getattr(recipe, b).model_dump(mode="json") for b in blocks}}


def save_if_due(ctx: StageContext, learners, stage_dir: Path, done: int, t) -> None:
    """Collective checkpoint every ``t.checkpoint_every`` steps (BC) or updates (RL), and at the end."""
    if done % t.checkpoint_every == 0 or done >= t.steps:
        with ctx.timers.phase("checkpoint"):
            learners.call("save_checkpoint", str(stage_dir))


def final_policy(stage: StageConfig, stage_dir: Path) -> Path:
    """The policy export inside the stage's newest checkpoint (every checkpoint carries one)."""
    from vlaforge.runtime import checkpoint as ckpt

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


@register_stage("bc", objectives=("bc",), phases=(("demos",), ("learners",)))
def run_bc(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    """Behaviour cloning on N DeepSpeed ranks with periodic atomic checkpoints; resumable."""
    from vlaforge.learners.deepspeed_learner import LearnerActor

    t = recipe.train
    dataset = dataset_for(ctx, recipe)
    learners = learner_group(ctx, LearnerActor, recipe, stage, t)
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup", t, recipe.policy, str(dataset), init_policy=str(init) if init else None,
                                 skip_bad_episodes=recipe.data.skip_bad_episodes,
                                 collective_timeout_s=recipe.runtime.timeouts.collective_s,
                                 timeout=recipe.runtime.timeouts.learner_setup_s)[0]
        report_skipped(ctx, stage, recipe, dataset, info)
        log.info("%s: %d DeepSpeed ranks, %.2fM parameters, %d samples%s", stage.name, info["world_size"],
                 info["num_params"] / 1e6, info["num_samples"], f", from {init}" if init else "")
        train_loop(ctx, stage, recipe, stage_dir, learners, t, "BC")
        return final_policy(stage, stage_dir)
    finally:
        learners.shutdown()


def report_skipped(ctx: StageContext, stage: StageConfig, recipe: Recipe, dataset: Path, info: dict) -> None:
    """Episodes the learners skipped as unreadable (data.skip_bad_episodes): in run.log, metrics, run summary."""
    if recipe.data.skip_bad_episodes:  # trained on the rest: counted in the metrics and the run summary
        if info["bad_episodes"]:
            log.warning("%s: skipped %d unreadable episode(s) of %s: %s", stage.name, len(info["bad_episodes"]),
                        dataset, "; ".join(f"{e}: {why}" for e, why in sorted(info["bad_episodes"].items())[:5]))
        ctx.metrics.log({"data/skipped_episodes": float(len(info["bad_episodes"]))}, step=ctx.step)
        ctx.metrics.summary({f"data/{stage.name}_skipped_episodes": len(info["bad_episodes"])})


def train_loop(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, learners, t, label: str,
               on_log: Callable[[int], dict] | None = None) -> None:
    """The step loop of the supervised stages (bc, lam, latent_pretrain): ``train_steps`` calls of t.log_every
    steps, metrics, non-finite rollbacks, periodic checkpoints; resumes from the stage's latest checkpoint.
    ``on_log(step)``: extra metrics after each call (e.g. codebook health)."""
    from tqdm import tqdm

    from vlaforge.platform.metrics import system_metrics

    step = 0
    latest = load_latest(ctx, stage, learners, stage_dir)
    if latest is not None:
        step = int(learners.call("get_global_step")[0])
        log.info("resumed %s from %s at step %d", stage.name, latest, step)
    base = ctx.step  # metric steps of this stage follow the previous stages'
    watch = NonFiniteWatch(ctx, stage, recipe, stage_dir, learners)
    bar = tqdm(total=t.steps, initial=step, desc=f"{stage.name} ({label})", unit="step")
    while step < t.steps:
        ctx.stage_step = step
        n = min(t.log_every, t.steps - step)
        chaos_tick(ctx, stage, step, learners, stage_dir, steps_in_call=n)
        with ctx.timers.phase("learn"):
            m = learners.call("train_steps", n, nonfinite_limit=watch.limit)[0]
        before, step = step, int(m["train/step"])  # skipped (non-finite) steps do not count
        bar.update(step - before)
        bar.set_postfix(loss=f"{m.get('train/loss', float('nan')):.4f}")
        extra = on_log(step) if on_log is not None else {}
        ctx.metrics.log({**m, **extra, **system_metrics()}, step=base + step)
        back = watch.check(m, step)
        if back is not None:
            bar.update(back - step)
            step = back
            continue
        save_if_due(ctx, learners, stage_dir, step, t)
    bar.close()
    ctx.step = base + step


def _rl_train_config(recipe: Recipe, stage: StageConfig):
    t = recipe.train
    if t.objective == "bc":  # the stage kind's default objective unless the stage's `set:` chose one
        t = t.model_copy(update={"objective": STAGE_KINDS[stage.kind].objectives[0]})
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
    from vlaforge.platform.metrics import system_metrics
    from vlaforge.platform.rl_reward import make_reward_hook
    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.platform.weight_sync import WeightSync

    if init is None:
        raise VlaforgeError(
            f"stage '{stage.name}' ({stage.kind}) needs a policy to fine-tune: put a bc stage before it or set "
            f"stages[].init to an exported policy / checkpoint / run folder"
        )
    t = _rl_train_config(recipe, stage)
    learners = learner_group(ctx, RLLearnerActor, recipe, stage, t)
    sync = WeightSync(recipe, learners)  # rollout.broadcast: object_store or collective
    pool = None
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup_rl", t, str(init), collective_timeout_s=recipe.runtime.timeouts.collective_s,
                                 timeout=recipe.runtime.timeouts.learner_setup_s)[0]
            update = 0
            latest = load_latest(ctx, stage, learners, stage_dir)
            if latest is not None:
                update = int(learners.call("rl_status")[0]["update"])
                log.info("resumed %s from %s at update %d", stage.name, latest, update)
            start_dir = stage_dir / "start-policy"  # the policy actors are built from (value head included)
            learners.call("export_policy", str(start_dir))
            handle = sync.publish()
        log.info("%s: %s on %d DeepSpeed ranks, %.2fM parameters (%s value head)", stage.name, t.objective,
                 info["world_size"], info["num_params"] / 1e6, "with" if info["value_head"] else "no")
        with ctx.timers.phase("rollout_setup"):
            pool = RolloutPool(recipe.envs, PolicySource.from_dir(start_dir), recipe.rollout,
                               resolve_tasks(recipe.envs.tasks), seed=recipe.seed, timeouts_cfg=recipe.runtime.timeouts)
            handle = sync.attach(pool, handle)
        scorer = make_reward_hook(ctx, recipe, t, stage_dir)  # platform/rl_reward.py: RM reward, diagnostics, refresh
        base = ctx.step
        watch = NonFiniteWatch(ctx, stage, recipe, stage_dir, learners)
        bar = tqdm(total=t.steps, initial=update, desc=f"{stage.name} ({t.objective})", unit="update")
        while update < t.steps:
            ctx.stage_step = update
            chaos_tick(ctx, stage, update, learners, stage_dir, pool)
            with ctx.timers.phase("rollout"):
                batch, handle = sync.sample(pool, handle)
            _drain_pool_events(ctx, stage, pool, update)
            reward_metrics = scorer(batch.data, update) if scorer is not None else {}
            with ctx.timers.phase("learn"):
                m = learners.call("train_rl", ray.put(batch.data))[0]
            back = watch.check(m, update + 1)
            if back is not None:  # rolled back: continue from the checkpoint's update with its weights
                update = int(learners.call("rl_status")[0]["update"])
                bar.reset(total=t.steps)
                bar.update(update)
                with ctx.timers.phase("broadcast"):
                    handle = sync.publish()
                continue
            with ctx.timers.phase("broadcast"):
                handle = sync.publish()
            update += 1
            bar.update(1)
            if "rollout/success_rate" in batch.metrics:
                bar.set_postfix(success=f"{batch.metrics['rollout/success_rate']:.2f}")
            ctx.metrics.log({**m, **batch.metrics, **reward_metrics, **system_metrics(),
                             "train/version": float(handle.version)}, step=base + update)
            save_if_due(ctx, learners, stage_dir, update, t)
        bar.close()
        ctx.step = base + update
        return final_policy(stage, stage_dir)
    finally:
        if pool is not None:
            _drain_pool_events(ctx, stage, pool, ctx.stage_step)
            pool.shutdown()
        learners.shutdown()


def _drain_pool_events(ctx: StageContext, stage: StageConfig, pool, step) -> None:
    """Rollout actor failures the pool handled (died, hung, env kept failing) into the run's fault log."""
    for e in pool.events:
        ctx.faults.handle(stage.name, step, f"{e['fault']} (actor {e['rank']})", e["handled"], e["detail"])
    pool.events.clear()


_RL = dict(needs_policy=True, phases=(("learners", "rollout"),), reward_model="uses")
register_stage("ppo", objectives=("ppo",), **_RL)(run_rl)
register_stage("grpo", objectives=("grpo", "rloo"), grouped=True, **_RL)(run_rl)


def reward_model_dir(ctx: StageContext, recipe: Recipe) -> Path | None:
    """The reward model RL uses: reward_model.model_dir, else the newest reward_model stage of this run."""
    if recipe.reward_model.model_dir:
        return Path(recipe.reward_model.model_dir).expanduser().resolve()
    for st in reversed(recipe.stages):
        if st.kind == "reward_model" and (ctx.run_dir / st.name / "reward_model").exists():
            return ctx.run_dir / st.name / "reward_model"
    return None


@register_stage("reward_model", needs_policy=True, phases=(("demos",), ("rollout",)), reward_model="makes")
def run_reward_model(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    """Train the reward model on labeled demonstrations and on the starting policy's own rollouts (its
    successes and failures, labeled by the simulator), report held-out accuracy, save it beside the stage.
    The policy passes through unchanged."""
    from vlaforge.envs import ALL_TASKS, resolve_tasks
    from vlaforge.learners.reward_data import build_reward_data
    from vlaforge.learners.reward_model import train_reward_model
    from vlaforge.policies.reward_model import save_reward_model

    cfg = recipe.reward_model
    rollouts = []
    if init is not None and recipe.rollout.num_actors > 0:
        from tqdm import tqdm

        from vlaforge.actors.rollout import PolicySource
        from vlaforge.platform.rollout_pool import RolloutPool

        # sync: consecutive samples keep their rows, so episodes cut by the sample window are joined whole
        # (episodes_from_rollouts) and the held-out split never puts one episode on both sides
        sync = recipe.rollout.model_copy(update={"mode": "sync"})
        with ctx.timers.phase("rollout"), RolloutPool(recipe.envs, PolicySource.from_dir(init), sync,
                                                      resolve_tasks(recipe.envs.tasks), seed=recipe.seed + 7,
                                                      timeouts_cfg=recipe.runtime.timeouts) as pool:
            for i in tqdm(range(cfg.rollout_batches), desc=f"{stage.name} rollouts", unit="batch"):
                rollouts.append(pool.sample(None).data)
                _drain_pool_events(ctx, stage, pool, i)
    with ctx.timers.phase("reward_model"):
        train, heldout = build_reward_data(cfg, datasets=[dataset_for(ctx, recipe)], rollouts=rollouts,
                                           task_names=list(ALL_TASKS), seed=recipe.seed,
                                           skip_bad_episodes=recipe.data.skip_bad_episodes)
        model, processor, metrics = train_reward_model(train, cfg, eval_data=heldout)
    save_reward_model(stage_dir / "reward_model", model, processor, extra={"metrics": metrics})
    ctx.metrics.log({f"reward/{k.replace('/', '_')}": v for k, v in metrics.items()}, step=ctx.step)
    log.info("reward model: %s", ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if "eval" in k))
    if init is None:
        raise VlaforgeError(f"stage '{stage.name}' (reward_model) needs a policy to pass on: put a bc stage first")
    return init


# Stage kinds registered in their own modules (imported here, after register_stage exists, so that whoever reads
# STAGES -- the driver, `recipe check` -- sees them).
from vlaforge.platform import stages_latent  # noqa: E402,F401 -- lam, latent_pretrain
from vlaforge.platform import stages_ssl  # noqa: E402,F401 -- visual_ssl
