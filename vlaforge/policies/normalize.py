"""State and action normalisers built from LeRobot-style dataset statistics; JSON round-trippable.

stats = {"observation.state": {"mean": [...], "std": [...], "min": [...], "max": [...]}, "action": {...}}
"""

from __future__ import annotations

from typing import Any

import torch

from vlaforge.policies.registry import NORMALIZER_REGISTRY, register_normalizer

STATE_STATS_KEY = "observation.state"
ACTION_STATS_KEY = "action"


def stat_vector(stats: dict[str, Any], feature: str, name: str) -> torch.Tensor:
    """stats[feature][name] as a float32 1-D tensor, with an error that names what is missing."""
    if feature not in stats:
        raise KeyError(f"dataset stats have no {feature!r} entry (have {sorted(stats)})")
    if name not in stats[feature]:
        raise KeyError(f"dataset stats[{feature!r}] has no {name!r} (have {sorted(stats[feature])})")
    t = torch.as_tensor(stats[feature][name], dtype=torch.float32).flatten()
    if not torch.isfinite(t).all():
        raise ValueError(f"dataset stats[{feature!r}][{name!r}] contains NaN/inf: {t.tolist()}")
    return t


class MeanStd:
    """(x - mean) / max(std, std_min). Used for states, and for actions with action_norm="mean_std"."""

    kind = "mean_std"

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, std_min: float = 1e-2):
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must be equal 1-D shapes")
        self.mean, self.std_min = mean, float(std_min)
        self.std = std.clamp_min(self.std_min)  # constant dims: no division by ~0

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @classmethod
    def from_stats(cls, stats: dict, feature: str, std_min: float = 1e-2) -> "MeanStd":
        return cls(stat_vector(stats, feature, "mean"), stat_vector(stats, feature, "std"), std_min)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist(), "std_min": self.std_min}

    @classmethod
    def from_dict(cls, d: dict) -> "MeanStd":
        return cls(torch.tensor(d["mean"]), torch.tensor(d["std"]), d.get("std_min", 1e-2))


class MinMax:
    """Dataset [min, max] -> [-1, 1] per dim: (x - centre) / half_range; a constant dim maps to 0."""

    kind = "min_max"

    def __init__(self, low: torch.Tensor, high: torch.Tensor, eps: float = 1e-6):
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"min {tuple(low.shape)} and max {tuple(high.shape)} must be equal 1-D shapes")
        if (high < low).any():
            raise ValueError(f"stats max < min on dims {torch.nonzero(high < low).flatten().tolist()}")
        self.low, self.high, self.eps = low, high, float(eps)
        self.centre = (high + low) / 2
        self.half = ((high - low) / 2).clamp_min(self.eps)

    @property
    def dim(self) -> int:
        return self.low.numel()

    @classmethod
    def from_stats(cls, stats: dict, feature: str, **_: Any) -> "MinMax":
        return cls(stat_vector(stats, feature, "min"), stat_vector(stats, feature, "max"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre.to(x.device)) / self.half.to(x.device)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.half.to(x.device) + self.centre.to(x.device)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "min": self.low.tolist(), "max": self.high.tolist(), "eps": self.eps}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMax":
        return cls(torch.tensor(d["min"]), torch.tensor(d["max"]), d.get("eps", 1e-6))


register_normalizer("mean_std")(MeanStd)
register_normalizer("min_max")(MinMax)


def normalizer_from_dict(d: dict):
    if "kind" not in d:
        raise ValueError(f"normaliser dict has no 'kind' (keys {sorted(d)})")
    return NORMALIZER_REGISTRY.get(d["kind"]).from_dict(d)
