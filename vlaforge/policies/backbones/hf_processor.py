"""Inputs of backbone "hf": the VLM's OWN Hugging Face processor turns (camera images, instruction) into
the model's inputs (input_ids with the image placeholders expanded, attention_mask, pixel_values, ...).

This is the processing half of the adapter (LeRobot's processor/modeling split): VLAProcessor calls it with
the prepared pixels (B, V, 3, H, W) in [0, 1] (after its random-shift augmentation) and the B instructions;
its output travels under keys.VLM_INPUTS and reaches the VLM as keyword arguments (policies/backbones/hf.py).

torchvision is not installable beside this torch (STACK.md), so transformers' torchvision-backed image
processors are unavailable; AutoProcessor falls back to the PIL/numpy ones (Idefics3ImageProcessorPil for
Idefics3/SmolVLM), which give the same preprocessing (resize, rescale, normalise, pad) -- we use those as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tensordict import TensorDict


def _idefics3_defaults(processor) -> dict[str, Any]:
    # SmolVLM's processor upsamples every image to 2048 px and splits it into 512 px tiles (+ a global view):
    # 17 x 64 image tokens for one 64 px robot camera. One tile per camera at the vision encoder's own size
    # (SmolVLA does the same) keeps the prefix at 64 tokens per camera (SmolVLM-256M).
    edge = processor.image_processor.max_image_size["longest_edge"]
    return {"do_image_splitting": False, "size": {"longest_edge": edge}}


# Per-family defaults of the processor call, by the folder's config.json model_type (recipe's
# backbone.processor_kwargs override them).
FAMILY_DEFAULTS: dict[str, Callable[[Any], dict[str, Any]]] = {"idefics3": _idefics3_defaults}

# Families whose processor returns a batch's images flattened, (B*V, 3, S, S) (PaliGemma): a TensorDict
# needs batch-first entries, so they travel as (B, V, 3, S, S) and the backbone flattens them back.
FLAT_IMAGE_KEYS: dict[str, tuple[str, ...]] = {"paligemma": ("pixel_values",)}
_DROP = ("labels",)  # LM-loss targets some processors add (PaliGemma): not an input of the backbone


def read_model_type(path: str | os.PathLike) -> str:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"policy.backbone.path: {path} has no config.json (expected a local folder with "
                                "the VLM as save_pretrained writes it: config.json, *.safetensors, processor files)")
    try:
        return str(json.loads(cfg.read_text()).get("model_type", ""))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"policy.backbone.path: {cfg} is not valid JSON ({e})") from e


class HFVLMInputs:
    def __init__(self, path: str, prompt: str = "{instruction}", processor_kwargs: dict[str, Any] | None = None):
        from transformers import AutoProcessor

        self.path, self.prompt = str(path), prompt
        self.processor_kwargs = dict(processor_kwargs or {})
        model_type = read_model_type(self.path)
        try:
            self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"policy.backbone.path: cannot load the VLM's processor from {self.path} ({e})") from e
        self.image_token = getattr(self.processor, "image_token", None)
        if not isinstance(self.image_token, str):
            raise ValueError(f"policy.backbone.path: the processor of {self.path} ({type(self.processor).__name__}) "
                             "has no image_token: not a vision-language processor vlaforge can drive")
        self.flat_keys = FLAT_IMAGE_KEYS.get(model_type, ())
        defaults = FAMILY_DEFAULTS.get(model_type, lambda p: {})(self.processor)
        self.call_kwargs = {**defaults, **self.processor_kwargs}

    def text(self, instruction: str, cameras: int) -> str:
        """One image placeholder per camera, then the prompt (the processor expands each placeholder)."""
        return self.image_token * cameras + self.prompt.replace("{instruction}", instruction)

    def __call__(self, pixels: torch.Tensor, texts: list[str], device: torch.device) -> TensorDict:
        """pixels float (B, V, 3, H, W) in [0, 1], B instructions -> TensorDict (B,) of the VLM's inputs, e.g.
        Idefics3: input_ids (B, L), attention_mask (B, L), pixel_values (B, V, 3, S, S), pixel_attention_mask;
        PaliGemma: input_ids, token_type_ids, attention_mask (B, L), pixel_values (B, V, 3, S, S)."""
        b, v = pixels.shape[:2]
        # uint8 (B, V, H, W, 3): what HF image processors expect. Exact: the pixels are uint8 / 255, and the
        # random shift only moves (replicate-pads) them.
        images = pixels.mul(255.0).round_().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        out = self.processor(
            text=[self.text(t, v) for t in texts],
            images=[[np.ascontiguousarray(images[i, j]) for j in range(v)] for i in range(b)],
            return_tensors="pt", padding=True, **self.call_kwargs,
        )
        data = {k: v for k, v in out.items() if k not in _DROP}
        for k in self.flat_keys:  # (B*V, ...) -> (B, V, ...)
            data[k] = data[k].reshape(b, v, *data[k].shape[1:])
        return TensorDict(data, batch_size=[b]).to(device)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hf", "path": self.path, "prompt": self.prompt, "processor_kwargs": self.processor_kwargs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HFVLMInputs":
        return cls(path=d["path"], prompt=d.get("prompt", "{instruction}"), processor_kwargs=d.get("processor_kwargs"))
