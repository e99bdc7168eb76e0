"""Do the latent codes mean something? A linear probe from a trained LAM's codes to the TRUE actions (issue 7).

The unlabeled rollouts (data.video source "rollouts", demos.drop_actions) keep the executed actions under
``probe.action`` -- no learner reads that column. For every frame pair (o_t, o_t+gap) of the video the LAM gives
its N codes; the probe regresses the mean of the gap actions a_t .. a_t+gap-1 (what moved o_t to o_t+gap) on the
one-hot codes, fit on 75% of the episodes and scored (R^2) on the rest, next to the same probe on shuffled and
on uniformly random codes (vlaforge/learners/probe.py).

    python scripts/latent_probe.py --run RUN_DIR [--stage lam] [--out probe.json]   # the run's LAM and video
    python scripts/latent_probe.py --lam LAM_FOLDER --video VIDEO_DATASET [--gap 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def probe_codes(lam_dir: Path, video: Path, gap: int | None, batch: int = 256):
    """-> codes (P, N), mean actions (P, A), episode (P,), codebook size: every pair of the video."""
    from vlaforge.data import format as F
    from vlaforge.data.reader import DatasetReader
    from vlaforge.policies.latent_action.io import load_lam

    lam, proc, extra = load_lam(lam_dir)
    gap = int(gap or extra.get("gap", 4))  # the gap the LAM was trained with
    reader = DatasetReader(video)
    if F.PROBE_ACTION_KEY not in reader.features:
        raise SystemExit(f"{video}: no {F.PROBE_ACTION_KEY} column: the probe needs action-free rollouts that kept "
                         "the true actions (demos.drop_actions: true)")
    data = reader.load()
    images = np.stack([data[k] for k in reader.camera_keys], axis=1)  # (R, V, H, W, 3)
    act, ep = data[F.PROBE_ACTION_KEY].astype(np.float64), data["episode_index"]
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    ends = np.r_[starts[1:], len(ep)]
    rows = np.concatenate([np.arange(s, e - gap) for s, e in zip(starts, ends) if e - s > gap])  # o_t rows
    codes = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            r = rows[i : i + batch]
            o_t = proc.frames(torch.from_numpy(images[r]))
            o_tk = proc.frames(torch.from_numpy(images[r + gap]))
            codes.append(lam.label(o_t, o_tk).numpy())
    target = np.stack([act[rows + j] for j in range(gap)]).mean(0)  # (P, A)
    return np.concatenate(codes), target, ep[rows], lam.cfg.codebook_size, gap


def from_run(run: Path, stage: str) -> tuple[Path, Path]:
    """(the lam stage's LAM folder, the unlabeled video the run used) of a finished run."""
    import re

    from vlaforge.runtime import checkpoint as ckpt

    latest = ckpt.find_latest(run / stage)
    if latest is None:
        raise SystemExit(f"{run / stage}: no checkpoint of a lam stage")
    m = re.findall(r"unlabeled video: (\S+) \(", (run / "run.log").read_text())
    if not m:
        raise SystemExit(f"{run / 'run.log'}: the run names no unlabeled video (data.video unset?): pass --video")
    return latest / "policy", Path(m[-1])


def main(argv: list[str] | None = None) -> int:
    from vlaforge.learners.probe import linear_probe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a finished run with a lam stage and data.video")
    p.add_argument("--stage", default="lam", help="the lam stage's name in --run")
    p.add_argument("--lam", type=Path, help="a trained LAM folder (a lam stage's checkpoints/step-N/policy)")
    p.add_argument("--video", type=Path, help="the unlabeled video dataset (with probe.action)")
    p.add_argument("--gap", type=int, help="frames between o_t and o_t+k (default: the LAM's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    a = p.parse_args(argv)
    lam_dir, video = (a.lam, a.video)
    if a.run is not None:
        found = from_run(a.run, a.stage)
        lam_dir, video = lam_dir or found[0], video or found[1]
    if lam_dir is None or video is None:
        p.error("pass --run, or --lam and --video")
    codes, target, episodes, k, gap = probe_codes(lam_dir, video, a.gap)
    res = linear_probe(codes, target, episodes, num_codes=k, seed=a.seed).to_dict()
    hist = np.bincount(codes.reshape(-1), minlength=k) / codes.size
    res.update(lam=str(lam_dir), video=str(video), gap=gap, pairs=len(codes), code_histogram=[round(float(h), 4) for h in hist],
               code_perplexity=float(np.exp(-(hist[hist > 0] * np.log(hist[hist > 0])).sum())))
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
