"""A trained latent action model as a folder: model.safetensors + config.json + processor.json (policies/io.py's
atomic, manifest-checked format; never pickle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlaforge.policies.io import load_state_strict, read_checkpoint, write_checkpoint
from vlaforge.policies.latent_action.config import LatentActionConfig
from vlaforge.policies.latent_action.model import LAMProcessor, LatentActionModel

CONFIG_KEY = "latent_action_model"


def save_lam(directory: str | os.PathLike, model: LatentActionModel, processor: LAMProcessor,
             extra: dict[str, Any] | None = None) -> Path:
    config = {CONFIG_KEY: model.cfg.model_dump(mode="json"), "cameras": model.cameras, "action_dim": model.action_dim}
    return write_checkpoint(directory, model, config, processor.to_dict(), extra)


def load_lam(directory: str | os.PathLike, device: str | torch.device = "cpu"
             ) -> tuple[LatentActionModel, LAMProcessor, dict[str, Any]]:
    """-> (LAM in eval mode, its processor, extra). The folder's manifest is verified before anything is read."""
    root, config, proc, state = read_checkpoint(directory, required=(CONFIG_KEY, "cameras"))
    try:
        cfg = LatentActionConfig.model_validate(config[CONFIG_KEY])
        processor = LAMProcessor.from_dict(proc)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{root}: not a latent action model folder ({e})") from e
    model = LatentActionModel(cfg, cameras=int(config["cameras"]), action_dim=int(config.get("action_dim", 0)))
    load_state_strict(model, state, root)
    return model.to(device).eval(), processor, config.get("extra", {})
