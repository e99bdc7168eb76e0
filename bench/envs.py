"""Meta-World env benchmark (one process, one core used at a time). Prints JSON.

    python bench/envs.py            # ~1-2 min
    python bench/envs.py --quick    # a few seconds per entry

Entries (push-v3, "corner" camera, random actions, rates per process):
  raw_step               Meta-World sim.step alone, no rendering, no batching layer  (steps/s)
  plain_B{1,4}           MetaWorldBatchedEnv.step with plain mujoco.Renderer images (env steps/s)
  plain_render_only      PlainRenderer.render of B=4 static states                 (images/s)
  warp_B{1,16}           MetaWorldBatchedEnv.step with the MuJoCo-Warp renderer     (env steps/s)
  warp_render_only_B16   WarpRenderer.render of 16 static states                    (images/s)
Several tasks per env (the quickstart's 3 tasks, round-robin over the B slots, as a rollout actor has them):
  scaling.{warp,plain}.B{1,4,8,16,32}   MetaWorldBatchedEnv.step, every step rendered     (env steps/s)
  multitask_render_only  B=12 (3 tasks x 4) static states, images/s: one Warp context per task group
                         (the default) vs one context per simulator vs the plain renderer
  warp_start             a fresh process building a 3-task Warp env and rendering once: with an empty
                         kernel cache (the first actor on a machine) and again with the filled cache (every
                         later actor; WARP_CACHE_PATH is set for all of them, runtime/process.py)   (s)
Warp entries need its kernels compiled (~40 s the first time, cached in WARP_CACHE_PATH); a failure
there is reported in the JSON, not raised. The machine's cores may be shared: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import subprocess
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlaforge.envs import EnvConfig, make_env  # noqa: E402  (sets MUJOCO_GL before mujoco loads)
from vlaforge.envs.metaworld_sim import make_sim, seed_and_reset  # noqa: E402

TASK = "push-v3"
MT_TASKS = ["reach-v3", "drawer-close-v3", "button-press-topdown-v3"]  # the quickstart's


def timed(fn, n: int) -> float:
    """Calls per second of ``fn`` over ``n`` calls (after one warm-up call)."""
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def raw_step(n: int) -> float:
    sim = make_sim(TASK)
    seed_and_reset(sim, 0)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (n + 1, 4)).astype(np.float32)
    i = iter(range(10**9))

    def step():
        k = next(i)
        if sim.curr_path_length >= 499:  # Meta-World refuses steps past its 500-step horizon
            seed_and_reset(sim, k)
        sim.step(acts[k % len(acts)])

    return timed(step, n)


def slots(tasks: list[str], b: int) -> list[str]:
    """B slots round-robin over ``tasks`` (actors/rollout.py actor_tasks does the same)."""
    return [tasks[i % len(tasks)] for i in range(b)]


def env_steps(backend: str, b: int, size: int, n: int, tasks: list[str] | None = None) -> float:
    cfg = EnvConfig(image_size=size, cameras=["corner"], render_backend=backend, max_episode_steps=500)
    env = make_env(cfg, slots(tasks or [TASK], b), seed=0)
    env.reset()
    acts = torch.rand(n + 1, b, 4) * 2 - 1
    i = iter(range(10**9))

    def step():
        out = env.step(acts[next(i) % len(acts)])[("next", "truncated")]
        if out.any():
            env.reset(env_ids=out.squeeze(1).nonzero().squeeze(1))

    rate = timed(step, n) * b
    env.close()
    return rate


def render_only(backend: str, b: int, size: int, n: int) -> float:
    env = make_env(EnvConfig(image_size=size, cameras=["corner"], render_backend=backend), [TASK] * b, seed=0)
    env.reset()
    rate = timed(env.render, n) * b
    env.close()
    return rate


def multitask_render_only(size: int, n: int) -> dict:
    """images/s of B = 12 static states over 3 tasks: Warp grouped by task, Warp per simulator, plain."""
    from vlaforge.envs.warp_render import WarpRenderer

    env = make_env(EnvConfig(image_size=size, cameras=["corner"], render_backend="plain"), slots(MT_TASKS, 12), seed=0)
    env.reset()
    datas, ids = [s.data for s in env.sims], list(range(12))
    out = {"B": 12, "tasks": MT_TASKS, "plain": round(timed(env.render, n) * 12, 1)}
    for name, per_world in (("warp_context_per_task_group", False), ("warp_context_per_simulator", True)):
        r = WarpRenderer([s.model for s in env.sims], datas, ["corner"], size, per_world=per_world)
        out[name] = round(timed(lambda: r.render(datas, ids), n) * 12, 1)
        r.close()
    env.close()
    return out


START_SNIPPET = """
import time; t = time.perf_counter()
from vlaforge.envs import EnvConfig, make_env
env = make_env(EnvConfig(image_size={size}, cameras=["corner"], render_backend="warp"), {tasks!r}, seed=0)
env.reset(); print(time.perf_counter() - t)
"""


def warp_start(size: int) -> dict:
    """Seconds for a fresh process to import, build a 3-task Warp env and render once: cold vs warm cache."""
    code = START_SNIPPET.format(size=size, tasks=MT_TASKS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="vlaforge-warp-cache-") as cache:
        env = {**os.environ, "WARP_CACHE_PATH": cache, "PYTHONPATH": root}
        for name in ("first_process_empty_cache_s", "second_process_filled_cache_s"):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
            if p.returncode:
                return {"error": p.stderr[-500:]}
            out[name] = round(time.perf_counter() - t, 1)  # process start + imports + build + first render
            out[name.replace("_s", "_build_render_s")] = round(float(p.stdout.split()[-1]), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (noisier)")
    ap.add_argument("--size", type=int, default=64, help="image size in pixels")
    ap.add_argument("--no-warp", action="store_true", help="skip the MuJoCo-Warp entries")
    ap.add_argument("--sizes-b", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="B of the scaling entries")
    ap.add_argument("--no-start", action="store_true", help="skip the cold/warm kernel-cache start entry")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    n = lambda k: max(5, int(k * scale))  # noqa: E731
    s = args.size
    res: dict = {
        "bench": "envs",
        "task": TASK,
        "image_size": s,
        "camera": "corner",
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
        "units": "env steps/s (summed over B) or images/s, per process",
    }
    res["raw_step"] = round(raw_step(n(5000)), 1)
    res["plain_B1"] = round(env_steps("plain", 1, s, n(400)), 1)
    res["plain_B4"] = round(env_steps("plain", 4, s, n(150)), 1)
    res["plain_render_only_B4"] = round(render_only("plain", 4, s, n(150)), 1)
    if not args.no_warp:
        try:
            t = time.perf_counter()
            res["warp_B1"] = round(env_steps("warp", 1, s, n(400)), 1)
            res["warp_first_build_s"] = round(time.perf_counter() - t, 1)  # includes compile if cold
            res["warp_B16"] = round(env_steps("warp", 16, s, n(60)), 1)
            res["warp_render_only_B16"] = round(render_only("warp", 16, s, n(60)), 1)
            res["multitask_render_only"] = multitask_render_only(s, n(40))
            res["scaling"] = {"tasks": MT_TASKS, "warp": {}, "plain": {}}
            for b in args.sizes_b:  # same number of env steps per entry: n(...) steps of B slots
                for backend in ("warp", "plain"):
                    res["scaling"][backend][f"B{b}"] = round(env_steps(backend, b, s, n(max(10, 480 // b)), MT_TASKS), 1)
            if not args.no_start:
                res["warp_start"] = warp_start(s)
        except Exception as e:  # report, do not hide the plain numbers
            res["warp_error"] = repr(e)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
