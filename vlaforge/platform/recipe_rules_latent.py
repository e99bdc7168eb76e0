"""Recipe rules of the latent-action stages (lam, latent_pretrain): the chain of stages and the latent block.
Registered into recipe_rules.RULES like every other rule (imported at the end of recipe_rules.py)."""

from __future__ import annotations

from pathlib import Path

from vlaforge.platform.recipe_rules import Context, View, rule
from vlaforge.platform.stages import STAGE_KINDS, StageKind

LATENT_KINDS = ("lam", "latent_pretrain")


def _kind(name: str) -> StageKind:
    return STAGE_KINDS.get(name, StageKind())


@rule
def latent_pretrain_has_a_lam(v: View, ctx: Context):
    if v.stage.kind != "latent_pretrain" or v.recipe.latent.lam_dir:
        return
    if not any(w.stage.kind == "lam" for w in ctx.views[: v.index]):
        yield (("stages", str(v.index), "kind"), v.stage.kind,
               "a latent_pretrain stage predicts the codes of a latent action model: put a lam stage before it, or "
               "set latent.lam_dir to a trained one (a lam stage's <stage>/checkpoints/step-N/policy)")


@rule
def actions_after_latent_pretraining(v: View, ctx: Context):
    """A stage that needs a policy which acts (ppo, grpo, reward_model) cannot start from a latent policy."""
    if not v.kind.needs_policy or v.stage.init != "previous":
        return
    for w in reversed(ctx.views[: v.index]):  # the stage whose policy this one starts from
        result = _kind(w.stage.kind).result
        if result == "same":
            continue
        if result == "latent":
            yield (("stages", str(v.index), "kind"), v.stage.kind,
                   f"stage '{v.stage.name}' would start from the policy of {w.stage.kind} stage '{w.stage.name}', "
                   "whose head does not act (latent_pretrain: it predicts latent action codes; visual_ssl: only the "
                   "encoder trained): put a bc stage between them (it keeps the pretrained backbone and trains the "
                   "action head on labeled demos)")
        return


@rule
def latent_head_is_the_stage_s(v: View, ctx: Context):
    if v.recipe.policy.head.type == "latent":
        yield (("policy", "head", "type"), "latent",
               "the action head the bc / RL stages train (gaussian, tokens, diffusion, flow): latent_pretrain stages "
               "swap in the 'latent' head themselves, sized like their latent action model")


@rule
def latent_gap_fits_episodes(v: View, ctx: Context):
    if v.stage.kind not in LATENT_KINDS:
        return
    r = v.recipe
    if not r.latent.data_path and not r.data.path and r.latent.gap >= r.envs.max_episode_steps:
        yield (("latent", "gap"), r.latent.gap,
               f"frame pairs (o_t, o_t+gap) must fit in an episode of envs.max_episode_steps = "
               f"{r.envs.max_episode_steps}: use gap < {r.envs.max_episode_steps}")


@rule
def latent_paths_exist(v: View, ctx: Context):
    if not ctx.local or v.stage.kind not in LATENT_KINDS:
        return
    lc = v.recipe.latent
    if lc.data_path and not (Path(lc.data_path).expanduser() / "meta" / "info.json").is_file():
        yield (("latent", "data_path"), lc.data_path, "a LeRobot v3 dataset folder (with meta/info.json)")
    if v.stage.kind == "latent_pretrain" and lc.lam_dir and not (Path(lc.lam_dir).expanduser() / "config.json").is_file():
        yield (("latent", "lam_dir"), lc.lam_dir, "a trained latent action model folder (a lam stage's "
               "<stage>/checkpoints/step-N/policy, with config.json)")
