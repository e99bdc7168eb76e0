"""Reload every family run's final exported policy (policies/io.py, verified loading) and plan one chunk.

    python docs/family-runs/reload_check.py runs/family-*-s*
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.policies import load_pretrained

for run in map(Path, sys.argv[1:]):
    summary = run / "summary.json"
    if not summary.exists():
        continue
    import json

    policy_dir = json.loads(summary.read_text())["policy_dir"]
    policy, proc, cfg, spec, _ = load_pretrained(policy_dir)
    obs = TensorDict({keys.IMAGE: torch.zeros(2, *spec.image_shape, dtype=torch.uint8),
                      keys.STATE: torch.zeros(2, spec.state_dim)}, batch_size=[2])
    obs.set(keys.INSTRUCTION, NonTensorStack("press the button", "reach the goal"))
    with torch.no_grad():
        out = policy(proc(obs))
        act = policy.act(out, deterministic=True)
        lp = policy.log_prob(out, act[keys.ACTION_CHUNK], None, act[keys.HEAD_EXTRAS])
    print(f"{run.name}: {cfg.head.type} head, value head {cfg.value_head}, chunk {tuple(act[keys.ACTION_CHUNK].shape)}, "
          f"extras {sorted(act[keys.HEAD_EXTRAS].keys())}, log-prob finite {bool(torch.isfinite(lp).all())} <- {policy_dir}")
