"""Submit a recipe to a Ray cluster as a Ray job, and watch or stop it (``vlaforge submit`` / ``vlaforge jobs``).

The job runs the same command a laptop runs -- ``python -m vlaforge train RECIPE overrides --run-dir DIR`` --
on the cluster's head node, with the client's project folder as Ray's ``working_dir`` (so the code and the
recipes that run are the ones submitted, on every node) and the Python of the pinned install (the nodes
run ``bash scripts/setup.sh``; the same path everywhere). The run directory is absolute and chosen here, so
the client can print where the run will be before it starts.

Token authentication stays on: the Jobs client sends ``RAY_AUTH_TOKEN`` (or the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) with ``RAY_AUTH_MODE=token``; a missing or wrong token
is a one-line error. Every remote call has a timeout (``--timeout``).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from vlaforge.errors import VlaforgeError

DEFAULT_TIMEOUT_S = 30.0
POLL_S = 2.0
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Never uploaded with the working dir: environments, VCS data, outputs of earlier runs.
EXCLUDES = [".git", ".venv", "venv", "runs", "**/wandb", "**/tensorboard", "**/__pycache__", "*.egg-info",
            "bench/results", ".pytest_cache"]


class JobError(VlaforgeError):
    """The Ray job server refused or did not answer (bad token, unreachable, unknown job)."""


def _client(address: str, timeout: float):
    """A JobSubmissionClient whose every HTTP request carries ``timeout`` (the SDK sets none)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray reads it; auth is never turned off here
    from ray.job_submission import JobSubmissionClient

    class _TimedClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kw):
            kw.setdefault("timeout", timeout)
            return super()._do_request(method, endpoint, **kw)

    return _call(address, timeout, lambda: _TimedClient(address))


def _call(address: str, timeout: float, fn):
    """Run one remote call, turning the SDK's exceptions into one-line user errors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError as e:
        first = str(e).strip().splitlines()[0]
        raise JobError(
            f"Ray at {address} refused the request ({first}). Token authentication is on: set RAY_AUTH_TOKEN "
            f"(or RAY_AUTH_TOKEN_PATH) to the cluster's token -- it is in ~/.ray/auth_token on the head node"
        ) from None
    except requests.exceptions.Timeout:
        raise JobError(f"Ray job server at {address} did not answer within {timeout:.0f} s (--timeout)") from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise JobError(f"cannot reach the Ray job server at {address} (is the cluster up? the dashboard "
                       f"address, e.g. http://127.0.0.1:8265)") from None
    except RuntimeError as e:  # the SDK's "Request failed with status code 404: ..." and friends
        raise JobError(f"Ray at {address}: {str(e).strip().splitlines()[0]}") from None


def submit(recipe: str, overrides: list[str], address: str, run_dir: Path | None = None,
           working_dir: Path | None = None, python: str | None = None,
           timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, Path]:
    """Validate the recipe here, then submit it as a Ray job; -> (job id, absolute run directory)."""
    from vlaforge.platform.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)  # the user's mistakes surface before anything is uploaded
    work = (working_dir or Path.cwd()).expanduser().resolve()
    path = Path(recipe).expanduser().resolve()
    try:
        rel = path.relative_to(work)
    except ValueError:
        raise VlaforgeError(f"{path} is outside the working dir {work} that is uploaded to the cluster: "
                            f"pass --working-dir, or copy the recipe into it") from None
    run_dir = (run_dir or Path.cwd() / "runs" / f"{resolved.name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = run_dir.expanduser().resolve()  # absolute: the job's working dir is a copy elsewhere
    # ray.address=auto: the job's driver joins the cluster it runs on instead of starting its own.
    argv = [python or sys.executable, "-m", "vlaforge", "train", rel.as_posix(), *overrides,
            "ray.address=auto", "--run-dir", str(run_dir)]
    runtime_env = {"working_dir": str(work), "excludes": EXCLUDES}
    client = _client(address, timeout)
    job_id = _call(address, timeout, lambda: client.submit_job(
        entrypoint=shlex.join(argv), runtime_env=runtime_env,
        metadata={"vlaforge_recipe": rel.as_posix(), "run_dir": str(run_dir)}))
    return job_id, run_dir


def list_jobs(address: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    client = _client(address, timeout)
    jobs = _call(address, timeout, client.list_jobs)
    rows = [{"job_id": j.submission_id or j.job_id, "status": str(j.status.value if hasattr(j.status, "value") else j.status),
             "start_time": j.start_time, "run_dir": (j.metadata or {}).get("run_dir", ""),
             "entrypoint": j.entrypoint} for j in jobs]
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def job_status(address: str, job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    client = _client(address, timeout)
    info = _call(address, timeout, lambda: client.get_job_info(job_id))
    status = info.status.value if hasattr(info.status, "value") else str(info.status)
    return {"job_id": job_id, "status": status, "message": info.message or "",
            "run_dir": (info.metadata or {}).get("run_dir", ""), "entrypoint": info.entrypoint,
            "start_time": info.start_time, "end_time": info.end_time}


def job_logs(address: str, job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    client = _client(address, timeout)
    return _call(address, timeout, lambda: client.get_job_logs(job_id))


def follow_logs(address: str, job_id: str, out=sys.stdout, timeout: float = DEFAULT_TIMEOUT_S,
                poll_s: float = POLL_S) -> str:
    """Print the job's log as it grows until the job ends; -> final status.

    Polls the HTTP log endpoint (each request bounded by ``timeout``) rather than holding the SDK's
    websocket open without a deadline: if the server stops answering, the next poll fails clearly.
    """
    client = _client(address, timeout)
    printed = 0
    while True:
        status = _call(address, timeout, lambda: client.get_job_status(job_id))
        status = status.value if hasattr(status, "value") else str(status)
        text = _call(address, timeout, lambda: client.get_job_logs(job_id))
        if len(text) > printed:
            out.write(text[printed:])
            out.flush()
            printed = len(text)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def stop_job(address: str, job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Ask Ray to stop the job and wait (at most ``timeout``) until it is; -> final status."""
    client = _client(address, timeout)
    _call(address, timeout, lambda: client.stop_job(job_id))
    deadline = time.monotonic() + timeout
    while True:
        status = _call(address, timeout, lambda: client.get_job_status(job_id))
        status = status.value if hasattr(status, "value") else str(status)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} is still {status} {timeout:.0f} s after the stop request")
        time.sleep(0.5)
