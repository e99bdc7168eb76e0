"""Stage kind ``visual_ssl`` (issue 7): self-supervised pretraining of the policy's vision encoder on the recipe's
unlabeled video (``data.video``), on the DeepSpeed learner ranks; the next stage starts from its export.

It runs the supervised stages' step loop (train_loop: checkpoints, resume, NaN/Inf rollback, metrics) with ``VisualSSLLearner``
(learners/visual_ssl.py): time-contrastive InfoNCE over frames of the same episode, no action read. The
labelled dataset (``demos`` / ``data.path``) only gives the policy's shapes and normaliser, so the export is
exactly the policy a following ``bc`` stage builds -- with a pretrained encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlaforge.errors import VlaforgeError
from vlaforge.platform.config import Recipe, StageConfig
from vlaforge.platform.stages import (
    STAGE_BLOCKS,
    StageContext,
    _rl_train_config,
    dataset_for,
    final_policy,
    learner_group,
    register_stage,
    report_skipped,
    train_loop,
)

log = logging.getLogger("vlaforge")

STAGE_BLOCKS["visual_ssl"] = ("train", "policy", "demos", "data", "envs", "latent")  # envs: the rollout video's sim


def video_for(ctx: StageContext, recipe: Recipe) -> Path:
    """The unlabeled video every video stage (visual_ssl, lam, latent_pretrain) learns from, as a LeRobot v3
    folder: data.video (rollouts / lerobot / mp4; built or found in its cache once per run), else
    latent.data_path, else the recipe's labelled training data -- whose actions these stages never read."""
    if recipe.data.video is None:
        if recipe.latent.data_path:
            path = Path(recipe.latent.data_path).expanduser().resolve()  # absolute: the learner ranks read it
            if not (path / "meta" / "info.json").is_file():
                raise VlaforgeError(f"latent.data_path: {path} is not a LeRobot v3 dataset (no meta/info.json)")
            return path
        return dataset_for(ctx, recipe)
    key = ("video", recipe.envs.model_dump_json(), recipe.data.video.model_dump_json())
    if key not in ctx.cache:
        from vlaforge.data.unlabeled import describe
        from vlaforge.platform.driver import make_video

        with ctx.timers.phase("video"):
            ctx.cache[key] = make_video(recipe)
        d = describe(ctx.cache[key])
        log.info("unlabeled video: %s (%d episodes, %d frames, %s)", ctx.cache[key], d["episodes"], d["frames"],
                 "its action column ignored" if d["action_column"] else "no action column")
        ctx.metrics.summary({"data/video_episodes": d["episodes"], "data/video_frames": d["frames"]})
    return ctx.cache[key]


# result "latent": its policy's head is untrained (not evaluated; a bc stage must follow before anything that acts)
@register_stage("visual_ssl", objectives=("visual_ssl",), phases=(("demos",), ("learners",)), own_vision=True,
                result="latent")
def run_visual_ssl(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    """Train the vision encoder on the unlabeled video (BC's step loop: checkpoints, resume, rollback)."""
    from vlaforge.learners.visual_ssl import VisualSSLLearner

    t = _rl_train_config(recipe, stage)  # "bc" -> this kind's objective, visual_ssl
    labelled, video = dataset_for(ctx, recipe), video_for(ctx, recipe)
    learners = learner_group(ctx, VisualSSLLearner, recipe, stage, t)
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup", t, recipe.policy, str(labelled), video_path=str(video),
                                 init_policy=str(init) if init else None, skip_bad_episodes=recipe.data.skip_bad_episodes,
                                 collective_timeout_s=recipe.runtime.timeouts.collective_s,
                                 timeout=recipe.runtime.timeouts.learner_setup_s)[0]
        report_skipped(ctx, stage, recipe, video, info)
        log.info("%s: time-contrastive pretraining of the vision encoder (%.2fM parameters) on %d DeepSpeed ranks, "
                 "%d frame pairs of %d episodes of %s%s", stage.name, info["num_params"] / 1e6, info["world_size"],
                 info["num_samples"], info["video_episodes"], video, f", from {init}" if init else "")
        train_loop(ctx, stage, recipe, stage_dir, learners, t, "visual ssl")
        return final_policy(stage, stage_dir)
    finally:
        learners.shutdown()
