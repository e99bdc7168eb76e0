"""`vlaforge dashboard RUN_DIR` in a real headless Chromium: the scalars and an evaluation video render.

The run directory is written through the one metrics API the driver uses (MetricsLogger: JSONL + wandb
offline + TensorBoard) with a real evaluation video (encoded mp4 with the success border)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from vlaforge.platform.config import Recipe
from vlaforge.platform.evaluation import SUCCESS_RGB, write_video
from vlaforge.platform.metrics import MetricsLogger

ROOT = Path(__file__).resolve().parents[2]


def make_run(run_dir: Path) -> None:
    recipe = Recipe.model_validate({"logging": {"wandb_mode": "offline"}, "envs": {"tasks": ["reach-v3", "push-v3"]}})
    m = MetricsLogger(run_dir, recipe)
    for step in range(1, 6):
        m.log({"train/loss": 1.0 / step, "train/approx_kl": 0.01 * step, "reward/rm_mean": 0.1,
               "eval/success_rate/reach-v3": step / 5, "eval/success_rate/push-v3": 0.5}, step=step)
    frames = np.stack([np.full((32, 32, 3), 60 + 10 * t, np.uint8) for t in range(12)])  # (T, H, W, 3)
    write_video(frames, run_dir / "reach-v3_seed1000000_success.mp4", fps=10, success=True)
    m.log_video("eval/bc/video/reach-v3", run_dir / "reach-v3_seed1000000_success.mp4", step=5)
    m.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
def test_dashboard_in_headless_chromium(tmp_path, chromium, port):
    run_dir = tmp_path / "run"
    make_run(run_dir)
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["train/loss"] == 1.0
    assert list((run_dir / "wandb").glob("offline-run-*"))  # the same metrics in wandb's offline run

    proc = subprocess.Popen([sys.executable, "-m", "vlaforge", "dashboard", str(run_dir), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url, timeout=5).ok:
                    break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
                time.sleep(0.5)
        # the Time Series page: one card per scalar tag and one per video, rendered by Chromium
        want = ("eval/success_rate /reach-v3", "eval/success_rate /push-v3", "eval/bc/video /reach-v3")
        got = chromium(url + "#timeseries", lambda g: all(w in g["text"] for w in want) and g["imgs"], timeout=120)
        for w in want:
            assert w in got["text"], got["text"][:3000]
        for group in ("train", "reward"):  # the other namespaces' groups are on the page too
            assert f" {group} " in got["text"]
        video = [u for u in got["imgs"] if "/data/plugin/timeseries/imageData" in u]
        assert video, got["imgs"]

        # the <img> the browser shows is the evaluation video: an animated GIF with the green success border
        from PIL import Image

        img = Image.open(io.BytesIO(requests.get(video[0], timeout=30).content))
        assert img.format == "GIF" and img.n_frames == 12
        rgb = np.asarray(img.convert("RGB"))
        assert np.abs(rgb[0, 16].astype(int) - SUCCESS_RGB).max() < 40 and np.abs(rgb[16, 16].astype(int) - 60).max() < 40

        # the Custom Scalars page groups success per task over training and the RL diagnostics
        got = chromium(url + "#custom_scalars", lambda g: "success per task" in g["text"], timeout=90)
        assert "success per task" in got["text"] and "RL" in got["text"], got["text"][:2000]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "dashboard: http://127.0.0.1:" in proc.stdout.read()


def test_dashboard_refuses_a_folder_without_event_files(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vlaforge", "dashboard", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no TensorBoard event files" in p.stderr and "Traceback" not in p.stderr
