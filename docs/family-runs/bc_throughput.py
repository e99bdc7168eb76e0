"""BC training samples/s per action head under identical conditions: this process, ONE thread, the family
recipe's policy (dim 128, 2 layers, chunk 8, 64 px, 39-d state, 4-d action), global batch 64, the BC objective
the learner builds (build_objective("bc")), AdamW. Heads are timed round-robin (reps x steps each) so that
the shared machine's load hits them alike; prints the median per head as JSON.

    python docs/family-runs/bc_throughput.py [--steps 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import build_objective, total_loss
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

HEADS = ["gaussian", "tokens", "diffusion", "flow"]
B = 64


def batch(spec: PolicySpec, k: int) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    td = TensorDict({keys.IMAGE: torch.randint(0, 256, (B, *spec.image_shape), dtype=torch.uint8, generator=g),
                     keys.STATE: torch.randn(B, spec.state_dim, generator=g),
                     keys.ACTION_CHUNK: torch.rand(B, k, spec.action_dim, generator=g) * 2 - 1,
                     keys.ACTION_PAD: torch.zeros(B, k, dtype=torch.bool)}, batch_size=[B])
    td.set(keys.INSTRUCTION, NonTensorStack(*["press the button from the top"] * B))
    return td


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = PolicySpec(image_shape=(1, 64, 64, 3), state_dim=39, action_dim=4)
    stats = {"observation.state": {"mean": [0.0] * 39, "std": [1.0] * 39}, "action": {"min": [-1.0] * 4, "max": [1.0] * 4}}
    setups = {}
    for h in HEADS:
        torch.manual_seed(0)
        cfg = PolicyConfig(head={"type": h})
        policy = build_policy(cfg, spec).train()
        proc = VLAProcessor.from_stats(cfg, stats)
        setups[h] = (policy, proc, build_objective("bc", TrainConfig(), policy),
                     torch.optim.AdamW(policy.parameters(), lr=1e-4), batch(spec, cfg.chunk_size))
    rates: dict[str, list[float]] = {h: [] for h in HEADS}

    def step(h: str) -> None:
        policy, proc, loss_fn, opt, raw = setups[h]
        inp = proc(raw, train=True)
        loss = total_loss(loss_fn(inp.update(policy(inp))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()

    for h in HEADS:  # warm-up
        for _ in range(2):
            step(h)
    for _ in range(args.reps):
        for h in HEADS:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(h)
            rates[h].append(B * args.steps / (time.perf_counter() - t0))
    print(json.dumps({"bench": "bc_throughput", "threads": 1, "batch": B, "steps": args.steps, "reps": args.reps,
                      "samples_per_s": {h: round(statistics.median(r), 1) for h, r in rates.items()},
                      "all": {h: [round(x, 1) for x in r] for h, r in rates.items()},
                      "params": {h: sum(p.numel() for p in setups[h][0].parameters()) for h in HEADS}}, indent=1))


if __name__ == "__main__":
    main()
