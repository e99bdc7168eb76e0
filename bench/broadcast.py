"""Weight-broadcast benchmark: publish + every rollout actor loaded, vs #actors and model size. Prints JSON.

    python bench/broadcast.py            # 1/10/100 MB x 1/2/4/8 actors
    python bench/broadcast.py --quick    # 1/10 MB x 1/2/4 actors

Per (size, actors), median over --reps versions, end to end (the driver waits for every actor's ack):
  flat_copy       the default path: the publisher's parameters live in one flat buffer (FlatParams), so
                  publish = one ray.put of it; actors ray.get a zero-copy view and load by ONE copy_ into
                  their own flat buffer (WeightSubscriber mode "copy")
  flat_map        the same publish; actors point their parameters at the read-only shared-memory object
                  (mode "map": no copy at all; inference replicas)
  packed          the pre-flat path: pack (a copy) + ray.put -> actors copy_ tensor by tensor ("unpack")
  torch_pickle    ray.put of a {name: torch.Tensor} dict -> actors ray.get (pickled copy) + copy_
  collective_gloo CollectiveBroadcaster, the driver as src, actors as receivers, gloo over loopback
                  (the NCCL path is not measured: no GPU here)
baseline: one np.copyto of the same number of bytes (what a single in-process copy costs).
Actors are tiny (num_cpus=0.25); the machine's cores are shared, so expect noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

N_TENSORS = 16  # the model's tensors: a realistic handful per MB class, not one giant blob


def make_model(size_mb: float) -> nn.Module:
    numel = int(size_mb * 2**20 / 4 / N_TENSORS)
    return nn.ParameterList([nn.Parameter(torch.randn(numel)) for _ in range(N_TENSORS)])


def median_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 2)


class BenchActor:
    """A rollout-actor stand-in: one replica, three ways to receive weights."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.sub = None
        self.group = None

    def resize(self, size_mb: float) -> None:
        self.model, self.sub, self.size_mb = make_model(size_mb), None, size_mb

    def set_mode(self, mode: str) -> None:
        from vlaforge.runtime.weights import WeightSubscriber

        self.model = make_model(self.size_mb)  # a fresh replica: "map" leaves it pointing at read-only memory
        self.sub = WeightSubscriber(mode=mode)

    def load(self, handle) -> float:
        t = time.perf_counter()
        assert self.sub.maybe_load(self.model, handle)
        return time.perf_counter() - t

    def checksum(self) -> float:
        return float(sum(float(p.detach().double().sum()) for p in self.model.parameters()))

    def load_torch(self, box: list) -> float:
        import ray

        t = time.perf_counter()
        state = ray.get(box[0])  # {name: torch.Tensor}, deserialized = copied
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state[name])
        return time.perf_counter() - t

    def join(self, rank: int, world: int, addr: str, port: int, bucket_mb: float) -> None:
        from vlaforge.runtime.weights import CollectiveBroadcaster

        if self.group is not None:
            self.group.close()
        self.group = CollectiveBroadcaster(rank=rank, world_size=world, master_addr=addr, master_port=port,
                                           backend="gloo", bucket_mb=bucket_mb, timeout_s=120)

    def load_collective(self) -> float:
        t = time.perf_counter()
        assert self.group.maybe_load(self.model, None)
        return time.perf_counter() - t

    def leave(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def bench_memcpy(nbytes: int, reps: int) -> float:
    src, dst = np.random.rand(nbytes // 8), np.empty(nbytes // 8)
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return median_ms(times[1:])


def bench_object_store(ray, name: str, flat: bool, mode: str, model, actors, reps: int) -> dict:
    from vlaforge.runtime.weights import WeightPublisher

    pub = WeightPublisher(flat=flat)
    ray.get([a.set_mode.remote(mode) for a in actors])
    totals, publish, actor_side = [], [], []
    for i in range(reps + 1):  # the first version is a warm-up (flat: the one-time rebind; actors: their buffers)
        with torch.no_grad():
            model[0].add_(1.0)
        t0 = time.perf_counter()
        handle = pub.publish(model)
        t1 = time.perf_counter()
        loads = ray.get([a.load.remote(handle) for a in actors])
        t2 = time.perf_counter()
        if i:
            totals.append(t2 - t0), publish.append(t1 - t0), actor_side.append(max(loads))
    want = float(sum(float(p.detach().double().sum()) for p in model.parameters()))
    if any(abs(c - want) > 1e-6 * max(1.0, abs(want)) for c in ray.get([a.checksum.remote() for a in actors])):
        raise RuntimeError(f"{name}: an actor's weights differ from the publisher's after the last version")
    del handle, pub
    return {f"{name}_ms": median_ms(totals), f"{name}_publish_ms": median_ms(publish),
            f"{name}_actor_load_ms": median_ms(actor_side)}


def bench_torch_pickle(ray, model, actors, reps: int) -> dict:
    totals, actor_side = [], []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        ref = ray.put({n: p.detach() for n, p in model.named_parameters()})
        loads = ray.get([a.load_torch.remote([ref]) for a in actors])
        t2 = time.perf_counter()
        del ref
        if i:
            totals.append(t2 - t0), actor_side.append(max(loads))
    return {"torch_pickle_ms": median_ms(totals), "torch_pickle_actor_load_ms": median_ms(actor_side)}


def bench_collective(ray, model, actors, reps: int, bucket_mb: float) -> dict:
    from vlaforge.runtime.weights import CollectiveBroadcaster, layout_of_module, rendezvous_address

    addr, port = rendezvous_address("127.0.0.1")
    world = len(actors) + 1
    joins = [a.join.remote(r + 1, world, addr, port, bucket_mb) for r, a in enumerate(actors)]
    src = CollectiveBroadcaster(rank=0, world_size=world, master_addr=addr, master_port=port, backend="gloo",
                                layout=layout_of_module(model), bucket_mb=bucket_mb, timeout_s=120)
    ray.get(joins)
    totals = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        acks = [a.load_collective.remote() for a in actors]
        src.publish(model)
        ray.get(acks)
        if i:
            totals.append(time.perf_counter() - t0)
    ray.get([a.leave.remote() for a in actors])
    src.close()
    return {"collective_gloo_ms": median_ms(totals), "collective_buckets": len(src.plan.buckets)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1/10 MB x 1/2/4 actors")
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="model sizes in MB (float32)")
    ap.add_argument("--actors", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=None, help="timed versions per point (median); default 3, quick 2")
    ap.add_argument("--bucket-mb", type=float, default=32.0, help="collective bucket size")
    ap.add_argument("--no-collective", action="store_true")
    ap.add_argument("--no-pickle", action="store_true", help="skip the torch-pickle reference")
    ap.add_argument("--address", default=None, help="join a Ray cluster instead of starting one")
    args = ap.parse_args()
    sizes = args.sizes or ([1.0, 10.0] if args.quick else [1.0, 10.0, 100.0])
    counts = sorted(args.actors or ([1, 2, 4] if args.quick else [1, 2, 4, 8]))
    reps = args.reps or (2 if args.quick else 3)

    import ray

    from vlaforge.runtime.process import init_ray

    init_ray(address=args.address, num_cpus=None if args.address else 4, log_to_driver=False)
    pool = [ray.remote(num_cpus=0.25)(BenchActor).remote() for _ in range(max(counts))]
    results = []
    for size in sizes:
        model = make_model(size)
        nbytes = sum(p.numel() * 4 for p in model.parameters())
        ray.get([a.resize.remote(size) for a in pool])
        memcpy = bench_memcpy(nbytes, max(reps, 3))
        for n in counts:
            actors = pool[:n]
            row = {"size_mb": size, "actors": n, "memcpy_ms": memcpy}
            for name, flat, mode in (("flat_copy", True, "copy"), ("flat_map", True, "map"), ("packed", False, "unpack")):
                row.update(bench_object_store(ray, name, flat, mode, model, actors, reps))
                row[f"{name}_x_memcpy"] = round(row[f"{name}_ms"] / max(memcpy, 1e-6), 2)
            if not args.no_pickle:
                ray.get([a.set_mode.remote("unpack") for a in actors])
                row.update(bench_torch_pickle(ray, model, actors, reps))
            if not args.no_collective:
                row.update(bench_collective(ray, model, actors, reps, args.bucket_mb))
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress
            results.append(row)
    out = {"bench": "broadcast", "cpus": os.cpu_count(), "reps": reps, "bucket_mb": args.bucket_mb,
           "torch": torch.__version__, "ray": ray.__version__, "results": results}
    print(json.dumps(out, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
