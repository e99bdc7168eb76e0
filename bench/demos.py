"""Demonstration-generation benchmark. Prints JSON.

    python bench/demos.py            # 3 tasks (quickstart's), 64 px, 6 episodes per task
    python bench/demos.py --quick    # 1 task, 32 px, 4 episodes
    python bench/demos.py --render warp   # MuJoCo-Warp batched renderer instead of mujoco.Renderer

Measures (env steps = recorded frames; the cores are shared, expect noise):
  raw_step_no_render     one Meta-World sim + its scripted expert in this process, no rendering:
                         the ceiling a demo worker could reach without images
  worker_in_process      one DemoWorker (B sims, expert, plain renderer, episode bookkeeping), no Ray
  generate_demos/<W>     the whole pipeline with W Ray actors: actor start, env build, stepping +
                         rendering, transfer, h264 encoding, parquet + meta writing; frames / wall time
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path



def raw_step_rate(task: str, steps: int) -> dict:
    from vlaforge.envs import make_expert
    from vlaforge.envs.metaworld_sim import make_sim, seed_and_reset

    sim, expert = make_sim(task), make_expert(task)
    obs, seed, t, n = seed_and_reset(sim, 0), 0, 0, 0
    t0 = time.perf_counter()
    while n < steps:
        obs, _, _, _, info = sim.step(expert(obs))
        n, t = n + 1, t + 1
        if info["success"] or t >= 150:
            seed, t = seed + 1, 0
            obs = seed_and_reset(sim, seed)
    dt = time.perf_counter() - t0
    sim.close()
    return {"steps": n, "seconds": round(dt, 3), "steps_per_s": round(n / dt, 1)}


def worker_rate(env_cfg, envs_per_worker: int, episodes: int) -> dict:
    from vlaforge.data.demo_worker import DemoWorker

    w = DemoWorker(env_cfg.model_dump(mode="json"), envs_per_worker, 0.0, 0)
    w.run(env_cfg.tasks[0], [10_000])  # build the env + warm up outside the timing
    out = w.run(env_cfg.tasks[0], list(range(episodes)))
    w.close()
    frames = sum(e["length"] for e in out["episodes"])
    return {"episodes": len(out["episodes"]), "frames": frames, "sim_steps": out["steps"],
            "seconds": round(out["seconds"], 3), "frames_per_s": round(frames / out["seconds"], 1),
            "sim_steps_per_s": round(out["steps"] / out["seconds"], 1)}


def pipeline_rate(env_cfg, demo_cfg, workers: int) -> dict:
    from vlaforge.data.demos import generate_demos
    from vlaforge.data.reader import DatasetReader

    cfg = demo_cfg.model_copy(update={"num_workers": workers})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = generate_demos(env_cfg, cfg, out_dir=Path(tmp) / "ds", progress=False)
        dt = time.perf_counter() - t0
        info = DatasetReader(path).info
    return {"workers": workers, "episodes": info["total_episodes"], "frames": info["total_frames"],
            "seconds": round(dt, 2), "frames_per_s": round(info["total_frames"] / dt, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--render", choices=["plain", "warp"], default="plain", help="envs.render_backend")
    args = p.parse_args(argv)

    from vlaforge.data.config import DemoConfig
    from vlaforge.envs.config import EnvConfig
    from vlaforge.runtime.process import apply_process_env, init_ray

    apply_process_env()
    if args.quick:
        env_cfg = EnvConfig(tasks=["reach-v3"], image_size=32, max_episode_steps=150, render_backend=args.render)
        demo_cfg = DemoConfig(episodes_per_task=4, envs_per_worker=2)
        raw_steps, worker_eps = 500, 4
    else:
        env_cfg = EnvConfig(tasks=["reach-v3", "drawer-close-v3", "button-press-topdown-v3"], image_size=64,
                            max_episode_steps=150, render_backend=args.render)
        demo_cfg = DemoConfig(episodes_per_task=6, envs_per_worker=4)
        raw_steps, worker_eps = 3000, 8
    result = {
        "config": {"tasks": env_cfg.tasks, "image_size": env_cfg.image_size, "cameras": env_cfg.cameras,
                   "render_backend": env_cfg.render_backend, "episodes_per_task": demo_cfg.episodes_per_task,
                   "envs_per_worker": demo_cfg.envs_per_worker, "quick": args.quick},
        "raw_step_no_render": raw_step_rate(env_cfg.tasks[0], raw_steps),
        "worker_in_process": worker_rate(env_cfg, demo_cfg.envs_per_worker, worker_eps),
    }
    init_ray(num_cpus=max(args.workers) + 1, log_to_driver=False)
    result["generate_demos"] = {str(w): pipeline_rate(env_cfg, demo_cfg, w) for w in args.workers}
    raw = result["raw_step_no_render"]["steps_per_s"]
    result["render_slowdown_vs_raw"] = round(raw / max(result["worker_in_process"]["frames_per_s"], 1e-9), 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
