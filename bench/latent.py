"""Latent-action benchmark: latent action model (LAM) training samples/s on 1 and 2 DeepSpeed ranks, the cost of
labelling the video with the trained LAM once vs on the fly, and latent-pretraining samples/s. Prints JSON.

    python bench/latent.py            # default LAM (latent.model defaults: nsvq, 8 x 4 codes, 64 px), global batch 32
    python bench/latent.py --quick    # 32 px, small convs, global batch 16, fewer steps

  lam/deepspeed/<N>       LatentActionLearner x N (ZeRO-1, gloo, 1 thread each): frame pairs -> LAM -> loss -> AdamW
  labelling               the LAM's inference encoder over every pair of the video (what latent_pretrain does once
                          at setup; labelling on the fly would pay on_the_fly_ms_per_step on every step instead)
  latent_pretrain/deepspeed/2   LatentPretrainLearner x 2 (default VLA, latent head) on the labelled pairs
Timings exclude setup (reported) and warm-up steps; the median of --reps segments. The cores are shared: compare
within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(root: Path, size: int, episodes: int = 16, length: int = 30) -> Path:
    """Blocks moving in one of 4 directions (per episode) over a textured floor; the action column all NaN."""
    from vlaforge.data import format as F
    from vlaforge.data.writer import DatasetWriter

    rng = np.random.default_rng(0)
    feats = {F.IMAGE_PREFIX + "main": F.video_feature(size, size), F.STATE_KEY: F.vector_feature("float32", 8),
             F.ACTION_KEY: F.vector_feature("float32", 4)}
    floor = rng.integers(40, 120, size=(size, size, 3), dtype=np.uint8)
    with DatasetWriter(root, fps=10, features=feats) as wr:
        for ep in range(episodes):
            d = [(1, 0), (-1, 0), (0, 1), (0, -1)][ep % 4]
            y, x = rng.integers(size // 4, 3 * size // 4, size=2)
            img = np.repeat(floor[None], length, 0)
            for t in range(length):
                yy, xx = (y + d[0] * t // 2) % (size - 6), (x + d[1] * t // 2) % (size - 6)
                img[t, yy:yy + 6, xx:xx + 6] = 250
            wr.add_episode({F.IMAGE_PREFIX + "main": img, F.STATE_KEY: rng.normal(size=(length, 8)).astype(np.float32),
                            F.ACTION_KEY: np.full((length, 4), np.nan, np.float32)}, task=f"move {ep % 4}")
    return root


def _summary(ms: list[dict], batch: int, setup_s: float, loss_key: str) -> dict:
    rates = [m["train/samples_per_s"] for m in ms]
    med = statistics.median(rates)
    return {"samples_per_s": round(med, 1), "samples_per_s_all": [round(r, 1) for r in rates],
            "step_ms": round(1000 * batch / med, 1), "setup_s": round(setup_s, 1),
            "final_loss": round(ms[-1].get(loss_key, float("nan")), 5)}


def run_group(actor_cls, ranks: int, setup_args: tuple, setup_kw: dict, train, warmup: int, steps: int, reps: int,
              loss_key: str) -> tuple[dict, dict]:
    from vlaforge.runtime.worker_group import WorkerGroup

    cfg = train.model_copy(update={"num_learners": ranks})
    t0 = time.perf_counter()
    group = WorkerGroup(actor_cls, ranks, cpus_per_worker=1, name=f"bench-{actor_cls.__name__}-{ranks}")
    try:
        info = group.call("setup", cfg, *setup_args, **setup_kw, timeout=900)[0]
        setup_s = time.perf_counter() - t0
        group.call("train_steps", warmup)
        ms = [group.call("train_steps", steps)[0] for _ in range(reps)]
    finally:
        group.shutdown()
    return _summary(ms, cfg.batch_size, setup_s, loss_key), info


def labelling(latent, video: Path, lam_dir: Path, batch: int) -> dict:
    import torch

    from vlaforge.data.frame_pairs import FramePairDataset
    from vlaforge.learners.latent_learner import label_pairs
    from vlaforge.policies.latent_action.io import load_lam

    torch.set_num_threads(1)
    ds = FramePairDataset(video, latent.gap)
    lam, proc, _ = load_lam(lam_dir)
    label_pairs(lam, proc, ds, batch_size=64)  # warm-up
    t0 = time.perf_counter()
    label_pairs(lam, proc, ds)
    dt = time.perf_counter() - t0
    rate = len(ds) / dt
    return {"pairs": len(ds), "label_once_s": round(dt, 2), "pairs_per_s": round(rate, 1),
            "on_the_fly_ms_per_step": round(1000 * batch / rate, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quantizer", default="nsvq")
    ap.add_argument("--no-pretrain", action="store_true", help="skip the latent-pretraining rate")
    args = ap.parse_args(argv)

    from vlaforge.learners.config import TrainConfig
    from vlaforge.learners.latent_learner import LatentActionLearner, LatentPretrainLearner
    from vlaforge.platform.stages_latent import latent_policy_config
    from vlaforge.policies.latent_action.config import LatentConfig
    from vlaforge.platform.config import Recipe
    from vlaforge.runtime.process import init_ray

    if args.quick:
        size, batch, warmup, steps = 32, 16, 2, 5
        model = {"image_size": 32, "channels": [16, 32], "hidden": 64}
        policy = {"dim": 64, "layers": 1, "heads": 2, "chunk_size": 4, "n_action_steps": 2,
                  "vision": {"channels": [16, 32]}}
    else:
        size, batch, warmup, steps, model, policy = 64, 32, 3, 15, {}, {}
    latent = LatentConfig(model={"quantizer": args.quantizer, **model})
    train = TrainConfig(objective="latent_action", batch_size=batch, warmup_steps=0, steps=10_000)
    tmp = Path(tempfile.mkdtemp(prefix="vlaforge-bench-latent-"))
    out: dict = {"image_size": size, "global_batch": batch, "quantizer": args.quantizer, "codebook": [
        latent.model.codebook_size, latent.model.num_codes], "timed_steps": steps, "reps": args.reps}
    try:
        video = write_video(tmp / "video", size)
        init_ray(num_cpus=max(2, max(args.ranks, default=1)))
        lam_dir = None
        for n in args.ranks:
            res, info = run_group(LatentActionLearner, n, (latent, str(video)), {}, train, warmup, steps, args.reps,
                                  "train/loss_recon")
            out[f"lam/deepspeed/{n}"] = res | {"num_params": info["num_params"], "pairs": info["num_samples"]}
        if 1 in args.ranks and 2 in args.ranks:
            one, two = out["lam/deepspeed/1"]["samples_per_s"], out["lam/deepspeed/2"]["samples_per_s"]
            out["lam/scaling_2_over_1"] = round(two / one, 2)
        # a LAM folder to label with (weights do not change the cost)
        import torch

        from vlaforge.policies.latent_action.io import save_lam
        from vlaforge.policies.latent_action.model import LAMProcessor, LatentActionModel

        lam_dir = save_lam(tmp / "lam", LatentActionModel(latent.model, 1), LAMProcessor(latent.model.image_size))
        out["labelling"] = labelling(latent, video, lam_dir, batch)
        if not args.no_pretrain:
            recipe = Recipe(policy=policy, latent=latent)
            pcfg = latent_policy_config(recipe, lam_dir)
            ptrain = train.model_copy(update={"objective": "latent_pretrain"})
            res, info = run_group(LatentPretrainLearner, 2, (pcfg, str(lam_dir), str(video), latent.gap), {}, ptrain,
                                  warmup, steps, args.reps, "train/loss_latent")
            out["latent_pretrain/deepspeed/2"] = res | {"num_params": info["num_params"], "label_s": round(info["label_s"], 2)}
            out["labelling"]["on_the_fly_share_of_step"] = round(
                out["labelling"]["on_the_fly_ms_per_step"] / out["latent_pretrain/deepspeed/2"]["step_ms"], 3)
        del torch
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
