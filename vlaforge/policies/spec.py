"""PolicySpec: the shapes a policy is built for (what the env / dataset provides), JSON round-trippable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PolicySpec:
    image_shape: tuple[int, int, int, int]  # (V, H, W, 3): cameras, height, width, RGB -- as rendered
    state_dim: int  # S
    action_dim: int  # A

    def __post_init__(self) -> None:
        shape = tuple(int(x) for x in self.image_shape)
        if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
            raise ValueError(f"PolicySpec.image_shape must be (V, H, W, 3) with positive sizes, got {self.image_shape}")
        object.__setattr__(self, "image_shape", shape)
        if int(self.state_dim) < 1 or int(self.action_dim) < 1:
            raise ValueError(f"PolicySpec needs state_dim >= 1 and action_dim >= 1, got {self.state_dim}, {self.action_dim}")
        object.__setattr__(self, "state_dim", int(self.state_dim))
        object.__setattr__(self, "action_dim", int(self.action_dim))

    @property
    def num_cameras(self) -> int:
        return self.image_shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "state_dim": self.state_dim, "action_dim": self.action_dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicySpec":
        missing = {"image_shape", "state_dim", "action_dim"} - set(d)
        if missing:
            raise ValueError(f"PolicySpec dict is missing {sorted(missing)} (got keys {sorted(d)})")
        return cls(image_shape=tuple(d["image_shape"]), state_dim=d["state_dim"], action_dim=d["action_dim"])
