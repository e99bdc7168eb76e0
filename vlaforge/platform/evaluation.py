"""Statistically honest evaluation: fixed seeded initial states, Wilson intervals, streaming results.

The initial-state set of a task is ``seed_offset + i`` for episode i (the same for every checkpoint, so
two evaluations compare like with like). Waves of up to ``envs_per_worker`` episodes go to a pool of
Ray evaluation actors and stream back as they finish; per-task success gets a Wilson score interval
(exact enough for small n, never outside [0, 1], unlike the normal approximation).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from statistics import NormalDist

from vlaforge.actors.config import EvalConfig
from vlaforge.envs.config import EnvConfig


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
        seeds = [cfg.seed_offset + i for i in range(cfg.episodes_per_task)]
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
    policy_dir: Path, env_cfg: EnvConfig, cfg: EvalConfig, out_dir: Path, tasks: list[str], progress: bool = True
) -> dict:
    """Evaluate the exported policy in ``policy_dir``; writes ``out_dir/eval.json`` and videos."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from vlaforge.actors.evaluator import EvalWorker

    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    env_cfg = env_cfg.model_copy(update={"instructions": cfg.instructions})
    waves = episode_plan(tasks, cfg)
    worker_cls = ray.remote(num_cpus=1)(EvalWorker)
    n_workers = min(cfg.num_workers, len(waves))
    workers = [worker_cls.remote(str(policy_dir), env_cfg.model_dump(mode="json")) for _ in range(n_workers)]
    pool = ActorPool(workers)
    episodes: list[dict] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(w[1]) for w in waves), desc="eval episodes", unit="ep", disable=not progress)
    try:
        for results in pool.map_unordered(lambda a, w: a.run_wave.remote(*w), waves):
            for r in results:
                if r.frames is not None:
                    path = out_dir / "videos" / f"{r.task}_seed{r.seed}_{'success' if r.success else 'fail'}.mp4"
                    write_video(r.frames, path, fps=30, success=bool(r.success))
                    videos.append(str(path))
                episodes.append({k: v for k, v in r.__dict__.items() if k != "frames"})
                bar.update(1)
    finally:
        bar.close()
        for w in workers:
            ray.kill(w)
    steps = sum(e["length"] for e in episodes)
    elapsed = time.perf_counter() - t0
    result = summarize(episodes, tasks, cfg.confidence)
    result.update(
        policy=str(policy_dir),
        instructions=cfg.instructions,
        seeds={"offset": cfg.seed_offset, "episodes_per_task": cfg.episodes_per_task},
        env_steps=steps,
        env_steps_per_s=steps / max(elapsed, 1e-9),
        wall_s=elapsed,
        videos=sorted(videos),
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
