"""Versioned weight broadcast over a torch.distributed group (the GPU path), bucket by bucket.

NOTE: the NCCL path is NOT exercised on the machines this project is developed on (no GPU, CPU torch).
The same code runs with ``backend="gloo"``, which is what the tests and the benchmark use (3+ Ray actors
on CPU); ``backend="nccl"`` only changes the process-group class and puts staging on the GPU.

Rank layout of the broadcast group (separate from the learners' DeepSpeed group):
```
  group rank 0 (src) = learner rank 0     group ranks 1..K = rollout actors (dst)
  TCPStore host: src, at rendezvous_address() (host, free port) taken on the src's node
  per version:  header int64[4] = (version, layout fp, plan digest, #buckets)   src -> all
                bucket 0 .. bucket n-1  (<= bucket_mb each, one dtype each)        src -> all
```
Why a standalone group instead of ``dist.init_process_group``/``dist.new_group``: learner rank 0
already owns the *default* group (DeepSpeed's, with the other learner ranks) and ``new_group`` only
spans members of the default group, which the rollout actors are not. So every rank builds its own
``ProcessGroupGloo``/``ProcessGroupNCCL`` on a private ``TCPStore`` and calls ``group.broadcast(tensor,
root)`` -- the very call ``dist.broadcast`` makes -- without touching the global world state.

A collective needs every rank: the driver must start ``publish`` on the src and ``maybe_load`` on all
dst ranks together (``maybe_load(module, None)`` is fine: the header carries the version)::

    pub = learner.publish_weights.remote()                     # -> broadcaster.publish(model)
    acks = [a.load_weights.remote(None) for a in rollout]        # -> broadcaster.maybe_load(policy, None)
    handle = ray.get(pub); ray.get(acks)

A receiver that is already up to date, or whose replica does not match the layout, still receives
every bucket (so the sender never hangs) and then returns False / raises.
"""

from __future__ import annotations

import datetime
import socket
from collections import deque
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from vlaforge.runtime.weights.buckets import BucketPlan, gather_bucket, module_flat_views, plan_buckets, scatter_bucket
from vlaforge.runtime.weights.object_store import WeightsHandle
from vlaforge.runtime.weights.packing import (
    FlatWeights, Layout, LayoutMismatchError, TensorSource, _torch_view, check_layout, diff_layouts, layout_of,
    named_tensors, torch_dtype,
)

GroupFactory = Callable[[dist.Store, int, int, datetime.timedelta], dist.ProcessGroup]


def _gloo_group(store: dist.Store, rank: int, size: int, timeout: datetime.timedelta) -> dist.ProcessGroup:
    # Gloo picks its interface from GLOO_SOCKET_IFNAME, else by resolving the hostname (set the variable on
    # multi-NIC cluster nodes).
    return dist.ProcessGroupGloo(store, rank, size, timeout=timeout)


def _nccl_group(store: dist.Store, rank: int, size: int, timeout: datetime.timedelta) -> dist.ProcessGroup:
    # Not exercised here (no GPU). Call torch.cuda.set_device(...) before building it (done in __init__).
    if not dist.is_nccl_available():
        raise RuntimeError("backend 'nccl' needs a CUDA build of torch (torch.distributed.is_nccl_available() is False); "
                           "use backend='gloo' on CPU")
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, size, opts)


GROUP_BACKENDS: dict[str, GroupFactory] = {"gloo": _gloo_group, "nccl": _nccl_group}


def rendezvous_address(host: str | None = None) -> tuple[str, int]:
    """(address, free TCP port) for the src rank's store. Call it ON the src's node (inside the learner).

    The port is free when probed; another process could take it before the store binds it (rare).
    """
    if host is None:
        try:
            import ray

            host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        except ImportError:
            host = "127.0.0.1"
    with socket.socket() as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


def _digest_int(hexdigest: str) -> int:
    return int(hexdigest[:15], 16)  # 60 bits: fits an int64 header slot


class CollectiveBroadcaster:
    """Both roles of the bucketed broadcast: ``publish`` on the src rank, ``maybe_load`` on dst ranks.

    Construct it on every rank at the same time (the constructor rendezvouses). The src passes the
    ``layout`` (``layout_of_module``) and ``bucket_mb``; receivers take both from the src through the
    store (a receiver that passes its own layout gets a ``LayoutMismatchError`` if it differs).
    Staging: 2 x bucket_mb per dtype on ``device`` (double buffering: pack/unpack bucket k+1 while
    bucket k is on the wire). NCCL is untested here; gloo is tested with 3 processes.
    """

    kind = "collective"

    def __init__(self, *, rank: int, world_size: int, master_addr: str, master_port: int, layout: Layout | None = None,
                 src: int = 0, bucket_mb: float = 64.0, backend: str = "nccl", device: str | torch.device | None = None,
                 timeout_s: float = 300.0, group_name: str = "vlaforge-weights", trainable_only: bool = True,
                 include_buffers: bool = False, start_version: int = 0) -> None:
        if not (0 <= rank < world_size and 0 <= src < world_size) or world_size < 2:
            raise ValueError(f"need 0 <= rank, src < world_size and world_size >= 2; got rank={rank} src={src} world_size={world_size}")
        if backend not in GROUP_BACKENDS:
            raise ValueError(f"unknown collective backend {backend!r}; known: {sorted(GROUP_BACKENDS)}")
        if rank == src and layout is None:
            raise ValueError("the src rank must pass the layout it will publish (layout_of_module(model))")
        self.rank, self.src, self.backend = rank, src, backend
        self.trainable_only, self.include_buffers = trainable_only, include_buffers
        self.version = int(start_version)
        self.device = torch.device(device or ("cuda" if backend == "nccl" else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(master_addr, master_port, world_size, is_master=(rank == src), wait_for_workers=False,
                              timeout=timeout)
        self._store = dist.PrefixStore(group_name, store)
        self.layout, self.plan = self._exchange_plan(layout, bucket_mb)
        self._pg = GROUP_BACKENDS[backend](self._store, rank, world_size, timeout)
        self._check = torch.tensor([0, _digest_int(self.layout.fingerprint), _digest_int(self.plan.digest()),
                                    len(self.plan.buckets)], dtype=torch.int64)
        self._header = torch.zeros(4, dtype=torch.int64, device=self.device)
        # two staging slots per dtype, each as large as the dtype's largest bucket
        self._staging = {d: [torch.empty(n, dtype=torch_dtype(d), device=self.device) for _ in range(2)]
                         for d, n in self.plan.max_numel.items()}

    def _exchange_plan(self, layout: Layout | None, bucket_mb: float) -> tuple[Layout, BucketPlan]:
        if self.rank == self.src:
            self._store.set("layout", layout.to_json())
            self._store.set("bucket_mb", repr(float(bucket_mb)))
            return layout, plan_buckets(layout, bucket_mb)
        theirs = Layout.from_json(self._store.get("layout").decode())
        if layout is not None and (why := diff_layouts(layout, theirs)):
            raise LayoutMismatchError(f"rank {self.rank}: this replica's layout differs from the publisher's: {why}")
        return theirs, plan_buckets(theirs, float(self._store.get("bucket_mb").decode()))

    def _bcast(self, t: torch.Tensor):
        return self._pg.broadcast(t, self.src)

    def _header_tensor(self, version: int) -> torch.Tensor:
        h = self._check.clone()
        h[0] = version
        return h

    # -- src ------------------------------------------------------------------------------------------
    def publish(self, source: TensorSource | FlatWeights) -> WeightsHandle:
        """Broadcast the next version from the src rank; returns once every bucket is sent."""
        if self.rank != self.src:
            raise RuntimeError(f"publish() runs on the src rank {self.src}, this is rank {self.rank}")
        flat = self._source_views(source)
        version = self.version + 1
        self._header.copy_(self._header_tensor(version))
        self._bcast(self._header).wait()
        pending: dict[int, object] = {}
        for k, bucket in enumerate(self.plan.buckets):
            slot = k % 2
            if slot in pending:
                pending.pop(slot).wait()  # the slot's previous bucket left the staging buffer
            buf = gather_bucket(bucket, flat, self._staging[bucket.dtype][slot])  # (numel,)
            pending[slot] = self._bcast(buf)
        for work in pending.values():
            work.wait()
        self.version = version
        return WeightsHandle(version, None, self.layout, self.layout.nbytes)

    def _source_views(self, source: TensorSource | FlatWeights) -> dict[str, torch.Tensor]:
        if isinstance(source, FlatWeights):
            layout = source.layout
            base = {d: _torch_view(b, d) for d, b in source.buffers.items()}
            views = {e.name: base[e.dtype].narrow(0, e.offset, e.numel) for e in layout.entries}
        else:
            tensors = named_tensors(source, self.trainable_only, self.include_buffers)
            layout = layout_of(tensors)
            views = {n: t.detach().reshape(-1) for n, t in tensors}
        if why := diff_layouts(self.layout, layout):
            raise LayoutMismatchError(f"publish(): the tensors differ from the layout this group was built with: {why}")
        return views

    # -- dst ------------------------------------------------------------------------------------------
    def maybe_load(self, module: nn.Module, handle: WeightsHandle | None = None) -> bool:
        """Receive one broadcast; copy it into ``module`` only if its version is newer than ours."""
        if self.rank == self.src:
            raise RuntimeError(f"maybe_load() runs on receiver ranks, this is the src rank {self.src}")
        self._bcast(self._header).wait()
        header = self._header.cpu()
        version = int(header[0])
        if not torch.equal(header[1:], self._check[1:]):
            # Bucket counts may differ: draining is impossible, the sender will time out.
            raise LayoutMismatchError(f"rank {self.rank}: broadcast header {header.tolist()} disagrees with this rank's "
                                      f"plan {self._check.tolist()} (layout fingerprint, plan digest, #buckets)")
        problem: Exception | None = None
        if handle is not None and handle.version != version:
            problem = ValueError(f"rank {self.rank}: the handle says v{handle.version}, the broadcast carries v{version}")
        flat = None
        if version > self.version and problem is None:
            try:
                check_layout(module, self.layout)
                flat = module_flat_views(module, self.layout)
            except (LayoutMismatchError, ValueError) as e:
                problem = e  # still drain every bucket below so the sender does not hang
        self._receive(flat)
        if problem is not None:
            raise problem
        if flat is None:
            return False
        self.version = version
        return True

    def _receive(self, flat: dict[str, torch.Tensor] | None) -> None:
        pending: deque = deque()
        for k, bucket in enumerate(self.plan.buckets):
            buf = self._staging[bucket.dtype][k % 2].narrow(0, 0, bucket.numel)  # (numel,)
            pending.append((bucket, buf, self._bcast(buf)))
            if len(pending) == 2:  # unpack bucket k-1 while bucket k arrives
                self._finish(*pending.popleft(), flat)
        while pending:
            self._finish(*pending.popleft(), flat)

    @staticmethod
    def _finish(bucket, buf, work, flat) -> None:
        work.wait()
        if flat is not None:
            scatter_bucket(bucket, buf, flat)

    def close(self) -> None:
        """Release the group (its sockets / communicators)."""
        pg, self._pg = self._pg, None
        if pg is not None and hasattr(pg, "shutdown"):
            pg.shutdown()

