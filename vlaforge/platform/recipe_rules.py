"""Cross-field rules of a recipe, checked at load time (``vlaforge recipe check`` and the start of ``train``).

Field-level limits live in the config models; what needs two blocks at once lives here: batch vs learner
ranks, CPUs needed vs the cluster, stage kinds vs objectives, chunk sizes vs episode lengths, rollout
horizons vs group scoring, seeds, paths. Every rule runs on each stage AS IT WILL RUN (its ``set:`` merged
over the top level), so an error points at the line that set the value -- in a ``set:`` block or not.

A rule is a function ``(view, ctx) -> [(key path, value, what is expected)]`` registered with ``@rule``;
what a stage kind starts, needs and runs comes from its registration (``platform/stages.py`` StageKind),
so a new stage kind is checked without an edit here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlaforge.platform.config import Recipe, StageConfig
from vlaforge.platform.recipe_names import problem
from vlaforge.platform.stages import STAGE_KINDS, StageKind

Path_ = tuple[str, ...]
Finding = tuple[Path_, object, str]  # (key path, value, what is wrong and what is expected)


@dataclass
class View:
    """One stage as it will run."""

    index: int
    stage: StageConfig
    recipe: Recipe  # the stage's recipe: its `set:` merged over the top level
    src: object  # recipe.Source with the stage's locations (keys set in `set:` point there)

    @property
    def kind(self) -> StageKind:
        return STAGE_KINDS.get(self.stage.kind, StageKind())  # unknown kinds are reported by recipe_names


@dataclass
class Context:
    views: list[View]
    cpus: float | None  # CPUs of the cluster the run starts; None: an existing cluster (not known here)
    local: bool  # the driver runs here and reads the recipe's paths (ray.address is null)
    notes: list[str] = field(default_factory=list)


Rule = Callable[[View, Context], Iterable[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _objective(v: View) -> str:
    """The objective the stage runs: its default replaces the recipe's "bc" (stages._rl_train_config)."""
    obj, allowed = v.recipe.train.objective, v.kind.objectives
    return allowed[0] if obj == "bc" and allowed and "bc" not in allowed else obj


# -- stages, objectives, learners ---------------------------------------------------------------------------
@rule
def stage_runs_objective(v: View, ctx: Context):
    allowed = v.kind.objectives
    obj = _objective(v)
    if allowed and obj not in allowed:  # (an unknown name was refused before the rules run: recipe_names)
        other = [k for k, m in STAGE_KINDS.items() if obj in m.objectives]
        hint = f"; objective {obj!r} runs in a stage of kind {' or '.join(other)}" if other else ""
        yield (("train", "objective"), v.recipe.train.objective,
               f"a stage of kind {v.stage.kind!r} runs train.objective {' or '.join(map(repr, allowed))}{hint}")


@rule
def batch_splits_over_ranks(v: View, ctx: Context):
    if not v.kind.objectives:
        return
    t = v.recipe.train
    b, n = t.batch_size, t.num_learners
    if b % n:
        yield (("train", "batch_size"), b,
               f"must be a multiple of train.num_learners ({n}): DeepSpeed splits the global batch into one equal "
               f"micro batch per rank (train_batch_size = micro batch x ranks, no gradient accumulation); "
               f"try {n * max(1, round(b / n))}")


@rule
def rollout_rows_per_rank(v: View, ctx: Context):
    if not any("learners" in p and "rollout" in p for p in v.kind.phases):
        return
    r, n = v.recipe.rollout, v.recipe.train.num_learners
    rows = r.num_actors * r.envs_per_actor
    if rows < n:
        yield (("rollout", "num_actors"), r.num_actors,
               f"rollout.num_actors x rollout.envs_per_actor = {rows} rollout rows per update cannot be split over "
               f"train.num_learners ({n}) ranks: every rank trains on its share of the rows; sample >= {n} rows")


@rule
def group_relative_objectives(v: View, ctx: Context):
    """A grouped stage's objectives (grpo, rloo) compare G rollouts of one initial state and score each row's
    first episode (StageKind.grouped)."""
    if not v.kind.grouped:
        return
    name = _objective(v)
    r, g = v.recipe.rollout, v.recipe.train.grpo
    need = max(2, g.min_group_size)
    if r.group_size < need:
        yield (("rollout", "group_size"), r.group_size,
               f"objective {name!r} needs G >= train.grpo.min_group_size ({g.min_group_size}, at least 2) rollouts "
               f"per initial state: set rollout.group_size >= {need} (rollout.envs_per_actor a multiple of it)")
    yield from _rows_cover_episodes(v, f"objective {name!r} scores each row's first episode and every sample call "
                                       "starts fresh episodes")


def _rows_cover_episodes(v: View, why: str):
    """A sample call that starts fresh episodes must run one to its end: T x n_action_steps >= max_episode_steps."""
    r, k, m = v.recipe.rollout, v.recipe.policy.n_action_steps, v.recipe.envs.max_episode_steps
    if r.steps_per_sample * k < m:
        yield (("rollout", "steps_per_sample"), r.steps_per_sample,
               f"{why}: steps_per_sample x policy.n_action_steps = {r.steps_per_sample * k} env steps would cut "
               f"episodes of envs.max_episode_steps = {m} short; use steps_per_sample >= {math.ceil(m / k)}")


@rule
def ppo_rollouts(v: View, ctx: Context):
    """PPO's stored values and old log-probs must come from the weights it updates: sync rollouts only; whole
    episode rows must cover an episode."""
    if "ppo" not in v.kind.objectives:
        return
    r = v.recipe.rollout
    if r.mode != "sync":
        yield (("rollout", "mode"), r.mode,
               "PPO runs with rollout.mode 'sync' only: its advantages and ratios use the values and log-probs stored "
               "at sampling time, which in async mode come from older weights than the bootstrap values and the "
               "update (a version mix); use mode: sync")
    if r.episode_rows:
        yield from _rows_cover_episodes(v, "rollout.episode_rows makes each row one whole episode")


@rule
def gaussian_head_options(v: View, ctx: Context):
    """The gaussian head's std mode and clipping exist for that head only; clipping to [-1, 1] is the data range
    only under min_max action normalisation."""
    h, p = v.recipe.policy.head, v.recipe.policy
    for key, value, default in (("std", h.std, "param"), ("clip_actions", h.clip_actions, False)):
        if value != default and h.type != "gaussian":
            yield (("policy", "head", key), value, f"is an option of policy.head.type 'gaussian' (this recipe's head "
                                                   f"is {h.type!r}); remove it")
    if h.clip_actions and p.action_norm != "min_max":
        yield (("policy", "head", "clip_actions"), True,
               f"clips to the normalised box [-1, 1], which is the demos' action range only with policy.action_norm "
               f"'min_max' (got {p.action_norm!r}); use min_max or clip_actions: false")


@rule
def trains_own_vision(v: View, ctx: Context):
    """Stages that train the policy's own vision encoder (visual_ssl: StageKind.own_vision)."""
    if v.kind.own_vision and v.recipe.policy.backbone.type != "vlaforge":
        yield (("policy", "backbone", "type"), v.recipe.policy.backbone.type,
               f"a stage of kind {v.stage.kind!r} trains the policy's own vision encoder: use backbone 'vlaforge'")


@rule
def video_frames_fit_the_policy(v: View, ctx: Context):
    """mp4 video is resized to data.video.image_size: the policy sees envs.image_size frames (rollouts match it)."""
    vid = v.recipe.data.video
    if v.index == 0 and vid is not None and vid.source == "mp4" and vid.image_size not in (None, v.recipe.envs.image_size):
        yield (("data", "video", "image_size"), vid.image_size,
               f"the policy's frames are envs.image_size = {v.recipe.envs.image_size} px: set data.video.image_size "
               f"to {v.recipe.envs.image_size} (or null when the videos already have that size)")


# -- chunks, episodes, rollouts ---------------------------------------------------------------------------
@rule
def chunk_fits_episode(v: View, ctx: Context):
    c, m = v.recipe.policy.chunk_size, v.recipe.envs.max_episode_steps
    if c > m:
        yield (("policy", "chunk_size"), c,
               f"cannot exceed envs.max_episode_steps ({m}): a chunk longer than an episode predicts actions that "
               f"never run (and policy.n_action_steps <= chunk_size <= max_episode_steps)")


@rule
def chaos_schedule_fits_stages(v: View, ctx: Context):
    """chaos.schedule entries name a stage of the recipe whose kind the fault can hit (rollout faults need
    rollout actors; learner / checkpoint / NaN faults need DeepSpeed learners). Checked once, on stage 0."""
    if v.index != 0 or not v.recipe.chaos.enabled:
        return
    kinds = {w.stage.name: w.kind for w in ctx.views}
    for i, ev in enumerate(v.recipe.chaos.schedule):
        rollout = ev.fault in ("kill_rollout_actor", "stop_rollout_actor")
        fits = [n for n, k in kinds.items()
                if (any("rollout" in p for p in k.phases) if rollout else bool(k.objectives))]
        if ev.stage is not None and ev.stage not in kinds:
            yield (("chaos", "schedule", str(i), "stage"), ev.stage, f"a stage name of this recipe: {sorted(kinds)}")
        elif (ev.stage is not None and ev.stage not in fits) or not fits:
            yield (("chaos", "schedule", str(i), "fault"), ev.fault,
                   f"a fault that stage {ev.stage or '(any)'} can meet: {ev.fault} needs "
                   f"{'rollout actors' if rollout else 'DeepSpeed learners'} (stages that have them: {fits or 'none'})")


@rule
def render_backend_installed(v: View, ctx: Context):
    """envs.render_backend 'warp' (the default) needs MuJoCo-Warp on the machine that runs the envs; looked
    up without importing it (recipe check stays cheap). On an existing cluster the actors' machines decide."""
    r = v.recipe
    if r.envs.render_backend != "warp" or not ctx.local:
        return
    import importlib.util

    missing = [m for m in ("mujoco_warp", "warp") if importlib.util.find_spec(m) is None]
    if missing:
        yield (("envs", "render_backend"), "warp",
               f"MuJoCo-Warp rendering, but {' and '.join(missing)} cannot be imported here: install mujoco-warp==4.0.0 "
               f"and warp-lang==1.19.0 (scripts/setup.sh does), or use render_backend 'plain'")


# -- what a stage needs from the stages before it --------------------------------------------------------------
@rule
def starting_policy(v: View, ctx: Context):
    if not v.kind.needs_policy:
        return
    init, i = v.stage.init, v.index
    if init == "scratch":
        yield (("stages", str(i), "init"), init,
               f"a {v.stage.kind} stage needs a policy to start from: 'previous' after a bc stage, or a path")
    elif init == "previous" and i == 0:
        yield (("stages", str(i), "kind"), v.stage.kind,
               f"a {v.stage.kind} stage needs a policy to start from, and the first stage has none: put a bc stage "
               f"before it or set stages.{i}.init to an exported policy / checkpoint / run folder")


@rule
def reward_model_available(v: View, ctx: Context):
    rm = v.recipe.reward_model
    if v.kind.reward_model != "uses" or not rm.enabled or rm.model_dir:
        return
    if not any(STAGE_KINDS.get(w.stage.kind, StageKind()).reward_model == "makes" for w in ctx.views[: v.index]):
        yield (("reward_model", "enabled"), True,
               f"stage '{v.stage.name}' scores its rollouts with a reward model but none is given: set "
               f"reward_model.model_dir or put a reward_model stage before it")


@rule
def reward_model_refresh(v: View, ctx: Context):
    """A refresh joins the episodes of consecutive samples by row (platform/rl_reward.py): sync sampling only."""
    rm = v.recipe.reward_model
    if v.kind.reward_model == "uses" and rm.enabled and rm.refresh.every and v.recipe.rollout.mode != "sync":
        yield (("rollout", "mode"), v.recipe.rollout.mode,
               "'sync' with reward_model.refresh.every > 0: a refresh joins episodes across consecutive samples by "
               "simulator, which async sampling reorders (or set reward_model.refresh.every: 0)")
    if v.kind.reward_model == "uses" and rm.enabled and rm.refresh.every > v.recipe.train.steps:
        yield (("reward_model", "refresh", "every"), rm.refresh.every,
               f"<= train.steps ({v.recipe.train.steps}) of stage '{v.stage.name}', or it never refreshes")


@rule
def reward_model_reaches_the_objective(v: View, ctx: Context):
    """A grouped objective scoring "success" reads the simulator's success flag, never the reward: an RM reward
    there would be computed and ignored."""
    rm = v.recipe.reward_model
    if v.kind.grouped and rm.enabled and (rm.mode != "env" or rm.shaping > 0) and v.recipe.train.grpo.score == "success":
        yield (("train", "grpo", "score"), "success",
               f"'return' with reward_model.mode {rm.mode!r} / shaping {rm.shaping}: the 'success' score reads the "
               "simulator's success flag and ignores the reward the reward model writes")


# -- instructions and seeds ------------------------------------------------------------------------------
@rule
def heldout_instructions(v: View, ctx: Context):
    e = v.recipe.envs
    for path, split in ((("envs", "instructions"), e.instructions), (("eval", "instructions"), v.recipe.eval.instructions)):
        if split == "heldout" and e.heldout_paraphrases == 0:
            yield (path, split, "'heldout' needs envs.heldout_paraphrases >= 1 (0 holds no paraphrase out)")
    if e.backend == "metaworld":
        from vlaforge.envs.instructions import ALL_TASKS, paraphrases

        most = min(len(paraphrases(t)) for t in ALL_TASKS) - 1  # keep >= 1 paraphrase for training
        if e.heldout_paraphrases > most:
            yield (("envs", "heldout_paraphrases"), e.heldout_paraphrases,
                   f"at most {most}: every Meta-World task has {most + 1} paraphrases and training needs one")


@rule
def eval_seeds_unseen(v: View, ctx: Context):
    r = v.recipe
    if r.data.path or not r.eval.enabled:
        return
    d, ev = r.demos, r.eval
    lo, hi = d.seed, d.seed + d.max_attempts_factor * d.episodes_per_task  # demo reset seeds [lo, hi)
    for key, first in (("seed_offset", ev.seed_offset), ("validation_seed_offset", ev.validation_seed_offset)):
        if first < hi and lo < first + ev.episodes_per_task:
            yield (("eval", key), first,
                   f"evaluation seeds [{first}, {first + ev.episodes_per_task}) overlap the demo seeds "
                   f"[{lo}, {hi}) (demos.seed + max_attempts_factor x episodes_per_task): evaluation would replay "
                   f"training initial states; use eval.{key} >= {hi}")


# -- the machine: paths and CPUs ---------------------------------------------------------------------------
@rule
def paths_exist(v: View, ctx: Context):
    if not ctx.local:
        return
    r = v.recipe
    if r.data.path and not (Path(r.data.path).expanduser() / "meta" / "info.json").is_file():
        yield (("data", "path"), r.data.path, "a LeRobot v3 dataset folder (with meta/info.json)")
    if v.stage.init not in ("previous", "scratch") and not Path(v.stage.init).expanduser().exists():
        yield (("stages", str(v.index), "init"), v.stage.init,
               "'previous', 'scratch' or an existing policy / checkpoint / run folder")
    rm = r.reward_model
    if rm.model_dir and (rm.enabled or v.kind.reward_model) and not Path(rm.model_dir).expanduser().is_dir():
        yield (("reward_model", "model_dir"), rm.model_dir, "an existing reward model folder (save_reward_model)")


def _components(r: Recipe) -> dict[str, list[tuple[Path_, int, float]]]:
    """component -> [(key path of the count, count, CPUs each)] (Ray resources as the stages request them)."""
    return {
        "demos": [] if r.data.path else [(("demos", "num_workers"), r.demos.num_workers, 1.0)],  # data/demos.py
        "learners": [(("train", "num_learners"), r.train.num_learners, r.train.cpus_per_learner)],
        "rollout": [(("rollout", "num_actors"), r.rollout.num_actors, r.rollout.cpus_per_actor)],
        "eval": [(("eval", "num_workers"), r.eval.num_workers, 1.0)],  # platform/evaluation.py
    }


@rule
def cpus_fit_cluster(v: View, ctx: Context):
    """Actors that do not fit wait for CPUs that never free up (a hang), or a placement group times out."""
    if ctx.cpus is None:
        return
    r, parts = v.recipe, _components(v.recipe)
    phases = list(v.kind.phases)
    if r.eval.enabled and (v.stage.eval_end or v.stage.eval_start):
        phases.append(("eval",))
    for phase in phases:
        items = [it for c in phase for it in parts.get(c, [])]
        need = sum(n * c for _, n, c in items)
        if need > ctx.cpus + 1e-9:
            # point at a count the recipe sets (largest first), else at ray.num_cpus or the stage itself
            explicit = [it for it in items if it[0] in v.src.where]
            path, n, _ = max(explicit or items, key=lambda it: it[1] * it[2])
            if not explicit:
                path, n = (("ray", "num_cpus"), r.ray.num_cpus) if ("ray", "num_cpus") in v.src.where else \
                    (("stages", str(v.index)), v.stage.name)
            what = " + ".join(f"{'.'.join(p)} ({k}) x {c:g} CPU" for p, k, c in items)
            have = (f"ray.num_cpus = {r.ray.num_cpus:g}" if r.ray.num_cpus else f"the {ctx.cpus:g} CPUs of this machine "
                    "(ray.num_cpus: null)")
            yield (path, n, f"stage '{v.stage.name}' starts {what} = {need:g} CPUs at once, more than the embedded Ray "
                            f"cluster has ({have}): lower these counts or raise ray.num_cpus")


def machine_cpus() -> float:
    """CPUs an embedded Ray cluster detects here: the CPU count, or the container's cgroup quota (as Ray does)."""
    n = float(os.cpu_count() or 1)
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1.0, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def check_rules(views: list[View], recipe: Recipe) -> tuple[list[str], list[str]]:
    """Run every rule on every stage -> (error lines, notes). A problem seen by several stages is one line."""
    local = recipe.ray.address is None
    cpus = (float(recipe.ray.num_cpus) if recipe.ray.num_cpus else machine_cpus()) if local else None
    ctx = Context(views, cpus, local)
    if not local:
        ctx.notes.append(f"ray.address is {recipe.ray.address!r} (an existing cluster): its CPUs and files are not "
                         "known here, so the CPU and path checks were skipped")
    found: dict[str, list[str]] = {}
    for v in views:
        for fn in RULES:
            for path, value, msg in fn(v, ctx):
                found.setdefault(problem(v.src, path, value, msg), []).append(v.stage.name)
    lines = []
    for msg, stages in found.items():
        label = f" [stage{'s' if len(stages) > 1 else ''} {', '.join(dict.fromkeys(stages))}]"
        lines.append(msg + (label if len(views) > 1 else ""))
    return lines, ctx.notes


from vlaforge.platform import recipe_rules_latent  # noqa: E402,F401 -- registers the latent-action stage rules
