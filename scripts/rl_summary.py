"""Summarise PPO runs of configs/ppo_metaworld.yaml: per seed, start -> end success per task on the same
states (Wilson 95% intervals, McNemar exact p from the paired episodes), the RL diagnostics over the updates,
and the per-update time split; then the mean gain over seeds with a 95% t interval.

    .venv/bin/python scripts/rl_summary.py RUN_DIR [RUN_DIR ...]  [--stage ppo]  > table.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import mean, stdev

from vlaforge.platform.evaluation import paired_comparison, wilson_interval

DIAG = ("train/explained_variance_rollout", "train/explained_variance", "train/clip_fraction_chunk",
        "train/clip_fraction_mean", "train/clip_fraction", "train/approx_kl", "train/epochs", "rollout/success_rate")
TIME = ("time/rollout_s", "train/update_s", "time/broadcast_s")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def rate(res: dict, task: str) -> str:
    v = res["tasks"][task]
    lo, hi = wilson_interval(v["successes"], v["episodes"])
    return f"{pct(v['success_rate'])} [{pct(lo)}, {pct(hi)}]"


def windows(rows: list[dict], key: str, n: int = 3) -> list[float]:
    """Mean of ``key`` over n equal windows of the updates (first / middle / last)."""
    vals = [r[key] for r in rows if key in r and r[key] == r[key]]
    if not vals:
        return []
    cut = [round(i * len(vals) / n) for i in range(n + 1)]
    return [mean(vals[a:b]) for a, b in zip(cut, cut[1:]) if b > a]


def summarise(run: Path, stage: str) -> dict:
    start = json.loads((run / stage / "eval-start" / "eval.json").read_text())
    end = json.loads((run / stage / "eval" / "eval.json").read_text())
    paired = end.get("paired_vs_start") or paired_comparison(start, end)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"train/update"' in line]
    return {"run": str(run), "start": start, "end": end, "paired": paired, "rows": rows,
            "split": end.get("seeds", {}).get("split", "test"),
            "gain": end["mean_success_rate"] - start["mean_success_rate"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--stage", default="ppo")
    args = ap.parse_args()
    out = [summarise(r, args.stage) for r in args.runs]
    tasks = list(out[0]["start"]["tasks"])
    print("| run | split | " + " | ".join(f"{t} start -> end (McNemar p)" for t in tasks) + " | mean start -> end | gain |")
    print("|---" * (len(tasks) + 4) + "|")
    for s in out:
        cells = [f"{rate(s['start'], t)} -> {rate(s['end'], t)} (p={s['paired']['tasks'][t]['p_value']:.2g})" for t in tasks]
        print(f"| {Path(s['run']).name} | {s['split']} | " + " | ".join(cells) +
              f" | {pct(s['start']['mean_success_rate'])} -> {pct(s['end']['mean_success_rate'])} "
              f"(pooled p={s['paired']['pooled']['p_value']:.2g}) | {100 * s['gain']:+.1f} |")
    gains = [100 * s["gain"] for s in out]
    if len(gains) > 1:
        half = T_975.get(len(gains) - 1, 1.96) * stdev(gains) / math.sqrt(len(gains))
        print(f"\nmean gain over {len(gains)} seeds: {mean(gains):+.1f} points, 95% t interval "
              f"[{mean(gains) - half:+.1f}, {mean(gains) + half:+.1f}]; min {min(gains):+.1f}")
    print("\ndiagnostics (mean over the first / middle / last third of the updates):")
    for s in out:
        print(f"- {Path(s['run']).name} ({len(s['rows'])} updates): " + "; ".join(
            f"{k.split('/', 1)[1]} " + " / ".join(f"{v:.3g}" for v in windows(s["rows"], k)) for k in DIAG
            if windows(s["rows"], k)))
        split = {k: mean([r[k] for r in s["rows"] if k in r]) for k in TIME if any(k in r for r in s["rows"])}
        print(f"  per update: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))


if __name__ == "__main__":
    main()
