"""Rollout benchmark on Meta-World with rendering and the default VLA: our RolloutPool vs the simulator
alone vs RLlib's EnvRunnerGroup (bench/rollout_rllib.py). Prints JSON.

    python bench/rollout.py              # K = 1, 2 actors, B = 8 sims, ~5-10 min on 2 cores
    python bench/rollout.py --quick      # fewer iterations, ~2-3 min
    python bench/rollout.py --no-rllib   # skip the RLlib comparison

Per K (actors, one CPU each, in a placement group; B simulators per actor, "push-v3", EnvConfig's
default camera / resolution / renderer unless overridden):
  full_loop      RolloutPool.sync sampling: physics + render + batched policy inference (default VLA,
                 stochastic chunks of n_action_steps) + trajectory TensorDict back to the driver + a new
                 weights version published and loaded before every sample call. Executed env steps/s.
                 Intermediate steps of a chunk run physics only: images are rendered where the policy or
                 the trajectory looks (decision points, episode ends; vlaforge/actors/trajectory.py).
  sim_only       the same env (same B, same K processes, same placement) stepped with random actions in
                 chunks of n_action_steps (run_chunk: same render schedule, resets), no policy, nothing
                 sent back: the simulator work the loop cannot avoid.
  ratio          full_loop / sim_only: the loop's own overhead (the issue's aim: >= 0.8).
  sim_only_render_every_step   (not with --quick) the same, rendering every simulated step as a
                 per-step env does; vs_render_every_step = full_loop / that.
  rllib          RLlib 2.60 EnvRunnerGroup with K remote runners x B envs of ONE Meta-World sim each (a
                 gymnasium wrapper on the plain renderer with MSAA and shadows off, whatever --render-backend
                 gives our side; image + state observation; an action = one chunk of n_action_steps
                 actions, like our decisions; every simulated step renders, as in a per-step gym env) and
                 our VLA wrapped as an RLModule. Env steps/s of ``sample()`` (sim steps, counted inside the
                 envs). rllib_one_render_per_chunk (not with --quick): the wrapper renders once per chunk,
                 the same simulator work as ours (isolates framework overhead). See bench/rollout_rllib.py.
The machine's cores may be shared with other jobs: numbers are noisy, compare medians of repeated runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlaforge.actors.config import RolloutConfig  # noqa: E402
from vlaforge.actors.rollout import PolicySource  # noqa: E402
from vlaforge.envs import EnvConfig  # noqa: E402
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy  # noqa: E402

TASK = "push-v3"
A = 4


class SimOnlyWorker:
    """The rollout actor's env without the policy: random chunks through run_chunk, resets at boundaries."""

    def __init__(self, env_cfg: dict, num_envs: int, n_exec: int, render_every_step: bool, seed: int = 0):
        from vlaforge.envs import make_env

        torch.set_num_threads(1)
        self.env = make_env(EnvConfig.model_validate(env_cfg), [TASK] * num_envs, seed=seed)
        if render_every_step:  # switch deferred rendering off: every simulated step renders
            self.env.supports_deferred_render = False
        self.env.reset()
        self.n_exec, self.rng = n_exec, np.random.default_rng(seed)

    def run(self, decisions: int) -> tuple[int, float]:
        from vlaforge.actors.trajectory import run_chunk

        b, steps = self.env.num_envs, 0
        t = time.perf_counter()
        for _ in range(decisions):
            acts = torch.from_numpy(self.rng.uniform(-1, 1, (b, self.n_exec, A)).astype(np.float32))
            out = run_chunk(self.env, acts)
            steps += int(out.exec_steps.sum())
            done = out.done.squeeze(-1).nonzero().flatten()
            if done.numel():
                self.env.reset(env_ids=done.tolist())
        return steps, time.perf_counter() - t


def policy_parts(env_cfg: EnvConfig, state_dim: int) -> tuple[PolicyConfig, PolicySpec, VLAProcessor]:
    cfg = PolicyConfig()  # the default VLA
    spec = PolicySpec((len(env_cfg.cameras), env_cfg.image_size, env_cfg.image_size, 3), state_dim, A)
    stats = {"observation.state": {"mean": [0.0] * state_dim, "std": [1.0] * state_dim},
             "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}
    return cfg, spec, VLAProcessor.from_stats(cfg, stats)


def bench_full_loop(env_cfg: EnvConfig, k: int, b: int, t: int, iters: int, state_dim: int) -> dict:
    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.runtime.weights import WeightPublisher

    pcfg, spec, proc = policy_parts(env_cfg, state_dim)
    learner = build_policy(pcfg, spec)
    pub = WeightPublisher()
    cfg = RolloutConfig(num_actors=k, envs_per_actor=b, steps_per_sample=t, seed=0)
    with RolloutPool(env_cfg, PolicySource.from_parts(pcfg, spec, proc), cfg, tasks=[TASK]) as pool:
        pool.sample(pub.publish(learner))  # warm-up: first weights load, allocator, caches
        steps, rates, per = 0, [], {"policy": [], "env": [], "broadcast": []}
        t0 = time.perf_counter()
        for _ in range(iters):
            batch = pool.sample(pub.publish(learner))  # a new version every call, as in RL
            m = batch.metrics
            steps += int(m["rollout/env_steps"])
            rates.append(m["rollout/env_steps_per_s"])
            per["policy"].append(m["time/rollout_policy_s"])
            per["env"].append(m["time/rollout_env_s"])
            per["broadcast"].append(m["time/broadcast_s"])
        wall = time.perf_counter() - t0
        nbytes = batch.data.bytes()
    return {
        "env_steps_per_s": round(steps / wall, 1),
        "median_call_env_steps_per_s": round(statistics.median(rates), 1),
        "env_steps": steps,
        "wall_s": round(wall, 2),
        "policy_share": round(sum(per["policy"]) / max(1e-9, sum(per["policy"]) + sum(per["env"])), 3),
        "broadcast_load_ms_median": round(1000 * statistics.median(per["broadcast"]), 2),
        "batch_mb": round(nbytes / 2**20, 2),
        "weights_mb": round(pub.latest.nbytes / 2**20, 2),
    }


def bench_sim_only(env_cfg: EnvConfig, k: int, b: int, decisions: int, n_exec: int, render_every_step: bool) -> dict:
    import ray

    from vlaforge.runtime.worker_group import WorkerGroup

    group = WorkerGroup(SimOnlyWorker, k, cpus_per_worker=1, name="sim-only",
                        init_args=(env_cfg.model_dump(mode="json"), b, n_exec, render_every_step))
    try:
        group.call("run", max(1, decisions // 8))  # warm-up
        t0 = time.perf_counter()
        out = ray.get(group.call_async("run", decisions))
        wall = time.perf_counter() - t0
    finally:
        group.shutdown()
    steps = sum(s for s, _ in out)
    return {"env_steps_per_s": round(steps / wall, 1), "env_steps": steps, "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--envs", type=int, default=8, help="B simulators per actor")
    ap.add_argument("--steps", type=int, default=8, help="T decisions per sample call")
    ap.add_argument("--iters", type=int, default=None, help="sample calls measured per K")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--render-backend", default=None)
    ap.add_argument("--no-rllib", action="store_true")
    ap.add_argument("--rllib-schedule", choices=["every_step", "per_chunk", "both"], default=None,
                    help="RLlib's render schedule(s): every sim step / one render per chunk (ours); default both "
                         "(--quick: every_step)")
    ap.add_argument("--no-eager", action="store_true", help="skip sim_only_render_every_step")
    args = ap.parse_args()
    iters = args.iters or (3 if args.quick else 10)

    from vlaforge.runtime.process import init_ray

    over = {k: v for k, v in (("image_size", args.image_size), ("render_backend", args.render_backend)) if v is not None}
    env_cfg = EnvConfig(tasks=[TASK], **over)
    rllib_env = env_cfg.model_copy(update={"render_backend": "plain"})
    state_dim = {"proprio": 4, "proprio_goal": 7, "full": 39}[env_cfg.state]
    n_exec = PolicyConfig().n_action_steps
    init_ray(num_cpus=max([*args.actors, os.cpu_count() or 1]), log_to_driver=False)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "env": {"task": TASK, "image_size": env_cfg.image_size, "cameras": env_cfg.cameras,
                "render_backend": env_cfg.render_backend, "render_backend_rllib": rllib_env.render_backend,
                "state": env_cfg.state},
        "load_before": os.getloadavg(),
        "policy": {"config": "PolicyConfig() defaults", "n_action_steps": n_exec, "chunk_size": PolicyConfig().chunk_size},
        "envs_per_actor": args.envs, "decisions_per_sample": args.steps, "iters": iters, "by_actors": {},
    }
    for k in args.actors:
        full = bench_full_loop(env_cfg, k, args.envs, args.steps, iters, state_dim)
        sim = bench_sim_only(env_cfg, k, args.envs, args.steps * iters, n_exec, render_every_step=False)
        entry = {"full_loop": full, "sim_only": sim,
                 "ratio": round(full["env_steps_per_s"] / max(1e-9, sim["env_steps_per_s"]), 3)}
        if not (args.quick or args.no_eager):
            eager = bench_sim_only(env_cfg, k, args.envs, args.steps * iters, n_exec, render_every_step=True)
            entry["sim_only_render_every_step"] = eager
            entry["vs_render_every_step"] = round(full["env_steps_per_s"] / max(1e-9, eager["env_steps_per_s"]), 2)
        if not args.no_rllib:
            schedule = args.rllib_schedule or ("every_step" if args.quick else "both")
            variants = [v for v in (("rllib", True), ("rllib_one_render_per_chunk", False))
                        if schedule == "both" or (schedule == "every_step") == v[1]]
            for name, every in variants:
                try:
                    from bench.rollout_rllib import bench_rllib

                    # RLlib renders with the plain renderer's best settings (MSAA/shadows off) whatever ours uses
                    entry[name] = bench_rllib(rllib_env, k, args.envs, iters, *policy_parts(env_cfg, state_dim), TASK,
                                              args.steps, render_every_step=every)
                    entry[f"vs_{name}"] = round(full["env_steps_per_s"] / max(1e-9, entry[name]["env_steps_per_s"]), 2)
                except Exception as e:  # noqa: BLE001 -- report, keep the rest
                    entry[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        result["by_actors"][str(k)] = entry
        print(json.dumps({"progress": f"K={k} done", **entry}), file=sys.stderr)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
