"""Parameters living in flat buffers (runtime/weights/flat.py): the publisher's views, the replica's
one-copy load and the zero-copy map, bit for bit, across optimizer steps and re-pointed parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vlaforge.runtime.weights import FlatParams, FlatReplica, LayoutMismatchError, map_into, pack


def make_model(seed: int) -> nn.Module:
    """float32 body + a bfloat16 head (the policy's dtype mix under bf16 heads), a frozen parameter."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Linear(16, 3).to(torch.bfloat16))
    m[0].bias.requires_grad_(False)
    return m


def trainable(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def assert_same(a: dict[str, torch.Tensor], m: nn.Module) -> None:
    got = trainable(m)
    assert list(a) == list(got)
    for n in a:  # bit for bit: compare raw bytes (bf16 included; NaN-safe)
        assert a[n].view(-1).view(torch.uint8).equal(got[n].view(-1).view(torch.uint8)), n


def train_steps(m: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 8, generator=g)
        h = m[2](m[1](m[0](x)))
        loss = m[3](h.to(torch.bfloat16)).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_rebound_views_survive_optimizer_steps_and_publish_the_live_values():
    m, ref = make_model(0), make_model(0)
    before = trainable(m)
    fp = FlatParams(m)
    assert fp.adopted == {"float32": False, "bfloat16": False}  # separate storages: rebound into ours
    assert_same(before, m)  # rebinding changed no value
    assert "0.bias" not in fp.layout.names  # frozen: does not travel
    opt, opt_ref = (torch.optim.AdamW([p for p in x.parameters() if p.requires_grad], lr=1e-2) for x in (m, ref))
    train_steps(m, opt, 3)
    train_steps(ref, opt_ref, 3)
    assert_same(trainable(ref), m)  # training through the views is bit-identical to training without them
    assert fp.aliased() and not fp.ensure()
    replica = make_model(1)
    FlatReplica(replica, fp.layout).load(fp.weights.buffers)  # the buffers ARE the parameters
    assert_same(trainable(m), replica)


def test_adopts_an_existing_flat_storage_without_copying():
    m = make_model(0)
    fp32 = [p for p in m.parameters() if p.requires_grad and p.dtype == torch.float32]
    flat = torch.zeros(sum(p.numel() for p in fp32) + 7)  # trailing alignment padding, as DeepSpeed's
    off = 0
    for p in fp32:  # what DeepSpeed ZeRO 1/2 does: params become views of one flat group buffer
        flat[off : off + p.numel()].copy_(p.detach().view(-1))
        p.data = flat[off : off + p.numel()].view(p.shape)
        off += p.numel()
    ptrs = [p.data_ptr() for p in fp32]
    fp = FlatParams(m)
    assert fp.adopted["float32"] and not fp.adopted["bfloat16"]
    assert [p.data_ptr() for p in fp32] == ptrs  # adopted: nothing moved
    assert np.shares_memory(fp.weights.buffers["float32"], flat.numpy())
    with torch.no_grad():
        flat.add_(1.0)  # an in-place optimizer update on the adopted buffer shows in what we publish
    replica = make_model(3)
    FlatReplica(replica, fp.layout).load(fp.weights.buffers)
    assert_same(trainable(m), replica)


def test_ensure_reestablishes_after_a_parameter_is_repointed():
    m = make_model(0)
    fp = FlatParams(m)
    m[2].weight.data = m[2].weight.data.clone() * 2  # e.g. a checkpoint load that assigns .data
    assert not fp.aliased()
    assert fp.ensure() and fp.rebuilds == 1 and fp.aliased()
    replica = make_model(1)
    FlatReplica(replica, fp.layout).load(fp.weights.buffers)
    assert_same(trainable(m), replica)


def test_replica_loads_several_versions_in_one_copy_each_and_keeps_its_views():
    src, dst = make_model(0), make_model(1)
    fp = FlatParams(src)
    rep = FlatReplica(dst, fp.layout)
    ptrs = [p.data_ptr() for p in dst.parameters()]
    opt = torch.optim.SGD([p for p in src.parameters() if p.requires_grad], lr=0.1)
    for v in range(3):
        train_steps(src, opt, 1, seed=v)
        fp.ensure()
        published = {d: b.copy() for d, b in fp.weights.buffers.items()}  # what ray.put would snapshot
        for b in published.values():
            b.flags.writeable = False  # object-store buffers are read-only
        rep.load(published)
        assert_same(trainable(src), dst)
    assert [p.data_ptr() for p in dst.parameters()] == ptrs and rep.aliased()


def test_map_points_the_replica_at_the_published_buffer():
    src, dst = make_model(0), make_model(1)
    flat = pack(src)
    for b in flat.buffers.values():
        b.flags.writeable = False
    map_into(dst, flat.buffers, flat.layout)
    assert_same(trainable(src), dst)
    assert np.shares_memory(flat.buffers["float32"], dst[2].weight.detach().numpy())  # zero copies
    with torch.no_grad():
        out = dst[3](dst[2](dst[0](torch.randn(2, 8))).to(torch.bfloat16))  # inference reads them fine
    assert out.shape == (2, 3)


def test_replica_of_another_architecture_is_refused_by_name():
    fp = FlatParams(make_model(0))
    other = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 32), nn.Linear(32, 3).to(torch.bfloat16))
    with pytest.raises(LayoutMismatchError, match="'2.weight'"):
        FlatReplica(other, fp.layout)
