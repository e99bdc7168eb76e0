"""How the driver's control-plane cost grows with the number of rollout actors K. Prints JSON.

    python bench/scaling.py                   # K = 1, 2, 4, 8, 16, 32
    python bench/scaling.py --actors 1 2 4    # a pilot

Zero-cost env (``envs.backend: synthetic``: no physics, no rendering) and a tiny policy, so that what is
measured is the platform, not the simulator: per K, a fresh RolloutPool (sync) of K actors with fractional
CPUs (``--cpus-per-actor``), B simulators each, then ``--reps`` repetitions of
  sample      ``pool.sample(handle)`` with a handle every actor already holds: K task submissions, K results
              (TensorDict [B, T]) fetched and deserialized, concatenated, metrics
  broadcast   a new version: ``WeightPublisher.publish`` (one ray.put of the flat buffer) + every actor's load
              (``load_weights``), waited for
  transfer    K results already computed (``sample`` refs, waited for with ray.wait first): the driver's
              ray.get + deserialization of the trajectories alone
For each: wall ms per call, the DRIVER's CPU ms per call (time.process_time, incl. Ray's core-worker threads:
what a bigger cluster cannot parallelise away), the driver's main-thread CPU ms, per K; and least-squares
fits "fixed + per_extra_actor x K" of each. On 2 cores the actors' own work also competes with the driver for
CPU, so wall times grow with K here for reasons a cluster would not have; the driver CPU time is the
number to extrapolate (see the README's scaling notes for what it predicts at 1,000 actors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlaforge.actors.config import RolloutConfig  # noqa: E402
from vlaforge.actors.rollout import PolicySource  # noqa: E402
from vlaforge.envs import EnvConfig  # noqa: E402
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy  # noqa: E402

TASK = "reach-v3"
ENV = EnvConfig(backend="synthetic", tasks=[TASK], image_size=32, state="proprio", max_episode_steps=200)
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})
SPEC = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=4)
STATS = {"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "action": {"min": [-1.0] * 4, "max": [1.0] * 4}}


def timed(fn) -> tuple[float, float, float]:
    """(wall s, driver process CPU s, driver main-thread CPU s) of fn(). The process figure includes Ray's
    core-worker threads (gRPC, object transfer); the main thread is vlaforge's code + Ray's Python API."""
    w, c, m = time.perf_counter(), time.process_time(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c, time.thread_time() - m


def summarize(name: str, samples: list[tuple[float, float, float]], k: int) -> dict:
    wall, cpu, main = (statistics.median(s[i] for s in samples) * 1000 for i in range(3))
    return {f"{name}_ms": round(wall, 2), f"{name}_driver_cpu_ms": round(cpu, 2),
            f"{name}_driver_main_thread_ms": round(main, 2),
            f"{name}_ms_per_actor": round(wall / k, 3), f"{name}_driver_cpu_ms_per_actor": round(cpu / k, 3)}


def bench_k(k: int, args) -> dict:
    import ray

    from vlaforge.platform.rollout_pool import RolloutPool
    from vlaforge.runtime.weights import WeightPublisher

    torch.manual_seed(0)
    learner = build_policy(POLICY, SPEC)
    pub = WeightPublisher()
    cfg = RolloutConfig(num_actors=k, envs_per_actor=args.envs, steps_per_sample=args.steps, seed=0,
                        cpus_per_actor=args.cpus_per_actor)
    t0 = time.perf_counter()
    pool = RolloutPool(ENV, PolicySource.from_parts(POLICY, SPEC, VLAProcessor.from_stats(POLICY, STATS)), cfg, [TASK])
    start_s = time.perf_counter() - t0
    try:
        handle = pub.publish(learner)
        batch = pool.sample(handle)  # warm-up: every actor loads v1, allocators, first results
        actors = pool.group.actors
        samples, broadcasts, transfers = [], [], []
        for _ in range(args.reps):
            samples.append(timed(lambda: pool.sample(handle)))

            def broadcast():
                nonlocal handle
                with torch.no_grad():
                    next(learner.parameters()).add_(1e-3)
                handle = pub.publish(learner)
                ray.get([a.load_weights.remote(handle) for a in actors])

            broadcasts.append(timed(broadcast))
            refs = [a.sample.remote(handle) for a in actors]
            ray.wait(refs, num_returns=len(refs), timeout=600, fetch_local=True)
            transfers.append(timed(lambda: ray.get(refs)))
        row = {"actors": k, "actor_start_s": round(start_s, 2), "batch_kb": round(batch.data.bytes() / 1024, 1),
               "weights_kb": round(handle.nbytes / 1024, 1)}
        for name, xs in (("sample", samples), ("broadcast", broadcasts), ("transfer", transfers)):
            row.update(summarize(name, xs, k))
        return row
    finally:
        pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--envs", type=int, default=4, help="B simulators per actor")
    ap.add_argument("--steps", type=int, default=4, help="T decisions per sample call")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cpus-per-actor", type=float, default=0.05, help="Ray CPU resource per actor (fractional)")
    args = ap.parse_args()

    import ray

    from vlaforge.runtime.process import init_ray

    init_ray(num_cpus=max(2.0, 1.0 + args.cpus_per_actor * max(args.actors)), log_to_driver=False)
    out = {"bench": "scaling", "cpus": os.cpu_count(), "env": "synthetic (zero-cost)", "envs_per_actor": args.envs,
           "decisions": args.steps, "reps": args.reps, "load_before": os.getloadavg(), "ray": ray.__version__,
           "results": []}
    for k in sorted(args.actors):
        row = bench_k(k, args)
        print(json.dumps(row), file=sys.stderr, flush=True)
        out["results"].append(row)
    rows = out["results"]
    if len(rows) >= 2:  # least-squares slope of driver CPU per call vs K: the marginal driver cost of one actor
        for name in ("sample", "broadcast", "transfer"):
            for what in ("driver_cpu", "driver_main_thread", ""):
                col = f"{name}_{what}_ms" if what else f"{name}_ms"
                xs, ys = [r["actors"] for r in rows], [r[col] for r in rows]
                mx, my = statistics.mean(xs), statistics.mean(ys)
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
                out[f"{col}_per_extra_actor"] = round(slope, 3)
                out[f"{col}_fixed"] = round(my - slope * mx, 3)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
