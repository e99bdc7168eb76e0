"""`vlaforge demos --unlabeled`: an mp4 folder becomes an action-free dataset; mistakes are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from vlaforge.data.video import encode_video

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlaforge.platform.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_demos_unlabeled_from_an_mp4_folder(tmp_path):
    (tmp_path / "v").mkdir()
    for i in range(2):
        frames = np.zeros((5, 16, 16, 3), np.uint8)
        frames[:, :, 2 * i : 2 * i + 4] = 200
        encode_video(frames, tmp_path / "v" / f"c{i}.mp4", fps=10)
    (tmp_path / "i.yaml").write_text(yaml.safe_dump({"c0.mp4": "open it", "c1.mp4": "close it"}))
    over = ["data.video.source=mp4", f"data.video.path={tmp_path / 'v'}", f"data.video.instructions={tmp_path / 'i.yaml'}",
            f"data.video.cache_dir={tmp_path / 'cache'}"]
    p = run("demos", "configs/latent_metaworld.yaml", *over, "--unlabeled")
    assert p.returncode == 0, p.stderr
    assert "(2 episodes, 10 frames, no action column)" in p.stdout and str(tmp_path / "cache") in p.stdout

    (tmp_path / "i.yaml").write_text(yaml.safe_dump({"c0.mp4": "open it"}))
    p = run("demos", "configs/latent_metaworld.yaml", *over, "--unlabeled")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no instruction for ['c1.mp4']" in p.stderr and str(tmp_path / "i.yaml") in p.stderr

    p = run("demos", "configs/quickstart.yaml", "--unlabeled")
    assert p.returncode == 2 and "data.video is not set" in p.stderr and "Traceback" not in p.stderr


def test_recipe_check_refuses_mp4_frames_of_another_size():
    p = run("recipe", "check", "configs/latent_metaworld.yaml", "data.video.source=mp4", "data.video.path=/v",
            "data.video.instructions=/v/i.yaml", "data.video.image_size=32")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "data.video.image_size = 32: the policy's frames are envs.image_size = 64 px" in p.stderr
