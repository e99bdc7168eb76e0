"""Learner benchmark: BC training samples/s, DeepSpeed on Ray ranks vs a plain PyTorch loop. Prints JSON.

    python bench/learner.py            # default policy (dim 128), 64 px, global batch 32, 3 x 30 timed steps
    python bench/learner.py --quick    # small policy, 32 px, global batch 16, 3 x 10 timed steps
    python bench/learner.py --backbone pretrained-lite --ranks 1   # the backbone dimension (bench/backbones.py)

Same model, processor, BC loss, AdamW, LR schedule, gradient clipping and global batch everywhere:
  plain_torch        this process, torch.set_num_threads(threads): processor -> model -> loss -> AdamW
  deepspeed/<N>      LearnerActor x N in a WorkerGroup (ZeRO-1, gloo), threads each, global batch split
overhead_pct = 1 - deepspeed/1 / plain_torch (what DeepSpeed + the Ray actor cost on one rank);
scaling = deepspeed/2 / deepspeed/1. Timings exclude setup (reported separately) and a few warm-up steps; the median of --reps segments.
The machine's cores are shared with other work: expect noise, compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_dataset(root: Path, size: int, episodes: int = 8, length: int = 30) -> Path:
    from vlaforge.data import format as F
    from vlaforge.data.writer import DatasetWriter

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    feats = {F.IMAGE_PREFIX + "main": F.video_feature(size, size), F.STATE_KEY: F.vector_feature("float32", 8),
             F.ACTION_KEY: F.vector_feature("float32", 4)}
    with DatasetWriter(root, fps=10, features=feats) as wr:
        for ep in range(episodes):
            state = rng.normal(size=(length, 8)).astype(np.float32)
            img = rng.integers(0, 255, size=(length, size, size, 3), dtype=np.uint8)
            wr.add_episode({F.IMAGE_PREFIX + "main": img, F.STATE_KEY: state,
                            F.ACTION_KEY: np.tanh(state @ w).astype(np.float32)}, task=f"task {ep % 2}")
    return root


def plain_loop(train, policy_cfg, dataset: Path, warmup: int, steps: int, reps: int) -> dict:
    import torch

    from vlaforge.data.dataset import ChunkDataset
    from vlaforge.learners.engine import lr_scheduler, seed_everything
    from vlaforge.learners.registry import build_objective, total_loss
    from vlaforge.learners.stream import ShardStream
    from vlaforge.runtime.process import set_threads
    from vlaforge.policies import PolicySpec, VLAProcessor, build_policy

    set_threads(train.threads_per_learner)
    t0 = time.perf_counter()
    ds = ChunkDataset(dataset, chunk_size=policy_cfg.chunk_size)
    spec = PolicySpec(tuple(ds.images.shape[1:]), ds.state.shape[1], ds.actions.shape[1])
    seed_everything(train.seed)
    model = build_policy(policy_cfg, spec)
    proc = VLAProcessor.from_stats(policy_cfg, ds.stats)
    objective = build_objective(train.objective, train, model)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    sched = lr_scheduler(opt, train)
    stream = ShardStream(len(ds), ds.get_batch, train.batch_size, 0, 1, seed=train.seed)
    setup_s = time.perf_counter() - t0

    def step() -> float:
        inp = proc(stream.next(), train=True)
        loss = total_loss(objective(inp.update(model(inp))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.deepspeed.gradient_clipping)
        opt.step()
        sched.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    rates, cpu_rates = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses = [step() for _ in range(steps)]
        rates.append(steps * train.batch_size / (time.perf_counter() - t0))
        cpu_rates.append(steps * train.batch_size / (time.process_time() - c0))
    return _summary(rates, train.batch_size, setup_s, losses[-1]) | {
        # samples per CPU-second of this process (threads=1: ~ samples/s on an idle core; robust to shared cores)
        "samples_per_cpu_s": round(statistics.median(cpu_rates), 1),
        "num_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _summary(rates: list[float], batch: int, setup_s: float, final_loss: float) -> dict:
    med = statistics.median(rates)  # median of the timed segments: the shared cores make single runs noisy
    return {"samples_per_s": round(med, 1), "samples_per_s_all": [round(r, 1) for r in rates],
            "step_ms": round(1000 * batch / med, 2), "setup_s": round(setup_s, 2), "final_loss": round(final_loss, 4)}


def deepspeed_run(train, policy_cfg, dataset: Path, ranks: int, warmup: int, steps: int, reps: int) -> dict:
    from vlaforge.learners.deepspeed_learner import LearnerActor
    from vlaforge.runtime.worker_group import WorkerGroup

    t0 = time.perf_counter()
    cfg = train.model_copy(update={"num_learners": ranks})
    group = WorkerGroup(LearnerActor, ranks, cpus_per_worker=cfg.cpus_per_learner, name=f"bench-learner-{ranks}")
    try:
        group.call("setup", cfg, policy_cfg, str(dataset), timeout=600)
        setup_s = time.perf_counter() - t0
        group.call("train_steps", warmup)
        ms = [group.call("train_steps", steps)[0] for _ in range(reps)]
    finally:
        group.shutdown()
    return _summary([m["train/samples_per_s"] for m in ms], cfg.batch_size, setup_s, ms[-1]["train/loss"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2], help="DeepSpeed rank counts (none: plain loop only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (and of the plain loop)")
    ap.add_argument("--reps", type=int, default=3, help="timed segments per setting (the median is reported)")
    ap.add_argument("--dataset", type=Path, default=None, help="a LeRobot v3 folder (default: synthetic)")
    ap.add_argument("--backbone", default="default", help="bench/backbones.py: default, pretrained-lite, hf-tiny, "
                    "hf-smolvlm-shape, hf (+ --vlm-path)")
    ap.add_argument("--vlm-path", default=None, help="--backbone hf: local VLM folder")
    ap.add_argument("--vlm-layers", type=int, default=None, help="hf backbones: policy.backbone.num_layers")
    ap.add_argument("--lora-r", type=int, default=None, help="hf backbones: LoRA rank (default: frozen VLM, no LoRA)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (override; large VLMs on CPU: 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per segment (override)")
    args = ap.parse_args(argv)

    from vlaforge.learners.config import TrainConfig
    from vlaforge.runtime.process import init_ray
    from vlaforge.policies.config import PolicyConfig
    from backbones import backbone_config  # bench/backbones.py

    tmp_models = Path(tempfile.mkdtemp(prefix="vlaforge-bench-models-"))
    with contextlib.redirect_stdout(sys.stderr):
        over = backbone_config(args.backbone, tmp_models, vlm_path=args.vlm_path, vlm_layers=args.vlm_layers,
                               lora_r=args.lora_r)
    if args.quick:
        size, batch, warmup, steps = 32, 16, 3, 10
        policy = PolicyConfig(**({"dim": 64, "layers": 1, "heads": 2, "chunk_size": 4, "n_action_steps": 2,
                                  "vision": {"channels": [16, 32]}} | over))
    else:
        size, batch, warmup, steps = 64, 32, 5, 30
        policy = PolicyConfig(**over)
    batch, steps = args.batch or batch, args.steps or steps
    warmup = min(warmup, steps)
    train = TrainConfig(batch_size=batch, lr=3e-4, warmup_steps=5, steps=1000, threads_per_learner=args.threads,
                        cpus_per_learner=args.threads)
    # Library warnings / load reports go to stderr: stdout stays pure JSON.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        dataset = args.dataset or write_dataset(Path(tmp) / "bench-data", size)
        if args.ranks:
            init_ray(num_cpus=max(args.ranks) * args.threads, log_to_driver=False)
        out: dict = {"config": {"image_px": size, "global_batch": batch, "timed_steps": steps, "threads": args.threads,
                                "policy_dim": policy.dim, "zero_stage": train.deepspeed.zero_stage,
                                "dataset": str(args.dataset or "synthetic"), "backbone": args.backbone,
                                "backbone_cfg": policy.backbone.model_dump(mode="json"),
                                "vision": policy.vision.type, "language": policy.language.type}}
        out["plain_torch"] = plain_loop(train, policy, dataset, warmup, steps, args.reps)
        for n in args.ranks:
            out[f"deepspeed/{n}"] = deepspeed_run(train, policy, dataset, n, warmup, steps, args.reps)
    shutil.rmtree(tmp_models, ignore_errors=True)
    base = out["plain_torch"]["samples_per_s"]
    if "deepspeed/1" in out:
        out["overhead_pct"] = round(100 * (1 - out["deepspeed/1"]["samples_per_s"] / base), 1)
    if "deepspeed/1" in out and "deepspeed/2" in out:
        out["scaling_2_vs_1"] = round(out["deepspeed/2"]["samples_per_s"] / out["deepspeed/1"]["samples_per_s"], 2)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
