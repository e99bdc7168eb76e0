"""Frame pairs for latent actions: pairs stay inside an episode, and no action column is ever read (absent or
all NaN both work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.frame_pairs import FramePairDataset
from vlaforge.data.writer import DatasetWriter


def _write(root, synth, action: str):
    """synth's episodes with the action column 'nan' (all NaN) or 'absent' (no such feature)."""
    feats = synth.features()
    if action == "absent":
        feats.pop(F.ACTION_KEY)
    eps = [synth.episode(i, n) for i, n in enumerate(synth.LENGTHS)]
    with DatasetWriter(root, fps=20, features=feats, robot_type="sawyer") as w:
        for i, ep in enumerate(eps):
            if action == "absent":
                ep.pop(F.ACTION_KEY)
            else:
                ep[F.ACTION_KEY] = np.full_like(ep[F.ACTION_KEY], np.nan)
            w.add_episode(ep, task=synth.TASKS[i % len(synth.TASKS)])
    return eps


@pytest.mark.parametrize("action", ["nan", "absent"])
def test_pairs_stay_in_their_episode_and_never_read_actions(tmp_path, synth, action):
    eps = _write(tmp_path / action, synth, action)
    gap = 4
    ds = FramePairDataset(tmp_path / action, gap)
    assert len(ds) == sum(max(0, n - gap) for n in synth.LENGTHS)  # episode 3 (3 frames) gives no pair
    batch = ds.get_batch(torch.arange(len(ds)))
    assert set(batch.keys(True)) >= {keys.IMAGE, keys.NEXT_IMAGE, keys.STATE, keys.INSTRUCTION}
    assert not any("action" in "/".join(k if isinstance(k, tuple) else (k,)) for k in batch.keys(True))
    e, t = batch[keys.EPISODE_INDEX], batch[keys.FRAME_INDEX]
    assert (t + gap < torch.tensor(synth.LENGTHS)[e]).all()
    # o_{t+k}: the same episode's frame t + gap (the moving square's row tells frames apart after compression)
    for i in (0, len(ds) - 1):
        want = eps[int(e[i])][synth.CAM][int(t[i]) + gap]
        got = batch[keys.NEXT_IMAGE][i, 0].numpy()
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 8
    assert batch[keys.INSTRUCTION][0] == synth.TASKS[int(e[0]) % len(synth.TASKS)]
    assert all(not k.startswith(F.ACTION_KEY) for k in ds.stats())
    assert torch.isfinite(batch[keys.STATE]).all()


def test_codes_attach_and_errors(small_dataset):
    root, _ = small_dataset
    ds = FramePairDataset(root, 1, episodes=[0, 2])
    assert ds.episodes == [0, 2] and len(ds) == 11 + 8
    ds.set_codes(torch.arange(len(ds) * 4).reshape(-1, 4) % 8)
    assert ds.get_batch([3])[keys.LATENT_CODES].tolist() == [[4, 5, 6, 7]]
    with pytest.raises(ValueError, match="codes must be"):
        ds.set_codes(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no episode is longer"):
        FramePairDataset(root, 50)


def test_laom_pairs_read_mean_actions_scaled_to_unit_range(small_dataset, synth):
    root, _ = small_dataset
    ds = FramePairDataset(root, 3, episodes=[0], actions=True)
    a = ds.get_batch([0, 1])[keys.LAM_ACTIONS]  # synth action of frame t = 1000 * episode + t (every dim)
    lo, hi = 0.0, synth.LENGTHS[0] - 1.0  # the dim's range over episode 0
    want = [2 * ((t + t + 2) / 2 - lo) / (hi - lo) - 1 for t in (0, 1)]  # mean of frames t .. t+2, in [-1, 1]
    torch.testing.assert_close(a[:, 0], torch.tensor(want))
    assert FramePairDataset(root, 3, episodes=[0]).actions is None  # read only when asked
