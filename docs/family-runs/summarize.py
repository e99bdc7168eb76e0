"""Summarise one family-table run (run dir) into a JSON row: BC / PPO success, BC samples/s, params.

    python docs/family-runs/summarize.py RUN_DIR HEAD SEED > docs/family-runs/HEAD-sSEED.json
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def main() -> None:
    run, head, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out: dict = {"head": head, "seed": seed, "run_dir": str(run)}
    for r in rows:
        for k, v in r.items():
            m = re.fullmatch(r"eval/(ppo_start|ppo)/(.+)/success_rate", k)
            if m:
                out.setdefault(f"{m.group(1)}_per_task", {})[m.group(2)] = v
            if k in ("eval/ppo_start/mean_success_rate", "eval/ppo/mean_success_rate"):
                out["bc_success" if "start" in k else "ppo_success"] = v
    bc = [r for r in rows if "train/loss" in r and "train/approx_kl" not in r and "train/samples_per_s" in r]
    ppo = [r for r in rows if "train/approx_kl" in r]
    out["bc_samples_per_s"] = statistics.median(r["train/samples_per_s"] for r in bc) if bc else None
    out["bc_final_loss"] = bc[-1]["train/loss"] if bc else None
    if ppo:
        out["ppo_updates"] = len(ppo)
        for k in ("approx_kl", "clip_fraction", "kl_ref", "epochs"):
            vals = [r[f"train/{k}"] for r in ppo if f"train/{k}" in r]
            out[f"ppo_mean_{k}"] = statistics.fmean(vals) if vals else None
    log = (run / "run.log").read_text() if (run / "run.log").exists() else ""
    m = re.findall(r"([0-9.]+)M parameters", log)
    out["params_M_with_value_head"] = float(m[-1]) if m else None
    m = re.search(r"time:\s+(.*)", log)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    out["timers"] = summary.get("timers") or (m.group(1) if m else None)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
