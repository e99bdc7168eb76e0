"""visual_ssl (issue 7): the time-contrastive loss falls on real Meta-World frames; on 2 real DeepSpeed ranks an
all-NaN action column trains without a NaN, and a following BC learner starts from the trained encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.frame_pairs import FramePairDataset
from vlaforge.data.writer import DatasetWriter
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.visual_ssl import FramePairProcessor, TimeContrastiveLoss, VisionSSLModel
from vlaforge.policies import build_policy
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.spec import PolicySpec

POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                      vision={"channels": [8, 16], "keypoints": 8}, language={"layers": 0})


def _write(root, episodes: dict[str, np.ndarray], state_dim: int = 4, action_dim: int = 3):
    """Episodes of frames (T, H, W, 3) under camera "main", with an all-NaN action column."""
    size = next(iter(episodes.values())).shape[1]
    feats = {F.IMAGE_PREFIX + "main": F.video_feature(size, size), F.STATE_KEY: F.vector_feature("float32", state_dim),
             F.ACTION_KEY: F.vector_feature("float32", action_dim)}
    with DatasetWriter(root, fps=10, features=feats) as w:
        for task, frames in episodes.items():
            t = len(frames)
            w.add_episode({F.IMAGE_PREFIX + "main": frames, F.STATE_KEY: np.zeros((t, state_dim), np.float32),
                           F.ACTION_KEY: np.full((t, action_dim), np.nan, np.float32)}, task=task)
    return root


def _metaworld_frames(steps: int = 30) -> dict[str, np.ndarray]:
    """Rendered frames of four tasks, the scripted experts acting with noise (the arm moves, scenes differ)."""
    from vlaforge.envs import expert_actions, make_env
    from vlaforge.envs.config import EnvConfig

    tasks = ["reach-v3", "push-v3", "drawer-close-v3", "button-press-topdown-v3"]
    env = make_env(EnvConfig(tasks=tasks, image_size=32, max_episode_steps=steps + 5), tasks, seed=0)
    try:
        obs = env.reset(seeds=list(range(len(tasks))))
        rng = np.random.default_rng(0)
        frames = []
        for _ in range(steps):
            frames.append(obs.get(keys.IMAGE).numpy()[:, 0])  # (B, H, W, 3)
            act = expert_actions(tasks, obs.get(keys.PRIVILEGED).numpy()) + rng.normal(0, 0.3, (len(tasks), 4))
            obs = env.step(torch.from_numpy(np.clip(act, -1, 1).astype(np.float32))).get(keys.NEXT)
    finally:
        env.close()
    arr = np.stack(frames, 1)  # (B, T, H, W, 3)
    return {t: arr[i] for i, t in enumerate(tasks)}


@pytest.mark.slow  # a real simulator renders the frames
def test_time_contrastive_loss_falls_on_real_frames(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads cost far more than they give
    root = _write(tmp_path / "mw", _metaworld_frames())
    pairs = FramePairDataset(root, gap=2)
    spec = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=3)
    torch.manual_seed(0)
    policy = build_policy(POLICY, spec)
    head_before = {k: v.clone() for k, v in policy.head.state_dict().items()}
    model, proc, loss_fn = VisionSSLModel(policy, 32), FramePairProcessor(2), TimeContrastiveLoss(0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(40):
        inp = proc(pairs.get_batch(torch.randint(0, len(pairs), (32,))))
        out = loss_fn(inp.update(model(inp)))
        opt.zero_grad()
        out["loss_tcn"].backward()
        opt.step()
        losses.append(float(out["loss_tcn"].detach()))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.75 * first, (first, last)  # chance level is log(32) = 3.47
    for k, v in policy.head.state_dict().items():  # only the encoder (and the projection) trained
        assert torch.equal(v, head_before[k]), k
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_nan_actions_train_on_two_ranks_and_bc_starts_from_the_encoder(ray_cluster, tiny_dataset, tmp_path):
    from vlaforge.learners.deepspeed_learner import _load_init
    from vlaforge.learners.visual_ssl import VisualSSLLearner
    from vlaforge.policies import load_pretrained
    from vlaforge.runtime.worker_group import WorkerGroup

    rng = np.random.default_rng(1)
    eps = {}
    for i in range(4):  # a square moving along a random track, all actions NaN
        img = np.zeros((16, 32, 32, 3), np.uint8)
        y, x = rng.integers(0, 24, 2)
        for t in range(16):
            img[t, (y + t) % 24 : (y + t) % 24 + 8, (x + 2 * t) % 24 : (x + 2 * t) % 24 + 8] = 230
        eps[f"move {i}"] = img
    video = _write(tmp_path / "nan", eps)
    train = TrainConfig(num_learners=2, batch_size=16, lr=2e-3, warmup_steps=1, steps=12, seed=3, objective="visual_ssl",
                        visual_ssl={"gap": 2, "proj_dim": 16})
    ssl = WorkerGroup(VisualSSLLearner, 2, cpus_per_worker=1, name="ssl")
    try:
        info = ssl.call("setup", train.model_dump(), POLICY.model_dump(), str(tiny_dataset), video_path=str(video),
                        timeout=300)[0]
        assert info["num_samples"] == 4 * (16 - 2) and info["video_episodes"] == 4  # pairs (t, t + gap)
        m = [ssl.call("train_steps", 4)[0] for _ in range(3)]
        for mm in m:
            assert np.isfinite([mm["train/loss_tcn"], mm["train/grad_norm"]]).all(), mm
            assert mm["train/nonfinite_skips"] == 0
        sums = ssl.call("param_checksum")
        assert sums[0] == sums[1]  # ranks identical
        export = tmp_path / "ssl-policy"
        ssl.call("export_policy", str(export))
    finally:
        ssl.shutdown()
    trained, _, cfg, spec, extra = load_pretrained(export)
    assert cfg == POLICY and extra["objective"] == "visual_ssl"
    from vlaforge.learners.engine import seed_everything

    seed_everything(3)  # the SSL ranks' initial weights (train.seed)
    fresh = build_policy(POLICY, spec)
    vis_t, vis_f = trained.backbone.vision.state_dict(), fresh.backbone.vision.state_dict()
    assert any(not torch.equal(vis_t[k], vis_f[k]) for k in vis_t)  # the encoder trained
    assert all(torch.equal(v, fresh.head.state_dict()[k]) for k, v in trained.head.state_dict().items())  # head not

    # The next stage's learner loads its init policy with _load_init (LearnerActor.setup): it starts from
    # exactly the SSL export, processor (normaliser of the labelled data) included.
    from vlaforge.data.dataset import ChunkDataset
    from vlaforge.policies import VLAProcessor

    started = build_policy(POLICY, spec)
    processor = _load_init(started, str(export), POLICY, spec)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, started.state_dict()[k]), k
    assert processor.to_dict() == VLAProcessor.from_stats(POLICY, ChunkDataset(tiny_dataset, 4).stats).to_dict()
