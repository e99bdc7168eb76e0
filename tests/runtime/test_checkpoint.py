"""Checkpoint commit, verification and fallback, with faults injected for real (no DeepSpeed here).

``DSFiles`` writes and reads a checkpoint through DeepSpeed's own file naming and torch.save/torch.load, so
the protocol around it (rank parts, manifest, rename, ``latest``, prune, verify-before-unpickle) is exercised
on real files; tests/learners/test_deepspeed_learner.py runs the same protocol with real DeepSpeed ranks.
Faults: an exception at each step of the commit (monkeypatched), a SIGKILLed save in a real subprocess at
each step, truncated/corrupted/unlisted files, a tampered ``latest``, a missing rank part (also with two real
gloo ranks), and a check at EVERY filesystem mutation of a save that a verifiable checkpoint stays reachable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vlaforge import manifest
from vlaforge.runtime import checkpoint as ckpt

META = {"params": {"w": [4]}, "world_size": 1}


class DSFiles:
    """DeepSpeedEngine's checkpoint surface: the model states file at DeepSpeed's path, torch.save/load."""

    save_non_zero_checkpoint, save_zero_checkpoint = True, False

    def __init__(self, value: float = 0.0):
        self.w, self.global_steps, self.loads = torch.full((4,), float(value)), 0, 0

    def _get_ckpt_name(self, ckpts: str, tag: str) -> str:
        return os.path.join(ckpts, tag, "mp_rank_00_model_states.pt")

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        path = Path(self._get_ckpt_name(save_dir, tag))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": self.w, "client_state": client_state}, path)

    def load_checkpoint(self, load_dir, tag):
        self.loads += 1
        sd = torch.load(self._get_ckpt_name(load_dir, tag), weights_only=True)
        self.w = sd["w"]
        return load_dir, sd["client_state"]


def _export(d: Path) -> None:
    d.mkdir(parents=True)
    save_file({"w": torch.ones(3)}, str(d / "model.safetensors"))
    manifest.write_manifest(d)


def _save(run, step, value, keep=2, **kw):
    return ckpt.save(DSFiles(value), run, step, rank=0, meta=META, rank_state={"data": {"offset": step}},
                     keep=keep, export=_export, **kw)


def _load(run) -> tuple[float, int]:
    eng = DSFiles()
    step, state = ckpt.load(eng, run, rank=0, meta=META)
    assert state == {"data": {"offset": step}}
    return float(eng.w[0]), step


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


def test_commit_manifest_latest_prune_and_resave(tmp_path):
    run = tmp_path / "run"
    assert ckpt.find_latest(run) is None
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint here"):
        ckpt.resolve(run)
    for step in (10, 20, 30):
        assert _save(run, step, step) == run / "checkpoints" / f"step-{step}"
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-30"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-20", "step-30"]  # keep=2, no temp left
    files = manifest.verify_manifest(ckpts / "step-30", allow_extra=False)["files"]
    assert {"mp_rank_00_model_states.pt", "meta.json", "rank_state/rank-00000.safetensors",
            "rank_state/rank-00000.done", "policy/model.safetensors"} == set(files)
    manifest.verify_manifest(ckpts / "step-30" / "policy")  # the export carries its own manifest
    assert ckpt.resolve(run) == ckpt.resolve(ckpts) == ckpts / "step-30"
    (ckpts / "step-30" / "policy" / "run_card.json").write_text("{}")  # the driver adds it after the stage
    assert ckpt.find_latest(run, fallback=False) == ckpts / "step-30"
    assert ckpt.resolve(ckpts / "step-20") == ckpts / "step-20"  # an explicit older step
    assert _load(run) == (30.0, 30)

    # Re-saving step 30 commits under a NEW name, repoints `latest`, and only then deletes the old folder.
    assert _save(run, 30, 31.0) == ckpts / "step-30.r1"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-20", "step-30.r1"]
    assert _load(run) == (31.0, 30)
    assert _save(run, 30, 32.0) == ckpts / "step-30.r2" and _load(run) == (32.0, 30)


def test_keep_one_leaves_no_fallback_but_still_one_checkpoint(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, step, keep=1)
    assert [p.name for p in ckpt.committed(tmp_path / "checkpoints")] == ["step-3"]


# -- a crash between each step of the commit -------------------------------------------------------------
def _raise(*a, **k):
    raise OSError("injected crash")


CRASHES = {  # where -> (object, attribute, replacement); which checkpoint must be current afterwards
    "deepspeed_write": (DSFiles, "save_checkpoint", lambda self, *a, **k: _raise()),
    "rank_state": (ckpt, "write_rank_state", _raise),
    "done_marker": (ckpt, "write_done_marker", _raise),
    "fsync": (ckpt, "_fsync_tree", _raise),
    "manifest": (ckpt, "write_manifest", _raise),
    "manifest_replace": (manifest.os, "replace", lambda src, dst: _raise() if Path(dst).parent.name.startswith(".tmp-")
                         else os.rename(src, dst)),  # inside write_manifest's atomic replace of the checkpoint
    "rename": (ckpt.os, "rename", _raise),
    "latest": (ckpt, "_write_latest", _raise),
    "prune": (ckpt.shutil, "rmtree", _raise),  # after `latest` moved: the new one is current
}


@pytest.mark.parametrize("where", list(CRASHES))
@pytest.mark.parametrize("same_step", [False, True], ids=["next_step", "same_step"])
def test_crash_at_each_commit_step_keeps_a_loadable_checkpoint(tmp_path, monkeypatch, where, same_step):
    run = tmp_path / "run"
    _save(run, 5, 5.0)
    _save(run, 10, 10.0)
    step = 10 if same_step else 15
    obj, attr, fn = CRASHES[where]
    with monkeypatch.context() as m:
        m.setattr(obj, attr, fn)
        with pytest.raises(OSError, match="injected crash"):
            _save(run, step, 99.0)
    expected = (99.0, step) if where == "prune" else (10.0, 10)
    assert _load(run) == expected
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == ckpt.find_latest(run).name
    # The next save clears the leftovers, commits, and keeps 2 complete checkpoints.
    assert _save(run, 20, 20.0) == ckpts / "step-20"
    assert not list(ckpts.glob(".tmp-*")) and len(ckpt.committed(ckpts)) == 2 and _load(run) == (20.0, 20)


def test_every_filesystem_mutation_of_a_save_leaves_a_verifiable_latest(tmp_path, monkeypatch):
    """Check find_latest before and after each rename/replace/rmtree of a save (and of a re-save)."""
    run = tmp_path / "run"
    _save(run, 1, 1.0)
    seen = []

    def check(tag):
        found = ckpt.find_latest(run, fallback=False)  # `latest` itself must verify at every instant
        seen.append((tag, found.name))

    def spy(name, orig):
        def wrapped(*a, **k):
            check(f"before {name}")
            out = orig(*a, **k)
            check(f"after {name}")
            return out
        return wrapped

    for mod, name in ((ckpt.os, "rename"), (ckpt.os, "replace"), (ckpt.shutil, "rmtree")):
        monkeypatch.setattr(mod, name, spy(name, getattr(mod, name)))
    _save(run, 2, 2.0)
    _save(run, 2, 3.0)  # re-save of the same step
    _save(run, 3, 4.0)
    assert {t for t, _ in seen} >= {"before rename", "after rename", "before replace", "after rmtree"}
    monkeypatch.undo()
    assert _load(run) == (4.0, 3)


# -- a real process SIGKILLed in the middle of a save ----------------------------------------------------
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {test_dir!r})
    from test_checkpoint import DSFiles, _save
    from vlaforge import manifest
    from vlaforge.runtime import checkpoint as ckpt

    run, where, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    _save(run, 1, 1.0)

    def hang(*a, **k):
        ready.write_text("x")
        time.sleep(600)  # the parent SIGKILLs us here

    if where == "deepspeed_write":  # half of DeepSpeed's file is on disk
        def half(self, save_dir, tag, client_state, save_latest):
            p = Path(self._get_ckpt_name(save_dir, tag)); p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 1000); hang()
        DSFiles.save_checkpoint = half
    elif where == "manifest":  # hashing the checkpoint (meta.json is only in the checkpoint's own manifest)
        sha = manifest.sha256_file
        manifest.sha256_file = lambda p: hang() if Path(p).name == "meta.json" else sha(p)
    elif where == "rename":
        ckpt.os.rename = hang
    elif where == "latest":  # after the rename, before `latest` moved
        ckpt._write_latest = hang
    elif where == "prune":  # `latest` moved, the old folders are not deleted yet
        ckpt.shutil.rmtree = hang
    _save(run, 1, 2.0) if where == "prune" else _save(run, 2, 2.0)
""")


@pytest.mark.parametrize("where", ["deepspeed_write", "manifest", "rename", "latest", "prune"])
def test_sigkill_mid_save_leaves_latest_loadable(tmp_path, where):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(test_dir=str(Path(__file__).parent)))
    run, ready = tmp_path / "run", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(ckpt.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(script), str(run), where, str(ready)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never reached {where}: {child.communicate()[0].decode()[-2000:]}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    # The save in flight is lost, nothing else: `latest` names a checkpoint that verifies and loads.
    expected = {"prune": (2.0, 1)}.get(where, (1.0, 1))
    assert _load(run) == expected
    assert ckpt.find_latest(run, fallback=False).name == (run / "checkpoints" / "latest").read_text()
    _save(run, 3, 3.0)
    assert _load(run) == (3.0, 3) and not list((run / "checkpoints").glob(".tmp-*"))


# -- resume: verify, fall back, refuse -------------------------------------------------------------------
def _three(run):
    for step in (1, 2, 3):
        _save(run, step, step, keep=3)
    return run / "checkpoints"


@pytest.mark.parametrize("damage", ["truncate", "flip", "unlisted", "no_manifest", "no_folder"])
def test_damaged_newest_falls_back_with_a_warning(tmp_path, caplog, monkeypatch, damage):
    # a run earlier in the session (platform/driver._setup_logging) stops the "vlaforge" logger from
    # propagating to the root, where caplog listens: let it propagate for this test
    monkeypatch.setattr(logging.getLogger("vlaforge"), "propagate", True)
    ckpts = _three(tmp_path)
    bad = ckpts / "step-3" / "mp_rank_00_model_states.pt"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(bad.read_bytes())
        data[-20] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif damage == "unlisted":  # a file the run did not write: never unpickled (DeepSpeed globs *_model_states.pt)
        (ckpts / "step-3" / "mp_rank_01_model_states.pt").write_bytes(b"evil")
        bad = ckpts / "step-3"
    elif damage == "no_manifest":
        (ckpts / "step-3" / "MANIFEST.json").unlink()
        bad = ckpts / "step-3" / "MANIFEST.json"
    else:
        shutil.rmtree(ckpts / "step-3")
        bad = ckpts / "step-3"
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.find_latest(tmp_path) == ckpts / "step-2"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w for w in warnings), warnings
    assert any("falling back to" in w and "step-2" in w for w in warnings), warnings
    assert _load(tmp_path) == (2.0, 2)
    with pytest.raises(ckpt.CheckpointError, match="failed verification|does not exist"):
        ckpt.find_latest(tmp_path, fallback=False)


def test_nothing_verifies_is_a_clear_error(tmp_path):
    ckpts = _three(tmp_path)
    for step in (1, 2, 3):
        f = ckpts / f"step-{step}" / "meta.json"
        f.write_text(f.read_text() + " ")
    with pytest.raises(ckpt.CheckpointError, match=r"no usable checkpoint in .*step-3/meta.json.*step-2.*step-1"):
        ckpt.find_latest(tmp_path)


def test_load_verifies_before_anything_is_unpickled(tmp_path, monkeypatch):
    ckpts = _three(tmp_path)
    f = ckpts / "step-2" / "mp_rank_00_model_states.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    f.write_bytes(bytes(data))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    eng = DSFiles()
    with pytest.raises(ckpt.CheckpointError, match=r"step-2/mp_rank_00_model_states.pt: sha256 differs"):
        ckpt.load(eng, ckpts / "step-2", rank=0, meta=META)  # an explicit step: no fallback
    assert unpickled == [] and eng.loads == 0


@pytest.mark.parametrize("content", ["../outside", "/etc", "step-1/../../outside", "", "step-1\nstep-2", "symlink"])
def test_tampered_latest_is_refused(tmp_path, content):
    ckpts = _three(tmp_path / "run")
    outside = tmp_path / "outside"
    shutil.copytree(ckpts / "step-1", outside)  # a complete, verifying checkpoint outside checkpoints/
    if content == "symlink":
        (ckpts / "step-9").symlink_to(outside)
        content = "step-9"
    (ckpts / "latest").write_text(content)
    with pytest.raises(ckpt.CheckpointError, match="refusing to follow it"):
        ckpt.find_latest(tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match="refusing to follow it"):
        _load(tmp_path / "run")
    (ckpts / "latest").unlink()
    (ckpts / "latest").symlink_to(ckpts / "step-2" / "meta.json")
    with pytest.raises(ckpt.CheckpointError, match="is a symlink"):
        ckpt.find_latest(tmp_path / "run")


def test_a_missing_rank_part_refuses_the_commit(tmp_path):
    run = tmp_path / "run"
    _save(run, 1, 1.0)
    with pytest.raises(ckpt.MissingRankPart, match=r"rank-00001.done not found: rank 1 did not finish") as e:
        _save(run, 2, 2.0, world_size=2)  # only rank 0 wrote its part
    assert e.value.rank == 1
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-1" and not (ckpts / "step-2").exists() and _load(run) == (1.0, 1)


def test_a_rank_file_that_rank_0_cannot_see_refuses_the_commit(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = ckpt.check_rank_parts

    def lose_file(step_dir, world):  # rank 0's view of a file that went to another node's disk
        (step_dir / "mp_rank_00_model_states.pt").unlink()
        return real(step_dir, world)

    monkeypatch.setattr(ckpt, "check_rank_parts", lose_file)
    with pytest.raises(ckpt.MissingRankPart, match="rank 0 wrote it but rank 0 cannot see it"):
        _save(run, 1, 1.0)
    assert ckpt.find_latest(run) is None


TWO_RANKS = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch.distributed as dist
    sys.path.insert(0, {test_dir!r})
    from test_checkpoint import DSFiles, META, _export
    from vlaforge.runtime import checkpoint as ckpt

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    shared, private = Path(sys.argv[1]), Path(sys.argv[2])
    DSFiles.save_non_zero_checkpoint = rank == 0  # DeepSpeed: the data-parallel writer writes the model states
    export = _export if rank == 0 else None
    ckpt.save(DSFiles(1.0), shared, 1, rank=rank, meta=META, rank_state={{}}, keep=2, export=export)
    # Rank 1's run dir is not shared: its part lands on "its own disk".
    run = shared if rank == 0 else private
    try:
        ckpt.save(DSFiles(2.0), run, 2, rank=rank, meta=META, rank_state={{}}, keep=2, export=export)
    except ckpt.CheckpointError as e:
        print(f"rank {{rank}} refused: {{e}}", flush=True)
        sys.exit(3)
""")


def test_two_gloo_ranks_refuse_together_when_a_rank_part_is_missing(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(TWO_RANKS.format(test_dir=str(Path(__file__).parent)))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "PYTHONPATH": os.pathsep.join([str(Path(ckpt.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / f"node{r}")],
                              env={**base, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [3, 3], outs
    assert "rank 0 refused: refusing to commit the checkpoint" in outs[0] and "rank 1 did not finish" in outs[0]
    assert "rank 1 refused: rank 0 refused to commit" in outs[1] and "rank 1's part is missing" in outs[1]
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-1" and [p.name for p in ckpt.committed(ckpts)] == ["step-1"]


# -- compatibility ---------------------------------------------------------------------------------------
def test_check_compatible_explains_the_mismatch(tmp_path):
    d = tmp_path / "step-5"
    d.mkdir()
    (d / ckpt.META).write_text(json.dumps({"params": {"head.w": [8, 3], "enc.w": [8, 4]}, "step": 5, "world_size": 2,
                                           "zero_stage": 1, "model_config": {"policy": {"dim": 8, "vision": {"type": "cnn"}}}}))
    same = {"params": {"head.w": [8, 3], "enc.w": [8, 4]}, "world_size": 2}
    ckpt.check_compatible(d, same)
    other = {"params": {"head.w": [16, 3], "enc.w": [16, 4]}, "world_size": 2,
             "model_config": {"policy": {"dim": 16, "vision": {"type": "cnn"}}}}
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"2 parameter\(s\) differ.*head.w: checkpoint \[8, 3\] vs model \[16, 3\].*policy.dim: 8 -> 16"):
        ckpt.check_compatible(d, other)
    with pytest.raises(ckpt.CheckpointMismatchError, match="ZeRO-1 optimizer shards of 2 ranks; this run has 4"):
        ckpt.check_compatible(d, {**same, "world_size": 4})
