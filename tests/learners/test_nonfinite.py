"""NaN/Inf steps on real DeepSpeed (ZeRO-1, gloo, 2 Ray ranks): a NaN batch on ONE rank skips the step on
BOTH (parameters and optimizer state bit-identical before/after), is counted, a run of them ends the call
early, and ``rollback`` restores the checkpoint with a lower LR. Last, a hung rank (SIGSTOP) fails the call
within its deadline with that rank named."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor
from vlaforge.policies.config import PolicyConfig
from vlaforge.runtime.worker_group import WorkerError, WorkerGroup

pytestmark = pytest.mark.slow

TRAIN = TrainConfig(num_learners=2, batch_size=8, lr=1e-3, warmup_steps=0, lr_schedule="constant", steps=100, seed=5)
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_dataset):
    g = WorkerGroup(LearnerActor, 2, cpus_per_worker=1, name="nan-learners", probe=True, probe_s=5, timeout_s=120)
    g.call("setup", TRAIN.model_dump(), POLICY.model_dump(), str(tiny_dataset), collective_timeout_s=600, timeout=300)
    yield g
    g.shutdown()


def _state(group):
    """Per rank: step, parameters, this rank's optimizer-state partition (ZeRO-1: differs between ranks)."""
    return [(s["step"], s["params"], s["optimizer"]) for s in group.call("state_checksums")]


def test_a_nan_batch_on_one_rank_skips_the_step_on_every_rank(group):
    group.call("train_steps", 2)
    before = _state(group)
    assert group.call_rank(1, "poison_steps", 1) == 1
    m = group.call("train_steps", 1)
    assert m[0] == m[1] and m[0]["train/nonfinite_skips"] == 1 and m[0]["train/nonfinite_streak"] == 1
    assert _state(group) == before  # no parameter, optimizer-state or step-counter change on either rank
    m = group.call("train_steps", 2)[0]  # the stream moved on: clean batches train again
    assert m["train/nonfinite_skips"] == 0 and m["train/nonfinite_streak"] == 0 and m["train/step"] == 4
    after = _state(group)
    assert after[0][:2] == after[1][:2] and after[0][1] != before[0][1]


def test_a_run_of_nan_steps_ends_the_call_and_rollback_lowers_the_lr(group, tmp_path):
    path = group.call("save_checkpoint", str(tmp_path))[0]
    saved = _state(group)
    group.call_rank(0, "poison_steps", 10)
    m = group.call("train_steps", 8, nonfinite_limit=3)[0]
    assert m["train/nonfinite_skips"] == 3 and m["train/nonfinite_streak"] == 3 and m["train/step"] == saved[0][0]
    assert group.call("rollback", path, 0.25) == [saved[0][0]] * 2
    assert _state(group) == saved
    m = group.call("train_steps", 1)[0]  # the poison was cleared by the rollback
    assert m["train/nonfinite_skips"] == 0 and m["train/lr"] == pytest.approx(0.25 * TRAIN.lr)
    assert m["train/nonfinite_total"] == 4  # 1 + 3 skips over the rank's life


def test_a_stopped_rank_is_named_within_the_deadline(group):
    pid = group.processes()[1][0]
    started = time.monotonic()
    timer = threading.Timer(1.0, os.kill, (pid, signal.SIGSTOP))
    timer.start()
    try:
        with pytest.raises(WorkerError) as info:
            group.call("train_steps", 10_000, timeout=8)
    finally:
        timer.join()
        os.kill(pid, signal.SIGCONT)
    e = info.value
    assert e.kind == "hung" and e.rank == 1 and e.lost
    assert "rank 1/2 hung in train_steps()" in str(e) and "ranks [0] are alive" in str(e)
    assert time.monotonic() - started < 8 + 5 + 10  # the deadline + the liveness probe + slack


GRAD_SCRIPT = r'''
import os, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import torch, deepspeed
from vlaforge.learners.engine import StepGuard
deepspeed.init_distributed(dist_backend="gloo")
for stage in (0, 1):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 2)
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
           "zero_optimization": {"stage": stage}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    eng = deepspeed.initialize(model=m, model_parameters=m.parameters(), config=cfg)[0]
    guard, x = StepGuard(), torch.randn(2, 4)
    snap = lambda: [p.detach().clone() for p in eng.module.parameters()]
    assert guard.step(eng, eng(x).pow(2).mean())
    before = snap()
    hook = eng.module.weight.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    applied = guard.step(eng, eng(x).pow(2).mean())
    hook.remove()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, snap()))
    assert guard.step(eng, eng(x).pow(2).mean())  # the next clean step trains again
    finite = all(bool(torch.isfinite(p).all()) for p in eng.module.parameters())
    print(f"zero{stage} applied={applied} unchanged={unchanged} skips={guard.total} finite={finite}")
'''


def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped(tmp_path):
    """ZeRO 0 (our own all-reduced p.grad check) and ZeRO 1 (DeepSpeed's overflow check on the gradient norm):
    an infinite gradient leaves the parameters unchanged, and the next clean step trains (1 rank, in-process)."""
    import subprocess
    import sys

    from vlaforge.runtime.process import process_env

    env = {**os.environ, **process_env()}
    out = subprocess.run([sys.executable, "-c", GRAD_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in out.stdout.splitlines() if x.startswith("zero")]
    assert lines == [f"zero{s} applied=False unchanged=True skips=1 finite=True" for s in (0, 1)], out.stderr[-2000:]
