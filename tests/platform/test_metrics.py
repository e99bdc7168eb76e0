import json

import pytest

from vlaforge.platform.metrics import MetricsLogger


def test_jsonl_sink_namespaces_and_append(tmp_path):
    m = MetricsLogger(tmp_path)
    m.log({"train/loss": 1.5, "time/step_s": 0.1}, step=1)
    with pytest.raises(ValueError, match="must start with one of"):
        m.log({"loss": 1.0}, step=2)
    m.close()
    m = MetricsLogger(tmp_path, resume=True)  # a resumed run appends, never truncates
    m.log({"train/loss": 1.0}, step=2)
    m.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 1.5 and rows[1]["train/loss"] == 1.0


def test_tensorboard_sink_scalars_video_layout_and_run_meta(tmp_path):
    """The same keys reach TensorBoard; an eval video becomes an animated image with its outcome border."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vlaforge.platform.config import Recipe
    from vlaforge.platform.evaluation import FAILURE_RGB, write_video

    recipe = Recipe.model_validate({"logging": {"wandb": False}, "envs": {"tasks": ["reach-v3"]}})
    m = MetricsLogger(tmp_path, recipe)
    m.log({"train/loss": 2.0, "eval/success_rate/reach-v3": 0.25}, step=1)
    m.log({"train/loss": 1.0, "eval/success_rate/reach-v3": 0.75}, step=2)
    frames = np.stack([np.full((24, 24, 3), 40 * t, np.uint8) for t in range(5)])
    write_video(frames, tmp_path / "fail.mp4", fps=10, success=False)
    m.log_video("eval/bc/video/reach-v3", tmp_path / "fail.mp4", step=2)
    m.close()

    ev = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [s.value for s in ev.Scalars("eval/success_rate/reach-v3")] == [0.25, 0.75]
    assert [s.step for s in ev.Scalars("train/loss")] == [1, 2]
    gif = Image.open(io.BytesIO(ev.Images("eval/bc/video/reach-v3")[0].encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 5
    assert np.abs(np.asarray(gif.convert("RGB"))[0, 12].astype(int) - FAILURE_RGB).max() < 40  # red: failed
    assert "custom_scalars__config__" in ev.Tags()["tensors"]  # the success-per-task / RL layout

    meta = json.loads((tmp_path / "run_meta.json").read_text())["starts"]
    assert len(meta) == 1 and len(meta[0]["git_commit"]) == 40 and isinstance(meta[0]["git_dirty"], bool)
