"""The bucketed collective in one process: 3 gloo ranks on threads, mixed dtypes, many buckets (fast).

The 3-process version (Ray actors) is in test_weights_ray.py; the NCCL backend is not exercised here.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from vlaforge.runtime.weights import CollectiveBroadcaster, layout_of_module, rendezvous_address
from vlaforge.runtime.weights.packing import diff_layouts, pack


def make_model(seed: int, hidden: int = 300) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.Linear(hidden, 3).to(torch.bfloat16))


def run_ranks(fns) -> dict:
    out, errors = {}, []

    def wrap(r, fn):
        try:
            out[r] = fn()
        except Exception as e:  # noqa: BLE001 -- surfaced below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(r, fn)) for r, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return out


def test_threads_mixed_dtypes_many_buckets_and_flat_source():
    models = [make_model(i) for i in range(3)]
    addr, port = rendezvous_address("127.0.0.1")
    kw = dict(world_size=3, master_addr=addr, master_port=port, backend="gloo", timeout_s=30)
    groups = run_ranks([
        lambda: CollectiveBroadcaster(rank=0, layout=layout_of_module(models[0]), bucket_mb=1e-3, **kw),
        lambda: CollectiveBroadcaster(rank=1, **kw),
        lambda: CollectiveBroadcaster(rank=2, layout=layout_of_module(models[2]), **kw),  # its own, equal layout
    ])
    assert len(groups[1].plan.buckets) > 10 and groups[1].plan == groups[0].plan  # bucket_mb came from the src
    assert groups[1].plan.max_numel == {"float32": 262, "bfloat16": 524}  # 1e-3 MiB = 1048 bytes
    for version, source in ((1, models[0]), (2, pack(make_model(7)))):  # a module, then a pre-packed FlatWeights
        got = run_ranks([lambda: groups[0].publish(source).version,
                         lambda: groups[1].maybe_load(models[1], None),
                         lambda: groups[2].maybe_load(models[2], None)])
        assert got == {0: version, 1: True, 2: True}
        want = make_model(7) if version == 2 else models[0]
        for m in models[1:]:
            assert all(torch.equal(a, b) for a, b in zip(want.parameters(), m.parameters()))
    with pytest.raises(RuntimeError, match="runs on the src rank"):
        groups[1].publish(models[1])
    with pytest.raises(RuntimeError, match="runs on receiver ranks"):
        groups[0].maybe_load(models[0])
    for g in groups.values():
        g.close()


def test_diff_layouts_names_first_difference():
    a, b = layout_of_module(make_model(0)), layout_of_module(make_model(0, hidden=4))
    assert diff_layouts(a, a) is None
    assert "'0.weight'" in diff_layouts(a, b)
    shorter = layout_of_module(nn.Sequential(nn.Linear(8, 300)))
    assert "'1.weight'" in diff_layouts(a, shorter)
