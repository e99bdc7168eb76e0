"""`vlaforge submit` / `vlaforge jobs` against a real local Ray head with token authentication ON."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The tiny recipe of tests/platform/test_driver.py (same envs/demos: its cached demonstrations are reused).
TINY = [
    "envs.tasks=[reach-v3,drawer-close-v3]", "envs.image_size=32", "envs.max_episode_steps=120",
    "demos.episodes_per_task=2", "policy.dim=32", "policy.layers=1", "policy.heads=2",
    "policy.vision.channels=[8,16]", "train.steps=6", "train.log_every=3", "train.checkpoint_every=3",
    "train.batch_size=8", "train.warmup_steps=0", "eval.episodes_per_task=2", "eval.envs_per_worker=2",
    "eval.videos_per_task=1", "logging.wandb_mode=offline",
]


def vlaforge(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlaforge", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(fn, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_submit_status_logs_list_stop(ray_two_nodes, tmp_path):
    c = ray_two_nodes
    env = c.client_env()
    run_dir = tmp_path / "job-run"
    p = vlaforge("submit", "configs/quickstart.yaml", *TINY, "--address", c.address, "--run-dir", str(run_dir),
                 "stages=[{name: bc, kind: bc}]", env=env)  # an override after the options, too
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.split("job:")[1].split()[0]
    assert f"run dir: {run_dir.resolve()}" in p.stdout

    st = vlaforge("jobs", "status", job_id, "--address", c.address, env=env)
    assert st.returncode == 0, st.stderr
    assert any(f"status:     {s}" in st.stdout for s in ("PENDING", "RUNNING")), st.stdout
    assert f"run_dir:    {run_dir.resolve()}" in st.stdout and "ray.address=auto" in st.stdout

    # the job's driver starts: its log names the run directory (absolute, decided by the client)
    logs = wait_for(lambda: (lambda q: q.stdout if f"run directory: {run_dir.resolve()}" in q.stdout else "")(
        vlaforge("jobs", "logs", job_id, "--address", c.address, env=env)), 240, "the job's log")
    assert "Traceback" not in logs, logs[-3000:]
    assert (run_dir / "recipe.yaml").exists()  # written by the job, where the client said

    listed = vlaforge("jobs", "list", "--address", c.address, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and str(run_dir.resolve()) in listed.stdout

    stop = vlaforge("jobs", "stop", job_id, "--address", c.address, "--timeout", "60", env=env)
    assert stop.returncode == 0, stop.stderr
    assert f"job {job_id}: STOPPED" in stop.stdout
    st = vlaforge("jobs", "status", job_id, "--address", c.address, env=env)
    assert "status:     STOPPED" in st.stdout


@pytest.mark.slow
def test_wrong_or_missing_token_is_refused_clearly(ray_two_nodes, tmp_path):
    c = ray_two_nodes
    wrong = c.client_env(token="0" * 64)
    for args in (("jobs", "list", "--address", c.address),
                 ("submit", "configs/quickstart.yaml", *TINY, "--address", c.address, "--run-dir", str(tmp_path / "x"))):
        p = vlaforge(*args, env=wrong)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: Ray at {c.address} refused the request"), p.stderr
        assert "RAY_AUTH_TOKEN" in err[0] and c.token not in p.stderr
    assert not (tmp_path / "x").exists()  # nothing submitted

    missing = {k: v for k, v in c.client_env().items() if k != "RAY_AUTH_TOKEN"}
    missing.update(HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-token"))  # no ~/.ray/auth_token
    p = vlaforge("jobs", "list", "--address", c.address, env=missing)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "refused the request" in p.stderr and "RAY_AUTH_TOKEN" in p.stderr


def test_unreachable_address_fails_clearly_within_the_timeout():
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    p = vlaforge("jobs", "status", "raysubmit_x", "--address", f"http://127.0.0.1:{port}", "--timeout", "5",
                 env={**os.environ, "RAY_AUTH_TOKEN": "0" * 64})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port}" in p.stderr
    assert time.monotonic() - t0 < 60
    p = vlaforge("jobs", "list", env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert p.returncode == 2 and "no Ray address: pass --address" in p.stderr
