"""Policy inference latency on ONE thread (what a rollout actor gets: Ray pins OMP_NUM_THREADS=1).

Default config (dim 128, 2 fusion layers, chunk 8, 1 camera at 64 px, 39-d state, 4-d action).
Per batch size: processor ms, forward ms (one chunk), plan ms (processor + forward + sample + log_prob,
i.e. one re-plan of PolicyRunner), and the effective action rate with chunking:
actions/s = n_action_steps / forward time (per env; x batch for the whole batch), and the same with the
plan time. Prints JSON. Timings on shared cores are noisy: compare medians of repeated runs.

    python bench/inference.py [--quick] [--backbone default|pretrained-lite|hf-tiny|hf-smolvlm-shape|hf]
                              [--vlm-path DIR] [--vlm-layers N] [--vision cnn|efficientnet_lite0] [--batch 1 8]
                              [--head gaussian|tokens|diffusion|flow]

Backbones: see bench/backbones.py (default, pretrained-lite, hf-tiny, hf-smolvlm-shape, hf + --vlm-path).
Heads: head_sample = one chunk from the readout (the autoregressive decoding or the denoising steps);
plan_ms_per_action = plan / n_action_steps (latency per executed action with chunking).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensordict import NonTensorStack, TensorDict

from backbones import NAMES, backbone_config  # bench/backbones.py (the script's folder is on sys.path)
from vlaforge import keys
from vlaforge.policies import PolicyConfig, PolicyRunner, PolicySpec, VLAProcessor, build_policy


def _obs(b: int, spec: PolicySpec) -> TensorDict:
    td = TensorDict(
        {keys.IMAGE: torch.randint(0, 256, (b, *spec.image_shape), dtype=torch.uint8), keys.STATE: torch.randn(b, spec.state_dim)},
        batch_size=[b],
    )
    td.set(keys.INSTRUCTION, NonTensorStack(*["push the puck to the goal"] * b))
    return td


def _time(fn, iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ms, cpu_ms = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
        cpu_ms.append((time.process_time() - c0) * 1e3)
    ms.sort()
    return {
        "median_ms": round(statistics.median(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        # CPU time of this (one-thread) process: what the call costs on an idle core, robust when the
        # machine's cores are shared (wall time then includes waiting for a core).
        "median_cpu_ms": round(statistics.median(cpu_ms), 3),
        "iters": iters,
    }


def bench(batch: int, policy, proc: VLAProcessor, spec: PolicySpec, n_steps: int, iters: int, warmup: int) -> dict:
    obs = _obs(batch, spec)
    prepared = proc(obs)
    runner = PolicyRunner(policy, proc, n_action_steps=n_steps)
    with torch.inference_mode():
        processor_t = _time(lambda: proc(obs), iters, warmup)
        forward_t = _time(lambda: policy(prepared), iters, warmup)
        out = policy(prepared)
        sample_t = _time(lambda: policy.act(out, deterministic=True), iters, warmup)  # the action head's decoding

    def plan():  # one re-plan of every env, exactly the runner's path
        runner.reset()
        runner.step(obs)

    plan_t = _time(plan, iters, warmup)

    def step():  # amortised: a step costs a plan every n_steps calls
        runner.step(obs)

    runner.reset()
    step_t = _time(step, iters * n_steps, warmup * n_steps)
    fwd_s, plan_s = forward_t["median_ms"] / 1e3, plan_t["median_ms"] / 1e3
    return {
        "batch": batch,
        "processor": processor_t,
        "forward": forward_t,
        "plan": plan_t,
        "head_sample": sample_t,
        "plan_ms_per_action": round(plan_t["median_ms"] / n_steps, 3),  # latency per executed action (chunking)
        "runner_step_amortised": step_t,  # read mean_ms: most steps only pop a queue
        "chunks_per_s": round(1 / fwd_s, 1),
        # the brief's figure: n_action_steps / forward time, per env and for the whole batch
        "actions_per_s_per_env": round(n_steps / fwd_s, 1),
        "actions_per_s_total": round(batch * n_steps / fwd_s, 1),
        # the same with the processor, sampling and the runner's bookkeeping included
        "actions_per_s_total_incl_processing": round(batch * n_steps / plan_s, 1),
        # the same two rates from CPU time (see _time): the figures to compare on a shared machine
        "actions_per_s_per_env_cpu": round(n_steps * 1e3 / forward_t["median_cpu_ms"], 1),
        "actions_per_s_total_incl_processing_cpu": round(batch * n_steps * 1e3 / plan_t["median_cpu_ms"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    ap.add_argument("--backbone", default="default", choices=NAMES)
    ap.add_argument("--vlm-path", default=None, help="--backbone hf: local folder of a VLM (config, weights, processor)")
    ap.add_argument("--vlm-layers", type=int, default=None, help="hf backbones: policy.backbone.num_layers")
    ap.add_argument("--vision", default="cnn", help="default backbone: vision type (cnn, efficientnet_lite0)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 200; --quick 10)")
    ap.add_argument("--head", default="gaussian", help="action head type (gaussian, tokens, diffusion, flow)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="vlaforge-bench-"))
    with contextlib.redirect_stdout(sys.stderr):
        cfg = PolicyConfig(**backbone_config(args.backbone, tmp, args.vision, args.vlm_path, args.vlm_layers))
    cfg = cfg.model_copy(update={"head": cfg.head.model_copy(update={"type": args.head})})
    spec = PolicySpec(image_shape=(1, 64, 64, 3), state_dim=39, action_dim=4)
    stats = {
        "observation.state": {"mean": [0.0] * 39, "std": [1.0] * 39},
        "action": {"min": [-1.0] * 4, "max": [1.0] * 4, "mean": [0.0] * 4, "std": [1.0] * 4},
    }
    with contextlib.redirect_stdout(sys.stderr):  # library load reports / warnings: keep stdout pure JSON
        proc = VLAProcessor.from_stats(cfg, stats)
        policy = build_policy(cfg, spec).eval()
    iters, warmup = (10, 3) if args.quick else (200, 20)
    if args.iters:
        iters, warmup = args.iters, max(1, args.iters // 10)
    results = [bench(b, policy, proc, spec, cfg.n_action_steps, iters, warmup) for b in args.batch]
    print(json.dumps({
        "bench": "policy_inference",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "config": {"backbone": args.backbone, "backbone_cfg": cfg.backbone.model_dump(mode="json"), "head": args.head,
                   "vision": cfg.vision.type, "language": cfg.language.type, "dim": cfg.dim, "layers": cfg.layers, "chunk_size": cfg.chunk_size,
                   "n_action_steps": cfg.n_action_steps, "image_shape": list(spec.image_shape),
                   "state_dim": spec.state_dim, "action_dim": spec.action_dim},
        "params": policy.num_parameters(),
        "trainable_params": policy.num_parameters(trainable_only=True),
        "quick": args.quick,
        "results": results,
    }, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
