"""The issue 7 ablation: what unlabeled video buys a VLA trained on N labelled demos per task.

    (a) bc          BC from scratch on N labelled demos per task
    (b) latent      lam + latent_pretrain on the unlabeled video (actions hidden) + BC on the same N
    (c) ssl         visual_ssl (time-contrastive) on the same video + BC on the same N
    (d) ceiling     BC on all the video's episodes WITH their labels (the same seeds and noise, actions kept)

Every run is `vlaforge train <recipe>` with overrides (stages, N, seeds; cheap budgets by default), in its own
folder under --out; success comes from the last stage's end evaluation (eval.json: the recipe's fixed
evaluation initial states, seeds >= eval.seed_offset, disjoint from the demo and video seeds). The table gives
the mean over seeds and a 95% t-interval over seeds (per-seed success = mean over tasks), next to the codebook
statistics the lam stage writes (<run>/<stage>/codebook.json: perplexity, dead codes, resets).

    python scripts/latent_ablation.py --n 5 --seeds 0 --arms bc latent --out docs/latent-runs/pilot   # the pilot
    python scripts/latent_ablation.py --n 5 20 --seeds 0 1 2 --out docs/latent-runs/full             # the table
    python scripts/latent_ablation.py ... --dry-run                                                   # commands only
Runs that finished (their stage.json holds an end evaluation) are reused, so the table can be grown.
Run it through the shared heavy-job queue: flock /work/wt/heavy.lock nice -n 5 python scripts/latent_ablation.py ...
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "bc": "[{name: bc, kind: bc}]",
    "latent": "[{name: lam, kind: lam}, {name: latent_pretrain, kind: latent_pretrain}, {name: bc, kind: bc}]",
    "ssl": "[{name: ssl, kind: visual_ssl}, {name: bc, kind: bc}]",
    "ceiling": "[{name: bc, kind: bc}]",
}
LABELS = {"bc": "(a) BC, N labelled", "latent": "(b) lam + latent_pretrain + BC", "ssl": "(c) visual_ssl + BC",
          "ceiling": "(d) BC, all episodes labelled"}
# t quantiles (two-sided 95%) by degrees of freedom: CIs over 2-10 seeds without scipy
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def overrides(arm: str, n: int, seed: int, a: argparse.Namespace) -> list[str]:
    video_per_task = a.video_factor * n
    o = [f"stages={ARMS[arm]}", f"seed={seed}", f"train.seed={seed}", f"demos.episodes_per_task={n}",
         f"data.video.rollouts.episodes_per_task={video_per_task}", f"train.steps={a.bc_steps}",
         f"train.checkpoint_every={a.bc_steps}", f"eval.episodes_per_task={a.eval_episodes}", "eval.videos_per_task=0",
         "logging.wandb=false"]
    if arm in ("latent", "ssl"):  # the pretraining stages' budgets (their own `set:` blocks)
        o += [f"stages.0.set={{train: {{steps: {a.pretrain_steps}, checkpoint_every: {a.pretrain_steps}}}}}"]
        if arm == "latent":
            o += [f"stages.1.set={{train: {{steps: {a.pretrain_steps}, checkpoint_every: {a.pretrain_steps}}}}}"]
    if arm == "ceiling":  # the video's own episodes (same seeds, noise, failures kept), actions kept as labels
        o += [f"demos.episodes_per_task={video_per_task}", "demos.action_noise=0.3", "demos.only_success=false",
              "demos.seed=500000"]
    return o + list(a.set)


def run_one(arm: str, n: int, seed: int, a: argparse.Namespace) -> dict | None:
    run_dir = a.out / f"{arm}-N{n}-s{seed}"
    cmd = [sys.executable, "-m", "vlaforge", "train", str(a.recipe), *overrides(arm, n, seed, a), "--run-dir", str(run_dir)]
    done = run_dir / "bc" / "stage.json"
    if done.exists() and "eval_end" in json.loads(done.read_text()):
        print(f"reuse {run_dir}", flush=True)
    elif a.dry_run:
        print(" ".join(f"'{c}'" if " " in c else c for c in cmd))
        return None
    else:
        if run_dir.exists():
            cmd.append("--resume")
        t0 = time.time()
        print(f"run {arm} N={n} seed={seed} -> {run_dir}", flush=True)
        with open(a.out / f"{arm}-N{n}-s{seed}.log", "w") as logf:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        if rc != 0:
            print(f"  FAILED (exit {rc}); see {a.out / f'{arm}-N{n}-s{seed}.log'}", flush=True)
            return {"arm": arm, "n": n, "seed": seed, "error": rc}
        print(f"  done in {time.time() - t0:.0f} s", flush=True)
    rec = json.loads(done.read_text())
    out = {"arm": arm, "n": n, "seed": seed, "success": rec["eval_end"]["mean_success_rate"],
           "tasks": rec["eval_end"]["tasks"], "run_dir": str(run_dir)}
    for st in sorted(run_dir.glob("*/codebook.json")):  # codebook health of each lam stage at its end
        h = json.loads(st.read_text())
        out.setdefault("codebook", {}).update({f"{st.parent.name}/{k}": h[k] for k in ("perplexity", "dead", "resets",
                                                                                     "codebook_size") if k in h})
    return out


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds (nan with one seed)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def table(results: list[dict], ns: list[int], arms: list[str]) -> str:
    lines = ["| arm | " + " | ".join(f"N = {n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for arm in arms:
        cells = []
        for n in ns:
            xs = [r["success"] for r in results if r["arm"] == arm and r["n"] == n and "success" in r]
            if not xs:
                cells.append("--")
                continue
            m, h = mean_ci(xs)
            cells.append(f"{100 * m:.1f}%" + (f" +- {100 * h:.1f}" if not math.isnan(h) else "") + f" ({len(xs)} seed{'s' * (len(xs) > 1)})")
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "latent_metaworld.yaml")
    p.add_argument("--n", type=int, nargs="+", default=[5, 20], help="labelled demos per task")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--video-factor", type=int, default=20, help="unlabeled episodes per task = factor x N")
    p.add_argument("--bc-steps", type=int, default=600)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per task")
    p.add_argument("--set", nargs="*", default=[], help="further recipe overrides for every run")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "latent-runs" / "ablation")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = [r for n in a.n for arm in a.arms for seed in a.seeds if (r := run_one(arm, n, seed, a)) is not None]
    if a.dry_run:
        return 0
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, a.n, a.arms)
    codebook = [f"- {r['arm']} N={r['n']} seed={r['seed']}: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(r["codebook"].items()))
                for r in results if r.get("codebook")]
    md = (f"Mean success over {a.eval_episodes} evaluation episodes per task (fixed evaluation initial states), "
          f"mean over seeds +- 95% t-interval half-width.\n\n{text}\n\n"
          + ("Codebook statistics (lam stage):\n" + "\n".join(codebook) + "\n" if codebook else "")
          + f"\nwall time of this invocation: {time.time() - t0:.0f} s\n")
    (a.out / "table.md").write_text(md)
    print(md)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
