"""The family table (markdown) from docs/family-runs/<head>-s<seed>.json and latency-<head>.json.

Success: the pooled rate and a 95% Wilson interval over the episodes of all seeds (the same fixed initial
states per seed: 10 per task x 2 tasks), then the per-seed rates. BC samples/s: bc_throughput.json (one
thread, batch 64, heads timed round-robin); the in-run rates (2 DeepSpeed ranks) moved with the machine's
load (other jobs) by 3x between runs, so they are listed per run in <head>-s<seed>.json only.
    python docs/family-runs/table.py > docs/family-runs/table.md
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).parent
HEADS = ["gaussian", "tokens", "diffusion", "flow"]
EPISODES = 20  # per evaluation: 10 episodes x 2 tasks (configs/family.yaml)


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def cell(rates: list[float]) -> str:
    if not rates:
        return "--"
    n = EPISODES * len(rates)
    k = round(sum(r * EPISODES for r in rates))
    lo, hi = wilson(k, n)
    seeds = " / ".join(f"{r:.0%}" for r in rates)
    return f"**{k / n:.0%}** [{lo:.0%}, {hi:.0%}] ({seeds})"


def main() -> None:
    tp_file = HERE / "bc_throughput.json"
    tp = json.loads(tp_file.read_text())["samples_per_s"] if tp_file.exists() else {}
    print("| head | seeds | BC success | after PPO (same budget) | params | latency per action, batch 1 "
          "(per chunk) | head decode / chunk | BC samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for h in HEADS:
        runs = [json.loads(p.read_text()) for p in sorted(HERE.glob(f"{h}-s*.json"))]
        lat_file = HERE / f"latency-{h}.json"
        lat = json.loads(lat_file.read_text()) if lat_file.exists() else None
        bc = [r["bc_success"] for r in runs if r.get("bc_success") is not None]
        ppo = [r["ppo_success"] for r in runs if r.get("ppo_success") is not None]
        params = f"{lat['params'] / 1e6:.2f}M" if lat else "--"
        if lat:
            r1 = lat["results"][0]
            latency = f"{r1['plan_ms_per_action']:.1f} ms ({r1['plan']['median_ms']:.1f} ms)"
            decode = f"{r1['head_sample']['median_ms']:.1f} ms"
        else:
            latency = decode = "--"
        rate = f"{tp[h]:.0f}" if h in tp else "--"
        print(f"| {h} | {len(runs)} | {cell(bc)} | {cell(ppo)} | {params} | {latency} | {decode} | {rate} |")


def per_task() -> None:
    """Pooled success per task (10 episodes per task and seed)."""
    print()
    print("| head | reach-v3 BC | reach-v3 after PPO | button-press-topdown-v3 BC | button-press-topdown-v3 after PPO |")
    print("|---|---|---|---|---|")
    for h in HEADS:
        runs = [json.loads(p.read_text()) for p in sorted(HERE.glob(f"{h}-s*.json"))]
        cells = []
        for task in ("reach-v3", "button-press-topdown-v3"):
            for k in ("ppo_start_per_task", "ppo_per_task"):
                rates = [r[k][task] for r in runs if task in r.get(k, {})]
                cells.append(" / ".join(f"{x:.0%}" for x in rates) if rates else "--")
        print(f"| {h} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
    per_task()
