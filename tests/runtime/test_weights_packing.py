"""Packing, layouts and bucket plans of the weight broadcast (no Ray, no process group)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from vlaforge.runtime.weights import (
    FlatWeights, Layout, LayoutMismatchError, check_layout, layout_of_module, pack, plan_buckets, unpack_into,
)
from vlaforge.runtime.weights.buckets import gather_bucket, module_flat_views, scatter_bucket
from vlaforge.runtime.weights.packing import _torch_view


def make_model(seed: int, hidden: int = 16) -> nn.Module:
    """Mixed dtypes (float32 + a bfloat16 head), a frozen parameter and a buffer."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 3).to(torch.bfloat16))
    m[1].weight.requires_grad_(False)  # frozen: must not travel
    m[1].running_mean.normal_()
    return m


def trainable(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def test_round_trip_exact_and_frozen_excluded():
    src, dst = make_model(0), make_model(1)
    frozen_before = dst[1].weight.detach().clone()
    flat = pack(src)
    assert set(flat.buffers) == {"float32", "bfloat16"}  # one buffer per dtype
    assert flat.buffers["bfloat16"].dtype == np.int16  # bf16 travels as raw 16-bit words
    assert "1.weight" not in flat.layout.names and "1.running_mean" not in flat.layout.names
    assert flat.nbytes == flat.layout.nbytes == sum(p.numel() * p.element_size() for p in trainable(src).values())
    unpack_into(dst, flat)
    for name, p in trainable(src).items():
        assert torch.equal(p, dict(dst.named_parameters())[name]), name  # bit-exact, bf16 included
    assert torch.equal(dst[1].weight, frozen_before)  # the replica's frozen tensor is untouched
    assert not torch.equal(dst[1].running_mean, src[1].running_mean)  # buffers stay unless asked for


def test_include_buffers_and_all_parameters():
    src, dst = make_model(0), make_model(1)
    flat = pack(src, trainable_only=False, include_buffers=True)
    assert {"1.weight", "1.running_mean", "1.num_batches_tracked"} <= set(flat.layout.names)
    assert "int64" in flat.buffers
    unpack_into(dst, flat)
    assert torch.equal(dst[1].weight, src[1].weight) and torch.equal(dst[1].running_mean, src[1].running_mean)


def test_pack_accepts_named_tensors_and_reuses_out():
    m = make_model(0)
    a = pack(m)
    b = pack(m.named_parameters())
    c = pack(dict(m.named_parameters()))
    assert a.layout == b.layout == c.layout
    assert all(np.array_equal(a.buffers[d], b.buffers[d]) for d in a.buffers)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    d = pack(m, out=a)
    assert d.buffers["float32"] is a.buffers["float32"]  # same scratch memory, new contents
    assert np.array_equal(d.buffers["float32"][:128], m[0].weight.detach().reshape(-1).numpy())
    other = pack(make_model(0, hidden=4), out=a)  # another layout: fresh buffers
    assert other.buffers["float32"] is not a.buffers["float32"]
    with pytest.raises(ValueError, match="nothing to pack"):
        pack(nn.Linear(2, 2).requires_grad_(False))


def test_unpack_reads_views_of_a_read_only_buffer():
    src, dst = make_model(0), make_model(1)
    flat = pack(src)
    for b in flat.buffers.values():
        b.flags.writeable = False  # what ray.get hands an actor
    view = _torch_view(flat.buffers["float32"], "float32")
    assert view.data_ptr() == flat.buffers["float32"].ctypes.data  # shares memory: no copy
    assert _torch_view(flat.buffers["bfloat16"], "bfloat16").data_ptr() == flat.buffers["bfloat16"].ctypes.data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-writable warning is silenced deliberately
        unpack_into(dst, flat.buffers, flat.layout)
    assert torch.equal(dst[0].weight, src[0].weight)


def test_layout_mismatch_names_the_parameter():
    flat = pack(make_model(0))
    with pytest.raises(LayoutMismatchError, match=r"'0\.weight'.*\(16, 8\).*\(4, 8\)"):
        unpack_into(make_model(1, hidden=4), flat)
    renamed = nn.Sequential(nn.Identity(), *make_model(1))  # every name shifts by one
    with pytest.raises(LayoutMismatchError, match=r"'0\.weight' of the broadcast layout is missing"):
        unpack_into(renamed, flat)
    wrong_dtype = make_model(1)
    wrong_dtype[2].to(torch.float32)
    with pytest.raises(LayoutMismatchError, match=r"'2\.weight'.*bfloat16.*float32"):
        check_layout(wrong_dtype, flat.layout)
    extra = make_model(1)
    extra[1].weight.requires_grad_(True)  # trainable on the replica, absent from the layout
    with pytest.raises(LayoutMismatchError, match=r"'1\.weight' is trainable but not in the broadcast layout"):
        unpack_into(extra, flat)
    with pytest.raises(LayoutMismatchError, match="bfloat16"):
        unpack_into(make_model(1), {"float32": flat.buffers["float32"]}, flat.layout)


def test_layout_json_and_fingerprint():
    layout = layout_of_module(make_model(0))
    again = Layout.from_json(layout.to_json())
    assert again == layout and again.fingerprint == layout.fingerprint
    assert layout_of_module(make_model(0, hidden=4)).fingerprint != layout.fingerprint
    assert layout["2.bias"].dtype == "bfloat16" and layout["2.bias"].offset == 3 * 16


@pytest.mark.parametrize("bucket_mb", [1e-9, 100 / 2**20, 300 / 2**20, 64.0])
def test_bucket_plan_covers_every_element_once(bucket_mb: float):
    layout = layout_of_module(make_model(0))
    plan = plan_buckets(layout, bucket_mb)
    assert plan == plan_buckets(layout, bucket_mb) and plan.digest() == plan_buckets(layout, bucket_mb).digest()
    covered = {e.name: np.zeros(e.numel, np.int64) for e in layout.entries}
    for b in plan.buckets:
        itemsize = getattr(torch, b.dtype).itemsize
        assert b.numel <= max(1, int(bucket_mb * 2**20) // itemsize)  # never above the cap (1 element minimum)
        inside = np.zeros(b.numel, np.int64)
        for s in b.segments:
            assert layout[s.name].dtype == b.dtype
            covered[s.name][s.param_start : s.param_start + s.length] += 1
            inside[s.bucket_start : s.bucket_start + s.length] += 1
        assert (inside == 1).all()  # segments tile the bucket
    assert all((c == 1).all() for c in covered.values())  # every element sent exactly once
    if bucket_mb == 100 / 2**20:  # 25 float32 per bucket: the (16, 8) weight spans 6 buckets
        assert sum(any(s.name == "0.weight" for s in b.segments) for b in plan.buckets) == 6


def test_bucket_gather_scatter_round_trip():
    src, dst = make_model(0), make_model(1)
    layout = layout_of_module(src)
    plan = plan_buckets(layout, 100 / 2**20)
    sflat, dflat = module_flat_views(src, layout), module_flat_views(dst, layout)
    staging = {d: torch.empty(n, dtype=getattr(torch, d)) for d, n in plan.max_numel.items()}
    for b in plan.buckets:
        scatter_bucket(b, gather_bucket(b, sflat, staging[b.dtype]).clone(), dflat)
    for name, p in trainable(src).items():
        assert torch.equal(p, dict(dst.named_parameters())[name]), name
    with pytest.raises(ValueError, match="bucket_mb"):
        plan_buckets(layout, 0)


def test_flatweights_single_buffer_accessor():
    flat = pack(nn.Linear(3, 2))
    assert isinstance(flat, FlatWeights) and flat.buffer.shape == (8,)
    with pytest.raises(ValueError, match="2 dtype buffers"):
        _ = pack(make_model(0)).buffer
