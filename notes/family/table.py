"""The family table (markdown) from notes/family/<head>-s<seed>.json and latency-<head>.json.

Success: per-seed means and a 95% Wilson interval over the pooled episodes of all seeds (same fixed initial
states per seed: 10 per task x 2 tasks); samples/s: median of the BC stage's logged rates, mean over seeds.
    python notes/family/table.py > notes/family/table.md
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
    print("| head | seeds | BC success | after PPO | params | latency / action, batch 1 | BC samples/s |")
    print("|---|---|---|---|---|---|---|")
    for h in HEADS:
        runs = [json.loads(p.read_text()) for p in sorted(HERE.glob(f"{h}-s*.json"))]
        lat_file = HERE / f"latency-{h}.json"
        lat = json.loads(lat_file.read_text()) if lat_file.exists() else None
        bc = [r["bc_success"] for r in runs if r.get("bc_success") is not None]
        ppo = [r["ppo_success"] for r in runs if r.get("ppo_success") is not None]
        sps = [r["bc_samples_per_s"] for r in runs if r.get("bc_samples_per_s")]
        params = f"{lat['params'] / 1e6:.2f}M" if lat else "--"
        if lat:
            r1 = lat["results"][0]
            latency = f"{r1['plan_ms_per_action']:.1f} ms ({r1['plan']['median_ms']:.1f} ms / chunk of {lat['config']['n_action_steps']})"
        else:
            latency = "--"
        rate = f"{sum(sps) / len(sps):.0f}" if sps else "--"
        print(f"| {h} | {len(runs)} | {cell(bc)} | {cell(ppo)} | {params} | {latency} | {rate} |")


if __name__ == "__main__":
    main()
