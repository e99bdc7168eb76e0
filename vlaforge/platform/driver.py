"""The stage driver: it reads like the algorithm.

    demos (cached)  ->  learners: DeepSpeed BC, checkpoints  ->  export policy  ->  evaluation

Named groups, explicit waits, one timer per phase (RLinf's embodied runner). Every user-visible
artefact lands in the run directory: recipe.yaml, run.log, metrics.jsonl, checkpoints/, eval/eval.json.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from vlaforge.errors import VlaforgeError
from vlaforge.platform.config import Recipe
from vlaforge.platform.recipe import dump_recipe, load_recipe

log = logging.getLogger("vlaforge")


class Timers:
    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[f"time/{name}_s"] = self.totals.get(f"time/{name}_s", 0.0) + time.perf_counter() - t0


# -- run directory -------------------------------------------------------------------------------------
def prepare_run_dir(recipe: Recipe, run_dir: Path | None, resume: bool) -> Path:
    if resume:
        if run_dir is None:
            raise VlaforgeError("--resume needs --run-dir DIR (the run to continue)")
        if not (run_dir / "recipe.yaml").exists():
            raise VlaforgeError(f"{run_dir}: nothing to resume (no recipe.yaml in it)")
        saved = load_recipe(run_dir / "recipe.yaml")
        for block in ("envs", "policy"):
            if getattr(saved, block) != getattr(recipe, block):
                raise VlaforgeError(
                    f"--resume: the recipe's '{block}' block differs from the one {run_dir} was started with "
                    f"({run_dir / 'recipe.yaml'}); a checkpoint cannot continue under a different {block} config"
                )
    else:
        if run_dir is None:
            run_dir = Path("runs") / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
        if (run_dir / "recipe.yaml").exists():
            raise VlaforgeError(
                f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "recipe.yaml.tmp"
    tmp.write_text(dump_recipe(recipe))
    tmp.replace(run_dir / "recipe.yaml")
    return run_dir


def _setup_logging(run_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fh = logging.FileHandler(run_dir / "run.log")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    log.addHandler(fh)
    log.addHandler(sh)
    log.propagate = False


def _init_ray(recipe: Recipe) -> None:
    from vlaforge.platform.runtime import init_ray

    init_ray(recipe.ray.address, num_cpus=recipe.ray.num_cpus, dashboard=recipe.ray.dashboard)


# -- phases --------------------------------------------------------------------------------------------
def make_demos(recipe: Recipe) -> Path:
    """The training data: a LeRobot v3 folder given in the recipe, or expert demos (generated or cached)."""
    if recipe.data.path:
        path = Path(recipe.data.path).expanduser()
        if not (path / "meta" / "info.json").exists():
            raise VlaforgeError(f"data.path: {path} is not a LeRobot v3 dataset (no meta/info.json)")
        return path
    from vlaforge.data.demos import generate_demos

    _init_ray(recipe)
    return generate_demos(recipe.envs, recipe.demos)


def _launch_learners(recipe: Recipe, name: str = "learners"):
    from vlaforge.learners.deepspeed_learner import LearnerActor
    from vlaforge.platform.worker_group import WorkerGroup

    t = recipe.train
    return WorkerGroup(LearnerActor, t.num_learners, cpus_per_worker=t.cpus_per_learner,
                       gpus_per_worker=t.gpus_per_learner, name=name)


def train(recipe: Recipe, run_dir: Path | None = None, resume: bool = False) -> dict:
    """demos -> DeepSpeed BC on N Ray ranks (checkpointed) -> exported policy -> evaluation."""
    from tqdm import tqdm

    from vlaforge.platform import checkpoint as ckpt
    from vlaforge.platform.metrics import MetricsLogger, system_metrics

    run_dir = prepare_run_dir(recipe, run_dir, resume)
    _setup_logging(run_dir)
    log.info("run directory: %s", run_dir.resolve())
    timers = Timers()
    with timers.phase("ray_init"):
        _init_ray(recipe)
    metrics = MetricsLogger(run_dir, recipe, resume=resume)
    try:
        with timers.phase("demos"):
            dataset = make_demos(recipe)
        log.info("training data: %s", dataset)

        learners = _launch_learners(recipe)
        try:
            with timers.phase("learner_setup"):
                info = learners.call("setup", recipe.train, recipe.policy, str(dataset))[0]
            log.info("learners: %d DeepSpeed ranks, %.2fM parameters, %d samples",
                     info["world_size"], info["num_params"] / 1e6, info["num_samples"])
            step = 0
            if resume:
                latest = ckpt.find_latest(run_dir)
                if latest is None:
                    log.info("no checkpoint in %s yet: starting from step 0", run_dir)
                else:
                    step = learners.call("load_checkpoint", str(latest))[0]
                    log.info("resumed from %s at step %d", latest, step)
            total = recipe.train.steps
            bar = tqdm(total=total, initial=step, desc="train (BC)", unit="step")
            while step < total:
                n = min(recipe.train.log_every, total - step)
                with timers.phase("learn"):
                    m = learners.call("train_steps", n)[0]
                step = int(m["train/step"])
                bar.update(n)
                bar.set_postfix(loss=f"{m['train/loss']:.4f}")
                metrics.log({**m, **system_metrics()}, step=step)
                if step % recipe.train.checkpoint_every == 0 or step >= total:
                    with timers.phase("checkpoint"):
                        learners.call("save_checkpoint", str(run_dir))
            bar.close()
            final = ckpt.find_latest(run_dir)
            if final is None:
                raise VlaforgeError(f"{run_dir}: training ended without a checkpoint")
            policy_dir = final / "policy"  # every checkpoint carries the safetensors export
            _write_run_card(policy_dir, recipe)
        finally:
            learners.shutdown()

        result = None
        if recipe.eval.enabled:
            with timers.phase("eval"):
                result = _evaluate(policy_dir, recipe, run_dir / "eval", metrics, step)
        metrics.log(dict(timers.totals), step=step)
        summary = _summary(run_dir, policy_dir, result, timers)
        return summary
    finally:
        metrics.close()


def _write_run_card(policy_dir: Path, recipe: Recipe) -> None:
    """Beside the exported weights: the env and eval blocks, so `vlaforge eval` needs only the folder."""
    card = {"name": recipe.name, "envs": recipe.envs.model_dump(mode="json"),
            "eval": recipe.eval.model_dump(mode="json")}
    tmp = policy_dir / "run_card.json.tmp"
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(policy_dir / "run_card.json")


def _evaluate(policy_dir: Path, recipe: Recipe, out_dir: Path, metrics, step: int) -> dict:
    from vlaforge.envs import resolve_tasks
    from vlaforge.platform.evaluation import eval_metrics, format_table, run_evaluation

    tasks = resolve_tasks(recipe.envs.tasks)
    result = run_evaluation(policy_dir, recipe.envs, recipe.eval, out_dir, tasks)
    print(format_table(result))
    if metrics is not None:
        metrics.log(eval_metrics(result), step=step)
        for v in result["videos"][:8]:
            metrics.log_video(f"eval/video/{Path(v).stem.split('_seed')[0]}", Path(v), step=step)
        metrics.summary({"eval/mean_success_rate": result["mean_success_rate"]})
    return result


def _summary(run_dir: Path, policy_dir: Path, result: dict | None, timers: Timers) -> dict:
    lines = ["", "=" * 72, f"run:         {run_dir.resolve()}", f"checkpoint:  {policy_dir.resolve()}"]
    if result is not None:
        lines.append(f"eval:        {(run_dir / 'eval' / 'eval.json').resolve()}")
        lines.append(f"videos:      {(run_dir / 'eval' / 'videos').resolve()}")
        per = ", ".join(f"{t} {v['success_rate']:.0%}" for t, v in result["tasks"].items())
        lines.append(f"success:     mean {result['mean_success_rate']:.0%} ({per})")
    lines.append("time:        " + ", ".join(f"{k[5:-2]} {v:.0f}s" for k, v in timers.totals.items()))
    lines.append("=" * 72)
    print("\n".join(lines))
    out = {"run_dir": str(run_dir), "policy_dir": str(policy_dir), "eval": result, **timers.totals}
    (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in out.items() if k != "eval"}, indent=2))
    return out


# -- vlaforge eval -------------------------------------------------------------------------------------
def _find_policy_dir(path: Path) -> Path:
    from vlaforge.platform import checkpoint as ckpt

    if (path / "model.safetensors").exists():
        return path
    if (path / "policy" / "model.safetensors").exists():
        return path / "policy"
    if path.is_dir():
        latest = ckpt.find_latest(path)
        if latest is not None and (latest / "policy" / "model.safetensors").exists():
            return latest / "policy"
    raise VlaforgeError(
        f"{path}: no exported policy found (expected model.safetensors in it, in {path}/policy, or in the latest "
        "checkpoint of a run folder)"
    )


def evaluate_checkpoint(path: Path, overrides: list[str] = (), out_dir: Path | None = None) -> dict:
    from vlaforge.platform.recipe import Source, apply_override, validate

    policy_dir = _find_policy_dir(Path(path))
    card_file = policy_dir / "run_card.json"
    if not card_file.exists():
        raise VlaforgeError(f"{card_file} is missing: cannot tell which env this policy was trained on")
    card = json.loads(card_file.read_text())
    data = {"name": card.get("name", "eval"), "envs": card["envs"], "eval": card["eval"]}
    src = Source()
    for o in overrides:
        apply_override(data, o, src)
    recipe = validate(data, src)
    out_dir = out_dir or policy_dir.parent / f"eval-{datetime.now():%Y%m%d-%H%M%S}"
    _init_ray(recipe)
    result = _evaluate(policy_dir, recipe, Path(out_dir), None, 0)
    print(f"eval.json: {(Path(out_dir) / 'eval.json').resolve()}")
    return result
