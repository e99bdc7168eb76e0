"""PPO learner benchmark: RLLearnerActor updates on a synthetic decision-level rollout batch, 1 vs 2 ranks.
Prints JSON.

    python bench/ppo_learner.py            # default VLA (dim 128), 64 px, 39-d state, 16 sims x 16 decisions
    python bench/ppo_learner.py --quick    # small VLA, 32 px, 8 sims x 4 decisions, 1 epoch

Per setting: WorkerGroup of N RLLearnerActor ranks (ZeRO-1, gloo), setup_rl from a BC-style export (no value
head: a fresh one is added), one warm-up update, then --reps timed updates (median reported):
  samples_per_s     sample passes per second over all ranks (every decision is seen `epochs` times)
  decisions_per_s   rollout decisions consumed per second (B x T / update time)
  update_s          one train_rl call (advantages incl. bootstrap values, reference forward, epochs x minibatches)
  publish_ms        rank 0 packs the trainable parameters and ray.puts them (WeightPublisher)
The batch is built with the policy itself (chunks sampled from it, true log-probs), as a rollout actor would.
The machine's cores are shared with other work: expect noise, compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def write_bc_export(directory: Path, policy_cfg, spec) -> Path:
    import torch

    from vlaforge.policies import VLAProcessor, build_policy, save_pretrained

    torch.manual_seed(0)
    stats = {"observation.state": {"mean": [0.0] * spec.state_dim, "std": [1.0] * spec.state_dim},
             "action": {"min": [-1.0] * spec.action_dim, "max": [1.0] * spec.action_dim}}
    processor = VLAProcessor.from_stats(policy_cfg, stats)
    return save_pretrained(directory, build_policy(policy_cfg, spec), processor, policy_cfg, spec)


def run(train, export: Path, batch, ranks: int, reps: int) -> dict:
    import ray

    from vlaforge.learners.rl_learner import RLLearnerActor
    from vlaforge.runtime.worker_group import WorkerGroup

    cfg = train.model_copy(update={"num_learners": ranks})
    t0 = time.perf_counter()
    group = WorkerGroup(RLLearnerActor, ranks, cpus_per_worker=cfg.cpus_per_learner, name=f"bench-ppo-{ranks}")
    try:
        info = group.call("setup_rl", cfg, str(export), timeout=900)[0]
        setup_s = time.perf_counter() - t0
        ref = ray.put(batch)
        group.call("train_rl", ref, timeout=900)  # warm-up (first-call allocations)
        ms, pubs = [], []
        for _ in range(reps):
            ms.append(group.call("train_rl", ref, timeout=900)[0])
            t1 = time.perf_counter()
            group.call("publish_weights")
            pubs.append(1000 * (time.perf_counter() - t1))
    finally:
        group.shutdown()
    decisions = batch.batch_size[0] * batch.batch_size[1]
    med = lambda key: statistics.median(m[key] for m in ms)  # noqa: E731
    return {
        "samples_per_s": round(med("train/samples_per_s"), 1),
        "samples_per_s_all": [round(m["train/samples_per_s"], 1) for m in ms],
        "decisions_per_s": round(decisions / med("train/update_s"), 1),
        "update_s": round(med("train/update_s"), 3),
        "prepare_s": round(med("train/prepare_s"), 3),
        "optimizer_steps": int(ms[-1]["train/optimizer_steps"]),
        "publish_ms": round(statistics.median(pubs), 1),
        "setup_s": round(setup_s, 2),
        "num_params": info["num_params"],
        "final": {k: round(ms[-1][f"train/{k}"], 4) for k in ("loss", "approx_kl", "clip_fraction", "explained_variance")},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--reps", type=int, default=3, help="timed updates per setting (the median is reported)")
    args = ap.parse_args(argv)

    from vlaforge.learners.config import TrainConfig
    from vlaforge.learners.rl_learner import load_rl_policy
    from vlaforge.learners.synthetic import synthetic_rollout
    from vlaforge.runtime.process import init_ray
    from vlaforge.policies import PolicyConfig, PolicySpec

    if args.quick:
        size, sims, decisions, epochs, mbs = 32, 8, 4, 1, 2
        policy = PolicyConfig(dim=64, layers=1, heads=2, chunk_size=4, n_action_steps=2, vision={"channels": [16, 32]})
    else:
        size, sims, decisions, epochs, mbs = 64, 16, 16, 2, 4
        policy = PolicyConfig()
    spec = PolicySpec(image_shape=(1, size, size, 3), state_dim=39, action_dim=4)  # Meta-World, state "full"
    train = TrainConfig(objective="ppo", batch_size=2, lr=1e-5, warmup_steps=0, lr_schedule="constant",
                        threads_per_learner=args.threads, cpus_per_learner=args.threads,
                        ppo={"epochs": epochs, "num_minibatches": mbs, "kl_coef": 0.01})
    with tempfile.TemporaryDirectory() as tmp:
        export = write_bc_export(Path(tmp) / "bc", policy, spec)
        model, _, processor, cfg, _ = load_rl_policy(str(export), value_head=True, seed=train.seed)
        batch = synthetic_rollout(model, processor, spec, sims, decisions, cfg.n_action_steps, seed=0)
        init_ray(num_cpus=max(args.ranks) * args.threads, log_to_driver=False)
        out: dict = {"config": {"image_px": size, "sims": sims, "decisions": decisions, "epochs": epochs,
                                "minibatches_per_rank": mbs, "policy_dim": policy.dim, "chunk": policy.chunk_size,
                                "threads": args.threads, "zero_stage": train.deepspeed.zero_stage, "kl_coef": 0.01}}
        for n in args.ranks:
            out[f"deepspeed/{n}"] = run(train, export, batch, n, args.reps)
    if "deepspeed/1" in out and "deepspeed/2" in out:
        out["scaling_2_vs_1"] = round(out["deepspeed/2"]["samples_per_s"] / out["deepspeed/1"]["samples_per_s"], 2)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
