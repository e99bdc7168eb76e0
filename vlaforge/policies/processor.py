"""VLAProcessor: everything between raw TensorDicts and the model (LeRobot's processor/modeling split).

raw (keys.py)                                   prepared (model input)
  IMAGE        uint8   (B, V, H, W, 3)    ->      PIXELS       float32 (B, V, 3, H, W) in [0, 1] (+ random shift)
  STATE        float   (B, S)             ->      STATE_NORM   float32 (B, S)  (x - mean) / std
  INSTRUCTION  B strings                  ->      TOKENS int64 (B, L), TOKENS_MASK bool (B, L)
  IMAGE + INSTRUCTION (backbone "hf")     ->      VLM_INPUTS   the VLM's own processor output (replaces
                                                               PIXELS / TOKENS; policies/backbones/hf_processor.py)
  ACTION_CHUNK float   (B, K, A)          ->      TARGET_CHUNK float32 (B, K, A) normalised  (training only)
  ACTION_PAD   bool    (B, K)             ->      ACTION_PAD   passed through (all False if absent)
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.augment import random_shift
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.normalize import (
    ACTION_STATS_KEY,
    NORMALIZER_REGISTRY,
    STATE_STATS_KEY,
    MeanStd,
    normalizer_from_dict,
)
from vlaforge.policies.backbones.hf_processor import HFVLMInputs
from vlaforge.policies.registry import BACKBONE_REGISTRY, TOKENIZER_REGISTRY

FORMAT_VERSION = 1


def _key_name(key) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)


def instructions_as_list(value: Any, batch: int) -> list[str]:
    """Accept a NonTensorStack / list[str] of B strings, or one string (NonTensorData / str) for all B."""
    if isinstance(value, NonTensorStack):
        value = value.tolist()
    elif isinstance(value, NonTensorData):
        value = value.data
    if isinstance(value, str):
        return [value] * batch
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{_key_name(keys.INSTRUCTION)} must be a list of str or a NonTensorStack, got {type(value).__name__}")
    if len(value) != batch:
        raise ValueError(f"{_key_name(keys.INSTRUCTION)} has {len(value)} strings, expected batch size {batch}")
    return list(value)


def _tokenizer_from_dict(d: dict[str, Any] | None):
    if d is None:
        return None
    return TOKENIZER_REGISTRY.get(d.get("type", "hashed")).from_dict(d)  # no "type": written before minilm


class VLAProcessor:
    def __init__(
        self,
        state_norm: MeanStd,
        action_norm,  # MeanStd | MinMax
        tokenizer,  # HashedTokenizer | MiniLMTokenizer (TOKENIZER_REGISTRY); None with `vlm`
        chunk_size: int,
        image_augment: str = "none",
        shift_pad: int = 4,
        vlm: HFVLMInputs | None = None,  # backbone "hf": the VLM's processor prepares images + instruction
    ):
        if image_augment not in ("none", "random_shift"):
            raise ValueError(f"image_augment must be 'none' or 'random_shift', got {image_augment!r}")
        if (tokenizer is None) == (vlm is None):
            raise ValueError("VLAProcessor needs exactly one of tokenizer (backbone 'vlaforge') and vlm (backbone 'hf')")
        self.state_norm, self.action_norm, self.tokenizer, self.vlm = state_norm, action_norm, tokenizer, vlm
        self.chunk_size, self.image_augment, self.shift_pad = int(chunk_size), image_augment, int(shift_pad)

    @property
    def state_dim(self) -> int:
        return self.state_norm.dim

    @property
    def action_dim(self) -> int:
        return self.action_norm.dim

    @classmethod
    def from_stats(cls, cfg: PolicyConfig, stats: dict[str, Any]) -> "VLAProcessor":
        action_cls = NORMALIZER_REGISTRY.get(cfg.action_norm)
        tokenizer, vlm = BACKBONE_REGISTRY.get(cfg.backbone.type).input_processors(cfg)
        return cls(
            state_norm=MeanStd.from_stats(stats, STATE_STATS_KEY, std_min=cfg.state_std_min),
            action_norm=action_cls.from_stats(stats, ACTION_STATS_KEY, std_min=cfg.state_std_min),
            tokenizer=tokenizer,
            chunk_size=cfg.chunk_size,
            image_augment=cfg.image_augment,
            shift_pad=cfg.image_shift_pad,
            vlm=vlm,
        )

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "state": self.state_norm.to_dict(),
            "action": self.action_norm.to_dict(),
            "tokenizer": None if self.tokenizer is None else self.tokenizer.to_dict(),
            "vlm": None if self.vlm is None else self.vlm.to_dict(),
            "chunk_size": self.chunk_size,
            "image_augment": self.image_augment,
            "shift_pad": self.shift_pad,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLAProcessor":
        missing = {"state", "action", "chunk_size"} - set(d)
        if missing:
            raise ValueError(f"processor dict is missing {sorted(missing)}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"processor format_version {d['format_version']} is newer than this code ({FORMAT_VERSION})")
        return cls(
            state_norm=MeanStd.from_dict(d["state"]),
            action_norm=normalizer_from_dict(d["action"]),
            tokenizer=_tokenizer_from_dict(d.get("tokenizer")),
            chunk_size=d["chunk_size"],
            image_augment=d.get("image_augment", "none"),
            shift_pad=d.get("shift_pad", 4),
            vlm=HFVLMInputs.from_dict(d["vlm"]) if d.get("vlm") else None,
        )

    # -- actions ------------------------------------------------------------------------------------
    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:  # (..., A) raw -> normalised
        self._check_last_dim(action, self.action_dim, "action")
        return self.action_norm.normalize(action.float())

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:  # (..., A) normalised -> raw
        self._check_last_dim(action, self.action_dim, "action")
        return self.action_norm.unnormalize(action.float())

    # -- the transform -------------------------------------------------------------------------------
    def __call__(
        self,
        td: TensorDictBase,
        train: bool = False,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        image = self._get(td, keys.IMAGE)
        if image.dtype != torch.uint8 or image.ndim != 5 or image.shape[-1] != 3:
            raise ValueError(
                f"{_key_name(keys.IMAGE)} must be uint8 (B, V, H, W, 3), got {image.dtype} {tuple(image.shape)}"
            )
        b = image.shape[0]
        out_device = torch.device(device) if device is not None else image.device

        # (B, V, H, W, 3) uint8 -> (B*V, 3, H, W) float in [0, 1]
        _, v, h, w, _ = image.shape
        pixels = image.to(out_device).reshape(b * v, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)
        if train and self.image_augment == "random_shift":
            pixels = random_shift(pixels, self.shift_pad, generator)
        pixels = pixels.reshape(b, v, 3, h, w)

        state = self._get(td, keys.STATE)
        if not state.is_floating_point() or state.shape != (b, self.state_dim):
            raise ValueError(
                f"{_key_name(keys.STATE)} must be float (B={b}, S={self.state_dim}), got {state.dtype} {tuple(state.shape)}"
            )
        state_norm = self.state_norm.normalize(state.to(out_device, torch.float32))

        texts = instructions_as_list(self._get(td, keys.INSTRUCTION, tensor=False), b)
        out: dict[str, Any] = {keys.STATE_NORM: state_norm}
        if self.vlm is not None:  # the VLM's own processor: placeholders + instruction, its image preprocessing
            out[keys.VLM_INPUTS] = self.vlm(pixels, texts, out_device)
        else:
            tokens, mask = self.tokenizer(texts)
            out.update({keys.PIXELS: pixels, keys.TOKENS: tokens.to(out_device), keys.TOKENS_MASK: mask.to(out_device)})
        if keys.ACTION_CHUNK in td.keys():
            out.update(self._targets(td, b, out_device))
        return TensorDict(out, batch_size=[b], device=out_device)

    def _targets(self, td: TensorDictBase, b: int, device: torch.device) -> dict[str, torch.Tensor]:
        chunk = td.get(keys.ACTION_CHUNK)
        expected = (b, self.chunk_size, self.action_dim)
        if not chunk.is_floating_point() or tuple(chunk.shape) != expected:
            raise ValueError(
                f"{_key_name(keys.ACTION_CHUNK)} must be float (B, K, A) = {expected}, got {chunk.dtype} {tuple(chunk.shape)}"
            )
        if keys.ACTION_PAD in td.keys():
            pad = td.get(keys.ACTION_PAD)
            if pad.dtype != torch.bool or tuple(pad.shape) != expected[:2]:
                raise ValueError(
                    f"{_key_name(keys.ACTION_PAD)} must be bool (B, K) = {expected[:2]}, got {pad.dtype} {tuple(pad.shape)}"
                )
        else:
            pad = torch.zeros(expected[:2], dtype=torch.bool)
        target = self.action_norm.normalize(chunk.to(device, torch.float32))  # (B, K, A)
        return {keys.TARGET_CHUNK: target, keys.ACTION_PAD: pad.to(device)}

    @staticmethod
    def _get(td: TensorDictBase, key, tensor: bool = True):
        if key not in td.keys(include_nested=True):
            raise KeyError(f"input TensorDict has no {_key_name(key)!r} (keys: {sorted(map(_key_name, td.keys(True, True)))})")
        value = td.get(key)
        if tensor and not isinstance(value, torch.Tensor):
            raise TypeError(f"{_key_name(key)} must be a tensor, got {type(value).__name__}")
        return value

    @staticmethod
    def _check_last_dim(x: torch.Tensor, dim: int, what: str) -> None:
        if x.shape[-1] != dim:
            raise ValueError(f"{what} must have last dim {dim} (A), got shape {tuple(x.shape)}")
