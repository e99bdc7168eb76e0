"""Versioned weight publication through the Ray object store (the CPU-cluster path).

```
learner rank 0 / driver                     object store (shared memory per node)      rollout actor k
  WeightPublisher.publish(module)
    params live in flat numpy buffers --ray.put-->  [ v7: float32 buffer ]
    -> WeightsHandle(v7, ref, layout)  ------------- passed as a task argument ----------->  maybe_load(m, h)
                                                                                 v7 > v6: ray.get(ref)
                                              read-only view, no copy  <----------------    -> one copy_ per
                                                                                    dtype into the replica's
                                                                                    own flat buffer ("copy"),
                                                                                    or none ("map")
```

One ``ray.put`` per version; each reader gets a zero-copy, read-only numpy view onto the node's shared
memory (Ray copies the object once per node, not per actor). The publisher keeps only the latest handle,
so the previous version's object is freed as soon as no actor still borrows it. The publisher's module
parameters are views of flat per-dtype buffers (``flat.FlatParams``: DeepSpeed ZeRO 1/2's own flat
buffer adopted, or the parameters rebound into ours), so the ``ray.put`` is the only copy on that side;
``flat=False`` (or ``include_buffers``) packs a fresh copy first, as before.

Why the ``ObjectRef`` sits inside a dataclass: Ray resolves an ``ObjectRef`` passed as a *top-level*
task argument before the task starts -- the actor would fetch (and pin, for the whole task) the full
weights even when it already holds that version. Nested inside a ``WeightsHandle`` the ref travels as
a ref (a few bytes); the actor looks at ``handle.version`` first and calls ``ray.get`` only if newer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vlaforge.runtime.weights.flat import FlatParams, FlatReplica, map_into
from vlaforge.runtime.weights.packing import FlatWeights, Layout, TensorSource, pack, unpack_into

LOAD_MODES = ("copy", "map", "unpack")  # WeightSubscriber modes, see its docstring


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

    def __init__(self, trainable_only: bool = True, include_buffers: bool = False, start_version: int = 0,
                 flat: bool = True) -> None:
        self.trainable_only = trainable_only
        self.include_buffers = include_buffers
        self.flat = flat and not include_buffers  # FlatParams carries parameters only
        self._version = int(start_version)
        self._latest: WeightsHandle | None = None
        self._scratch: FlatWeights | None = None  # pack target reused across versions (ray.put copies it)
        self._params: FlatParams | None = None  # flat=True: the module's parameters as flat-buffer views

    @property
    def version(self) -> int:
        return self._version

    @property
    def latest(self) -> WeightsHandle | None:
        return self._latest

    def publish(self, source: TensorSource | FlatWeights) -> WeightsHandle:
        import ray

        if self.flat and isinstance(source, nn.Module):
            if self._params is None or self._params.module is not source:
                self._params = FlatParams(source, self.trainable_only)  # rebinds or adopts, once
            self._params.ensure()  # re-established if something re-pointed a parameter since
            flat = self._params.weights  # the parameters' own memory: no pack copy
        else:
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
    """Rollout-actor side: load a handle's weights into a replica only when they are newer.

    ``mode``: "copy" (default) -- the replica's parameters become views of its own flat buffers laid out
    like the publisher's, and a load is one ``copy_`` per dtype from the shared-memory view;
    "map" -- zero copies: the parameters become read-only views of the published object itself (CPU
    inference replicas that never write their weights; the object stays pinned until the next version);
    "unpack" -- one ``copy_`` per tensor into the replica as it is (the pre-flat path, kept for comparison).
    """

    kind = "object_store"

    def __init__(self, timeout_s: float = 300.0, mode: str = "copy") -> None:
        if mode not in LOAD_MODES:
            raise ValueError(f"weight load mode {mode!r}: choose one of {list(LOAD_MODES)}")
        self.version = 0  # nothing loaded yet; published versions start at 1
        self.timeout_s = float(timeout_s)  # bound on fetching a published buffer (runtime.timeouts.weights_s)
        self.mode = mode
        self._replica: FlatReplica | None = None  # mode "copy": the module's flat buffers

    def maybe_load(self, module: nn.Module, handle: WeightsHandle) -> bool:
        if handle.version <= self.version:
            return False
        if handle.ref is None:
            raise ValueError(f"weights handle v{handle.version} carries no object ref (a collective-path handle?): "
                             "load it with the broadcaster that published it")
        from vlaforge.runtime import timeouts

        # {dtype: read-only numpy view onto shared memory}
        buffers = timeouts.get(handle.ref, self.timeout_s, f"weights v{handle.version} from the object store")
        if self.mode == "map":
            map_into(module, buffers, handle.layout)
        elif self.mode == "copy":
            r = self._replica
            if r is None or r.module is not module or r.layout.fingerprint != handle.layout.fingerprint or not r.aliased():
                self._replica = r = FlatReplica(module, handle.layout)  # once per layout
            r.load(buffers)
        else:
            unpack_into(module, buffers, handle.layout)
        del buffers  # unpin the shared-memory object right away
        self.version = handle.version
        return True
