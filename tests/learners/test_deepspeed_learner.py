"""Real Ray + real DeepSpeed (ZeRO-1, gloo, 2 ranks) + the real VLA on a tiny LeRobot v3 dataset.

One learner group serves the whole module (DeepSpeed init costs seconds per process): a BC run whose loss
falls with bit-identical ranks; then checkpoint -> crash mid-save -> kill the group -> a new group resumes
with identical parameters, optimizer state and data position, and continues EXACTLY as the killed one did;
then a truncated newest checkpoint: refused before DeepSpeed unpickles it, resume falls back to the previous
one with a warning, and re-saving that step supersedes the bad one; last, a dataset with a truncated parquet
and a truncated mp4: setup fails naming the file and episode, or (skip_bad_episodes) trains on the rest.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import ray

from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor
from vlaforge.learners.engine import param_checksum
from vlaforge.manifest import verify_manifest
from vlaforge.runtime import checkpoint as ckpt
from vlaforge.runtime.worker_group import WorkerError, WorkerGroup
from vlaforge.policies import load_pretrained
from vlaforge.policies.config import PolicyConfig

pytestmark = pytest.mark.slow

TRAIN = TrainConfig(num_learners=2, batch_size=16, lr=2e-3, warmup_steps=2, steps=200, keep_checkpoints=2, seed=3)
POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})


def _group(dataset: Path, policy: PolicyConfig = POLICY) -> WorkerGroup:
    group = WorkerGroup(LearnerActor, 2, cpus_per_worker=1, name="learner")
    group.call("setup", TRAIN.model_dump(), policy.model_dump(), str(dataset), timeout=300)
    return group


@pytest.fixture(scope="module")
def run(ray_cluster, tiny_dataset, tmp_path_factory):
    state = {"group": _group(tiny_dataset), "run_dir": tmp_path_factory.mktemp("run")}
    yield state
    state["group"].shutdown()


def test_bc_loss_falls_and_ranks_stay_identical(run):
    group = run["group"]
    assert group.call("param_checksum")[0] == group.call("param_checksum")[1]  # same seed + DS broadcast
    first = group.call("train_steps", 4)
    assert first[0] == first[1]  # metrics are all-reduced: every rank reports the same numbers
    m0 = first[0]
    for k in ("train/loss", "train/loss_bc", "train/loss_std", "train/lr", "train/grad_norm",
              "train/samples_per_s", "train/step", "train/action_mse", "train/nll", "train/log_std_mean"):
        assert k in m0, k
    assert m0["train/step"] == 4 and m0["train/samples_per_s"] > 0 and m0["train/grad_norm"] > 0
    group.call("train_steps", 8)
    last = group.call("train_steps", 4)[0]
    assert last["train/step"] == 16
    # 16 steps of AdamW at 2e-3 on a learnable mapping: the BC error drops well below its start.
    assert last["train/loss_bc"] < 0.7 * m0["train/loss_bc"], (m0, last)
    sums = group.call("state_checksums")
    assert sums[0]["params"] == sums[1]["params"]
    assert sums[0]["step"] == sums[1]["step"] == 16
    # 6 micro batches per rank and epoch (96 samples / 2 ranks / 8): 16 steps = epoch 2, offset 4.
    assert sums[0]["data"]["epoch"] == 2 and sums[0]["data"]["offset"] == 4

    # The safetensors export holds exactly the trained weights (rank 0 writes, the call is collective).
    out = run["run_dir"] / "export"
    assert group.call("export_policy", str(out)) == [str(out), None]
    policy, processor, cfg, spec, extra = load_pretrained(out)
    assert param_checksum(policy) == sums[0]["params"] and extra["global_step"] == 16 and cfg == POLICY
    assert set(verify_manifest(out, allow_extra=False)["files"]) >= {"model.safetensors", "config.json"}


def test_checkpoint_crash_kill_and_exact_resume(run, tiny_dataset):
    group, run_dir = run["group"], run["run_dir"]
    k = group.call("get_global_step")[0]
    paths = group.call("save_checkpoint", str(run_dir))
    assert paths[0] == paths[1] == str(run_dir / "checkpoints" / f"step-{k}")
    assert ckpt.find_latest(run_dir) == Path(paths[0])
    files = verify_manifest(paths[0], allow_extra=False)["files"]  # every rank's part, hashed at commit
    for r in (0, 1):
        assert f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" in files and f"rank_state/rank-0000{r}.done" in files
    verify_manifest(Path(paths[0]) / "policy")
    policy, processor, cfg, spec, extra = load_pretrained(Path(paths[0]) / "policy")  # the eval export
    assert cfg == POLICY and extra["global_step"] == k and spec.action_dim == 3
    at_save = group.call("state_checksums")

    group.call("train_steps", 5)
    continued = group.call("state_checksums")  # where the uninterrupted run gets to
    assert continued[0]["params"] != at_save[0]["params"]

    def arm_crash(actor):  # runs inside each rank's process: fail right after DeepSpeed wrote its files
        def crash(*a, **kw):
            raise RuntimeError("simulated crash mid-save")

        ckpt.write_rank_state = crash

    ray.get([a.__ray_call__.remote(arm_crash) for a in group.actors])
    with pytest.raises(WorkerError, match="simulated crash mid-save"):
        group.call("save_checkpoint", str(run_dir))
    ckpts = run_dir / "checkpoints"
    partial = ckpts / f".tmp-step-{k + 5}"
    assert any(partial.glob("*optim_states.pt")), "DeepSpeed should have written before the crash"
    assert (ckpts / "latest").read_text() == f"step-{k}" and ckpt.find_latest(run_dir).name == f"step-{k}"
    assert not (ckpts / f"step-{k + 5}").exists()

    group.shutdown()  # kill: ray.kill every rank
    assert group.actors == []

    # A new group. A different model config fails with a clear message, not a shape traceback.
    new = _group(tiny_dataset, POLICY.model_copy(update={"dim": 48, "heads": 2}))
    run["group"] = new
    with pytest.raises(WorkerError, match="different model.*dim: 32 -> 48"):
        new.call("load_checkpoint", str(run_dir))
    new.call("setup", TRAIN.model_dump(), POLICY.model_dump(), str(tiny_dataset), timeout=300)
    assert new.call("load_checkpoint", str(run_dir)) == [k, k]
    resumed = new.call("state_checksums")
    for r in (0, 1):  # parameters, this rank's ZeRO-1 optimizer shard (exp_avg, exp_avg_sq), data position
        assert resumed[r] == at_save[r]
    new.call("train_steps", 5)
    # Same batches, same augmentation noise, same LR and Adam moments: bit-identical to the killed run.
    assert new.call("state_checksums") == continued

    # The next save clears the crashed leftovers and commits; keep_checkpoints=2 prunes the oldest.
    new.call("save_checkpoint", str(run_dir))
    assert not partial.exists() and (ckpts / "latest").read_text() == f"step-{k + 5}"
    new.call("train_steps", 1)
    new.call("save_checkpoint", str(run_dir))
    assert sorted(p.name for p in ckpts.glob("step-*")) == [f"step-{k + 5}", f"step-{k + 6}"]
    meta = json.loads((ckpts / f"step-{k + 6}" / "meta.json").read_text())
    assert meta["step"] == k + 6 and meta["world_size"] == 2 and meta["zero_stage"] == TRAIN.deepspeed.zero_stage


def test_truncated_newest_checkpoint_is_refused_and_resume_falls_back(run, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("vlaforge"), "propagate", True)  # a driver run may have turned it off
    group, run_dir = run["group"], run["run_dir"]
    group.call("train_steps", 1)
    older = Path(group.call("save_checkpoint", str(run_dir))[0])
    assert older.name == f"step-{_step(older)}"  # a step saved for the first time
    at_older = group.call("state_checksums")
    group.call("train_steps", 2)
    newest = Path(group.call("save_checkpoint", str(run_dir))[0])
    assert ckpt.find_latest(run_dir) == newest != older
    shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"  # rank 1's optimizer partition, cut in half
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    # Loading it explicitly is refused on the ranks before DeepSpeed's torch.load sees a byte of it.
    with pytest.raises(WorkerError, match=r"failed verification: .*zero_pp_rank_1_mp_rank_00_optim_states.pt: \d+ "
                                          r"bytes, the manifest recorded \d+ \(truncated"):
        group.call("load_checkpoint", str(newest))
    # Resume from the run dir: a WARNING names the file, and the previous complete checkpoint is used.
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.find_latest(run_dir) == older
    assert any(str(shard) in r.getMessage() for r in caplog.records), caplog.text
    step = _step(older)
    assert group.call("load_checkpoint", str(run_dir)) == [step, step]
    assert group.call("state_checksums") == at_older

    # Saving again at that step commits beside it, repoints `latest`, then drops the superseded folder and
    # the bad one of the abandoned timeline.
    again = Path(group.call("save_checkpoint", str(run_dir))[0])
    assert again.name == f"step-{step}.r1" and ckpt.find_latest(run_dir, fallback=False) == again
    assert not older.exists() and not newest.exists()
    assert group.call("load_checkpoint", str(run_dir)) == [step, step]


def _step(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def test_damaged_dataset_names_file_and_episode_or_trains_on_the_rest(run, tiny_dataset_per_file, tmp_path):
    """The last test of the module: it re-runs setup on the group with another dataset."""
    group, root = run["group"], tmp_path / "damaged"
    shutil.copytree(tiny_dataset_per_file, root)
    for bad in (root / "data/chunk-000/file-002.parquet", root / "videos/observation.images.main/chunk-000/file-004.mp4"):
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(WorkerError, match=r"file-002.parquet \(episode 2\): unreadable parquet, truncated or corrupt.*"
                                          r"data.skip_bad_episodes"):
        group.call("setup", TRAIN.model_dump(), POLICY.model_dump(), str(root), timeout=300)
    info = group.call("setup", TRAIN.model_dump(), POLICY.model_dump(), str(root), skip_bad_episodes=True, timeout=300)
    assert info[0]["bad_episodes"] == info[1]["bad_episodes"] and set(info[0]["bad_episodes"]) == {"2", "4"}
    assert "file-004.mp4" in info[0]["bad_episodes"]["4"] and info[0]["num_samples"] == 4 * 16
    m = group.call("train_steps", 3)[0]
    assert m["train/step"] == 3 and math.isfinite(m["train/loss"])
