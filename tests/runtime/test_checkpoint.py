"""Checkpoint bookkeeping without DeepSpeed: RNG/rank state, latest/resolve, compatibility, commit/prune.

The collective save/load with real DeepSpeed ranks (crash mid-save, kill and exact resume) is in
tests/learners/test_deepspeed_learner.py.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from vlaforge.runtime import checkpoint as ckpt


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], np.random.randn()


def test_rank_state_roundtrip_restores_every_rng(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    ckpt.write_rank_state(tmp_path, 1, {"data": {"epoch": 2, "offset": 5}})
    expected = _draws()
    _draws()  # advance everything
    state = ckpt.read_rank_state(tmp_path, 1)
    assert state == {"data": {"epoch": 2, "offset": 5}}
    assert _draws() == expected
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))  # no pickle of ours
    with pytest.raises(ckpt.CheckpointError, match="no state for rank 0"):
        ckpt.read_rank_state(tmp_path, 0)


def _fake_step(ckpts, step, params=None, **meta):
    d = ckpts / ckpt.step_tag(step)
    d.mkdir(parents=True)
    (d / ckpt.META).write_text(json.dumps({"params": params or {"w": [2, 3]}, "step": step, **meta}))
    return d


def test_latest_resolve_commit_and_prune(tmp_path):
    run = tmp_path / "run"
    assert ckpt.find_latest(run) is None
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint here"):
        ckpt.resolve(run)
    ckpts = ckpt.checkpoints_dir(run)
    for step in (10, 20, 30):
        tmp = ckpts / f"{ckpt.TMP_PREFIX}step-{step}"
        tmp.mkdir(parents=True)
        (tmp / ckpt.META).write_text("{}")
        ckpt._commit(tmp, ckpts / ckpt.step_tag(step), ckpts)
        ckpt._prune(ckpts, keep=2, keep_tag=ckpt.step_tag(step))
        assert (ckpts / "latest").read_text() == f"step-{step}" and not tmp.exists()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-20", "step-30"]
    latest = ckpts / "step-30"
    assert ckpt.find_latest(run) == latest
    assert ckpt.resolve(run) == ckpt.resolve(ckpts) == ckpt.resolve(latest) == latest
    assert ckpt.resolve(ckpts / "step-20") == ckpts / "step-20"  # an explicit older step
    # Re-committing the same step replaces it; `latest` pointing at a missing dir is an error, not None.
    tmp = ckpts / ".tmp-step-30"
    tmp.mkdir()
    (tmp / ckpt.META).write_text('{"again": 1}')
    ckpt._commit(tmp, latest, ckpts)
    assert json.loads((latest / ckpt.META).read_text()) == {"again": 1}
    (ckpts / "latest").write_text("step-99")
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.find_latest(run)


def test_check_compatible_explains_the_mismatch(tmp_path):
    d = _fake_step(tmp_path, 5, params={"head.w": [8, 3], "enc.w": [8, 4]},
                   model_config={"policy": {"dim": 8, "vision": {"type": "cnn"}}}, world_size=2, zero_stage=1)
    same = {"params": {"head.w": [8, 3], "enc.w": [8, 4]}, "world_size": 2}
    ckpt.check_compatible(d, same)
    other = {"params": {"head.w": [16, 3], "enc.w": [16, 4]}, "world_size": 2,
             "model_config": {"policy": {"dim": 16, "vision": {"type": "cnn"}}}}
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"2 parameter\(s\) differ.*head.w: checkpoint \[8, 3\] vs model \[16, 3\].*policy.dim: 8 -> 16"):
        ckpt.check_compatible(d, other)
    with pytest.raises(ckpt.CheckpointMismatchError, match="ZeRO-1 optimizer shards of 2 ranks; this run has 4"):
        ckpt.check_compatible(d, {**same, "world_size": 4})
