"""Whole PPO iterations on Meta-World push-v3: vlaforge vs RLlib 2.60's PPO, env steps/s. Prints JSON.

    python bench/rl_iteration.py                        # K = 2 actors x B = 4 sims x T = 16 decisions, 3 iterations
    python bench/rl_iteration.py --render-backend plain # our side on the plain renderer (default: the env default, Warp)
    python bench/rl_iteration.py --no-rllib

One iteration = sample (K actors x B simulators x T decisions of n_action_steps actions) + GAE + ``--epochs`` x
``--minibatches`` optimizer steps + the new weights to every actor. Both sides run the same policy (the default
VLA with a value head), the same env (64 px ``corner`` image + 39-d state, 200-step episodes, no termination at
success), the same batch (K*B*T decisions), epochs and minibatches, the same K processes x B envs:
  ours    RolloutPool (sync) -> RLLearnerActor.train_rl (1 DeepSpeed rank, ZeRO-1, GAE inside) -> WeightSync
          (flat-buffer object-store broadcast). Rendering: the env's render backend, images only where the
          policy or the trajectory looks (decision points, episode ends).
  rllib   PPOConfig().build_algo().train(): K env runners x B envs of a gymnasium wrapper around the same
          simulator (an action = one chunk), learner in the driver; every simulated step renders (a per-step
          gym env), with the plain renderer's best settings (MSAA and shadows off). bench/rollout_rllib.py.
Env steps/s = simulated steps / wall time of the measured iterations (after one warm-up iteration each).
The machine's cores may be shared: numbers are noisy; the JSON carries the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlaforge.envs import EnvConfig  # noqa: E402

TASK = "push-v3"


def bench_ours(env_cfg: EnvConfig, args, pcfg, spec, proc) -> dict:
    from types import SimpleNamespace

    import ray

    from vlaforge.actors.config import RolloutConfig
    from vlaforge.actors.rollout import PolicySource
    from vlaforge.learners.config import TrainConfig
    from vlaforge.learners.rl_learner import RLLearnerActor
    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.platform.weight_sync import WeightSync
    from vlaforge.policies import build_policy, save_pretrained
    from vlaforge.runtime.config import TimeoutsConfig
    from vlaforge.runtime.worker_group import WorkerGroup

    tmp = Path(tempfile.mkdtemp(prefix="rl-iteration-"))
    torch.manual_seed(0)
    bc_cfg = pcfg.model_copy(update={"value_head": False})  # as a BC export; setup_rl adds the value head
    save_pretrained(tmp / "bc", build_policy(bc_cfg, spec), proc, bc_cfg, spec, extra={"objective": "bc"})
    train = TrainConfig(objective="ppo", num_learners=1, batch_size=8, lr=args.lr, warmup_steps=0, lr_schedule="constant",
                        steps=args.iters + 1, ppo={"epochs": args.epochs, "num_minibatches": args.minibatches,
                                                   "critic_warmup_updates": 0, "clip_epsilon": 0.2})
    learners = WorkerGroup(RLLearnerActor, 1, cpus_per_worker=1, name="rl-iter-learner")
    pool = None
    try:
        learners.call("setup_rl", train.model_dump(), str(tmp / "bc"), timeout=900)
        learners.call("export_policy", str(tmp / "start"))
        cfg = RolloutConfig(num_actors=args.actors, envs_per_actor=args.envs, steps_per_sample=args.steps, seed=0)
        recipe = SimpleNamespace(rollout=cfg, runtime=SimpleNamespace(timeouts=TimeoutsConfig()))
        sync = WeightSync(recipe, learners)
        handle = sync.publish()
        pool = RolloutPool(env_cfg, PolicySource.from_dir(tmp / "start"), cfg, [TASK])
        handle = sync.attach(pool, handle)
        phases = {"sample": [], "learn": [], "broadcast": []}
        steps = 0
        for i in range(args.iters + 1):  # iteration 0: warm-up
            t0 = time.perf_counter()
            batch, handle = sync.sample(pool, handle)
            t1 = time.perf_counter()
            learners.call("train_rl", ray.put(batch.data))
            t2 = time.perf_counter()
            handle = sync.publish()
            t3 = time.perf_counter()
            if i:
                steps += int(batch.metrics["rollout/env_steps"])
                for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                    phases[k].append(v)
        wall = sum(sum(v) for v in phases.values())
        return {"env_steps_per_s": round(steps / wall, 1), "env_steps": steps, "wall_s": round(wall, 2),
                **{f"{k}_s_mean": round(sum(v) / len(v), 3) for k, v in phases.items()},
                "weights_mb": round(handle.nbytes / 2**20, 2),
                "setup": f"RolloutPool {args.actors} actors x {args.envs} sims x {args.steps} decisions, 1 DeepSpeed "
                         f"rank (ZeRO-1), {args.epochs} epochs x {args.minibatches} minibatches, object-store broadcast"}
    finally:
        if pool is not None:
            pool.shutdown()
        learners.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, default=2, help="K rollout actors (RLlib: env runners)")
    ap.add_argument("--envs", type=int, default=4, help="B simulators per actor / runner")
    ap.add_argument("--steps", type=int, default=16, help="T decisions per actor per iteration")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3, help="measured iterations (after one warm-up)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--render-backend", default=None, help="our side's renderer (RLlib always uses plain)")
    ap.add_argument("--no-rllib", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    args = ap.parse_args()

    from bench.rollout import policy_parts
    from vlaforge.runtime.process import init_ray

    base = dict(tasks=[TASK], max_episode_steps=200, terminate_on_success=False)
    env_ours = EnvConfig(**base, **({"render_backend": args.render_backend} if args.render_backend else {}))
    env_rllib = EnvConfig(**base, render_backend="plain")
    state_dim = {"proprio": 4, "proprio_goal": 7, "full": 39}[env_ours.state]
    pcfg, spec, proc = policy_parts(env_ours, state_dim)
    pcfg = pcfg.model_copy(update={"value_head": True})
    init_ray(num_cpus=args.actors + 2, log_to_driver=False)
    out: dict = {
        "bench": "rl_iteration", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                             "torch": torch.__version__},
        "load_before": os.getloadavg(), "task": TASK, "image_size": env_ours.image_size, "state": env_ours.state,
        "render_backend_ours": env_ours.render_backend, "render_backend_rllib": "plain (MSAA/shadows off)",
        "actors": args.actors, "envs_per_actor": args.envs, "decisions": args.steps, "epochs": args.epochs,
        "minibatches": args.minibatches, "iters": args.iters, "n_action_steps": pcfg.n_action_steps,
    }
    if not args.no_ours:
        out["ours"] = bench_ours(env_ours, args, pcfg, spec, proc)
        print(json.dumps({"progress": "ours", **out["ours"]}), file=sys.stderr, flush=True)
    if not args.no_rllib:
        try:
            from bench.rollout_rllib import bench_rllib_ppo

            out["rllib"] = bench_rllib_ppo(env_rllib, args.actors, args.envs, args.steps, args.epochs, args.minibatches,
                                           args.iters, pcfg, spec, proc, TASK, args.lr)
        except Exception as e:  # noqa: BLE001 -- report it, keep our side's numbers
            out["rllib"] = {"error": f"{type(e).__name__}: {e}"[:3000]}
    if "env_steps_per_s" in out.get("ours", {}) and "env_steps_per_s" in out.get("rllib", {}):
        out["ours_vs_rllib"] = round(out["ours"]["env_steps_per_s"] / max(1e-9, out["rllib"]["env_steps_per_s"]), 2)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
