"""Stage kinds of latent-action self-supervision (issue 7): ``lam`` and ``latent_pretrain``.

    lam              unlabeled video -> frame pairs -> latent action model on the DeepSpeed ranks; codebook health
                     every log interval; inspection images at the end. Passes its starting policy on (none
                     when it comes first): its product is the LAM, <stage>/checkpoints/step-N/policy.
    latent_pretrain  the VLA (recipe policy block, head "latent" sized like the LAM) predicts the LAM's codes of
                     each pair from (o_t, instruction). Its policy predicts codes, not actions: the next bc stage
                     keeps its backbone and replaces the head (policies/latent_action/transfer.py).

    stages: [lam, latent_pretrain, bc, ppo]   one recipe; --resume continues inside any of them
"""

from __future__ import annotations

import json
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

STAGE_BLOCKS["lam"] = ("train", "latent", "demos", "data")
STAGE_BLOCKS["latent_pretrain"] = ("train", "policy", "latent", "demos", "data")


def video_dataset(ctx: StageContext, recipe: Recipe) -> Path:
    """The unlabeled video: data.video, else latent.data_path, else the recipe's training data (actions never read).
    One resolver for every stage that learns from video (platform/stages_ssl.py)."""
    from vlaforge.platform.stages_ssl import video_for

    return video_for(ctx, recipe)


def lam_dir(ctx: StageContext, recipe: Recipe, stage: StageConfig) -> Path:
    """The LAM a latent_pretrain stage labels with: latent.lam_dir, else the newest lam stage before it."""
    if recipe.latent.lam_dir:
        return Path(recipe.latent.lam_dir).expanduser().resolve()
    names = [s.name for s in recipe.stages]
    for st in reversed(recipe.stages[: names.index(stage.name)]):
        if st.kind == "lam":
            return final_policy(st, ctx.run_dir / st.name)
    raise VlaforgeError(f"stage '{stage.name}' (latent_pretrain) needs a latent action model: put a lam stage before "
                        "it or set latent.lam_dir")


def _health_metrics(h: dict) -> dict[str, float]:
    out = {"train/codebook_perplexity": h["perplexity"], "train/codebook_perplexity_pooled": h["perplexity_pooled"],
           "train/codebook_dead": float(h["dead"]),
           "train/codebook_dead_ema": float(h["dead_ema"]), "train/codebook_resets": float(h["resets"])}
    out.update({f"train/code_usage/{c}": u for c, u in enumerate(h["usage"])})
    return out


def collapse_warning(stage: StageConfig, h: dict, recipe: Recipe) -> str | None:
    """The codebook at the end of training: collapsed (too few codes in use) or healthy (None)."""
    lc = recipe.latent
    dead_share = h["dead"] / h["codebook_size"]
    if h["perplexity"] < lc.collapse_perplexity or dead_share > lc.collapse_dead_fraction:
        return (f"{stage.name}: the latent action codebook collapsed: perplexity {h['perplexity']:.2f} of "
                f"{h['codebook_size']} per code position (warns below latent.collapse_perplexity = "
                f"{lc.collapse_perplexity}), {h['dead']} "
                f"of {h['codebook_size']} codes unused in the last log interval (warns above "
                f"latent.collapse_dead_fraction = {lc.collapse_dead_fraction}), {h['resets']} dead-code resets. The "
                "codes carry little information: try quantizer fsq, more reset (latent.model.reset_every), or a "
                "larger latent.gap")
    return None


@register_stage("lam", objectives=("latent_action",), phases=(("demos",), ("learners",)), result="same")
def run_lam(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path, init: Path | None) -> Path | None:
    """Train the latent action model; returns the starting policy unchanged (None when the lam stage is first)."""
    from vlaforge.data.reader import DatasetReader
    from vlaforge.data.sampler import split_episodes
    from vlaforge.learners.latent_learner import LatentActionLearner

    t = _rl_train_config(recipe, stage)
    data = video_dataset(ctx, recipe)
    train_eps, val_eps = split_episodes(DatasetReader(data).episode_indices, recipe.latent.val_fraction, seed=recipe.seed)
    laom = recipe.latent.model.action_loss_coef > 0  # a few labelled pairs beside the video (LAOM)
    labelled = str(dataset_for(ctx, recipe)) if laom else None
    learners = learner_group(ctx, LatentActionLearner, recipe, stage, t)
    health: dict = {}
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup", t, recipe.latent, str(data), episodes=train_eps, labelled_path=labelled,
                                 skip_bad_episodes=recipe.data.skip_bad_episodes,
                                 collective_timeout_s=recipe.runtime.timeouts.collective_s,
                                 timeout=recipe.runtime.timeouts.learner_setup_s)[0]
        report_skipped(ctx, stage, recipe, data, info)
        m = recipe.latent.model
        log.info("%s: latent action model (%s, %d x %d codes, gap %d) on %d DeepSpeed ranks, %.2fM parameters, %d frame "
                 "pairs of %d episodes (%d held out) of %s", stage.name, m.quantizer, m.num_codes, m.codebook_size,
                 recipe.latent.gap, info["world_size"], info["num_params"] / 1e6, info["num_samples"],
                 info["num_episodes"], len(val_eps), data)
        if laom:
            log.info("%s: LAOM: + %d labelled pairs of %s per rank and step, action loss weight %g (%d labelled pairs)",
                     stage.name, recipe.latent.action_batch, labelled, m.action_loss_coef, info["labelled_pairs"])

        def on_log(step: int) -> dict[str, float]:
            health.update(learners.call("codebook_health")[0])
            return _health_metrics(health)

        train_loop(ctx, stage, recipe, stage_dir, learners, t, "latent actions", on_log=on_log)
        lam = final_policy(stage, stage_dir)
    finally:
        learners.shutdown()
    if health:  # none when the stage had already reached train.steps (resumed after its last step)
        (stage_dir / "codebook.json").write_text(json.dumps(health, indent=2))
        ctx.metrics.summary({f"train/{stage.name}_codebook_perplexity": health["perplexity"],
                             f"train/{stage.name}_codebook_dead": health["dead"]})
        warning = collapse_warning(stage, health, recipe)
        if warning:
            log.warning(warning)
            ctx.warnings.append(warning)
        else:
            log.info("%s: codebook healthy: perplexity %.2f of %d, %d dead, %d resets", stage.name, health["perplexity"],
                     health["codebook_size"], health["dead"], health["resets"])
    with ctx.timers.phase("inspect"):
        _inspect(ctx, recipe, lam, data, val_eps or train_eps, stage_dir / "inspect", stage.name)
    return init


def _inspect(ctx: StageContext, recipe: Recipe, lam: Path, data: Path, episodes: list[int], out_dir: Path,
             name: str) -> None:
    """Validation pairs through the trained LAM: PNGs in <stage>/inspect and on the dashboard, val MSE vs copy."""
    import torch

    from vlaforge.data.frame_pairs import FramePairDataset
    from vlaforge.policies.latent_action.inspect import inspect_lam
    from vlaforge.policies.latent_action.io import load_lam

    lc = recipe.latent
    model, processor, _ = load_lam(lam)
    pairs = FramePairDataset(data, lc.gap, episodes, skip_bad_episodes=recipe.data.skip_bad_episodes)
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(recipe.seed))[:512]
    res = inspect_lam(model, processor, pairs.get_batch(pick.sort().values), out_dir, lc.inspect_pairs, lc.inspect_per_code)
    (out_dir / "inspect.json").write_text(json.dumps(res, indent=2))
    ctx.metrics.log({"eval/lam_val_mse": res["val_mse"], "eval/lam_copy_mse": res["copy_mse"]}, step=ctx.step)
    for key, path in res["images"].items():
        ctx.metrics.log_image(f"eval/{name}/{key}", Path(path), step=ctx.step)
    ctx.metrics.log({"eval/lam_code_gain": res["code_gain"]}, step=ctx.step)
    log.info("%s: validation forward-model MSE %.5f with its codes, %.5f with shuffled codes (code gain %.3f: 1.0 = "
             "the codes carry nothing), %.5f for copying o_t (%d pairs); images in %s", name, res["val_mse"],
             res["shuffled_mse"], res["code_gain"], res["copy_mse"], res["pairs"], out_dir)


def latent_policy_config(recipe: Recipe, lam: Path):
    """The recipe's policy block with the latent head sized like the LAM at ``lam`` (its config.json)."""
    from vlaforge.policies.config import LatentHeadConfig
    from vlaforge.policies.io import read_checkpoint
    from vlaforge.policies.latent_action.io import CONFIG_KEY

    cfg = read_checkpoint(lam, required=(CONFIG_KEY,))[1][CONFIG_KEY]
    head = recipe.policy.head.model_copy(update={"type": "latent", "latent": LatentHeadConfig(
        num_codes=cfg["num_codes"], codebook_size=cfg["codebook_size"])})
    return recipe.policy.model_copy(update={"head": head})


@register_stage("latent_pretrain", objectives=("latent_pretrain",), phases=(("demos",), ("learners",)), result="latent")
def run_latent_pretrain(ctx: StageContext, stage: StageConfig, recipe: Recipe, stage_dir: Path,
                        init: Path | None) -> Path:
    """The VLA learns to predict the latent actions of the unlabeled video; returns the latent policy."""
    from vlaforge.learners.latent_learner import LatentPretrainLearner

    t = _rl_train_config(recipe, stage)
    lam = lam_dir(ctx, recipe, stage)
    data = video_dataset(ctx, recipe)
    policy = latent_policy_config(recipe, lam)
    learners = learner_group(ctx, LatentPretrainLearner, recipe, stage, t)
    try:
        with ctx.timers.phase("learner_setup"):
            info = learners.call("setup", t, policy, str(lam), str(data), recipe.latent.gap,
                                 init_policy=str(init) if init else None,
                                 skip_bad_episodes=recipe.data.skip_bad_episodes,
                                 collective_timeout_s=recipe.runtime.timeouts.collective_s,
                                 timeout=recipe.runtime.timeouts.learner_setup_s)[0]
        report_skipped(ctx, stage, recipe, data, info)
        log.info("%s: %d frame pairs labelled by %s in %.1f s (code histogram %s); %d DeepSpeed ranks, %.2fM "
                 "parameters%s", stage.name, info["num_samples"], lam, info["label_s"], info["code_histogram"],
                 info["world_size"], info["num_params"] / 1e6, f", from {init}" if init else "")
        ctx.metrics.log({"time/latent_label_s": info["label_s"]}, step=ctx.step)
        train_loop(ctx, stage, recipe, stage_dir, learners, t, "latent pretraining")
        return final_policy(stage, stage_dir)
    finally:
        learners.shutdown()
