"""Word-hashing tokenizer: no vocabulary file, no download, identical ids in every process.

Python's ``hash()`` is salted per process (PYTHONHASHSEED), so rollout actors and learners would disagree
on token ids; crc32 is a fixed function of the bytes.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import torch

_SPLIT = re.compile(r"[^a-z0-9]+")


class HashedTokenizer:
    """lowercase -> split on non-alphanumerics -> 1 + crc32(word) % (vocab_size - 1); id 0 is padding."""

    def __init__(self, vocab_size: int, max_tokens: int):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (id 0 is padding), got {vocab_size}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        # Instructions repeat across envs and steps: cache per string (ids are a pure function of it).
        self._encode_cached = lru_cache(maxsize=4096)(self._encode_one)

    def words(self, text: str) -> list[str]:
        return [w for w in _SPLIT.split(text.lower()) if w]

    def _encode_one(self, text: str) -> tuple[int, ...]:
        ids = [1 + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - 1) for w in self.words(text)]
        return tuple(ids[: self.max_tokens])  # truncation keeps the first words

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}: {text!r}")
        return list(self._encode_cached(text))

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens int64 (B, L), mask bool (B, L) (True on real tokens), L = max_tokens."""
        tokens = torch.zeros(len(texts), self.max_tokens, dtype=torch.int64)  # (B, L), 0 = pad
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if ids:
                tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return tokens, tokens != 0

    @classmethod
    def from_config(cls, lc) -> "HashedTokenizer":  # lc: LanguageConfig
        return cls(vocab_size=lc.vocab_size, max_tokens=lc.max_tokens)

    def to_dict(self) -> dict:
        return {"type": "hashed", "vocab_size": self.vocab_size, "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "HashedTokenizer":
        return cls(vocab_size=int(d["vocab_size"]), max_tokens=int(d["max_tokens"]))
