"""Flat-buffer parameters under real DeepSpeed (CPU, gloo): after ``deepspeed.initialize`` and optimizer
steps the publisher's buffers still alias the parameters (ZeRO 1/2 keep DeepSpeed's own flat buffer,
which FlatParams adopts; ZeRO 0 keeps ours), training is bit-identical to training without them, and a
replica loaded from the buffers equals the module bit for bit -- for fp32 and bf16."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
from vlaforge.runtime.process import apply_process_env
apply_process_env()  # DeepSpeed's JIT-built CPU op from the shared cache, not rebuilt per test
import torch, deepspeed
from torch import nn
from vlaforge.runtime.weights import FlatParams, FlatReplica

deepspeed.init_distributed(dist_backend="gloo")

def model(seed, dtype):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 33), nn.Tanh(), nn.Linear(33, 5)).to(dtype)  # odd sizes: alignment padding
    m[0].bias.requires_grad_(False)
    return m

def engine(stage, prec, seed):
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    m = model(seed, dtype)
    cfg = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
           "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "bf16": {"enabled": prec == "bf16"},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}, "steps_per_print": 1 << 30}
    eng, *_ = deepspeed.initialize(model=m, model_parameters=[p for p in m.parameters() if p.requires_grad], config=cfg)
    return eng, dtype

def step(eng, dtype, i):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(i)).to(dtype)
    loss = eng(x).float().pow(2).mean()
    eng.backward(loss)
    eng.step()
    return float(loss)

def raw(m):
    return {n: p.detach().reshape(-1).view(torch.uint8).clone() for n, p in m.named_parameters() if p.requires_grad}

out = {}
for stage in (0, 1, 2):
    for prec in ("fp32", "bf16"):
        flat_eng, dtype = engine(stage, prec, 0)
        fp = FlatParams(flat_eng.module)  # after initialize, as the learner builds it at its first publish
        plain_eng, _ = engine(stage, prec, 0)
        replica = model(1, dtype)
        rep = None
        ok_alias, ok_load, losses = [], [], []
        for i in range(4):
            losses.append((step(flat_eng, dtype, i), step(plain_eng, dtype, i)))
            ok_alias.append(fp.aliased())
            fp.ensure()
            rep = rep or FlatReplica(replica, fp.layout)
            rep.load(fp.weights.buffers)
            a, b = raw(flat_eng.module), raw(replica)
            ok_load.append(all(torch.equal(a[n], b[n]) for n in a))
        a, b = raw(flat_eng.module), raw(plain_eng.module)
        out[f"zero{stage}-{prec}"] = {
            "adopted": fp.adopted, "aliased": ok_alias, "replica_equal": ok_load, "rebuilds": fp.rebuilds,
            "same_training": all(torch.equal(a[n], b[n]) for n in a) and all(x == y for x, y in losses),
            "changed": not torch.equal(raw(model(0, dtype))["2.weight"], a["2.weight"]),
        }
print("RESULT " + json.dumps(out))
"""


def test_flat_params_alias_deepspeed_zero_0_1_2_fp32_bf16():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(line[len("RESULT "):])
    assert set(res) == {f"zero{s}-{p}" for s in (0, 1, 2) for p in ("fp32", "bf16")}
    for name, r in res.items():
        zero = int(name[4])
        assert r["adopted"] == {"float32" if "fp32" in name else "bfloat16": zero > 0}, (name, r)  # ZeRO 1/2: theirs
        assert all(r["aliased"]) and r["rebuilds"] == 0, (name, r)  # the views survive every optimizer step
        assert all(r["replica_equal"]), (name, r)  # bit for bit after each update
        assert r["same_training"] and r["changed"], (name, r)  # and training is untouched by the views
