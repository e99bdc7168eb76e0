"""Pick a weight broadcaster by name (the recipe's ``kind``): one registry entry per transport.

Both transports speak the same two-sided interface, so the rollout pool and the learner never branch:
    publisher side  ``publish(module_or_flat) -> WeightsHandle`` and ``version``
    subscriber side ``maybe_load(module, handle) -> bool`` and ``version``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field, field_validator
from torch import nn

from vlaforge.config_base import StrictModel
from vlaforge.runtime.weights.collective import CollectiveBroadcaster
from vlaforge.runtime.weights.object_store import WeightPublisher, WeightsHandle, WeightSubscriber
from vlaforge.runtime.weights.packing import FlatWeights, TensorSource

Role = Literal["publisher", "subscriber"]


@runtime_checkable
class WeightSource(Protocol):
    kind: str
    version: int

    def publish(self, source: TensorSource | FlatWeights) -> WeightsHandle: ...


@runtime_checkable
class WeightSink(Protocol):
    kind: str
    version: int

    def maybe_load(self, module: nn.Module, handle: WeightsHandle) -> bool: ...


@dataclass(frozen=True)
class BroadcasterEntry:
    publisher: Callable[..., WeightSource]
    subscriber: Callable[..., WeightSink]
    config_fields: tuple[str, ...]  # BroadcastConfig fields this transport takes (publisher side)


def _collective_receiver(**kw: Any) -> CollectiveBroadcaster:
    # Receivers take layout and bucket size from the src through the group's store.
    kw.pop("bucket_mb", None)
    return CollectiveBroadcaster(**kw)


BROADCASTERS: dict[str, BroadcasterEntry] = {
    "object_store": BroadcasterEntry(WeightPublisher, WeightSubscriber, ("trainable_only", "include_buffers")),
    "collective": BroadcasterEntry(CollectiveBroadcaster, _collective_receiver,
                                   ("trainable_only", "include_buffers", "bucket_mb", "backend")),
}


class BroadcastConfig(StrictModel):
    # "object_store": one ray.put per version, zero-copy numpy reads (CPU clusters);
    # "collective": bucketed torch.distributed broadcast from learner rank 0 (GPU rollout actors, NCCL).
    kind: str = "object_store"
    bucket_mb: float = Field(64.0, gt=0)  # collective: max bucket size (staging is 2 x this per dtype)
    backend: str = "nccl"  # collective: "nccl" on GPUs, "gloo" on CPU
    trainable_only: bool = True  # send only requires_grad parameters
    include_buffers: bool = False  # also send module buffers (e.g. normalisation statistics)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in BROADCASTERS:
            raise ValueError(f"unknown weight broadcast kind {v!r}; choose one of {sorted(BROADCASTERS)}")
        return v


def make_broadcaster(kind: str, role: Role = "publisher", **kwargs: Any) -> WeightSource | WeightSink:
    """Build one side of the ``kind`` transport; ``kwargs`` go to that side's constructor.

    object_store publisher: trainable_only, include_buffers, start_version; subscriber: nothing.
    collective (both roles): rank, world_size, master_addr, master_port, layout (src), bucket_mb (src),
    backend, device, timeout_s, ...
    """
    if kind not in BROADCASTERS:
        raise ValueError(f"unknown weight broadcast kind {kind!r}; choose one of {sorted(BROADCASTERS)}")
    if role not in ("publisher", "subscriber"):
        raise ValueError(f"role must be 'publisher' or 'subscriber', got {role!r}")
    return getattr(BROADCASTERS[kind], role)(**kwargs)


def broadcaster_from_config(cfg: BroadcastConfig, role: Role, **runtime: Any) -> WeightSource | WeightSink:
    """``make_broadcaster`` with the recipe's fields plus runtime ones (ranks, rendezvous address)."""
    entry = BROADCASTERS[cfg.kind]
    kwargs = {f: getattr(cfg, f) for f in entry.config_fields} if (role == "publisher" or cfg.kind != "object_store") else {}
    return make_broadcaster(cfg.kind, role, **kwargs, **runtime)
