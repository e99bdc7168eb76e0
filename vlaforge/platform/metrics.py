"""One metrics API, three sinks: a plain JSONL log in the run directory (always), wandb (offline by default)
and TensorBoard (``<run>/tensorboard``, served by ``vlaforge dashboard RUN_DIR``), all with the same keys.

Keys are namespaced (``train/``, ``eval/``, ``rollout/``, ``env/``, ``time/``, ``system/``); a key
without a known namespace is rejected so dashboards stay navigable. Secrets are never logged: the
recipe holds no credentials and wandb reads its key from its own environment/netrc.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import psutil

NAMESPACES = ("train", "eval", "rollout", "env", "time", "system", "reward", "data")


_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except _GONE:  # exited (or became a zombie / another user's) between listing and reading: holds no memory
        return 0


def system_metrics() -> dict[str, float]:
    """CPU, memory and the driver's process tree RSS. Never raises when a child process (Ray workers,
    simulators, encoders) exits while it is being read: a vanished process counts as 0 bytes."""
    proc = psutil.Process()
    try:
        children = proc.children(recursive=True)
    except _GONE:
        children = []
    rss = _rss(proc) + sum(_rss(c) for c in children)
    return {
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/mem_used_gb": psutil.virtual_memory().used / 2**30,
        "system/driver_tree_rss_gb": rss / 2**30,
    }


class MetricsLogger:
    def __init__(self, run_dir: Path, recipe: Any | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # append: a resumed run continues its log; nothing already written is truncated
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._wandb = None
        self._tb = None
        log = getattr(recipe, "logging", None)
        if log is not None and log.wandb and log.wandb_mode != "disabled":
            self._wandb = self._init_wandb(recipe, resume)
        if log is not None and log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package (pinned)

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            self._tb.add_custom_scalars(dashboard_layout(recipe))
        if recipe is not None:
            write_run_meta(self.run_dir)

    def _init_wandb(self, recipe, resume: bool):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        log = recipe.logging
        run_id_file = self.run_dir / "wandb_run_id"
        run_id = run_id_file.read_text().strip() if (resume and run_id_file.exists()) else None
        run = wandb.init(
            project=log.wandb_project,
            entity=log.wandb_entity,
            name=self.run_dir.name,
            dir=str(self.run_dir),
            mode=log.wandb_mode,
            config=recipe.model_dump(mode="json"),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=False),
        )
        run_id_file.write_text(run.id)
        return run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean: dict[str, float] = {}
        for k, v in metrics.items():
            if k.split("/", 1)[0] not in NAMESPACES or "/" not in k:
                raise ValueError(f"metric key {k!r} must start with one of {NAMESPACES} and a '/'")
            v = float(v)
            if not math.isfinite(v):
                v = float("nan")
            clean[k] = v
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def log_video(self, key: str, path: Path, step: int, fps: int = 15) -> None:
        """An evaluation video (mp4) to wandb and, as an animated image, to TensorBoard."""
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Video(str(path), format="mp4")}, step=int(step))
        if self._tb is not None:
            from vlaforge.data.video import decode_video

            frames, _ = decode_video(path)
            self._tb._get_file_writer().add_summary(gif_summary(key, frames, fps), int(step))

    def log_image(self, key: str, path: Path, step: int) -> None:
        """A PNG written to the run directory (inspection images) to TensorBoard and wandb under ``key``."""
        if key.split("/", 1)[0] not in NAMESPACES or "/" not in key:
            raise ValueError(f"image key {key!r} must start with one of {NAMESPACES} and a '/'")
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))}, step=int(step))
        if self._tb is not None:
            import numpy as np
            from PIL import Image

            self._tb.add_image(key, np.asarray(Image.open(path).convert("RGB")), int(step), dataformats="HWC")

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def close(self) -> None:
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tb is not None:
            self._tb.close()


def gif_summary(tag: str, frames, fps: int):
    """A TensorBoard image summary holding an animated GIF of ``frames`` uint8 (T, H, W, 3).

    Written by hand because torch 2.13's ``SummaryWriter.add_video`` imports ``moviepy.editor``, which
    moviepy 2 (our pin) removed; this is the same summary add_video writes, encoded with Pillow.
    """
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    h, w = frames.shape[1:3]
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=buf.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def dashboard_layout(recipe: Any) -> dict:
    """TensorBoard's Custom Scalars page: success per task over training (every evaluation, every RL
    batch), the RL diagnostics and the reward-model diagnostics that expose reward hacking."""
    tasks: list[str] = []
    envs = getattr(recipe, "envs", None)
    if envs is not None:
        from vlaforge.envs import resolve_tasks

        tasks = list(resolve_tasks(envs.tasks))
    return {
        "success per task": {t: ["Multiline", [rf"eval/success_rate/{t}$"]] for t in tasks}
        | {"mean (eval, rollout)": ["Multiline", [r"eval/.*mean_success_rate$", r"rollout/success_rate$"]]},
        "RL": {"policy": ["Multiline", [r"train/(approx_kl|clip_fraction|entropy)$"]],
               "value": ["Multiline", [r"train/(explained_variance|loss_critic)$"]],
               "return": ["Multiline", [r"rollout/episode_return$"]]},
        "reward model": {"RM vs true success": ["Multiline", [r"reward/(rm_mean|true_success|rm_success_corr|env_mean)$"]]},
    }


def write_run_meta(run_dir: Path) -> None:
    """Provenance of the code that ran (git commit, dirty flag, version), appended once per start or
    resume to ``run_meta.json``; ``vlaforge publish`` copies it into the model card."""
    import subprocess

    import vlaforge

    src = Path(vlaforge.__file__).resolve().parents[1]
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "vlaforge_version": vlaforge.__version__,
             "git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    path = Path(run_dir) / "run_meta.json"
    runs = json.loads(path.read_text()).get("starts", []) if path.exists() else []
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"starts": [*runs, entry]}, indent=2))
    tmp.replace(path)
