"""The reward/* diagnostics of RL runs on a learned reward, per quarter of the updates (markdown table):
the RM's level next to the simulator's success of the same decisions, and the refreshes.

    PYTHONPATH=. .venv/bin/python docs/rl-runs/rm-diag.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from rl_summary import windows  # noqa: E402  -- one windowing helper for both summaries

KEYS = ("reward/rm_level_mean", "reward/true_success", "reward/rm_success_corr", "reward/rm_auroc",
        "reward/rm_pos_level", "reward/rm_neg_level", "rollout/success_rate")
REFRESH = ("reward/refresh_labeled_episodes", "reward/refresh_pre_auroc", "reward/refresh_pre_accuracy",
           "reward/refresh_pre_pos_prob", "reward/refresh_pre_neg_prob", "reward/refresh_seconds")


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rl = [r for r in rows if "train/update" in r]
        rm = [r for r in rows if any(k.startswith("reward/rm_eval") for k in r)]
        print(f"\n{run.name}: {len(rl)} updates")
        if rm:
            print("RM stage held-out: " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in rm[-1].items()
                                                   if k.startswith("reward/rm_eval")))
        quarters = {k: windows(rl, k, 4) for k in KEYS}
        print("| updates | " + " | ".join(k.split("/")[-1] for k in KEYS) + " |")
        print("|---" * (len(KEYS) + 1) + "|")
        n = len(rl)
        for i in range(4):
            cells = [f"{quarters[k][i]:.3f}" if len(quarters[k]) > i else "-" for k in KEYS]
            print(f"| {round(i * n / 4) + 1}-{round((i + 1) * n / 4)} | " + " | ".join(cells) + " |")
        for r in rl:
            if "reward/refresh_labeled_episodes" in r:
                print(f"- refresh after update {int(r['train/update'])}: " + ", ".join(
                    f"{k.split('/')[-1]} {r[k]:.3f}" for k in REFRESH if k in r))


if __name__ == "__main__":
    main()
