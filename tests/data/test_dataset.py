"""ChunkDataset (action chunks + pad masks at episode ends), collate, splits and rank sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.dataset import ChunkDataset, collate
from vlaforge.data.sampler import ShardSampler, iterate_batches, shard_episodes, split_episodes


def test_chunks_and_padding_at_episode_ends(small_dataset, synth):
    root, eps = small_dataset
    k = 4
    ds = ChunkDataset(root, chunk_size=k)
    lengths = synth.LENGTHS
    assert len(ds) == sum(lengths) and ds.episodes == list(range(len(lengths)))
    row = 0
    for e, n in enumerate(lengths):
        for t in range(n):
            item = ds[row]
            chunk, pad = item[keys.ACTION_CHUNK], item[keys.ACTION_PAD]
            assert chunk.shape == (k, 4) and pad.dtype == torch.bool
            # action values encode episode*1000 + frame: rows t..t+K-1 of THIS episode, then the last one
            want = [e * 1000 + min(t + j, n - 1) for j in range(k)]
            assert chunk[:, 0].tolist() == want, (e, t)
            assert pad.tolist() == [t + j >= n for j in range(k)], (e, t)
            assert item[keys.FRAME_INDEX].item() == t and item[keys.EPISODE_INDEX].item() == e
            assert item[keys.INSTRUCTION] == synth.TASKS[e % len(synth.TASKS)]
            np.testing.assert_array_equal(item[keys.STATE].numpy(), eps[e][F.STATE_KEY][t])
            assert item[keys.IMAGE].shape == (1, 32, 32, 3) and item[keys.IMAGE].dtype == torch.uint8
            row += 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_batches_collate_and_dataloader(small_dataset, synth):
    root, _ = small_dataset
    ds = ChunkDataset(root, chunk_size=3)
    items = [ds[i] for i in (0, 12, 13, 25)]
    batch = collate(items)
    assert isinstance(batch, TensorDict) and batch.batch_size == (4,)
    assert isinstance(batch.get(keys.INSTRUCTION), NonTensorStack)
    assert batch[keys.INSTRUCTION] == [synth.TASKS[0], synth.TASKS[1], synth.TASKS[1], synth.TASKS[2]]
    direct = ds.get_batch([0, 12, 13, 25])
    for key in (keys.IMAGE, keys.STATE, keys.ACTION_CHUNK, keys.ACTION_PAD, keys.TASK_INDEX):
        assert torch.equal(batch[key], direct[key]), key
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, collate_fn=collate)
    seen = [b for b in loader]
    assert sum(b.batch_size[0] for b in seen) == len(ds)
    assert seen[0][keys.ACTION_CHUNK].shape == (5, 3, 4) and len(seen[0][keys.INSTRUCTION]) == 5


def test_episode_subset_stats_and_errors(small_dataset, synth):
    root, eps = small_dataset
    ds = ChunkDataset(root, chunk_size=2, episodes=[3, 1], extra={F.SUCCESS_KEY: (keys.NEXT, keys.SUCCESS)})
    assert ds.episodes == [1, 3] and len(ds) == synth.LENGTHS[1] + synth.LENGTHS[3]
    b = ds.get_batch(range(len(ds)))
    assert set(b[keys.EPISODE_INDEX].tolist()) == {1, 3}
    assert b[keys.NEXT, keys.SUCCESS].sum().item() == 2  # the last frame of each episode
    np.testing.assert_array_equal(b[keys.ACTION_CHUNK][:, 0].numpy(),
                                  np.concatenate([eps[1][F.ACTION_KEY], eps[3][F.ACTION_KEY]]))
    assert ds.episode_column("env_task") == {1: "task-1", 3: "task-0"}
    # stats: the whole dataset's (meta/stats.json), in the layout the processor reads
    assert ds.stats[F.STATE_KEY]["mean"].shape == (7,) and ds.stats[F.ACTION_KEY]["std"].shape == (4,)
    assert ds.stats[synth.CAM]["mean"].shape == (3, 1, 1)
    with pytest.raises(KeyError, match="camera 'wrist' not in the dataset"):
        ChunkDataset(root, chunk_size=2, cameras=["wrist"])
    with pytest.raises(KeyError, match="feature 'observation.joints' not in the dataset"):
        ChunkDataset(root, chunk_size=2, state_key="observation.joints")
    with pytest.raises(ValueError, match=r"episodes \[9\] not in the dataset"):
        ChunkDataset(root, chunk_size=2, episodes=[0, 9])


def test_two_cameras_stack_on_the_view_axis(tmp_path, synth):
    from vlaforge.data.writer import DatasetWriter

    cams = (synth.CAM, synth.CAM2)
    with DatasetWriter(tmp_path / "two", 20, synth.features(cameras=cams)) as w:
        for e in range(2):
            w.add_episode(synth.episode(e, 6, cameras=cams), task="x")
    ds = ChunkDataset(tmp_path / "two", chunk_size=2)
    assert ds.images.shape == (12, 2, 32, 32, 3)
    only_top = ChunkDataset(tmp_path / "two", chunk_size=2, cameras=["top"])
    assert torch.equal(only_top.images[:, 0], ds.images[:, 1])


def test_split_episodes():
    eps = list(range(10))
    train, val = split_episodes(eps, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == eps and not set(train) & set(val)
    assert split_episodes(eps, 0.2, seed=3) == (train, val)  # deterministic
    assert split_episodes(eps, 0.0) == (eps, [])
    assert split_episodes([0, 1], 0.9)[1] and split_episodes([0, 1], 0.9)[0]  # both sides non-empty
    with pytest.raises(ValueError):
        split_episodes(eps, 1.0)


@pytest.mark.parametrize("n,world", [(12, 2), (13, 3), (7, 2)])
def test_shard_sampler_disjoint_equal_covering(n, world):
    per_epoch = []
    for epoch in range(3):
        parts = []
        for rank in range(world):
            s = ShardSampler(n, rank, world, seed=5)
            s.set_epoch(epoch)
            parts.append(list(s))
            assert list(s) == parts[-1]  # deterministic
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == n // world  # equal size
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == len(flat)  # disjoint
        assert len(flat) == n - n % world and set(flat) <= set(range(n))  # covering but the remainder
        per_epoch.append(flat)
    assert per_epoch[0] != per_epoch[1]  # reshuffled per epoch
    covered = set().union(*map(set, per_epoch))
    assert n % world or covered == set(range(n))
    assert shard_episodes(range(5), 1, 2) == [1, 3]
    with pytest.raises(ValueError):
        ShardSampler(n, world, world)


def test_iterate_batches_crosses_epochs(small_dataset):
    root, _ = small_dataset
    ds = ChunkDataset(root, chunk_size=2)
    gens = [iterate_batches(ds, 4, rank=r, world=2, seed=1) for r in range(2)]
    first = [next(g) for g in gens]
    assert all(b.batch_size == (4,) for b in first)
    rows = [set(zip(b[keys.EPISODE_INDEX].tolist(), b[keys.FRAME_INDEX].tolist())) for b in first]
    assert len(rows[0]) == 4 and not rows[0] & rows[1]  # the two ranks drew different samples
    per_epoch = len(ds) // 2 // 4
    for _ in range(3 * per_epoch):  # keeps going past the end of an epoch
        assert next(gens[0]).batch_size == (4,)
    with pytest.raises(ValueError, match="exceeds"):
        next(iterate_batches(ds, len(ds), rank=0, world=2))
