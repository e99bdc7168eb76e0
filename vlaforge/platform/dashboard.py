"""``vlaforge dashboard RUN_DIR``: TensorBoard over a run's event files, on 127.0.0.1, no account.

Scalars (every namespaced metric), the Custom Scalars page (success per task over training, RL and
reward-model diagnostics; platform/metrics.py ``dashboard_layout``) and the evaluation videos with their
success border (Images page). wandb's offline run in the same folder holds the same data for
``wandb sync``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from vlaforge.errors import VlaforgeError


def logdir_for(run_dir: Path) -> Path:
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise VlaforgeError(f"{run_dir}: no such run directory")
    if not any(run_dir.rglob("events.out.tfevents.*")):
        raise VlaforgeError(f"{run_dir}: no TensorBoard event files in it (was the run started with "
                            "logging.tensorboard: false?)")
    return run_dir


def start(run_dir: Path, host: str = "127.0.0.1", port: int = 6006) -> str:
    """Start TensorBoard in this process (background threads); -> its URL."""
    from tensorboard import program

    logdir = logdir_for(run_dir)
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    tb = program.TensorBoard()
    # --load_fast=false: the pure-Python reader (no Rust data server binary to fetch or spawn)
    tb.configure(argv=[None, "--logdir", str(logdir), "--host", host, "--port", str(port), "--load_fast", "false",
                       "--reload_interval", "5"])
    try:
        return tb.launch()
    except program.TensorBoardServerException as e:
        raise VlaforgeError(f"TensorBoard could not start on {host}:{port}: {e}") from None


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 6006) -> None:
    url = start(run_dir, host, port)
    print(f"dashboard: {url}  (TensorBoard over {Path(run_dir).resolve()}; Ctrl-C stops it)", flush=True)
    while True:
        time.sleep(3600)
