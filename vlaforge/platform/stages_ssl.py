"""Stage kind ``visual_ssl`` (issue 7): self-supervised pretraining of the policy's vision encoder on the recipe's
unlabeled video (``data.video``), on the DeepSpeed learner ranks; the next stage starts from its export.

It runs BC's step loop (checkpoints, resume, NaN/Inf rollback, metrics) with ``VisualSSLLearner``
(learners/visual_ssl.py): time-contrastive InfoNCE over frames of the same episode, no action read. The
labelled dataset (``demos`` / ``data.path``) only gives the policy's shapes and normaliser, so the export is
exactly the policy a following ``bc`` stage builds -- with a pretrained encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlaforge.errors import VlaforgeError
from vlaforge.platform.config import Recipe, StageConfig
from vlaforge.platform.stages import STAGE_BLOCKS, StageContext, register_stage, run_bc

log = logging.getLogger("vlaforge")

STAGE_BLOCKS["visual_ssl"] = ("train", "policy", "demos", "data", "envs")  # envs: the rollout video's simulator


def video_for(ctx: StageContext, recipe: Recipe, stage: StageConfig) -> Path:
    """The recipe's unlabeled video as a LeRobot v3 folder (built or found in its cache once per run)."""
    if recipe.data.video is None:
        raise VlaforgeError(f"stage '{stage.name}' ({stage.kind}) trains on unlabeled video: set data.video "
                            "(source: rollouts | lerobot | mp4) in the recipe")
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


@register_stage("visual_ssl", objectives=("visual_ssl",), phases=(("demos",), ("learners",)), video=True, own_vision=True)
def run_visual_ssl(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path:
    from vlaforge.learners.visual_ssl import VisualSSLLearner

    video = video_for(ctx, recipe, stage)
    if recipe.train.objective == "bc":  # the kind's default unless the stage's `set:` chose one
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"objective": "visual_ssl"})})
    return run_bc(ctx, stage, recipe, stage_dir, init, actor_cls=VisualSSLLearner, setup_extra={"video_path": str(video)})
