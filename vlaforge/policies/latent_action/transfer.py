"""Latent pretraining -> BC: keep the pretrained backbone, replace the latent head by the recipe's action head.

The latent-pretrained policy (head "latent", a placeholder action dim) and the BC policy (policy.head) share every
backbone parameter by name and shape; only ``head.*`` (and a value head) start fresh. The state encoder is the one
exception allowed: unlabeled video may carry no robot state (S = 1 zeros), so when S differs it starts fresh too
(logged). Anything else that differs means the two stages built different backbones: an error naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.spec import PolicySpec

log = logging.getLogger("vlaforge")

# Fields of the policy config that shape the backbone (the rest -- head, value head, normalisation,
# augmentation, n_action_steps -- may differ between latent pretraining and BC).
BACKBONE_FIELDS = ("type", "dim", "layers", "heads", "chunk_size", "vision", "language", "backbone")
FRESH_PREFIXES = ("head.", "value.")  # replaced (or added) by the BC stage
STATE_PREFIX = "backbone.state."  # starts fresh when the state dim differs (video without robot state)


def keep_backbone(model: nn.Module, src: nn.Module, src_cfg: PolicyConfig, src_spec: PolicySpec,
                  cfg: PolicyConfig, spec: PolicySpec, where: str | Path) -> dict[str, list[str]]:
    """Copy ``src``'s backbone weights into ``model`` (in place). -> {"copied": names, "fresh": names}."""
    differ = [f for f in BACKBONE_FIELDS if getattr(src_cfg, f) != getattr(cfg, f)]
    if differ or src_spec.image_shape != spec.image_shape:
        what = ", ".join(f"policy.{f}" for f in differ) or f"camera images {src_spec.image_shape} vs {spec.image_shape}"
        raise ValueError(f"{where}: the latent-pretrained policy's backbone differs from this stage's ({what}): the "
                         "bc stage after latent pretraining must build the same backbone (same policy block)")
    own, theirs = model.state_dict(), src.state_dict()
    copied, fresh = [], []
    for name, value in own.items():
        if name.startswith(FRESH_PREFIXES):
            fresh.append(name)
        elif name.startswith(STATE_PREFIX) and src_spec.state_dim != spec.state_dim:
            fresh.append(name)
        elif name not in theirs or theirs[name].shape != value.shape:
            got = tuple(theirs[name].shape) if name in theirs else "missing"
            raise ValueError(f"{where}: backbone parameter {name} is {got} in the latent-pretrained policy, "
                             f"{tuple(value.shape)} here")
        else:
            own[name] = theirs[name]
            copied.append(name)
    model.load_state_dict(own)
    if src_spec.state_dim != spec.state_dim:
        log.info("%s: state dim %d -> %d: the state encoder starts fresh", where, src_spec.state_dim, spec.state_dim)
    return {"copied": copied, "fresh": fresh}
