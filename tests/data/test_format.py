"""LeRobot v3.0 writer -> reader round trips, the layout LeRobot expects, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlaforge.data import format as F
from vlaforge.data.reader import DatasetReader
from vlaforge.data.stats import STAT_KEYS
from vlaforge.data.writer import DatasetWriter



def _check_round_trip(S, root, eps, lengths):
    r = DatasetReader(root)
    d = r.load()
    n = sum(lengths)
    assert len(d["index"]) == n and (d["index"] == np.arange(n)).all()
    for key in (F.ACTION_KEY, F.STATE_KEY, F.PRIVILEGED_KEY, F.REWARD_KEY, F.SUCCESS_KEY, F.DONE_KEY):
        np.testing.assert_array_equal(d[key], np.concatenate([e[key] for e in eps]), err_msg=key)  # exact
    assert d[F.ACTION_KEY].dtype == np.float32 and d[F.SUCCESS_KEY].dtype == bool
    np.testing.assert_array_equal(d["frame_index"], np.concatenate([np.arange(k) for k in lengths]))
    np.testing.assert_array_equal(d["episode_index"], np.repeat(np.arange(len(lengths)), lengths))
    np.testing.assert_allclose(d["timestamp"], np.concatenate([np.arange(k) / 20 for k in lengths]), atol=1e-6)
    img = np.concatenate([e[S.CAM] for e in eps])
    assert d[S.CAM].shape == img.shape and d[S.CAM].dtype == np.uint8
    err = np.abs(d[S.CAM].astype(np.int16) - img).mean(axis=(1, 2, 3))  # per frame
    assert err.max() < 8, err
    # frames are aligned: comparing against the neighbouring frame is clearly worse
    assert np.abs(d[S.CAM][1:].astype(np.int16) - img[:-1]).mean() > 2 * err.mean()
    return r, d


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_round_trip(tmp_path, codec, synth):
    S = synth
    eps = S.write_dataset(tmp_path / "ds", codec=codec)
    r, _ = _check_round_trip(S, tmp_path / "ds", eps, S.LENGTHS)
    assert r.features[S.CAM]["info"]["video.codec"] == {"h264": "h264", "av1": "av1"}[codec]
    # a subset of episodes comes back alone, rows still aligned
    sub = r.load([2])
    np.testing.assert_array_equal(sub[F.ACTION_KEY], eps[2][F.ACTION_KEY])
    assert np.abs(sub[S.CAM].astype(np.int16) - eps[2][S.CAM]).mean() < 8


def test_layout_follows_lerobot_v3(small_dataset, synth):
    S = synth
    root, eps = small_dataset
    info = json.loads((root / F.INFO_PATH).read_text())
    for key in ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                "features"):
        assert key in info, key
    assert "total_chunks" not in info and "total_videos" not in info  # v2.1 keys
    assert info["codebase_version"] == "v3.0" and info["chunks_size"] == 1000
    assert info["total_episodes"] == len(S.LENGTHS) and info["total_frames"] == sum(S.LENGTHS)
    assert info["total_tasks"] == len(set(S.TASKS)) and info["splits"] == {"train": f"0:{len(S.LENGTHS)}"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1]
    assert feats[F.ACTION_KEY] == {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]}
    video = feats[S.CAM]
    assert video["dtype"] == "video" and video["shape"] == [32, 32, 3]
    assert video["names"] == ["height", "width", "channels"]
    assert video["info"]["video.pix_fmt"] == "yuv420p" and video["info"]["video.fps"] == 20
    assert video["info"]["video.height"] == 32 and video["info"]["has_audio"] is False

    # data parquet: one column per non-video feature; vectors as fixed_size_list (HF Sequence(length=n))
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert set(table.column_names) == {k for k, f in feats.items() if f["dtype"] != "video"}
    assert table.schema.field(F.ACTION_KEY).type == pa.list_(pa.float32(), 4)
    assert table.schema.field("timestamp").type == pa.float32()
    assert table.schema.field("index").type == pa.int64()
    assert table.schema.field(F.DONE_KEY).type == pa.bool_()
    assert (root / f"videos/{S.CAM}/chunk-000/file-000.mp4").is_file()

    tasks = pd.read_parquet(root / F.TASKS_PATH)
    assert tasks.index.name == "task" and list(tasks["task_index"]) == [0, 1, 2]
    assert list(tasks.index) == ["reach the goal", "close the drawer", "push the button"]

    ep = pd.read_parquet(root / "meta/episodes/chunk-000/file-000.parquet")
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", f"videos/{S.CAM}/chunk_index", f"videos/{S.CAM}/file_index",
                f"videos/{S.CAM}/from_timestamp", f"videos/{S.CAM}/to_timestamp", "env_task",
                f"stats/{F.ACTION_KEY}/mean", f"stats/{S.CAM}/std"):
        assert col in ep.columns, col
    assert list(ep["length"]) == list(S.LENGTHS)
    starts = np.r_[0, np.cumsum(S.LENGTHS)[:-1]]
    assert list(ep["dataset_from_index"]) == list(starts)
    np.testing.assert_allclose(ep[f"videos/{S.CAM}/from_timestamp"], starts / 20)  # back to back in one mp4
    np.testing.assert_allclose(ep[f"videos/{S.CAM}/to_timestamp"], (starts + S.LENGTHS) / 20)
    assert [list(t) for t in ep["tasks"]] == [[S.TASKS[i]] for i in range(len(S.LENGTHS))]

    stats = json.loads((root / F.STATS_PATH).read_text())
    for key in (F.ACTION_KEY, F.STATE_KEY, F.REWARD_KEY, F.SUCCESS_KEY, "index", S.CAM):
        assert set(stats[key]) == set(STAT_KEYS), key
    all_state = np.concatenate([e[F.STATE_KEY] for e in eps])
    np.testing.assert_allclose(stats[F.STATE_KEY]["mean"], all_state.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[F.STATE_KEY]["q50"], np.median(all_state, 0), rtol=1e-5, atol=1e-6)
    assert stats[F.STATE_KEY]["count"] == [sum(S.LENGTHS)]
    img = np.asarray(stats[S.CAM]["mean"])
    assert img.shape == (3, 1, 1) and (0 <= img).all() and (img <= 1).all()
    raw = np.concatenate([e[S.CAM] for e in eps]).reshape(-1, 3) / 255.0  # stats of the frames written
    np.testing.assert_allclose(img.ravel(), raw.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats[S.CAM]["max"]).ravel(), raw.max(0), atol=1e-6)


def test_files_roll_over_and_read_back(tmp_path, synth):
    S = synth
    # tiny size limits: every episode starts a new data file and a new mp4
    eps = S.write_dataset(tmp_path / "ds", data_file_mb=1e-6, video_file_mb=1e-6)
    assert len(list((tmp_path / "ds/data/chunk-000").glob("*.parquet"))) == len(S.LENGTHS)
    assert len(list((tmp_path / f"ds/videos/{S.CAM}/chunk-000").glob("*.mp4"))) == len(S.LENGTHS)
    ep = pd.read_parquet(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert list(ep["data/file_index"]) == list(range(len(S.LENGTHS)))
    assert (ep[f"videos/{S.CAM}/from_timestamp"] == 0).all()
    _check_round_trip(S, tmp_path / "ds", eps, S.LENGTHS)


def test_bad_inputs_are_named(tmp_path, synth):
    S = synth
    with pytest.raises(ValueError, match="odd side"):
        with DatasetWriter(tmp_path / "odd", 20, S.features(size=33)) as w:
            w.add_episode(S.episode(0, 3, size=33), task="x")
    assert not (tmp_path / "odd").exists()
    with DatasetWriter(tmp_path / "w", 20, S.features()) as w:
        bad = S.episode(0, 4)
        bad[F.ACTION_KEY] = bad[F.ACTION_KEY][:, :3]
        with pytest.raises(ValueError, match=r"'action' must have shape \(4, 4\)"):
            w.add_episode(bad, task="x")
        short = S.episode(0, 4)
        short[F.STATE_KEY] = short[F.STATE_KEY][:2]
        with pytest.raises(ValueError, match="same number"):
            w.add_episode(short, task="x")
        w.add_episode(S.episode(0, 4), task="x")
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path / "w", 20, S.features())
    with pytest.raises(FileNotFoundError, match="not a LeRobot v3 dataset"):
        DatasetReader(tmp_path / "nothing")
    info = json.loads((tmp_path / "w" / F.INFO_PATH).read_text())
    (tmp_path / "w" / F.INFO_PATH).write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="v2.1"):
        DatasetReader(tmp_path / "w")


def test_exception_mid_write_leaves_nothing(tmp_path, synth):
    S = synth
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(root, 20, S.features()) as w:
            w.add_episode(S.episode(0, 5), task="x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder


def test_failed_finalize_keeps_the_old_dataset(tmp_path, monkeypatch, synth):
    S = synth
    root = tmp_path / "ds"
    old = S.write_dataset(root, lengths=(4, 6))
    w = DatasetWriter(root, 20, S.features(), overwrite=True)
    w.add_episode(S.episode(7, 5), task="new")

    def crash():
        raise OSError("disk full")

    monkeypatch.setattr(w, "_write_meta", crash)
    with pytest.raises(OSError, match="disk full"):
        w.finalize()
    np.testing.assert_array_equal(DatasetReader(root).load(cameras=False)[F.ACTION_KEY],
                                  np.concatenate([e[F.ACTION_KEY] for e in old]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # a successful overwrite replaces it whole
    w = DatasetWriter(root, 20, S.features(), overwrite=True)
    w.add_episode(S.episode(7, 5), task="new")
    w.finalize()
    assert DatasetReader(root).tasks == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_killed_process_leaves_no_dataset(tmp_path, synth):
    # A real crash: the writing process dies (no exception handlers run) after two episodes.
    root = tmp_path / "ds"
    code = textwrap.dedent(f"""
        import importlib.util, os
        spec = importlib.util.spec_from_file_location("synth", {str(synth.path)!r})
        synth = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(synth)
        from vlaforge.data.writer import DatasetWriter
        w = DatasetWriter({str(root)!r}, 20, synth.features())
        w.add_episode(synth.episode(0, 6), task="x")
        w.add_episode(synth.episode(1, 6), task="x")
        os._exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not root.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith("ds.tmp-")  # garbage, never mistaken for data
    with pytest.raises(FileNotFoundError):
        DatasetReader(root)


def test_reads_dataset_written_elsewhere(tmp_path, synth):
    """A dataset as LeRobot / other tools write it: pandas list columns (not fixed-size), tasks.parquet
    with an unnamed index, an 'image' feature (PNG bytes in parquet), undeclared extra columns and
    features, per-episode stats columns, float fps, v2-era extra info keys, and a video file that
    holds two episodes, the first of which does not start at t=0 of its data file's order."""
    import io

    from PIL import Image

    from vlaforge.data.video import VideoFileEncoder

    root, fps, lengths = tmp_path / "ext", 10, (4, 3, 5)
    eps = [synth.episode(i, n) for i, n in enumerate(lengths)]
    rows, ep_rows, start = [], [], 0
    video_files = {0: [0], 1: [1, 2]}  # file index -> episodes, back to back
    offsets = {}
    for f, members in video_files.items():
        enc = VideoFileEncoder(root / f"videos/{synth.CAM}/chunk-000/file-{f:03d}.mp4", 32, 32, fps)
        for e in members:
            offsets[e] = (f, enc.frames_written / fps)
            enc.add_frames(eps[e][synth.CAM])
        enc.close()
    for e, ep in enumerate(eps):
        n = lengths[e]
        for t in range(n):
            png = io.BytesIO()
            Image.fromarray(ep[synth.CAM][t]).save(png, format="PNG")
            rows.append({
                "action": ep[F.ACTION_KEY][t].tolist(), "observation.state": ep[F.STATE_KEY][t].tolist(),
                "observation.images.wrist": {"bytes": png.getvalue(), "path": None},
                "timestamp": np.float32(t / fps), "frame_index": t, "episode_index": e, "index": start + t,
                "task_index": e % 2, "complementary_info.discrete_penalty": 0.5,
            })
        f, from_ts = offsets[e]
        ep_rows.append({
            "episode_index": e, "tasks": [["stack", "unstack"][e % 2]], "length": n,
            "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + n,
            f"videos/{synth.CAM}/chunk_index": 0, f"videos/{synth.CAM}/file_index": f,
            f"videos/{synth.CAM}/from_timestamp": from_ts, f"videos/{synth.CAM}/to_timestamp": from_ts + n / fps,
            "stats/action/mean": ep[F.ACTION_KEY].mean(0).tolist(),
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
        })
        start += n
    (root / "data/chunk-000").mkdir(parents=True)
    pd.DataFrame(rows[::-1]).to_parquet(root / "data/chunk-000/file-000.parquet", index=False)  # any row order
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pd.DataFrame(ep_rows).to_parquet(root / "meta/episodes/chunk-000/file-000.parquet", index=False)
    pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(["stack", "unstack"])).to_parquet(root / F.TASKS_PATH)
    features = {
        "action": {"dtype": "float32", "shape": [4], "names": None},
        "observation.state": {"dtype": "float32", "shape": [7], "names": None},
        synth.CAM: {**F.video_feature(32, 32), "info": {"video.codec": "av1"}},
        "observation.images.wrist": {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channel"]},
        "observation.audio": {"dtype": "audio", "shape": [1], "names": None},  # a feature we know nothing of
        **F.DEFAULT_FEATURES,
    }
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": 3, "total_frames": start,
            "total_tasks": 2, "total_videos": 3, "chunks_size": 1000, "fps": float(fps), "splits": {"train": "0:3"},
            "data_path": F.DATA_PATH, "video_path": F.VIDEO_PATH, "features": features}
    (root / F.INFO_PATH).write_text(json.dumps(info))

    r = DatasetReader(root)
    assert r.tasks == ["stack", "unstack"] and r.stats is None and r.fps == fps
    assert r.camera_keys == [synth.CAM, "observation.images.wrist"]
    d = r.load()
    np.testing.assert_array_equal(d["index"], np.arange(start))
    np.testing.assert_array_equal(d[F.ACTION_KEY], np.concatenate([e[F.ACTION_KEY] for e in eps]))
    img = np.concatenate([e[synth.CAM] for e in eps])
    np.testing.assert_array_equal(d["observation.images.wrist"], img)  # PNG: lossless
    assert np.abs(d[synth.CAM].astype(np.int16) - img).mean() < 8
    sub = r.load([2], cameras=[synth.CAM])  # second episode of video file 1
    assert np.abs(sub[synth.CAM].astype(np.int16) - eps[2][synth.CAM]).mean() < 8
    assert "observation.images.wrist" not in sub


def test_av1_encoding_leaves_the_process_scheduling_alone(tmp_path):
    """libsvtav1 switches the encoding thread to SCHED_FIFO 99 when it may (root); every child forked later
    inherited real-time priority. The encoder must hand the thread back as it found it."""
    import os

    import numpy as np

    from vlaforge.data.video import encode_video

    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    encode_video(frames, tmp_path / "a.mp4", fps=10, codec="av1")
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
