"""The weight broadcast with real Ray actors: object-store publication and the gloo collective."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch
from torch import nn

from vlaforge.runtime.weights import (
    BroadcastConfig, CollectiveBroadcaster, LayoutMismatchError, WeightPublisher, WeightsHandle, WeightSubscriber,
    broadcaster_from_config, layout_of_module, make_broadcaster, rendezvous_address,
)

pytestmark = pytest.mark.slow

try:  # actor classes below travel by value: this test module is not importable inside Ray workers
    import ray.cloudpickle as _cp

    _cp.register_pickle_by_value(sys.modules[__name__])
except (ImportError, KeyError):
    pass


def make_model(seed: int, hidden: int = 64) -> nn.Module:
    # 64 -> 64 -> 4 with a frozen first bias: ~17 KB trainable, float32
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 4))
    m[0].bias.requires_grad_(False)
    return m


def checksum(m: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in m.named_parameters():
        if p.requires_grad:
            h.update(name.encode() + p.detach().numpy().tobytes())
    return h.hexdigest()


class Replica:
    """A rollout-actor stand-in: a policy replica, an object-store subscriber, and a collective rank
    (rank 0 plays the learner). One actor class for both paths, so the tests share 4 actors."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.sub = WeightSubscriber()
        self.b: CollectiveBroadcaster | None = None

    def reset(self, seed: int, hidden: int = 64) -> None:
        self.model, self.sub = make_model(seed, hidden), WeightSubscriber()

    # -- object store ----------------------------------------------------------------------------------
    def load(self, handle: WeightsHandle) -> tuple[bool, int, str]:
        loaded = self.sub.maybe_load(self.model, handle)
        return loaded, self.sub.version, checksum(self.model)

    def probe(self, handle: WeightsHandle) -> dict:
        import ray

        arr = ray.get(handle.ref)["float32"]  # the nested ref arrived unresolved
        return {"writeable": arr.flags.writeable, "owndata": arr.flags.owndata, "base": arr.base is not None}

    # -- collective ------------------------------------------------------------------------------------
    def join(self, rank: int, world: int, addr: str, port: int) -> int:
        layout = layout_of_module(self.model) if rank == 0 else None
        self.b = CollectiveBroadcaster(rank=rank, world_size=world, master_addr=addr, master_port=port, layout=layout,
                                       bucket_mb=4096 / 2**20, backend="gloo", timeout_s=60)  # 1024 floats/bucket
        return len(self.b.plan.buckets)

    def step_and_publish(self) -> tuple[int, str]:
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(0.5)  # a "training step": every version differs
        handle = self.b.publish(self.model)
        return handle.version, checksum(self.model)

    def load_collective(self, handle: WeightsHandle | None) -> tuple[bool, int, str]:
        return self.b.maybe_load(self.model, handle), self.b.version, checksum(self.model)

    def set_version(self, v: int) -> None:
        self.b.version = v

    def set_model(self, model: nn.Module, version: int) -> None:
        self.model, self.b.version = model, version

    def leave(self) -> None:
        self.b.close()
        self.b = None


@pytest.fixture(scope="module")
def replicas(ray_cluster):
    actors = [ray_cluster.remote(num_cpus=0.25)(Replica).remote() for _ in range(4)]
    yield actors
    for a in actors:
        ray_cluster.kill(a)


def _live_ids(ray) -> set[str]:
    # Private but the only in-process view of the owner's reference table (no dashboard in tests).
    table = ray._private.worker.global_worker.core_worker.get_all_reference_counts()
    return {k.decode() if isinstance(k, bytes) else str(k) for k in table}


def test_publisher_versions_and_frees_old_versions(ray_cluster):
    ray = ray_cluster
    model = make_model(0, hidden=512)  # 139 KB > 100 KB: lives in shared memory, not inlined
    pub = make_broadcaster("object_store", "publisher")
    assert isinstance(pub, WeightPublisher)
    h1 = pub.publish(model)
    old_id = h1.ref.hex()
    assert old_id in _live_ids(ray)
    h2 = pub.publish(model)
    assert (h1.version, h2.version, pub.version) == (1, 2, 2) and pub.latest is h2
    assert h2.nbytes == sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    del h1
    assert old_id not in _live_ids(ray)  # the publisher kept only the latest: v1 is freed
    assert h2.ref.hex() in _live_ids(ray)


def test_subscriber_loads_only_newer(ray_cluster):
    src, dst = make_model(0), make_model(1)
    pub, sub = WeightPublisher(), WeightSubscriber()
    h1 = pub.publish(src)
    with torch.no_grad():
        src[2].weight.mul_(2.0)
    h2 = pub.publish(src)
    assert sub.maybe_load(dst, h2) and sub.version == 2 and checksum(dst) == checksum(src)
    assert not sub.maybe_load(dst, h1) and sub.version == 2 and checksum(dst) == checksum(src)  # stale: ignored
    assert not sub.maybe_load(dst, h2)  # same version: nothing to do
    with pytest.raises(LayoutMismatchError, match=r"'0\.weight'"):
        WeightSubscriber().maybe_load(make_model(1, hidden=32), h2)
    with pytest.raises(ValueError, match="no object ref"):
        WeightSubscriber().maybe_load(dst, WeightsHandle(9, None, h2.layout, h2.nbytes))


def test_four_actors_same_version_zero_copy(ray_cluster, replicas):
    ray = ray_cluster
    ray.get([a.reset.remote(seed=10 + i, hidden=512) for i, a in enumerate(replicas)])
    model = make_model(0, hidden=512)
    pub = WeightPublisher()
    h1 = pub.publish(model)
    flags = ray.get(replicas[0].probe.remote(h1))
    assert flags == {"writeable": False, "owndata": False, "base": True}  # a view onto shared memory
    first = ray.get([a.load.remote(h1) for a in replicas])
    assert all(r == (True, 1, checksum(model)) for r in first), first
    with torch.no_grad():
        model[0].weight.add_(1.0)
    h2 = pub.publish(model)
    second = ray.get([a.load.remote(h2) for a in replicas])
    assert {r[2] for r in second} == {checksum(model)} and all(r[:2] == (True, 2) for r in second)
    stale = ray.get([a.load.remote(h1) for a in replicas])  # a late handle never rolls a replica back
    assert all(r == (False, 2, checksum(model)) for r in stale)


def test_gloo_collective_three_ranks(ray_cluster, replicas):
    ray = ray_cluster
    ranks = replicas[:3]
    ray.get([r.reset.remote(seed=20 + i) for i, r in enumerate(ranks)])
    addr, port = rendezvous_address("127.0.0.1")
    joins = [r.join.remote(i, 3, addr, port) for i, r in enumerate(ranks)]  # constructors rendezvous together
    assert ray.get(joins) == [5] * 3  # 4292 floats / 1024 per bucket, same plan on every rank
    src, dsts = ranks[0], ranks[1:]
    for expected in (1, 2):
        pub = src.step_and_publish.remote()
        acks = [d.load_collective.remote(None) for d in dsts]
        version, src_sum = ray.get(pub)
        assert version == expected
        assert ray.get(acks) == [(True, expected, src_sum)] * 2  # identical weights and version everywhere
    # An up-to-date receiver still drains the broadcast (no hang) but keeps its weights.
    ray.get(dsts[1].set_version.remote(10))
    pub = src.step_and_publish.remote()
    acks = [d.load_collective.remote(WeightsHandle(3, None, None, 0)) for d in dsts]
    version, src_sum = ray.get(pub)
    got = ray.get(acks)
    assert version == 3 and got[0] == (True, 3, src_sum)
    assert got[1][:2] == (False, 10) and got[1][2] != src_sum
    # A receiver whose replica does not match drains every bucket, then raises; the others complete.
    ray.get(dsts[1].set_model.remote(make_model(0, hidden=32), 0))
    pub = src.step_and_publish.remote()
    acks = [d.load_collective.remote(None) for d in dsts]
    version, src_sum = ray.get(pub)
    assert version == 4 and ray.get(acks[0]) == (True, 4, src_sum)
    with pytest.raises(LayoutMismatchError, match=r"'0\.weight'"):
        ray.get(acks[1])
    ray.get([r.leave.remote() for r in ranks])


def test_registry_and_config():
    cfg = BroadcastConfig()
    assert cfg.kind == "object_store"
    assert isinstance(broadcaster_from_config(cfg, "publisher"), WeightPublisher)
    assert isinstance(broadcaster_from_config(cfg, "subscriber"), WeightSubscriber)
    with pytest.raises(ValueError, match="unknown weight broadcast kind 'nccl_ring'"):
        BroadcastConfig(kind="nccl_ring")
    with pytest.raises(ValueError, match="unknown weight broadcast kind"):
        make_broadcaster("carrier_pigeon")
    with pytest.raises(ValueError, match="unknown collective backend 'mpi'"):
        make_broadcaster("collective", "publisher", rank=0, world_size=2, master_addr="127.0.0.1", master_port=1,
                         layout=layout_of_module(make_model(0)), backend="mpi")
