"""Process-level runtime settings shared by the driver and every Ray actor.

Ray starts actors with ``OMP_NUM_THREADS=1`` and a fresh environment; the variables below make every
process agree on caches (DeepSpeed's JIT-built ops take 24-47 s to compile, Warp kernels ~40 s: both
must be built once and reused from a stable path), rendering (EGL, headless) and the accelerator.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_ROOT = Path(os.environ.get("VLAFORGE_CACHE", "~/.cache/vlaforge")).expanduser()


def process_env() -> dict[str, str]:
    """Environment variables for the driver and every actor (passed through Ray's runtime_env)."""
    env = {
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(CACHE_ROOT / "torch_extensions")),
        "WARP_CACHE_PATH": os.environ.get("WARP_CACHE_PATH", str(CACHE_ROOT / "warp")),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", os.environ.get("MUJOCO_GL", "egl")),
        "VLAFORGE_CACHE": str(CACHE_ROOT),
        # Tokenizer-free stack, but keep HF libraries (optional encoders) from reaching for a hub.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = os.environ.get("DS_ACCELERATOR", "cpu")
    return env


def apply_process_env() -> None:
    """Set the shared variables in this process (call before importing deepspeed / mujoco)."""
    for k, v in process_env().items():
        os.environ.setdefault(k, v)
    Path(os.environ["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    Path(os.environ["WARP_CACHE_PATH"]).mkdir(parents=True, exist_ok=True)


def set_threads(n: int) -> None:
    """Ray pins OMP_NUM_THREADS=1 in actors; set torch's intra-op threads deliberately."""
    torch.set_num_threads(max(1, int(n)))


LOOPBACK = "127.0.0.1"
# Ray's own switch for "this machine only" clusters (it is on for Windows/macOS). On Linux Ray rewrites a
# node address of 127.0.0.1 to the machine's interface address (services.resolve_ip_for_localhost) and
# then binds the GCS, raylet and agents there, reachable from the network. With the switch off, the node
# address stays 127.0.0.1 and every Ray server of the node binds loopback only (checked with `ss -ltn`
# in tests/runtime/test_process.py).
_RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    os.environ[_RAY_LOCAL_ONLY] = "0"  # Ray's children (raylet, agents, workers) read it at import
    import ray._private.ray_constants as ray_constants

    # this process: Ray read the variable when it was first imported (often before init_ray runs);
    # services.get_node_ip_address looks the constant up at call time
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False,
             host: str = LOOPBACK, **kw):
    """Start an embedded local cluster (address None) or join one ("auto", "ray://..."). Idempotent.

    The embedded cluster binds its node address, GCS and dashboard to ``host``: 127.0.0.1 unless a recipe
    opts into another address (``ray.host``). Token authentication stays on (Ray 2.60's default).
    """
    import ray

    apply_process_env()
    if ray.is_initialized():
        return ray.get_runtime_context()
    runtime_env = {"env_vars": process_env()}
    kw.setdefault("log_to_driver", True)  # benchmarks pass False: their stdout is pure JSON
    if address is None:
        if host == LOOPBACK:
            _loopback_only()
        return ray.init(
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=host,
            _node_ip_address=host,
            runtime_env=runtime_env,
            **kw,
        )
    if address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        _loopback_only()  # a loopback head: keep Ray from rewriting the address to the interface's
    return ray.init(address=address, runtime_env=runtime_env, **kw)
