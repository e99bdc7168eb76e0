"""Unlabeled video sources (issue 7): mp4 folder conversion + its errors, LeRobot folders, action-free rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from vlaforge.data import format as F
from vlaforge.data.config import DemoConfig, VideoConfig
from vlaforge.data.reader import DatasetReader
from vlaforge.data.unlabeled import VideoSourceError, describe, unlabeled_dataset
from vlaforge.data.video import encode_video
from vlaforge.errors import VlaforgeError


def _clip(n: int, size: int = 32, shift: int = 0) -> np.ndarray:
    img = np.zeros((n, size, size, 3), np.uint8)
    img[..., 2] = 120
    for t in range(n):
        y = (2 * t + shift) % (size - 8)
        img[t, y : y + 8, 4:12] = (230, 230, 40)  # a moving square
    return img


def _folder(tmp_path, lengths=(6, 9), sizes=None, instructions=None):
    root = tmp_path / "videos"
    root.mkdir()
    for i, n in enumerate(lengths):
        encode_video(_clip(n, (sizes or [32] * len(lengths))[i], shift=i), root / f"clip_{i}.mp4", fps=10)
    instr = instructions if instructions is not None else {f"clip_{i}.mp4": f"move the square {i}" for i in range(len(lengths))}
    (tmp_path / "instructions.yaml").write_text(yaml.safe_dump(instr))
    return VideoConfig(source="mp4", path=str(root), instructions=str(tmp_path / "instructions.yaml"),
                       cache_dir=str(tmp_path / "cache"))


def test_mp4_folder_becomes_an_action_free_lerobot_dataset(tmp_path):
    cfg = _folder(tmp_path)
    path = unlabeled_dataset(cfg)
    assert path.parent == tmp_path / "cache"
    assert describe(path) == {"episodes": 2, "frames": 15, "action_column": False}
    r = DatasetReader(path)
    assert list(r.tasks) == ["move the square 0", "move the square 1"] and r.fps == 10
    d = r.load()
    img = d[F.IMAGE_PREFIX + "corner"]
    assert img.shape == (15, 32, 32, 3)
    assert np.abs(img[:6].astype(int) - _clip(6).astype(int)).mean() < 8  # the frames survived the round trip
    assert unlabeled_dataset(cfg) == path  # cached: same folder, not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name] == []


def test_mp4_resize_and_size_mismatch(tmp_path):
    cfg = _folder(tmp_path, sizes=[32, 48])
    with pytest.raises(VideoSourceError, match=r"clip_1.mp4 is 48x48 but clip_0.mp4 is 32x32.*image_size"):
        unlabeled_dataset(cfg)
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())  # nothing half-written
    path = unlabeled_dataset(cfg.model_copy(update={"image_size": 16}))
    assert DatasetReader(path).load()[F.IMAGE_PREFIX + "corner"].shape[1:] == (16, 16, 3)


@pytest.mark.parametrize("instructions, match", [
    ({"clip_0.mp4": "a"}, r"2 videos.*no instruction for \['clip_1.mp4'\]"),
    ({"clip_0.mp4": "a", "clip_1.mp4": "b", "gone.mp4": "c"}, r"entries without a video: \['gone.mp4'\]"),
    ({"clip_0.mp4": "a", "clip_1.mp4": ""}, r"empty or non-text instruction for \['clip_1.mp4'\]"),
    (["a", "b"], r"must map each mp4 file name"),
])
def test_instruction_mistakes_name_the_file(tmp_path, instructions, match):
    with pytest.raises(VlaforgeError, match=match):
        unlabeled_dataset(_folder(tmp_path, instructions=instructions))


def test_unreadable_and_short_videos(tmp_path):
    cfg = _folder(tmp_path, lengths=(6, 1))
    with pytest.raises(VideoSourceError, match=r"clip_1.mp4 has 1 frame\(s\), fewer than data.video.min_frames=2"):
        unlabeled_dataset(cfg)
    (tmp_path / "videos" / "clip_1.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoSourceError, match=r"cannot read video .*clip_1.mp4"):
        unlabeled_dataset(cfg)
    with pytest.raises(VideoSourceError, match="is not a LeRobot v3 dataset"):
        unlabeled_dataset(VideoConfig(source="lerobot", path=str(tmp_path / "videos")))


def test_config_mistakes():
    with pytest.raises(ValueError, match="set data.video.instructions"):
        VideoConfig(source="mp4", path="/x")
    with pytest.raises(ValueError, match="drop_actions must stay true"):
        VideoConfig(rollouts=DemoConfig(drop_actions=False))
    with pytest.raises(ValueError, match="set demos.policy_path"):
        DemoConfig(policy="checkpoint")
    with pytest.raises(ValueError, match="only_success: false"):
        DemoConfig(policy="random")


def test_lerobot_source_is_the_folder_itself(tmp_path, synth):
    synth.write_dataset(tmp_path / "ds")
    assert unlabeled_dataset(VideoConfig(source="lerobot", path=str(tmp_path / "ds"))) == (tmp_path / "ds").resolve()


@pytest.mark.slow
def test_action_free_rollouts_of_random_and_noisy_policies(ray_cluster, tmp_path):
    from vlaforge.envs.config import EnvConfig

    env = EnvConfig(tasks=["reach-v3"], image_size=32, max_episode_steps=20, state="proprio_goal")
    ckpt = None
    for policy, noise in (("random", 0.0), ("expert", 0.5), ("checkpoint", 0.1)):
        if policy == "checkpoint":  # "an earlier checkpoint": a policy exported for this env (untrained is enough)
            ckpt = _export_policy(tmp_path / "policy", path)
        demo = DemoConfig(episodes_per_task=2, only_success=False, policy=policy, action_noise=noise,
                          policy_path=str(ckpt) if ckpt else None, drop_actions=True, num_workers=1,
                          envs_per_worker=2, cache_dir=str(tmp_path / "cache"))
        path = unlabeled_dataset(VideoConfig(rollouts=demo), envs=env)
        info = describe(path)
        assert info["episodes"] == 2 and info["frames"] == 40 and not info["action_column"]
        d = DatasetReader(path).load(cameras=False)
        act = d[F.PROBE_ACTION_KEY]  # the hidden true actions, for the linear probe only
        assert act.shape == (40, 4) and np.isfinite(act).all() and (np.abs(act) <= 1).all() and act.std() > 0.1


def _export_policy(out, dataset):
    """A small VLA for the dataset's shapes, normalised with its statistics, saved like any exported policy."""
    from vlaforge.data.stats import numeric_stats
    from vlaforge.policies import VLAProcessor, build_policy, save_pretrained
    from vlaforge.policies.config import PolicyConfig
    from vlaforge.policies.spec import PolicySpec

    d = DatasetReader(dataset).load(cameras=False)
    cfg = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2, vision={"channels": [8, 16]},
                       language={"layers": 0})
    spec = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=d[F.STATE_KEY].shape[1], action_dim=4)
    stats = {F.STATE_KEY: numeric_stats(d[F.STATE_KEY]), F.ACTION_KEY: numeric_stats(d[F.PROBE_ACTION_KEY])}
    save_pretrained(out, build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats), cfg, spec)
    return out


def test_checkpoint_rollouts_are_cached_by_weights(tmp_path):
    from vlaforge.data.demos import dataset_hash
    from vlaforge.envs.config import EnvConfig

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model.safetensors").write_bytes(b"weights v1")
    demo = DemoConfig(policy="checkpoint", policy_path=str(tmp_path / "p"), only_success=False, drop_actions=True)
    before = dataset_hash(EnvConfig(), demo)
    (tmp_path / "p" / "model.safetensors").write_bytes(b"weights v2")  # retrained in place
    assert dataset_hash(EnvConfig(), demo) != before
