"""Parameters that LIVE in one flat buffer per dtype, so a broadcast needs no pack copy.

```
publisher (learner rank 0)                       object store                  rollout actor (mode "copy")
  module params = views of  buf[float32] ----ray.put (1 copy)---> [ v7 ] --ray.get (view)--> copy_ (1 copy)
                            buf[bfloat16]                                                   into ITS flat buf,
                                                                                           whose views are its params
                                                                        (mode "map": the params become
                                                                         read-only views of [ v7 ]: 0 copies)
```
``pack`` (packing.py) copies every tensor into a fresh buffer before ``ray.put`` copies it again; here the
buffer IS the parameters' storage, so publishing is one ``ray.put`` of it and loading one ``copy_`` per
dtype (or none).

Two ways to get there (``FlatParams(module)``), per dtype group of the travelling parameters:
- **adopt**: the parameters already are views of one storage, in order, without overlaps and with little
  slack -- DeepSpeed ZeRO 1/2 flattens them into its ``bit16_groups_flat`` (with alignment padding) and
  keeps them there across optimizer steps (measured: deepspeed 0.19.8, fp32 and bf16). The buffer is
  that storage; the layout's offsets are where DeepSpeed put each parameter.
- **rebind**: otherwise (ZeRO 0, plain modules) allocate the buffer, copy the values in and point every
  ``param.data`` at its slice. Optimizers keep working: they hold the ``Parameter`` objects and update
  ``param.data`` in place.
Something may later re-point a parameter (``module.to(...)``, a checkpoint load that assigns ``.data``,
an optimizer that re-flattens): ``ensure()`` checks the aliasing (O(#params) pointer compares) before
every publish and re-establishes it when it broke. Module buffers are not handled (use ``pack`` when
buffers must travel): they are few and small.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from vlaforge.runtime.weights.packing import (
    FlatWeights, Layout, LayoutMismatchError, ParamSpec, _torch_view, check_layout, torch_dtype,
)

# Adopt an existing storage only if the parameters cover most of it (DeepSpeed pads to an alignment of a
# few hundred elements); a small parameter that views a huge unrelated tensor is rebound instead.
_MAX_SLACK = 0.05


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _as_numpy(base: torch.Tensor) -> np.ndarray:
    """The 1-D CPU tensor ``base`` as a numpy array sharing its memory (bf16 / float8 as raw integer words,
    the same storage dtypes ``pack`` uses, so either publisher's buffers load the same way)."""
    raw = base.detach()
    try:
        return raw.numpy()
    except TypeError:  # no numpy dtype for it
        return raw.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[raw.element_size()]).numpy()


def _whole_storage(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(1-D tensor over t's entire storage, t's element offset in it)."""
    storage = t.untyped_storage()
    size = storage.nbytes() // t.element_size()
    base = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, (size,))
    return base, (t.data_ptr() - storage.data_ptr()) // t.element_size()


def _adoptable(tensors: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[int]] | None:
    """(storage base, offsets) when every tensor is a contiguous, non-overlapping view of ONE CPU storage
    that they cover up to ``_MAX_SLACK``; else None."""
    first = tensors[0][1]
    if first.device.type != "cpu":
        return None
    ptr = first.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() != ptr or not t.is_contiguous() for _, t in tensors):
        return None
    base, _ = _whole_storage(first)
    offsets = [_whole_storage(t)[1] for _, t in tensors]
    spans = sorted((o, o + t.numel()) for o, (_, t) in zip(offsets, tensors))
    if any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])):
        return None  # overlapping views (tied weights): a layout cannot describe them
    used = sum(t.numel() for _, t in tensors)
    if base.numel() > used * (1 + _MAX_SLACK) + 1024:
        return None
    return base, offsets


class FlatParams:
    """The travelling parameters of ``module`` as views of one buffer per dtype (adopted or rebound).

    ``weights`` is a ``FlatWeights`` whose numpy buffers share memory with the parameters: publishing it
    needs no copy of ours. Call ``ensure()`` before reading it (publish does) -- it re-establishes the
    aliasing if something re-pointed a parameter.
    """

    def __init__(self, module: nn.Module, trainable_only: bool = True) -> None:
        self.module, self.trainable_only = module, trainable_only
        self.rebuilds = 0  # how often the aliasing had broken and was re-established (diagnostics, tests)
        self.adopted: dict[str, bool] = {}  # dtype -> True if an existing storage (e.g. DeepSpeed's) was adopted
        self._build()

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        items = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad or not self.trainable_only]
        if not items:
            raise ValueError(f"nothing to broadcast: {type(self.module).__name__} has no "
                             f"{'trainable ' if self.trainable_only else ''}parameters")
        return items

    def _build(self) -> None:
        tensors = self._tensors()
        groups: dict[str, list[tuple[str, torch.Tensor]]] = defaultdict(list)
        for name, t in tensors:
            groups[_dtype_name(t)].append((name, t))
        specs: dict[str, ParamSpec] = {}
        self._bases: dict[str, torch.Tensor] = {}
        for dtype, items in groups.items():
            found = _adoptable(items)
            if found is not None:
                base, offsets = found
            else:
                base, offsets = self._rebind(items)
            self.adopted[dtype] = found is not None
            self._bases[dtype] = base
            for (name, t), off in zip(items, offsets):
                specs[name] = ParamSpec(name, dtype, tuple(t.shape), off, t.numel())
        self.layout = Layout(tuple(specs[n] for n, _ in tensors))  # named_parameters order, any offsets
        # numpy views of the used prefix of each base (DeepSpeed's trailing alignment padding stays home)
        self.weights = FlatWeights({d: _as_numpy(b)[: self.layout.group_numel[d]] for d, b in self._bases.items()},
                                   self.layout)

    @staticmethod
    def _rebind(items: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[int]]:
        total = sum(t.numel() for _, t in items)
        base = torch.empty(total, dtype=items[0][1].dtype, device=items[0][1].device)  # (total,)
        offsets, cursor = [], 0
        with torch.no_grad():
            for _, p in items:
                view = base.narrow(0, cursor, p.numel()).view(p.shape)
                view.copy_(p.detach())
                p.data = view  # the Parameter object (what optimizers hold) stays; its storage moves
                offsets.append(cursor)
                cursor += p.numel()
        return base, offsets

    def aliased(self) -> bool:
        """True while every travelling parameter is still the view of its buffer slice the layout names."""
        table = dict(self._tensors())
        if tuple(table) != self.layout.names:
            return False
        for spec in self.layout.entries:
            t, base = table[spec.name], self._bases[spec.dtype]
            if (_dtype_name(t) != spec.dtype or tuple(t.shape) != spec.shape or not t.is_contiguous()
                    or t.data_ptr() != base.data_ptr() + spec.offset * t.element_size()):
                return False
        return True

    def ensure(self) -> bool:
        """Re-establish the aliasing if it broke; returns True when it had to (a new layout, maybe)."""
        if self.aliased():
            return False
        self.rebuilds += 1
        self._build()
        return True


class FlatReplica:
    """Subscriber side: a replica whose parameters are views of its own buffers laid out like the
    publisher's (``layout``), so that loading a version is one ``copy_`` per dtype buffer.

    The layout's gaps (e.g. DeepSpeed's alignment holes) exist in the replica's buffer too, zero-filled.
    """

    def __init__(self, module: nn.Module, layout: Layout) -> None:
        targets = check_layout(module, layout)  # names, shapes, dtypes; trainable params all covered
        self.module, self.layout = module, layout
        device = next(iter(targets.values())).device
        self._bases = {d: torch.zeros(n, dtype=torch_dtype(d), device=device) for d, n in layout.group_numel.items()}
        with torch.no_grad():
            for spec in layout.entries:
                p = targets[spec.name]
                view = self._bases[spec.dtype].narrow(0, spec.offset, spec.numel).view(spec.shape)
                view.copy_(p.detach())
                p.data = view

    def aliased(self) -> bool:
        table = dict(self.module.named_parameters())
        return all(spec.name in table and table[spec.name].data_ptr() == self._bases[spec.dtype].data_ptr()
                   + spec.offset * table[spec.name].element_size() for spec in self.layout.entries)

    def load(self, buffers: dict[str, np.ndarray]) -> None:
        """One copy per dtype: the published (read-only, shared-memory) buffer -> this replica's buffer."""
        with torch.no_grad():
            for d, base in self._bases.items():
                src = _torch_view(buffers[d], d)
                if src.numel() < base.numel():
                    raise LayoutMismatchError(f"the published {d} buffer holds {src.numel()} elements, the layout "
                                              f"needs {base.numel()}")
                base.copy_(src[: base.numel()])


def map_into(module: nn.Module, buffers: dict[str, np.ndarray], layout: Layout) -> None:
    """Zero-copy load for inference replicas: point each parameter at its slice of the published buffer.

    The buffers are read-only shared memory (the Ray object store): the replica must never write its
    parameters (inference under ``no_grad`` only reads them). The views keep the object pinned until the
    next version replaces them, so at most two versions stay alive per node.
    """
    targets = check_layout(module, layout)
    flat = {d: _torch_view(buffers[d], d) for d in layout.dtypes}
    for d, n in layout.group_numel.items():
        if flat[d].numel() < n:
            raise LayoutMismatchError(f"the published {d} buffer holds {flat[d].numel()} elements, the layout needs {n}")
    device = next(iter(targets.values())).device
    if device.type != "cpu":
        raise ValueError(f"load mode 'map' needs a CPU replica (the buffer lives in host shared memory); this one is "
                         f"on {device}: use mode 'copy'")
    for spec in layout.entries:
        targets[spec.name].data = flat[spec.dtype].narrow(0, spec.offset, spec.numel).view(spec.shape)
