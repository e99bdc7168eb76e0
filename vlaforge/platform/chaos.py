"""Chaos mode (the ``chaos:`` recipe block): inject real faults into a running run, so that the recovery
paths are exercised where they matter, not only in unit tests.

    kill_rollout_actor   SIGKILL of a rollout actor's process while it samples   -> pool replaces it, re-syncs
    stop_rollout_actor   SIGSTOP of a rollout actor's process (alive, silent)   -> sample deadline, kill, replace
    kill_learner         SIGKILL of a learner rank before one of its next steps  -> stage restarts from checkpoint
    corrupt_checkpoint   truncate the largest file of the newest checkpoint      -> resume/restart falls back
    nan_batch            NaN inputs for the next chaos.nan_steps steps of a rank -> steps skipped, maybe rollback

Injections happen right before a training call (BC: every train.log_every steps; RL: every update). A
learner rank kills itself right before a random one of the call's optimizer steps (a real SIGKILL, at a
step rather than a time, so it always lands inside the call); rollout actors are signalled right before
their sample call (``chaos.delay_s`` = 0, deterministic) or that many seconds into it (mid-sample when
the call takes longer; a signal that lands after the call is met by the next one). What is injected goes to the run's FaultLog; what
the components saw and did goes there too (recovery.py), and the run summary prints both.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

from vlaforge.runtime import timeouts
from vlaforge.runtime.config import ChaosConfig

BC_FAULTS = {"kill_learner", "corrupt_checkpoint", "nan_batch"}
RL_FAULTS = BC_FAULTS | {"kill_rollout_actor", "stop_rollout_actor"}


def _pid_and_node(_self: Any = None) -> tuple[int, str]:
    import ray

    return os.getpid(), ray.get_runtime_context().get_node_id()


def send_signal(pid: int, node_id: str, sig: int) -> None:
    """Send ``sig`` to process ``pid`` on Ray node ``node_id`` (locally, or through a task pinned to that node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if node_id == ray.get_runtime_context().get_node_id():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # already gone: nothing to inject
        return
    task = ray.remote(num_cpus=0)(os.kill).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    timeouts.get(task.remote(pid, sig), 60.0, f"chaos: signal {sig} to pid {pid} on node {node_id}")


def actor_process(actor: Any, timeout_s: float) -> tuple[int, str]:
    """(pid, node id) of a Ray actor (a call into it: waits until it is idle)."""
    return tuple(timeouts.get(actor.__ray_call__.remote(_pid_and_node), timeout_s, "chaos: pid of an actor"))


def corrupt_newest_checkpoint(stage_dir: Path) -> Path | None:
    """Truncate the largest file of the stage's newest checkpoint to half its size; the file, or None."""
    from vlaforge.runtime import checkpoint as ckpt

    latest = ckpt.find_latest(stage_dir)
    if latest is None:
        return None
    files = [p for p in latest.rglob("*") if p.is_file()]
    if not files:
        return None
    victim = max(files, key=lambda p: p.stat().st_size)
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    return victim


class Chaos:
    """Draws and injects the faults of one run (scheduled ones first, then random ones)."""

    def __init__(self, cfg: ChaosConfig, faults: Any):
        self.cfg, self.faults = cfg, faults
        self.rng = random.Random(cfg.seed)
        self._done: set[int] = set()  # schedule entries already injected (a restarted stage does not repeat them)
        self._random = 0
        self._timers: list[threading.Timer] = []

    def _due(self, stage: str, allowed: set[str], step: int) -> list[str]:
        out = []
        for i, ev in enumerate(self.cfg.schedule):
            if i not in self._done and ev.fault in allowed and ev.stage in (None, stage) and step >= ev.step:
                self._done.add(i)
                out.append(ev.fault)
        kinds = [f for f in self.cfg.faults if f in allowed]
        if kinds and self._random < self.cfg.max_faults and self.rng.random() < self.cfg.probability:
            self._random += 1
            out.append(self.rng.choice(kinds))
        return out

    def before_train(self, stage: str, step: int, learners: Any, stage_dir: Path, pool: Any = None,
                     steps_in_call: int = 1) -> None:
        """Called right before a training call of ``steps_in_call`` optimizer steps (BC) or a rollout sample
        (RL, ``pool`` given; its update has at least one step)."""
        if not self.cfg.enabled:
            return
        for fault in self._due(stage, RL_FAULTS if pool is not None else BC_FAULTS, step):
            getattr(self, fault)(stage, step, learners=learners, pool=pool, stage_dir=stage_dir,
                                 steps_in_call=steps_in_call)

    def _later(self, pid: int, node: str, sig: int) -> None:
        if self.cfg.delay_s == 0:  # right before the call: it always meets the dead / stopped process
            send_signal(pid, node, sig)
            return
        t = threading.Timer(self.cfg.delay_s, send_signal, (pid, node, sig))
        t.daemon = True
        t.start()
        self._timers.append(t)

    # -- the faults --------------------------------------------------------------------------------------
    def kill_learner(self, stage: str, step: int, learners: Any, steps_in_call: int = 1, **_: Any) -> None:
        rank = self.rng.randrange(learners.world_size)
        at = self.rng.randint(1, max(1, steps_in_call))
        pid = learners.processes()[rank][0]
        learners.call_rank(rank, "kill_in_steps", at)
        self.faults.inject(stage, step, "kill_learner", f"SIGKILL of learner rank {rank} (pid {pid}) before step {at} "
                                                        f"of its next training call")

    def nan_batch(self, stage: str, step: int, learners: Any, **_: Any) -> None:
        rank = self.rng.randrange(learners.world_size)
        learners.call_rank(rank, "poison_steps", self.cfg.nan_steps)
        self.faults.inject(stage, step, "nan_batch", f"NaN inputs for the next {self.cfg.nan_steps} optimizer "
                                                     f"step(s) of learner rank {rank}")

    def corrupt_checkpoint(self, stage: str, step: int, stage_dir: Path, **_: Any) -> None:
        victim = corrupt_newest_checkpoint(stage_dir)
        detail = f"truncated {victim} to half its size" if victim else "no checkpoint yet: nothing corrupted"
        self.faults.inject(stage, step, "corrupt_checkpoint", detail)

    def _rollout_signal(self, stage: str, step: int, pool: Any, sig: int, name: str) -> None:
        k = self.rng.randrange(pool.num_actors)
        pid, node = actor_process(pool.group.actors[k], pool.timeouts.rollout_sample_s)
        self._later(pid, node, sig)
        when = f"{self.cfg.delay_s:g} s into its sample call" if self.cfg.delay_s else "right before its sample call"
        self.faults.inject(stage, step, name, f"{signal.Signals(sig).name} to rollout actor {k} (pid {pid}) {when}")

    def kill_rollout_actor(self, stage: str, step: int, pool: Any, **_: Any) -> None:
        self._rollout_signal(stage, step, pool, signal.SIGKILL, "kill_rollout_actor")

    def stop_rollout_actor(self, stage: str, step: int, pool: Any, **_: Any) -> None:
        self._rollout_signal(stage, step, pool, signal.SIGSTOP, "stop_rollout_actor")

    def close(self) -> None:
        for t in self._timers:
            t.cancel()
