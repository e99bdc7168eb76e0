"""The learned reward model: camera images + instruction (+ optional state) -> one logit per frame.

    [CLS | V*T vision tokens | L language tokens | (1 state token)] -> fusion transformer -> CLS -> MLP -> logit

The encoders come from the VLA's registries (VISION_REGISTRY / LANGUAGE_REGISTRY), built with the RM's
own sizes (RewardModelConfig.encoder_config). Kind "success": the logit is log-odds that the frame shows
the task solved; kind "preference": the logit is a per-frame score, a segment's score is the sum.

RewardProcessor (raw -> prepared, as the VLA's processor; no actions):
  IMAGE        uint8 (B, V, H, W, 3) -> PIXELS      float32 (B, V, 3, H, W) in [0, 1] (+ random shift)
  INSTRUCTION  B strings             -> TOKENS int64 (B, L), TOKENS_MASK bool (B, L)
  STATE        float (B, S)          -> STATE_NORM  float32 (B, S)   (only with use_state)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.augment import random_shift
from vlaforge.policies.io import build_loaded, read_checkpoint, write_checkpoint
from vlaforge.policies.language import encoder, safe_padding_mask
from vlaforge.policies.normalize import MeanStd
from vlaforge.policies.processor import instructions_as_list
from vlaforge.policies.registry import LANGUAGE_REGISTRY, VISION_REGISTRY
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.spec import PolicySpec
from vlaforge.policies.tokenizer import HashedTokenizer
from vlaforge.policies.vla import StateEncoder

FORMAT_VERSION = 1
_KIND = "reward_model"  # config.json marker: a policy checkpoint is not a reward model and vice versa


def rm_spec(image_shape: tuple[int, ...], state_dim: int) -> PolicySpec:
    """The shapes the RM is built for. A PolicySpec so the VLA's encoders accept it; action_dim is unused."""
    return PolicySpec(image_shape=tuple(image_shape), state_dim=max(1, int(state_dim)), action_dim=1)


class RewardProcessor:
    def __init__(self, tokenizer: HashedTokenizer, state_norm: MeanStd | None = None,
                 image_augment: str = "none", shift_pad: int = 2):
        if image_augment not in ("none", "random_shift"):
            raise ValueError(f"image_augment must be 'none' or 'random_shift', got {image_augment!r}")
        self.tokenizer, self.state_norm = tokenizer, state_norm
        self.image_augment, self.shift_pad = image_augment, int(shift_pad)

    @classmethod
    def fit(cls, cfg: RewardModelConfig, data: TensorDictBase | None = None) -> "RewardProcessor":
        """Build from the config; with ``use_state`` the state statistics come from ``data`` (its STATE)."""
        state_norm = None
        if cfg.use_state:
            if data is None or keys.STATE not in data.keys(True):
                raise ValueError("reward_model.use_state needs a labeled set with observation/state to fit its statistics")
            s = data.get(keys.STATE).float().reshape(-1, data.get(keys.STATE).shape[-1])  # (N, S)
            state_norm = MeanStd(s.mean(0), s.std(0, unbiased=False), std_min=cfg.state_std_min)
        return cls(HashedTokenizer(cfg.language.vocab_size, cfg.language.max_tokens), state_norm,
                   cfg.image_augment, cfg.image_shift_pad)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "tokenizer": self.tokenizer.to_dict(),
                "state": self.state_norm.to_dict() if self.state_norm is not None else None,
                "image_augment": self.image_augment, "shift_pad": self.shift_pad}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RewardProcessor":
        if "tokenizer" not in d:
            raise ValueError(f"reward processor dict is missing 'tokenizer' (keys {sorted(d)})")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"reward processor format_version {d['format_version']} is newer than this code")
        state = MeanStd.from_dict(d["state"]) if d.get("state") else None
        return cls(HashedTokenizer.from_dict(d["tokenizer"]), state, d.get("image_augment", "none"), d.get("shift_pad", 2))

    def __call__(self, td: TensorDictBase, train: bool = False, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> TensorDict:
        if keys.IMAGE not in td.keys(True):
            raise KeyError(f"reward model input has no observation/image (keys: {sorted(map(str, td.keys(True, True)))})")
        image = td.get(keys.IMAGE)
        if image.dtype != torch.uint8 or image.ndim != 5 or image.shape[-1] != 3:
            raise ValueError(f"observation/image must be uint8 (B, V, H, W, 3), got {image.dtype} {tuple(image.shape)}")
        b, v, h, w, _ = image.shape
        dev = torch.device(device) if device is not None else image.device
        pixels = image.to(dev).reshape(b * v, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)  # (B*V, 3, H, W)
        if train and self.image_augment == "random_shift":
            pixels = random_shift(pixels, self.shift_pad, generator)
        if keys.INSTRUCTION not in td.keys(True):
            raise KeyError("reward model input has no observation/instruction (B strings)")
        tokens, mask = self.tokenizer(instructions_as_list(td.get(keys.INSTRUCTION), b))  # (B, L) x2
        out = {keys.PIXELS: pixels.reshape(b, v, 3, h, w), keys.TOKENS: tokens.to(dev), keys.TOKENS_MASK: mask.to(dev)}
        if self.state_norm is not None:
            if keys.STATE not in td.keys(True):
                raise KeyError("reward model built with use_state: its input needs observation/state")
            state = td.get(keys.STATE)
            if state.shape != (b, self.state_norm.dim):
                raise ValueError(f"observation/state must be (B={b}, S={self.state_norm.dim}), got {tuple(state.shape)}")
            out[keys.STATE_NORM] = self.state_norm.normalize(state.to(dev, torch.float32))
        return TensorDict(out, batch_size=[b], device=dev)


class RewardModel(nn.Module):
    def __init__(self, cfg: RewardModelConfig, spec: PolicySpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        enc = cfg.encoder_config()
        self.vision = VISION_REGISTRY.get(cfg.vision.type)(enc, spec)
        self.language = LANGUAGE_REGISTRY.get(cfg.language.type)(enc)
        self.state = StateEncoder(spec.state_dim, cfg.dim) if cfg.use_state else None
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.type_embed = nn.Parameter(torch.zeros(4, cfg.dim))  # CLS, vision, language, state
        self.fusion = encoder(cfg.dim, cfg.heads, cfg.layers, cfg.dropout)
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, 1))

    def forward(self, td: TensorDictBase) -> TensorDict:
        """td: PIXELS (B, V, 3, H, W), TOKENS / TOKENS_MASK (B, L) [, STATE_NORM (B, S)] -> RM_LOGIT (B,)."""
        need = [keys.PIXELS, keys.TOKENS, keys.TOKENS_MASK] + ([keys.STATE_NORM] if self.state is not None else [])
        missing = [k for k in need if k not in td.keys()]
        if missing:
            raise KeyError(f"RewardModel.forward needs the RewardProcessor's output; missing {missing}")
        pixels, tokens, mask = td.get(keys.PIXELS), td.get(keys.TOKENS), td.get(keys.TOKENS_MASK)
        b, te = pixels.shape[0], self.type_embed
        lang = self.language(tokens, mask)  # (B, L, dim)
        # The query starts as the instruction's mean token: its attention over the image is conditioned on
        # the task from the first layer on (success is a question about the image that the task asks).
        m = mask.unsqueeze(-1).to(lang.dtype)  # (B, L, 1)
        query = self.cls + (lang * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1, dim)
        parts = [query + te[0], self.vision(pixels) + te[1], lang + te[2]]  # (B, 1 | V*T | L, dim)
        if self.state is not None:
            parts.append(self.state(td.get(keys.STATE_NORM)) + te[3])  # (B, 1, dim)
        x = torch.cat(parts, dim=1)
        pad = torch.zeros(b, x.shape[1], dtype=torch.bool, device=x.device)  # True = ignore this key
        start = parts[0].shape[1] + parts[1].shape[1]
        pad[:, start : start + tokens.shape[1]] = safe_padding_mask(mask)
        cls = self.fusion(x, src_key_padding_mask=pad)[:, 0]  # (B, dim)
        return TensorDict({keys.RM_LOGIT: self.head(cls).squeeze(-1)}, batch_size=[b])  # (B,)


@torch.no_grad()
def predict_logits(model: RewardModel, processor: RewardProcessor, td: TensorDictBase, batch_size: int = 256) -> torch.Tensor:
    """RM_LOGIT of every frame of ``td`` (any batch dims: flattened, run in chunks, reshaped back)."""
    wanted = [k for k in (keys.IMAGE, keys.INSTRUCTION, keys.STATE) if k in td.keys(True)]
    flat = td.select(*wanted).reshape(-1)  # only the model's inputs are copied
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(processor(flat[i : i + batch_size], device=device)).get(keys.RM_LOGIT)
               for i in range(0, flat.batch_size[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).reshape(td.batch_size).cpu() if out else torch.zeros(td.batch_size)


# -- checkpoint IO (the policy's atomic safetensors writer, a different config entry) ---------------
def save_reward_model(directory: str | os.PathLike, model: RewardModel, processor: RewardProcessor,
                      extra: dict[str, Any] | None = None) -> Path:
    config = {"kind": _KIND, "reward_model": model.cfg.model_dump(mode="json"), "spec": model.spec.to_dict()}
    return write_checkpoint(directory, model, config, processor.to_dict(), extra)


def load_reward_model(directory: str | os.PathLike, device: str | torch.device = "cpu"
                      ) -> tuple[RewardModel, RewardProcessor, dict[str, Any]]:
    """-> (model in eval mode on ``device``, processor, extra)."""
    root, config, proc, state = read_checkpoint(directory, required=("spec",))
    if config.get("kind") != _KIND or "reward_model" not in config:
        raise ValueError(f"{root}: not a reward model checkpoint (config.json kind={config.get('kind')!r}; "
                         "policy checkpoints load with vlaforge.policies.load_pretrained)")
    try:
        cfg = RewardModelConfig.model_validate(config["reward_model"])
        spec = PolicySpec.from_dict(config["spec"])
        processor = RewardProcessor.from_dict(proc)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{root}: invalid config.json / processor.json: {e}") from e
    model = build_loaded(lambda c: RewardModel(c, spec), cfg, state, root, device)
    return model, processor, config.get("extra", {})


# -- evaluation helpers (pure tensor functions; learners and rollout actors share them) --------------
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties 1/2
    (Mann-Whitney U with average ranks). NaN when one class is absent."""
    s, y = scores.detach().float().flatten().cpu(), labels.detach().flatten().cpu().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    # 1-based ranks, averaged over tied scores: each tie group gets its mean rank.
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # (groups,)
    ranks = torch.empty(len(s), dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equally sized tensors (flattened); NaN when either is constant."""
    x, y = x.detach().double().flatten().cpu(), y.detach().double().flatten().cpu()
    if x.numel() != y.numel():
        raise ValueError(f"pearson: {x.numel()} vs {y.numel()} values")
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt()
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")
