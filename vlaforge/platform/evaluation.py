"""Statistically honest evaluation: fixed seeded initial states, Wilson intervals, streaming results.

The initial-state set of a task is ``seed_offset + i`` for episode i (the same for every checkpoint, so
two evaluations compare like with like) -- the TEST states that results are reported on; ``eval.split:
validation`` uses the disjoint range ``validation_seed_offset + i`` for choosing recipes. Two evaluations of
the same states (a stage's start and end) are compared per task by McNemar's exact test on the paired
episodes (``paired_comparison``). Waves of up to ``envs_per_worker`` episodes go to a pool of
Ray evaluation actors and stream back as they finish; per-task success gets a Wilson score interval
(exact enough for small n, never outside [0, 1], unlike the normal approximation).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from statistics import NormalDist

from vlaforge.actors.config import EvalConfig
from vlaforge.envs.config import EnvConfig
from vlaforge.runtime import timeouts
from vlaforge.runtime.config import TimeoutsConfig

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Evaluation cannot finish: actors kept dying or hanging past runtime.max_eval_restarts, or one raised."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def episode_plan(tasks: list[str], cfg: EvalConfig) -> list[tuple[str, list[int], list[bool]]]:
    """Waves of (task, seeds, record-video flags); at most envs_per_worker episodes per wave."""
    waves = []
    for task in tasks:
        seeds = [cfg.first_seed + i for i in range(cfg.episodes_per_task)]
        for start in range(0, len(seeds), cfg.envs_per_worker):
            chunk = seeds[start : start + cfg.envs_per_worker]
            record = [start + j < cfg.videos_per_task for j in range(len(chunk))]
            waves.append((task, chunk, record))
    return waves


def summarize(episodes: list[dict], tasks: list[str], confidence: float) -> dict:
    per_task = {}
    for task in tasks:
        eps = [e for e in episodes if e["task"] == task]
        s = sum(e["success"] for e in eps)
        lo, hi = wilson_interval(s, len(eps), confidence)
        per_task[task] = {
            "success_rate": s / max(1, len(eps)),
            "ci_low": lo,
            "ci_high": hi,
            "successes": s,
            "episodes": len(eps),
            "mean_return": sum(e["episode_return"] for e in eps) / max(1, len(eps)),
            "mean_length": sum(e["length"] for e in eps) / max(1, len(eps)),
        }
    total = sum(v["successes"] for v in per_task.values())
    n = sum(v["episodes"] for v in per_task.values())
    lo, hi = wilson_interval(total, n, confidence)
    return {
        "mean_success_rate": sum(v["success_rate"] for v in per_task.values()) / max(1, len(per_task)),
        "pooled": {"successes": total, "episodes": n, "ci_low": lo, "ci_high": hi},
        "confidence": confidence,
        "tasks": per_task,
    }


def mcnemar_exact(start_only: int, end_only: int) -> float:
    """Two-sided exact McNemar p-value: under H0 (no change) each discordant pair (success in one evaluation
    only) is start-only or end-only with probability 1/2, so p = P(Binomial(b + c, 1/2) as extreme as seen)."""
    n, k = start_only + end_only, min(start_only, end_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_comparison(start: dict, end: dict) -> dict:
    """Per task (and pooled) McNemar test of two eval.json results on the SAME initial states (paired by
    task and seed): both / neither succeeded, start-only (b) and end-only (c) successes, the change in success
    rate and the exact p-value. States evaluated in only one of the two are left out (counted)."""
    def by_key(res: dict) -> dict:
        return {(e["task"], int(e["seed"])): bool(e["success"]) for e in res.get("episodes", [])}

    a, z = by_key(start), by_key(end)
    common = sorted(set(a) & set(z))
    out: dict = {"tasks": {}, "unpaired": len(set(a) ^ set(z))}
    for task in sorted({t for t, _ in common}) + [None]:
        pairs = [(a[k], z[k]) for k in common if task is None or k[0] == task]
        b = sum(1 for x, y in pairs if x and not y)
        c = sum(1 for x, y in pairs if y and not x)
        row = {"pairs": len(pairs), "both": sum(1 for x, y in pairs if x and y),
               "neither": sum(1 for x, y in pairs if not x and not y), "start_only": b, "end_only": c,
               "delta": (c - b) / max(1, len(pairs)), "p_value": mcnemar_exact(b, c)}
        if task is None:
            out["pooled"] = row
        else:
            out["tasks"][task] = row
    return out


SUCCESS_RGB = (0, 200, 0)
FAILURE_RGB = (220, 0, 0)


def mark_outcome(frames, success: bool):
    """Paint a border into every frame: green for a successful episode, red for a failed one, so a
    dashboard (or a person scrolling mp4s) sees the outcome without reading the file name. (T, H, W, 3)."""
    frames = frames.copy()
    b = max(2, min(frames.shape[1:3]) // 20)
    colour = SUCCESS_RGB if success else FAILURE_RGB
    frames[:, :b], frames[:, -b:], frames[:, :, :b], frames[:, :, -b:] = colour, colour, colour, colour
    return frames


def write_video(frames, path: Path, fps: int, success: bool | None = None) -> None:
    from vlaforge.data.video import encode_video

    encode_video(frames if success is None else mark_outcome(frames, success), path, fps=fps, codec="h264")


def run_evaluation(
    policy_dir: Path, env_cfg: EnvConfig, cfg: EvalConfig, out_dir: Path, tasks: list[str], progress: bool = True,
    timeouts_cfg: TimeoutsConfig | None = None, max_restarts: int = 3, worker_cls: type | None = None,
) -> dict:
    """Evaluate the exported policy in ``policy_dir``; writes ``out_dir/eval.json`` and videos.

    Every wave is bounded (``timeouts_cfg.eval_wave_s``, plus ``actor_start_s`` for a new actor's first wave):
    an actor that dies or overruns is killed and replaced and its wave re-run on the same seeds (the same
    fixed initial states, so the result is unchanged), at most ``max_restarts`` times per evaluation.
    ``worker_cls``: the actor class (default ``EvalWorker``; tests pass a subclass that misbehaves)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm import tqdm

    from vlaforge.actors.evaluator import EvalWorker

    t_cfg = timeouts_cfg or TimeoutsConfig()
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    env_cfg = env_cfg.model_copy(update={"instructions": cfg.instructions})
    waves = episode_plan(tasks, cfg)
    worker_cls = ray.remote(num_cpus=1)(worker_cls or EvalWorker)
    n_workers = min(cfg.num_workers, len(waves))

    starting: dict = {}  # readiness ref of a new actor -> its index: until it resolves, the actor is loading

    def spawn(w: int):
        actor = worker_cls.remote(str(policy_dir), env_cfg.model_dump(mode="json"))
        starting[actor.__ray_ready__.remote()] = w
        return actor

    workers = [spawn(w) for w in range(n_workers)]
    # a new actor's first wave may also wait for it to load the policy and build its envs (actor_start_s);
    # once the actor is up, that wave's clock restarts with eval_wave_s alone
    fresh = [True] * n_workers
    todo = list(range(len(waves)))[::-1]  # a stack: pop() takes the next wave; a failed wave goes back on top
    running: dict = {}  # ref -> (worker index, wave index)
    due = timeouts.Deadlines()
    faults: list[dict] = []
    episodes: list[dict] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(w[1]) for w in waves), desc="eval episodes", unit="ep", disable=not progress)

    def submit(w: int) -> None:
        i = todo.pop()
        ref = workers[w].run_wave.remote(*waves[i])
        running[ref] = (w, i)
        due.start(ref, t_cfg.eval_wave_s + (t_cfg.actor_start_s if fresh[w] else 0.0))
        fresh[w] = False

    def replace(w: int, i: int, what: str) -> None:
        if len(faults) >= max_restarts:
            raise EvaluationError(f"evaluation actor {w} {what} on wave {waves[i][0]} seeds {waves[i][1]}; that is "
                                  f"{len(faults) + 1} failures, runtime.max_eval_restarts={max_restarts}: stopping")
        log.warning("eval: actor %d %s on %s seeds %s; replacing it and re-running the wave", w, what, *waves[i][:2])
        ray.kill(workers[w], no_restart=True)
        for ref in [r for r, x in starting.items() if x == w]:  # the old actor's readiness no longer counts
            del starting[ref]
        workers[w], fresh[w] = spawn(w), True
        todo.append(i)  # the same seeds again: the same initial states
        faults.append({"fault": f"evaluation actor {what}", "rank": w, "detail": f"wave {waves[i][0]} seeds {waves[i][1]}",
                       "handled": "killed and replaced; the wave re-run on the same seeds"})

    try:
        for w in range(n_workers):
            if todo:
                submit(w)
        while running:
            due.keep(running)
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=due.left())
            if ready and ready[0] in starting:  # an actor is up: its first wave now has eval_wave_s
                w = starting.pop(ready[0])
                for ref, (rw, _) in running.items():
                    if rw == w:
                        due.start(ref, t_cfg.eval_wave_s)
                continue
            if not ready:
                for ref in due.overdue():
                    w, i = running.pop(ref)
                    due.stop(ref)
                    replace(w, i, f"hung (no result within runtime.timeouts.eval_wave_s={t_cfg.eval_wave_s:g} s)")
                    submit(w)
                continue
            ref = ready[0]
            w, i = running.pop(ref)
            due.stop(ref)
            try:
                results = ray.get(ref)
            except RayActorError:
                replace(w, i, "died")
                submit(w)
                continue
            except RayTaskError as e:
                raise EvaluationError(f"evaluation actor {w} raised on wave {waves[i][0]} seeds {waves[i][1]}: {e}") from e
            if todo:
                submit(w)  # keep the actor busy while this process encodes videos
            for r in results:
                if r.frames is not None:
                    path = out_dir / "videos" / f"{r.task}_seed{r.seed}_{'success' if r.success else 'fail'}.mp4"
                    write_video(r.frames, path, fps=30, success=bool(r.success))
                    videos.append(str(path))
                episodes.append({k: v for k, v in r.__dict__.items() if k != "frames"})
                bar.update(1)
    finally:
        bar.close()
        for wk in workers:
            ray.kill(wk, no_restart=True)
    steps = sum(e["length"] for e in episodes)
    elapsed = time.perf_counter() - t0
    result = summarize(episodes, tasks, cfg.confidence)
    result.update(
        policy=str(policy_dir),
        instructions=cfg.instructions,
        seeds={"split": cfg.split, "offset": cfg.first_seed, "episodes_per_task": cfg.episodes_per_task},
        env_steps=steps,
        env_steps_per_s=steps / max(elapsed, 1e-9),
        wall_s=elapsed,
        videos=sorted(videos),
        faults=faults,
        episodes=sorted(episodes, key=lambda e: (e["task"], e["seed"])),
    )
    tmp = out_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out_dir / "eval.json")
    return result


def eval_metrics(result: dict, prefix: str = "eval") -> dict[str, float]:
    m = {f"{prefix}/mean_success_rate": result["mean_success_rate"], f"{prefix}/env_steps_per_s": result["env_steps_per_s"]}
    for task, v in result["tasks"].items():
        m[f"{prefix}/{task}/success_rate"] = v["success_rate"]
        m[f"eval/success_rate/{task}"] = v["success_rate"]  # one series per task across all stages' evaluations
    return m


def format_table(result: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    pct = int(round(result["confidence"] * 100))
    table = Table(title=f"evaluation ({result['instructions']} instructions)")
    for col in ("task", "success", f"{pct}% CI", "episodes", "mean length"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, v in result["tasks"].items():
        table.add_row(task, f"{v['success_rate']:.0%}", f"[{v['ci_low']:.0%}, {v['ci_high']:.0%}]",
                      str(v["episodes"]), f"{v['mean_length']:.0f}")
    p = result["pooled"]
    table.add_row("mean", f"{result['mean_success_rate']:.0%}", f"[{p['ci_low']:.0%}, {p['ci_high']:.0%}]",
                  str(p["episodes"]), "")
    console = Console(width=100)
    with console.capture() as cap:
        console.print(table)
    return cap.get()
