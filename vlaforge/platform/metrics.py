"""Metric sinks: a plain JSONL log in the run directory (always), wandb (offline by default), TensorBoard.

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
            from tensorboardX import SummaryWriter  # installed with ray[default]

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

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

    def log_video(self, key: str, path: Path, step: int) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Video(str(path), format="mp4")}, step=int(step))

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
