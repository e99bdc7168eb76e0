"""Versioned weight publication through the Ray object store (the CPU-cluster path).

```
learner rank 0 / driver                     object store (shared memory per node)      rollout actor k
  WeightPublisher.publish(module)
    pack -> flat numpy buffers  --ray.put-->  [ v7: float32 buffer ]
    -> WeightsHandle(v7, ref, layout)  ------------- passed as a task argument ----------->  maybe_load(m, h)
                                                                                 v7 > v6: ray.get(ref)
                                              read-only view, no copy  <----------------    -> param.copy_
```

One ``ray.put`` per version; each reader gets a zero-copy, read-only numpy view onto the node's shared
memory (Ray copies the object once per node, not per actor). The publisher keeps only the latest handle,
so the previous version's object is freed as soon as no actor still borrows it.

Why the ``ObjectRef`` sits inside a dataclass: Ray resolves an ``ObjectRef`` passed as a *top-level*
task argument before the task starts -- the actor would fetch (and pin, for the whole task) the full
weights even when it already holds that version. Nested inside a ``WeightsHandle`` the ref travels as
a ref (a few bytes); the actor looks at ``handle.version`` first and calls ``ray.get`` only if newer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vlaforge.runtime.weights.packing import FlatWeights, Layout, TensorSource, pack, unpack_into


@dataclass(frozen=True)
class WeightsHandle:
    """A published weights version: cheap to pass to actors (the buffers stay in the object store)."""

    version: int
    ref: Any  # ray.ObjectRef of {dtype: 1-D numpy buffer}; None for the collective path (data goes over the group)
    layout: Layout
    nbytes: int


class WeightPublisher:
    """Publisher side (driver or learner rank 0): pack + one ``ray.put`` per version."""

    kind = "object_store"

    def __init__(self, trainable_only: bool = True, include_buffers: bool = False, start_version: int = 0) -> None:
        self.trainable_only = trainable_only
        self.include_buffers = include_buffers
        self._version = int(start_version)
        self._latest: WeightsHandle | None = None
        self._scratch: FlatWeights | None = None  # pack target reused across versions (ray.put copies it)

    @property
    def version(self) -> int:
        return self._version

    @property
    def latest(self) -> WeightsHandle | None:
        return self._latest

    def publish(self, source: TensorSource | FlatWeights) -> WeightsHandle:
        import ray

        flat = pack(source, self.trainable_only, self.include_buffers, out=self._scratch)
        if not isinstance(source, FlatWeights):
            self._scratch = flat
        ref = ray.put(dict(flat.buffers))  # numpy buffers: serialized out-of-band, read zero-copy
        self._version += 1
        # Replacing the handle drops our reference to the previous version's object: Ray frees it once
        # no in-flight task or actor still holds that ref.
        self._latest = WeightsHandle(self._version, ref, flat.layout, flat.nbytes)
        return self._latest


class WeightSubscriber:
    """Rollout-actor side: load a handle's weights into a replica only when they are newer."""

    kind = "object_store"

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.version = 0  # nothing loaded yet; published versions start at 1
        self.timeout_s = float(timeout_s)  # bound on fetching a published buffer (runtime.timeouts.weights_s)

    def maybe_load(self, module: nn.Module, handle: WeightsHandle) -> bool:
        if handle.version <= self.version:
            return False
        if handle.ref is None:
            raise ValueError(f"weights handle v{handle.version} carries no object ref (a collective-path handle?): "
                             "load it with the broadcaster that published it")
        from vlaforge.runtime import timeouts

        # {dtype: read-only numpy view onto shared memory}
        buffers = timeouts.get(handle.ref, self.timeout_s, f"weights v{handle.version} from the object store")
        unpack_into(module, buffers, handle.layout)
        del buffers  # unpin the shared-memory object right away
        self.version = handle.version
        return True
