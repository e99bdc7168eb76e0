"""Backbone "hf": a Hugging Face vision-language model as the VLA's backbone (pi0 / SmolVLA style).

    VLM_INPUTS (the VLM's own processor: image placeholders + instruction, pixel_values)
        -> VLM (AutoModel from the local folder policy.backbone.path; optionally only its first
           num_layers decoder layers) -> prefix features (B, L, H)
        -> Linear + LayerNorm -> memory (B, L, dim)
    [K action queries | 1 state token] -> readout transformer (self-attention over queries + state,
        cross-attention to the memory; VLM padding masked) -> the K query outputs = readout (B, K, dim)

The readout has the same shape as the "vlaforge" backbone's, so every action head runs on it unchanged.
Options: freeze (default: the VLM gets no gradient and runs under no_grad, in eval mode), LoRA adapters
through peft (the only VLM parameters that train), num_layers (which layer's hidden states to read).
Loading real weights (SmolVLM, PaliGemma snapshots copied to a local folder) is the same code path as the
tiny test model: ``from_pretrained(path, local_files_only=True)``; nothing is downloaded.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.policies.backbones.fusion import StateEncoder, require
from vlaforge.policies.backbones.hf_processor import FLAT_IMAGE_KEYS, HFVLMInputs, read_model_type
from vlaforge.policies.config import BackboneConfig, PolicyConfig
from vlaforge.policies.registry import register_backbone
from vlaforge.policies.spec import PolicySpec

log = logging.getLogger(__name__)


def _import_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("policy.backbone.type 'hf' needs transformers and peft: pip install 'vlaforge[vlm]'") from e
    return transformers


def load_vlm(bc: BackboneConfig) -> nn.Module:
    """The VLM without its LM head (AutoModel: Idefics3Model, PaliGemmaModel, ...) in float32."""
    transformers = _import_transformers()
    read_model_type(bc.path)  # a clear error when the folder is not a model folder
    try:
        if bc.pretrained:
            return transformers.AutoModel.from_pretrained(bc.path, local_files_only=True, dtype=torch.float32)
        config = transformers.AutoConfig.from_pretrained(bc.path, local_files_only=True)
        return transformers.AutoModel.from_config(config, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"policy.backbone.path: cannot load the VLM from {bc.path} ({e})") from e


def language_model(vlm: nn.Module) -> nn.Module:
    """The decoder-only text model inside a VLM (Idefics3Model.text_model, PaliGemmaModel.language_model)."""
    for name in ("text_model", "language_model"):
        lm = getattr(vlm, name, None)
        if isinstance(lm, nn.Module) and isinstance(getattr(lm, "layers", None), nn.ModuleList):
            return lm
    raise ValueError(f"{type(vlm).__name__}: no text_model/language_model with .layers found; "
                     "policy.backbone.num_layers is unsupported for this family")


def truncate_layers(vlm: nn.Module, n: int) -> None:
    lm = language_model(vlm)
    total = len(lm.layers)
    if n > total:
        raise ValueError(f"policy.backbone.num_layers={n} exceeds the VLM's {total} decoder layers")
    lm.layers = lm.layers[:n]  # the dropped layers are freed and never run
    lm.config.num_hidden_layers = n


def add_lora(vlm: nn.Module, bc: BackboneConfig) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("policy.backbone.lora needs peft: pip install 'vlaforge[vlm]'") from e
    lora = bc.lora
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules))
    try:
        # In place (no PeftModel wrapper): parameter names stay vlm.<...>.lora_A/B, strict-loadable.
        inject_adapter_in_model(cfg, vlm)
    except ValueError as e:
        raise ValueError(f"policy.backbone.lora.target_modules {lora.target_modules}: {e}") from e


@register_backbone("hf")
class HFBackbone(nn.Module):
    needs = (keys.VLM_INPUTS, keys.STATE_NORM)

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        super().__init__()
        bc = cfg.backbone
        self.vlm = load_vlm(bc)
        self.flat_keys = FLAT_IMAGE_KEYS.get(read_model_type(bc.path), ())  # see hf_processor.py
        if bc.num_layers is not None:
            truncate_layers(self.vlm, bc.num_layers)
        if bc.freeze:
            self.vlm.requires_grad_(False)
        if bc.lora is not None:
            add_lora(self.vlm, bc)
        self.vlm_trains = any(p.requires_grad for p in self.vlm.parameters())
        hidden = self._hidden_size()
        self.proj = nn.Sequential(nn.Linear(hidden, cfg.dim), nn.LayerNorm(cfg.dim))  # prefix -> memory
        self.state = StateEncoder(spec.state_dim, cfg.dim)
        self.queries = nn.Parameter(torch.randn(cfg.chunk_size, cfg.dim) * 0.02)  # (K, dim)
        layer = nn.TransformerDecoderLayer(cfg.dim, cfg.heads, dim_feedforward=4 * cfg.dim, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.readout = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.dim)
        self.k = cfg.chunk_size
        self.train(self.training)

    @staticmethod
    def input_processors(cfg: PolicyConfig):
        """-> (tokenizer, vlm) for VLAProcessor: the VLM's own processor prepares images AND instruction."""
        bc = cfg.backbone
        return None, HFVLMInputs(bc.path, prompt=bc.prompt, processor_kwargs=bc.processor_kwargs)

    def _hidden_size(self) -> int:
        text_cfg = getattr(self.vlm.config, "text_config", None) or self.vlm.config
        return int(text_cfg.hidden_size)

    def train(self, mode: bool = True) -> "HFBackbone":
        super().train(mode)
        if not self.vlm_trains:
            self.vlm.eval()  # a frozen VLM is a fixed function: its dropout stays off
        return self

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        """td: VLM_INPUTS (B,) TensorDict, STATE_NORM (B, S) -> readout (B, K, dim)."""
        require(td, self.needs, "backbone 'hf'")
        inputs = td.get(keys.VLM_INPUTS)
        state = td.get(keys.STATE_NORM)
        b = state.shape[0]
        kwargs = inputs.to_dict()
        for k in self.flat_keys:  # (B, V, ...) -> (B*V, ...), as the family's model expects
            kwargs[k] = kwargs[k].flatten(0, 1)
        # Frozen, adapter-free VLM: no graph through it (memory and time); the readout still trains.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vlm_trains):
            prefix = self.vlm(**kwargs, use_cache=False).last_hidden_state  # (B, L, H)
        memory = self.proj(prefix.to(self.queries.dtype))  # (B, L, dim); bf16 when DeepSpeed casts the module
        pad = inputs.get("attention_mask") == 0  # (B, L) True = padding
        tgt = torch.cat([self.queries.expand(b, -1, -1), self.state(state)], dim=1)  # (B, K + 1, dim)
        x = self.readout(tgt, memory, memory_key_padding_mask=pad)  # (B, K + 1, dim)
        return self.norm(x[:, : self.k])  # (B, K, dim)
