"""Damaged datasets: truncated parquet / mp4 files, a data file that holds other episodes, an unreadable
info.json, and paths in info.json that lead outside the dataset. The error names the file and its episodes;
``skip_bad_episodes`` loads the rest and lists what it dropped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.dataset import ChunkDataset
from vlaforge.data.reader import DataFileError, DatasetReader
from vlaforge.errors import VlaforgeError


@pytest.fixture(scope="module")
def per_file(tmp_path_factory, synth):
    """Every episode in its own parquet and mp4 file (as large datasets roll over files)."""
    root = tmp_path_factory.mktemp("faults") / "ds"
    eps = synth.write_dataset(root, data_file_mb=1e-6, video_file_mb=1e-6)
    return root, eps


@pytest.fixture
def damaged(per_file, tmp_path):
    root, eps = per_file
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    return copy, eps


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _check_rest(ds, eps, dropped):
    kept = [e for e in range(len(eps)) if e not in dropped]
    assert ds.episodes == kept and sorted(ds.bad_episodes) == sorted(dropped)
    b = ds.get_batch(range(len(ds)))
    np.testing.assert_array_equal(b[keys.ACTION_CHUNK][:, 0].numpy(), np.concatenate([eps[e][F.ACTION_KEY] for e in kept]))
    assert len(ds) == sum(len(eps[e][F.ACTION_KEY]) for e in kept)


def test_truncated_parquet_names_file_and_episode_or_is_skipped(damaged):
    root, eps = damaged
    bad = root / "data/chunk-000/file-001.parquet"
    _truncate(bad)
    with pytest.raises(DataFileError, match=r"file-001.parquet \(episode 1\): unreadable parquet, truncated or corrupt") as e:
        ChunkDataset(root, chunk_size=2)
    assert e.value.path == bad and e.value.episodes == [1] and isinstance(e.value, VlaforgeError)
    assert "skip_bad_episodes" in str(e.value) and "Traceback" not in str(e.value)
    ds = ChunkDataset(root, chunk_size=2, skip_bad_episodes=True)
    _check_rest(ds, eps, [1])
    assert "file-001.parquet" in ds.bad_episodes[1]


def test_truncated_video_names_file_and_episode_or_is_skipped(damaged, synth):
    root, eps = damaged
    bad = root / f"videos/{synth.CAM}/chunk-000/file-002.mp4"
    _truncate(bad, 0.6)
    with pytest.raises(DataFileError, match=r"file-002.mp4 \(episode 2\): (cannot decode the video|frame \d+ of episode 2)"):
        ChunkDataset(root, chunk_size=2)
    _check_rest(ChunkDataset(root, chunk_size=2, skip_bad_episodes=True), eps, [2])


def test_one_video_of_several_episodes_cut_short(tmp_path, synth):
    """Episodes back to back in one mp4 that loses its end (the index of an mp4 is written last): every
    episode it held is named, and with nothing left to train on, skipping fails plainly too."""
    synth.write_dataset(tmp_path / "ds")
    _truncate(tmp_path / f"ds/videos/{synth.CAM}/chunk-000/file-000.mp4", 0.7)
    with pytest.raises(DataFileError, match=r"file-000.mp4 \(episodes 0, 1, 2, 3\): cannot decode the video"):
        DatasetReader(tmp_path / "ds").load()
    with pytest.raises(DataFileError, match=r"no selected episode is readable: .*file-000.mp4"):
        ChunkDataset(tmp_path / "ds", chunk_size=2, skip_bad_episodes=True)


def test_data_file_with_other_rows_is_named(damaged):
    root, eps = damaged
    shutil.copy(root / "data/chunk-000/file-000.parquet", root / "data/chunk-000/file-003.parquet")
    with pytest.raises(DataFileError, match=r"file-003.parquet \(episode 3\): holds 0 rows of episode 3, the "
                                            r"episodes table says 3"):
        DatasetReader(root).load(cameras=False)
    _check_rest(ChunkDataset(root, chunk_size=2, skip_bad_episodes=True), eps, [3])


def test_unreadable_metadata_is_named(damaged):
    root, _ = damaged
    info = root / F.INFO_PATH
    text = info.read_text()
    _truncate(info)
    with pytest.raises(DataFileError, match=r"meta/info.json: unreadable"):
        DatasetReader(root)
    info.write_text(text)
    _truncate(root / F.EPISODES_PATH.format(chunk_index=0, file_index=0))
    with pytest.raises(DataFileError, match=r"meta/episodes/chunk-000/file-000.parquet: the episodes table is unreadable"):
        DatasetReader(root)


@pytest.mark.parametrize("key,template", [
    ("data_path", "../../outside/file-{file_index:03d}.parquet"),
    ("data_path", "/etc/{chunk_index}.parquet"),
    ("data_path", "data/../../x-{file_index}.parquet"),
    ("video_path", "../{video_key}/{chunk_index}-{file_index}.mp4"),
])
def test_paths_from_info_json_stay_inside_the_dataset(damaged, key, template):
    root, _ = damaged
    info = json.loads((root / F.INFO_PATH).read_text())
    info[key] = template
    (root / F.INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DataFileError, match=rf"{key} .* outside the dataset folder; refusing to read it"):
        DatasetReader(root).load()
    with pytest.raises(DataFileError, match="outside the dataset folder"):  # skipping never reads it either
        ChunkDataset(root, chunk_size=2, skip_bad_episodes=True)


def test_symlinked_files_inside_a_snapshot_are_read(per_file, tmp_path):
    """Hugging Face cache snapshots are symlink farms: a symlinked data file is not an escape."""
    root, eps = per_file
    copy = tmp_path / "snap"
    shutil.copytree(root, copy)
    blob = tmp_path / "blobs" / "abc"
    blob.parent.mkdir()
    shutil.move(copy / "data/chunk-000/file-000.parquet", blob)
    (copy / "data/chunk-000/file-000.parquet").symlink_to(blob)
    _check_rest(ChunkDataset(copy, chunk_size=2), eps, [])
