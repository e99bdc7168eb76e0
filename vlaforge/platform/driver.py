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
from vlaforge.platform.recipe import dump_recipe, load_recipe, stage_recipe

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
    run_dir = run_dir.expanduser().resolve()  # absolute: actors on other nodes / working dirs get it
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
    from vlaforge.runtime.process import init_ray

    init_ray(recipe.ray.address, num_cpus=recipe.ray.num_cpus, dashboard=recipe.ray.dashboard, host=recipe.ray.host)


# -- phases --------------------------------------------------------------------------------------------
def make_demos(recipe: Recipe) -> Path:
    """The training data: a LeRobot v3 folder given in the recipe, or expert demos (generated or cached)."""
    if recipe.data.path:
        path = Path(recipe.data.path).expanduser().resolve()  # absolute: learners read it
        if not (path / "meta" / "info.json").exists():
            raise VlaforgeError(f"data.path: {path} is not a LeRobot v3 dataset (no meta/info.json)")
        return path
    from vlaforge.data.demos import generate_demos

    _init_ray(recipe)
    return Path(generate_demos(recipe.envs, recipe.demos, timeout_s=recipe.runtime.timeouts.demo_job_s)).resolve()


def make_video(recipe: Recipe) -> Path:
    """The recipe's unlabeled video (data.video) as a LeRobot v3 folder without actions, built or cached."""
    if recipe.data.video is None:
        raise VlaforgeError("data.video is not set: add a data.video block (source: rollouts | lerobot | mp4)")
    from vlaforge.data.unlabeled import unlabeled_dataset

    if recipe.data.video.source == "rollouts":
        _init_ray(recipe)
    return unlabeled_dataset(recipe.data.video, recipe.envs, timeout_s=recipe.runtime.timeouts.demo_job_s)


def _resolve_init(stage, previous: Path | None) -> Path | None:
    if stage.init == "previous":
        return previous
    if stage.init == "scratch":
        return None
    from vlaforge.policies.io import verify_folder

    # a published folder may start a stage (weights only; the optimizer starts fresh): hashes first
    return verify_folder(_find_policy_dir(Path(stage.init).expanduser().resolve()))


def train(recipe: Recipe, run_dir: Path | None = None, resume: bool = False) -> dict:
    """Run the recipe's stages in order (default: one BC stage), evaluating before and after each."""
    from vlaforge.platform.chaos import Chaos
    from vlaforge.platform.metrics import MetricsLogger
    from vlaforge.platform.recovery import run_with_restarts
    from vlaforge.platform.stages import STAGE_KINDS, STAGES, StageContext, stage_fingerprint

    run_dir = prepare_run_dir(recipe, run_dir, resume)
    _setup_logging(run_dir)
    log.info("run directory: %s", run_dir.resolve())
    timers = Timers()
    with timers.phase("ray_init"):
        _init_ray(recipe)
    metrics = MetricsLogger(run_dir, recipe, resume=resume)
    ctx = StageContext(recipe=recipe, run_dir=run_dir, metrics=metrics, timers=timers, resume=resume)
    if recipe.chaos.enabled:
        ctx.chaos = Chaos(recipe.chaos, ctx.faults)
        log.warning("chaos mode: faults will be injected into this run (recipe chaos block)")
    policy_dir: Path | None = None
    acts = True  # the policy handed on acts in the env (after a latent_pretrain stage it predicts latent codes)
    results: dict[str, dict] = {}
    try:
        for index, stage in enumerate(recipe.stages):
            srecipe = stage_recipe(recipe, index)  # the stage's own `set:` values merged over the recipe
            stage_dir = run_dir / stage.name
            done_file = stage_dir / "stage.json"
            fingerprint = stage_fingerprint(srecipe, stage)
            done = json.loads(done_file.read_text()) if (resume and done_file.exists()) else None
            result = STAGE_KINDS[stage.kind].result
            if done is not None and done.get("fingerprint") == fingerprint:  # finished, same config: keep it
                policy_dir, ctx.step = Path(done["policy_dir"]) if done["policy_dir"] else None, done["end_step"]
                acts = {"policy": True, "latent": False}.get(result, acts)
                ctx.warnings.extend(done.get("warnings", []))  # still true of the kept result
                results[stage.name] = done
                log.info("stage %s already finished (%s)", stage.name, policy_dir)
                continue
            init = _resolve_init(stage, policy_dir)
            stage_dir.mkdir(parents=True, exist_ok=True)
            record = {"stage": stage.name, "kind": stage.kind, "init": str(init) if init else None,
                      "fingerprint": fingerprint}
            if init is not None and acts and stage.eval_start and srecipe.eval.enabled:
                with timers.phase("eval"):
                    record["eval_start"] = _evaluate(init, srecipe, stage_dir / "eval-start", metrics, ctx.step,
                                                     prefix=f"eval/{stage.name}_start", faults=(ctx.faults, stage.name))
            log.info("stage %s (%s) starts%s", stage.name, stage.kind, f" from {init}" if init else " from scratch")
            n_warnings = len(ctx.warnings)
            policy_dir = run_with_restarts(ctx, stage, STAGES[stage.kind], srecipe, stage_dir, init)
            record["warnings"] = ctx.warnings[n_warnings:]
            acts = {"policy": True, "latent": False}.get(result, acts)  # "same": as the policy it started from
            if policy_dir is not None and acts:
                _write_run_card(policy_dir, srecipe)
            if policy_dir is not None and acts and stage.eval_end and srecipe.eval.enabled:
                with timers.phase("eval"):
                    record["eval_end"] = _evaluate(policy_dir, srecipe, stage_dir / "eval", metrics, ctx.step,
                                                   prefix=f"eval/{stage.name}", faults=(ctx.faults, stage.name))
                if "eval_start" in record:  # same states: McNemar per task, into eval.json and stage.json
                    record["paired"] = _paired(record["eval_start"], record["eval_end"], stage_dir / "eval")
            record.update(policy_dir=str(policy_dir) if policy_dir else None, end_step=ctx.step)
            results[stage.name] = record
            tmp = stage_dir / "stage.json.tmp"
            tmp.write_text(json.dumps({k: v for k, v in record.items() if not k.startswith("eval")} |
                                      {k: _eval_brief(v) for k, v in record.items() if k.startswith("eval")}, indent=2))
            tmp.replace(done_file)
        metrics.log(dict(timers.totals), step=ctx.step)
        return _summary(run_dir, policy_dir, results, timers, ctx.faults, ctx.warnings)
    finally:
        if ctx.chaos is not None:
            ctx.chaos.close()
        ctx.faults.write(run_dir)  # also when the run stops: what went wrong and what was done about it
        metrics.close()


def _paired(start: dict, end: dict, out_dir: Path) -> dict:
    from vlaforge.platform.evaluation import paired_comparison

    paired = paired_comparison(start, end)
    end["paired_vs_start"] = paired
    tmp = out_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(end, indent=2))
    tmp.replace(out_dir / "eval.json")
    log.info("start -> end (McNemar, same states): %s", "; ".join(
        f"{t} {v['delta']:+.0%} p={v['p_value']:.3g}" for t, v in {**paired["tasks"], "pooled": paired["pooled"]}.items()))
    return paired


def _eval_brief(result: dict) -> dict:
    """Mean + per-task success of an eval.json (idempotent: a brief stays a brief)."""
    tasks = {t: (v["success_rate"] if isinstance(v, dict) else v) for t, v in result["tasks"].items()}
    return {"mean_success_rate": result["mean_success_rate"], "tasks": tasks}


def _write_run_card(policy_dir: Path, recipe: Recipe) -> None:
    """Beside the exported weights: the env and eval blocks, so `vlaforge eval` needs only the folder."""
    card = {"name": recipe.name, "envs": recipe.envs.model_dump(mode="json"),
            "eval": recipe.eval.model_dump(mode="json")}
    tmp = policy_dir / "run_card.json.tmp"
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(policy_dir / "run_card.json")


def _evaluate(policy_dir: Path, recipe: Recipe, out_dir: Path, metrics, step: int, prefix: str = "eval",
              faults=None) -> dict:
    from vlaforge.envs import resolve_tasks
    from vlaforge.platform.evaluation import eval_metrics, format_table, run_evaluation

    tasks = resolve_tasks(recipe.envs.tasks)
    result = run_evaluation(policy_dir, recipe.envs, recipe.eval, out_dir, tasks, timeouts_cfg=recipe.runtime.timeouts,
                            max_restarts=recipe.runtime.max_eval_restarts)
    if faults is not None:  # (FaultLog, stage name)
        for e in result.get("faults", []):
            faults[0].handle(faults[1], None, f"{e['fault']} (actor {e['rank']})", e["handled"], e["detail"])
    print(format_table(result))
    if metrics is not None:
        metrics.log(eval_metrics(result, prefix), step=step)
        for v in result["videos"][:8]:
            metrics.log_video(f"{prefix}/video/{Path(v).stem.split('_seed')[0]}", Path(v), step=step)
        metrics.summary({f"{prefix}/mean_success_rate": result["mean_success_rate"]})
    return result


def _summary(run_dir: Path, policy_dir: Path | None, results: dict[str, dict], timers: Timers, faults=None,
             warnings: list[str] = ()) -> dict:
    lines = ["", "=" * 72, f"run:         {run_dir.resolve()}",
             f"checkpoint:  {policy_dir.resolve() if policy_dir else '(none: no stage produced a policy)'}"]
    for name, rec in results.items():
        for key, label in (("eval_start", "start"), ("eval_end", "end")):
            res = rec.get(key)
            if res is not None:
                per = ", ".join(f"{t} {v:.0%}" for t, v in _eval_brief(res)["tasks"].items())
                lines.append(f"{name + ' ' + label + ':':<13}mean {res['mean_success_rate']:.0%} ({per})")
        if "paired" in rec:
            lines.append(f"{'':13}paired (McNemar exact p): " + ", ".join(
                f"{t} {v['delta']:+.0%} p={v['p_value']:.2g}" for t, v in {**rec["paired"]["tasks"],
                                                                         "pooled": rec["paired"]["pooled"]}.items()))
        if "videos" in rec.get("eval_end", {}):
            lines.append(f"{'':13}{(run_dir / name / 'eval' / 'eval.json').resolve()}")
            lines.append(f"{'':13}videos: {(run_dir / name / 'eval' / 'videos').resolve()}")
    lines.append("time:        " + ", ".join(f"{k[5:-2]} {v:.0f}s" for k, v in timers.totals.items()))
    if faults is not None and (faults.injected or faults.handled):
        lines.extend(faults.lines())
    elif faults is not None:
        lines.append("faults:      none")
    lines.extend(f"WARNING:     {w}" for w in warnings)
    lines.append("=" * 72)
    print("\n".join(lines))
    out = {"run_dir": str(run_dir), "policy_dir": str(policy_dir) if policy_dir else None, "warnings": list(warnings),
           "stages": {n: {k: (_eval_brief(v) if k.startswith("eval") else v) for k, v in r.items()}
                      for n, r in results.items()},
           **timers.totals, "faults": faults.to_dict() if faults is not None else {"injected": [], "handled": []}}
    (run_dir / "summary.json").write_text(json.dumps(out, indent=2))
    return out


# -- vlaforge eval -------------------------------------------------------------------------------------
def _find_policy_dir(path: Path) -> Path:
    from vlaforge.runtime import checkpoint as ckpt

    if (path / "model.safetensors").exists():
        return path
    if (path / "policy" / "model.safetensors").exists():
        return path / "policy"
    if (path / "summary.json").exists():  # a finished run: its final policy
        final = Path(json.loads((path / "summary.json").read_text())["policy_dir"])
        if (final / "model.safetensors").exists():
            return final
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

    from vlaforge.policies.io import verify_folder

    policy_dir = verify_folder(_find_policy_dir(Path(path).expanduser().resolve()))  # refuse a tampered file
    card_file = policy_dir / "run_card.json"
    if not card_file.exists():
        raise VlaforgeError(f"{card_file} is missing: cannot tell which env this policy was trained on")
    card = json.loads(card_file.read_text())
    data = {"name": card.get("name", "eval"), "envs": card["envs"], "eval": card["eval"]}
    src = Source()
    for o in overrides:
        apply_override(data, o, src)
    recipe = validate(data, src)
    out_dir = Path(out_dir or policy_dir.parent / f"eval-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    _init_ray(recipe)
    result = _evaluate(policy_dir, recipe, Path(out_dir), None, 0)
    print(f"eval.json: {(Path(out_dir) / 'eval.json').resolve()}")
    return result
