"""Demonstrations from Meta-World's scripted experts, written as ONE LeRobot v3 dataset, cached by content.

``generate_demos`` spreads (task, seeds) jobs over ``num_workers`` Ray actors (``DemoWorker``, B sims
each) and keeps the first ``episodes_per_task`` successful episodes of each task in seed order, so the
dataset is the same whatever the scheduling. Attempt a of every task resets with seed ``demos.seed + a``
(below the evaluation seeds, see ``EVAL_SEED_START``); a task whose expert cannot reach the count within
``max_attempts_factor * episodes_per_task`` attempts is an error naming it.

Cache: ``<cache_dir>/<hash>`` where the hash covers everything that changes the data (env and demo
config fields, resolved task names, FORMAT_VERSION). The writer is atomic, so an existing folder is a
complete dataset and a second call returns at once. Two runs asking for the same entry at once share one
build: the second waits on the entry's file lock (``demos.lock_timeout_s``) and reuses the first's result;
leftovers of crashed builders are removed under the lock (``vlaforge.data.cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlaforge.data import format as F
from vlaforge.data.cache import build_once
from vlaforge.errors import VlaforgeError
from vlaforge.data.config import DemoConfig
from vlaforge.data.demo_worker import DemoWorker
from vlaforge.data.writer import DatasetWriter
from vlaforge.envs.config import EnvConfig
from vlaforge.envs.tasks import resolve_tasks

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the recorded content changes (busts every cache entry)
# Config fields that do not change the recorded data (left out of the hash).
_ENV_NOT_HASHED = {"instructions", "terminate_on_success"}  # demos: train paraphrases, stop at success
_DEMO_NOT_HASHED = {"num_workers", "envs_per_worker", "cache_dir", "lock_timeout_s"}
ROBOT_TYPES = {"metaworld": "sawyer"}


def dataset_key(env_cfg: EnvConfig, demo_cfg: DemoConfig) -> dict[str, Any]:
    env = env_cfg.model_dump(mode="json", exclude=_ENV_NOT_HASHED)
    env["tasks"] = resolve_tasks(env_cfg.tasks)  # "MT10" and its ten names are the same data
    demo = demo_cfg.model_dump(mode="json", exclude=_DEMO_NOT_HASHED)
    if demo_cfg.policy == "checkpoint":  # the weights, not only the path: a retrained policy is other data
        weights = Path(demo_cfg.policy_path).expanduser() / "model.safetensors"
        demo["policy_weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"format_version": FORMAT_VERSION, "env": env, "demos": demo}


def dataset_hash(env_cfg: EnvConfig, demo_cfg: DemoConfig) -> str:
    blob = json.dumps(dataset_key(env_cfg, demo_cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demo_dataset_path(env_cfg: EnvConfig, demo_cfg: DemoConfig) -> Path:
    return Path(demo_cfg.cache_dir).expanduser() / dataset_hash(env_cfg, demo_cfg)


def _cached(path: Path, digest: str) -> bool:
    prov = path / F.VLAFORGE_META_PATH
    if not (path / F.INFO_PATH).is_file() or not prov.is_file():
        return False
    return json.loads(prov.read_text()).get("hash") == digest


class _TaskState:
    """Bookkeeping of one task: attempts issued, episodes back, jobs in flight."""

    def __init__(self, name: str, target: int, budget: int):
        self.name, self.target, self.budget = name, target, budget
        self.attempts = 0  # seeds handed out so far (seed = base + attempt)
        self.in_flight = 0  # seeds in running jobs
        self.episodes: list[dict[str, Any]] = []  # kept episodes (successful unless only_success=False)
        self.kept = 0  # len(episodes), still counted once they are written and freed
        self.tried = 0  # episodes that came back
        self.written = False

    def add(self, episodes: list[dict[str, Any]]) -> int:
        """Keep the first ``target`` episodes in seed order; returns how many more are kept now."""
        before = self.kept
        self.episodes = sorted(self.episodes + episodes, key=lambda e: e["seed"])[: self.target]
        self.kept = len(self.episodes)
        return self.kept - before

    def deficit(self) -> int:
        return 0 if self.written else self.target - self.kept - self.in_flight

    def complete(self) -> bool:
        return self.kept >= self.target and self.in_flight == 0

    def exhausted(self) -> bool:
        return self.attempts >= self.budget and self.in_flight == 0 and self.kept < self.target


def generate_demos(
    env_cfg: EnvConfig, demo_cfg: DemoConfig, out_dir: str | Path | None = None, progress: bool = True,
    timeout_s: float = 900.0,
) -> Path:
    """Generate (or find cached) expert demonstrations; returns the LeRobot v3 dataset folder.
    Ray must already be initialised by the caller (when the dataset must be built). ``timeout_s`` bounds each
    wait on the demo actors (runtime.timeouts.demo_job_s): a hung simulator fails the generation with its
    name, not a stall."""
    digest = dataset_hash(env_cfg, demo_cfg)
    dest = Path(out_dir).expanduser() if out_dir is not None else demo_dataset_path(env_cfg, demo_cfg)
    if _cached(dest, digest):
        log.info("demos: cached dataset %s", dest)
        return dest
    return build_once(dest, lambda p: _cached(p, digest),
                      lambda: _generate(env_cfg, demo_cfg, dest, digest, progress, timeout_s), demo_cfg.lock_timeout_s)


def _generate(env_cfg: EnvConfig, demo_cfg: DemoConfig, dest: Path, digest: str, progress: bool,
              timeout_s: float) -> Path:
    """The build itself; runs under the cache entry's lock (build_once)."""
    import ray
    from tqdm import tqdm

    from vlaforge.runtime import timeouts

    if dest.exists():
        raise FileExistsError(f"{dest} exists but holds another dataset (hash != {digest}); remove it or pick out_dir")
    if not ray.is_initialized():
        raise RuntimeError("generate_demos needs Ray: call vlaforge.runtime.process.init_ray() first")

    tasks = resolve_tasks(env_cfg.tasks)
    target = demo_cfg.episodes_per_task
    states = [_TaskState(t, target, demo_cfg.max_attempts_factor * target) for t in tasks]
    b = demo_cfg.envs_per_worker
    n_workers = max(1, min(demo_cfg.num_workers, math.ceil(len(tasks) * target / b)))
    worker_cls = ray.remote(num_cpus=1)(DemoWorker)
    cfg_json = env_cfg.model_dump(mode="json")
    policy_path = None
    if demo_cfg.policy == "checkpoint":  # absolute: the actors may run elsewhere
        policy_path = str(Path(demo_cfg.policy_path).expanduser().resolve())
        if not (Path(policy_path) / "config.json").is_file():
            raise VlaforgeError(f"demos.policy_path: {policy_path} is not an exported policy folder (no config.json)")
    workers = [worker_cls.remote(cfg_json, b, demo_cfg.action_noise, demo_cfg.success_extra_steps,
                                 demo_cfg.policy, policy_path)
               for _ in range(n_workers)]
    last_task: dict[int, int] = {}  # worker -> task index it last ran (its env is built for that task)
    running: dict[Any, tuple[int, int, int]] = {}  # ref -> (worker, task index, seeds)
    writer: DatasetWriter | None = None
    next_to_write, frames, env_steps, t0 = 0, 0, 0, time.perf_counter()
    bar = tqdm(total=len(tasks) * target, desc="demo episodes", unit="ep", disable=not progress)

    def submit(w: int) -> bool:
        order = sorted(range(len(states)), key=lambda i: (i != last_task.get(w), i))  # affinity first
        for i in order:
            st = states[i]
            n = min(st.deficit(), st.budget - st.attempts, max(b, math.ceil(st.deficit() / n_workers)), 4 * b)
            if n > 0:
                seeds = [demo_cfg.seed + st.attempts + k for k in range(n)]
                st.attempts += n
                st.in_flight += n
                running[workers[w].run.remote(st.name, seeds)] = (w, i, n)
                last_task[w] = i
                return True
        return False

    try:
        for w in range(n_workers):
            submit(w)
        while running:
            ready = timeouts.wait(list(running), timeout_s, f"demos: jobs of actors {sorted({v[0] for v in running.values()})}",
                                  hint="a demo actor hangs; raise runtime.timeouts.demo_job_s if jobs are just slow")
            w, i, n = running.pop(ready[0])
            result = ray.get(ready[0])
            st = states[i]
            st.in_flight -= n
            st.tried += len(result["episodes"])
            env_steps += result["steps"]
            kept = [e for e in result["episodes"] if e["success"] or not demo_cfg.only_success]
            bar.update(st.add(kept))
            if st.exhausted():
                raise VlaforgeError(
                    f"demos: the scripted expert of task {st.name!r} succeeded in {st.kept} of "
                    f"{st.tried} attempts, {target} needed (demos.max_attempts_factor="
                    f"{demo_cfg.max_attempts_factor}); raise the factor or lower episodes_per_task"
                )
            if writer is None:
                writer = _make_writer(dest, timeouts.get(workers[w].spec.remote(st.name), timeout_s, f"demos: spec() of actor {w}"), env_cfg, demo_cfg, digest)
            submit(w)  # keep the actor busy while this process encodes and writes
            while next_to_write < len(states) and states[next_to_write].complete():  # task order
                for ep in states[next_to_write].episodes:
                    frames_ = {k: ep[k] for k in ep if k.startswith(("observation.", "action", "next."))}
                    if demo_cfg.drop_actions:  # action-free video: the labels only under probe.action
                        frames_[F.PROBE_ACTION_KEY] = frames_.pop(F.ACTION_KEY)
                    writer.add_episode(frames_,
                                       task=ep["instruction"], env_task=states[next_to_write].name, seed=ep["seed"])
                    frames += ep["length"]
                states[next_to_write].episodes, states[next_to_write].written = [], True  # free the memory
                next_to_write += 1
        if next_to_write != len(states):  # every job returned yet some task is short: a logic error
            raise RuntimeError(f"demos: tasks {[s.name for s in states if not s.complete()]} incomplete")
        path = writer.finalize()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        for wk in workers:  # also stops jobs still running after an error
            ray.kill(wk)
    dt = time.perf_counter() - t0
    log.info("demos: %d episodes, %d frames, %.0f env steps/s -> %s", len(tasks) * target, frames, env_steps / dt, path)
    return path


def _make_writer(
    dest: Path, spec: dict[str, Any], env_cfg: EnvConfig, demo_cfg: DemoConfig, digest: str
) -> DatasetWriter:
    _, h, w, _ = spec["image_shape"]
    features: dict[str, dict[str, Any]] = {F.IMAGE_PREFIX + c: F.video_feature(h, w) for c in spec["cameras"]}
    features.update({
        F.STATE_KEY: F.vector_feature("float32", spec["state_dim"]),
        F.PRIVILEGED_KEY: F.vector_feature("float32", spec["privileged_dim"]),
        F.PROBE_ACTION_KEY if demo_cfg.drop_actions else F.ACTION_KEY:
            F.vector_feature("float32", spec["action_dim"], ["x", "y", "z", "gripper"][: spec["action_dim"]]),
        F.REWARD_KEY: F.scalar_feature("float32"),
        F.SUCCESS_KEY: F.scalar_feature("bool"),
        F.DONE_KEY: F.scalar_feature("bool"),
    })
    return DatasetWriter(
        dest, fps=spec["fps"], features=features, robot_type=ROBOT_TYPES.get(env_cfg.backend, env_cfg.backend),
        codec=demo_cfg.video_codec, episode_columns={"env_task": pa.string(), "seed": pa.int64()},
        provenance={"hash": digest, **dataset_key(env_cfg, demo_cfg)},
    )
