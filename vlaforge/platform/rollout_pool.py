"""RolloutPool: K rollout actors in one placement group, sync or async sampling, restarts of dead actors.

```
driver                               WorkerGroup (placement group, bundle k = actor k)
  handle v = publisher.publish(..)
  pool.sample(handle v) --sample(v)--> actor 0: load v if newer, B sims x T decisions -> RolloutResult
                        --sample(v)--> actor 1: ...
       <-- RolloutBatch: TensorDict [K*B, T] (rows of actor k at k*B..), episode stats, metrics
```
- sync: every actor samples with version v; a failed request is re-run with the SAME handle, so a batch
  never mixes versions and always has K*B rows.
- async: one request per actor stays in flight between calls (actors sample while the learner trains).
  A call collects the first K results as they arrive (a fast actor may contribute several: nobody waits
  for a straggler), resubmitting each actor at once with the newest handle; a result whose lag (newest
  version - its version) exceeds ``max_policy_lag`` is dropped and counted when it arrives.
- faults: an actor that dies (segfault, os.kill, ray.kill, OOM), hangs (a request overruns
  ``runtime.timeouts.rollout_sample_s``: a stopped process, a wedged simulator; it is killed first) or whose
  env kept failing (``RolloutEnvError``) is replaced in its bundle (``WorkerGroup.restart``) with a new seed
  stream; the handle travels with every request, so its first sample loads the newest weights. Its lost request
  counts as dropped: B x T trajectory steps (an upper bound: the partial trajectory died with the
  process). Other exceptions are bugs and raise at once. More than ``max_restarts`` restarts over the
  pool's life raise ``RolloutPoolError``.
Counters are cumulative over the pool's life and each event is counted once, where it is observed.

Metrics of each ``sample`` call (``RolloutBatch.metrics``):
  rollout/env_steps, rollout/env_steps_per_s   executed env steps in the batch; per second of the call
                                               (async: per second since the previous call returned)
  rollout/episode_return, episode_length, success_rate, episodes   over episodes that ended in the batch
  rollout/success_rate/<task>                                      the same per task
  rollout/policy_lag, policy_lag_max           newest version - each row's version
  time/rollout_s                               wall time of the call
  time/broadcast_s                             slowest actor's weight load (ray.get + copy) in the batch
  time/rollout_policy_s, time/rollout_env_s    slowest actor's inference / simulator time
  rollout/actor_restarts, dropped_steps, dropped_env_steps, env_restarts, stale_results,
  dropped_stale_steps                          cumulative counters (steps = trajectory steps, sims x decisions)
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutEnvError, RolloutWorker
from vlaforge.actors.trajectory import EpisodeStats, RolloutResult
from vlaforge.envs.config import EnvConfig
from vlaforge.runtime import timeouts
from vlaforge.runtime.config import TimeoutsConfig
from vlaforge.runtime.weights import CollectiveBroadcaster, WeightsHandle, WeightSubscriber
from vlaforge.runtime.worker_group import WorkerGroup

log = logging.getLogger(__name__)
_POOL_IDS = itertools.count()  # placement-group names must be unique within a job


class RolloutPoolError(RuntimeError):
    """The rollout pool cannot go on (restart budget exhausted, or an actor raised a non-recoverable error)."""


class WeightGroupLost(RolloutPoolError):
    """broadcast='collective': an actor was restarted and is not in the weight group. The driver forms a new
    group (learner rank 0 + ``pool.join_weight_group``), broadcasts, and calls ``sample`` again."""


@dataclass
class RolloutBatch:
    data: TensorDict  # [N*B, T]: N results (K in sync mode) concatenated along the env dim
    episodes: EpisodeStats  # episodes that ended inside this batch's trajectories
    versions: list[int]  # policy version of each result, in row-block order
    ranks: list[int]  # actor of each result, in row-block order
    metrics: dict[str, float] = field(default_factory=dict)


class ActorHung(RuntimeError):
    """A rollout request overran its deadline: the actor is alive but not answering (stopped, wedged)."""


def _restartable(err: BaseException) -> bool:
    """Actor death or hang, or an env that kept failing: replace the actor. Anything else is a bug to surface."""
    return isinstance(err, (RayActorError, ActorHung)) or isinstance(_cause(err), RolloutEnvError)


def _cause(err: BaseException) -> BaseException:
    """The actor-side exception inside a RayTaskError (an actor death has none: the error itself)."""
    return (err.cause or err) if isinstance(err, RayTaskError) else err


class RolloutPool:
    def __init__(
        self,
        env_cfg: EnvConfig,
        policy: PolicySource,
        cfg: RolloutConfig,
        tasks: list[str] | None = None,
        *,
        seed: int = 0,
        worker_cls: type = RolloutWorker,
        name: str = "rollout",
        timeouts_cfg: TimeoutsConfig | None = None,
    ):
        self.cfg = cfg if cfg.seed is not None else cfg.model_copy(update={"seed": seed})
        self.timeouts = timeouts_cfg or TimeoutsConfig()
        self.num_actors, self.envs_per_actor = cfg.num_actors, cfg.envs_per_actor
        init_kwargs = dict(
            env_cfg=env_cfg.model_dump(mode="json"),
            policy=policy,
            cfg=self.cfg.model_dump(mode="json"),
            tasks=list(tasks or env_cfg.tasks),
            weights=WeightSubscriber(timeout_s=self.timeouts.weights_s),  # collective: replaced by join_weight_group()
        )
        self.group = WorkerGroup(
            worker_cls, cfg.num_actors, cpus_per_worker=cfg.cpus_per_actor, name=f"{name}-{next(_POOL_IDS)}",
            init_kwargs=init_kwargs, timeout_s=self.timeouts.actor_start_s + self.timeouts.rollout_sample_s,
        )
        self._incarnation = [0] * cfg.num_actors
        # A replacement's first request may also wait for it to build env + policy (actor_start_s); once its
        # readiness ref (``__ray_ready__``) resolves, the request's clock restarts with rollout_sample_s alone.
        self._fresh = [True] * cfg.num_actors
        self._starting: dict[ray.ObjectRef, int] = {}  # readiness ref of a replacement -> rank
        self._due = timeouts.Deadlines()  # request -> deadline
        self.events: list[dict[str, Any]] = []  # one entry per actor failure and how it was handled (run summary)
        self._inflight: dict[ray.ObjectRef, int] = {}  # async: request -> rank
        self._resubmit: list[int] = []  # actors just replaced after a hang, whose request must be re-run
        self._collected = 0  # async: results accepted so far in the current call
        self._latest_version = 0
        self.counters = {"actor_restarts": 0, "actor_hangs": 0, "dropped_steps": 0, "dropped_env_steps": 0, "env_restarts": 0,
                         "dropped_stale_steps": 0, "stale_results": 0}
        self._needs_weight_group = cfg.broadcast == "collective"
        try:  # wait until every actor built its env and policy: a bad recipe fails here, clearly
            self.group.call("info", timeout=self.timeouts.actor_start_s)
            self._fresh = [False] * cfg.num_actors
        except Exception as e:
            self.group.shutdown()
            raise RolloutPoolError(f"rollout actors failed to start: {e}") from e
        self._last_return = time.perf_counter()  # async throughput is measured from here

    # -- weights (collective path) ----------------------------------------------------------------------
    def join_weight_group(self, master_addr: str, master_port: int, backend: str = "nccl", **kw: Any) -> list[ray.ObjectRef]:
        """Collective broadcast: actor k joins as group rank k+1 (rank 0 = learner rank 0). Returns the refs
        to wait on TOGETHER with the learner's own ``CollectiveBroadcaster(rank=0, ...)`` construction.
        Call again after an actor restart (the old group lost a member): ``needs_weight_group`` says when."""
        refs = []
        for k, actor in enumerate(self.group.actors):
            factory = functools.partial(CollectiveBroadcaster, rank=k + 1, world_size=self.num_actors + 1,
                                        master_addr=master_addr, master_port=master_port, backend=backend, **kw)
            refs.append(actor.set_weights.remote(factory))
        self._needs_weight_group = False
        return refs

    @property
    def needs_weight_group(self) -> bool:
        return self._needs_weight_group

    def receive_weights(self) -> list[ray.ObjectRef]:
        """Collective broadcast: start every actor's receive; wait on it together with the learner's publish."""
        return [a.load_weights.remote(None) for a in self.group.actors]

    # -- sampling -----------------------------------------------------------------------------------------
    def sample(self, handle: WeightsHandle | None) -> RolloutBatch:
        """One batch of trajectories produced with ``handle`` (sync) or recent versions (async)."""
        version = 0 if handle is None else int(handle.version)
        if version < self._latest_version:
            raise ValueError(f"RolloutPool.sample: handle v{version} is older than v{self._latest_version} already used")
        if self._needs_weight_group:
            raise RolloutPoolError("rollout.broadcast='collective': call join_weight_group() first (again after an "
                                   "actor restart: the old group lost a member) and broadcast the weights")
        self._latest_version, self._latest = version, handle
        t0 = time.perf_counter()
        results = self._sample_sync(handle) if self.cfg.mode == "sync" else self._sample_async()
        now = time.perf_counter()
        rollout_s, interval_s = now - t0, now - self._last_return
        self._last_return = now
        return self._batch(results, rollout_s, interval_s if self.cfg.mode == "async" else rollout_s)

    def _submit(self, rank: int, handle: WeightsHandle | None) -> ray.ObjectRef:
        ref = self.group.actors[rank].sample.remote(handle)
        t = self.timeouts
        self._due.start(ref, t.rollout_sample_s + (t.actor_start_s if self._fresh[rank] else 0.0))
        self._fresh[rank] = False
        return ref

    def _next_ready(self, pending: dict[ray.ObjectRef, int]) -> ray.ObjectRef | None:
        """The next finished request, or None after replacing every actor whose request overran its deadline
        (each such request is removed from ``pending``; the caller resubmits from ``self._resubmit``)."""
        self._due.keep(pending)
        while True:
            ready, _ = ray.wait(list(pending) + list(self._starting), num_returns=1, timeout=self._due.left())
            if not ready or ready[0] not in self._starting:
                break
            rank = self._starting.pop(ready[0])  # a replacement is up: its request now has rollout_sample_s
            for ref, r in pending.items():
                if r == rank:
                    self._due.start(ref, self.timeouts.rollout_sample_s)
        if ready:
            self._due.stop(ready[0])
            return ready[0]
        self._resubmit = []
        for ref in self._due.overdue():
            if ref not in pending:
                continue
            rank = pending.pop(ref)
            self._due.stop(ref)
            self.counters["actor_hangs"] += 1
            self._on_failure(rank, ActorHung(
                f"rollout actor {rank}: sample() did not finish within its deadline (runtime.timeouts.rollout_sample_s="
                f"{self.timeouts.rollout_sample_s:g} s); alive but not answering: killed"))
            self._resubmit.append(rank)
        return None

    def _sample_sync(self, handle: WeightsHandle | None) -> list[RolloutResult]:
        pending = {self._submit(r, handle): r for r in range(self.num_actors)}
        results: list[RolloutResult | None] = [None] * self.num_actors
        while pending:
            ref = self._next_ready(pending)
            if ref is None:  # hung actors were replaced: re-run their requests with the same handle
                for rank in self._resubmit:
                    pending[self._submit(rank, handle)] = rank
                continue
            rank = pending.pop(ref)
            try:
                results[rank] = self._take(ray.get(ref))
            except (RayActorError, RayTaskError) as e:
                self._on_failure(rank, e)
                pending[self._submit(rank, handle)] = rank  # same handle: the batch stays one version
        self._due.clear()
        return results  # type: ignore[return-value]

    def _sample_async(self) -> list[RolloutResult]:
        busy = set(self._inflight.values())
        for r in range(self.num_actors):
            if r not in busy:
                self._inflight[self._submit(r, self._latest)] = r
        results: list[RolloutResult] = []
        self._collected = 0
        while len(results) < self.num_actors:
            ref = self._next_ready(self._inflight)
            if ref is None:
                for rank in self._resubmit:
                    self._inflight[self._submit(rank, self._latest)] = rank
                continue
            rank = self._inflight.pop(ref)
            try:
                res = self._take(ray.get(ref))
            except (RayActorError, RayTaskError) as e:
                self._on_failure(rank, e)
                self._inflight[self._submit(rank, self._latest)] = rank
                continue
            self._inflight[self._submit(rank, self._latest)] = rank  # keep it busy with the newest weights
            lag = self._latest_version - res.version
            if lag > self.cfg.max_policy_lag:
                self.counters["stale_results"] += 1
                self.counters["dropped_stale_steps"] += int(res.data.numel())
                log.info("rollout: dropped a result of actor %d, v%d is %d versions behind v%d (max_policy_lag=%d)",
                         rank, res.version, lag, self._latest_version, self.cfg.max_policy_lag)
                continue
            results.append(res)
            self._collected = len(results)
        return results

    def _take(self, res: RolloutResult) -> RolloutResult:
        """Account a successful result's own in-actor env failures (each counted once, here)."""
        self.counters["dropped_steps"] += res.dropped_steps
        self.counters["dropped_env_steps"] += res.dropped_env_steps
        self.counters["env_restarts"] += res.env_restarts
        return res

    def _on_failure(self, rank: int, err: BaseException) -> None:
        if not _restartable(err):
            raise RolloutPoolError(f"rollout actor {rank} raised (not an actor death or env failure, so not "
                                   f"restarted): {_cause(err)!r}") from err
        cause = _cause(err)
        if isinstance(cause, RolloutEnvError):  # the actor reports exactly what it discarded
            self.counters["dropped_steps"] += cause.dropped_steps
            self.counters["dropped_env_steps"] += cause.dropped_env_steps
        else:  # died mid-request: its partial trajectory is gone with the process
            self.counters["dropped_steps"] += self.envs_per_actor * self.cfg.steps_per_sample
        self.counters["actor_restarts"] += 1
        n, budget = self.counters["actor_restarts"], self.cfg.max_restarts
        if n > budget:
            raise RolloutPoolError(
                f"rollout actor {rank} failed ({type(cause).__name__}: {cause}); that is restart {n} of this run and "
                f"rollout.max_restarts={budget}: stopping. Fix the cause above or raise rollout.max_restarts."
            ) from err
        brief = (str(cause).strip().splitlines() or [""])[0]  # Ray's death notice: a dozen lines of generic causes
        log.warning("rollout: actor %d failed (%s: %s); restarting it (%d/%d)", rank, type(cause).__name__, brief, n, budget)
        self._incarnation[rank] += 1
        actor = self.group.restart(rank, incarnation=self._incarnation[rank])  # kills it first (a hung one too)
        self._fresh[rank] = True
        self._starting = {ref: r for ref, r in self._starting.items() if r != rank}
        self._starting[actor.__ray_ready__.remote()] = rank
        kind = {RolloutEnvError: "env kept failing", ActorHung: "hung"}.get(type(cause), "died")
        self.events.append({
            "fault": f"rollout actor {kind}", "rank": rank, "detail": f"{type(cause).__name__}: {brief}"[:300],
            "time": time.time(),
            "handled": f"killed and replaced (incarnation {self._incarnation[rank]}, restart {n}/{budget}); its request "
                       f"re-run with weights v{self._latest_version}, which the new actor loads first"})
        if self.cfg.broadcast == "collective":
            # The replacement holds no weights and cannot join the old group (fixed world size): stop here.
            # This call's other requests (returned or still running) are abandoned: dropped, and counted.
            others = len(self._inflight) + self._collected if self.cfg.mode == "async" else self.num_actors - 1
            self.counters["dropped_steps"] += others * self.envs_per_actor * self.cfg.steps_per_sample
            self._inflight.clear()
            self._needs_weight_group = True
            raise WeightGroupLost(f"rollout actor {rank} was restarted; with rollout.broadcast='collective' every actor "
                                  "must join a new weight group: form it (learner rank 0 + pool.join_weight_group()), "
                                  "broadcast the weights, then call sample() again") from err

    # -- metrics ----------------------------------------------------------------------------------------
    def _batch(self, results: list[RolloutResult], rollout_s: float, interval_s: float) -> RolloutBatch:
        data = torch.cat([r.data for r in results], dim=0)  # [N*B, T]
        episodes = EpisodeStats()
        for r in results:
            episodes.extend(r.episodes)
        lags = (self._latest_version - data.get(keys.POLICY_VERSION)).float()  # (N*B, T)
        env_steps = sum(r.env_steps for r in results)
        m = {
            "rollout/env_steps": float(env_steps),
            "rollout/env_steps_per_s": env_steps / max(interval_s, 1e-9),
            "rollout/policy_lag": float(lags.mean()),
            "rollout/policy_lag_max": float(lags.max()),
            "time/rollout_s": rollout_s,
            "time/broadcast_s": max(r.timing.get("load_s", 0.0) for r in results),
            "time/rollout_policy_s": max(r.timing.get("policy_s", 0.0) for r in results),
            "time/rollout_env_s": max(r.timing.get("env_s", 0.0) for r in results),
            **{f"rollout/{k}": float(v) for k, v in self.counters.items()},
        }
        if len(episodes):
            m["rollout/episodes"] = float(len(episodes))
            m["rollout/episode_return"] = sum(episodes.returns) / len(episodes)
            m["rollout/episode_length"] = sum(episodes.lengths) / len(episodes)
            m["rollout/success_rate"] = sum(episodes.successes) / len(episodes)
            for task in sorted(set(episodes.tasks)):  # per task: one task's collapse is not hidden by another's gain
                won = [s for s, t in zip(episodes.successes, episodes.tasks) if t == task]
                m[f"rollout/success_rate/{task}"] = sum(won) / len(won)
        if self.cfg.mode == "async":
            log.info("rollout: policy lag mean %.2f max %d (max_policy_lag=%d), %d stale results dropped so far",
                     m["rollout/policy_lag"], m["rollout/policy_lag_max"], self.cfg.max_policy_lag,
                     self.counters["stale_results"])
        return RolloutBatch(data, episodes, [r.version for r in results], [r.rank for r in results], m)

    # -- lifecycle --------------------------------------------------------------------------------------
    def info(self) -> list[dict[str, Any]]:
        """Per actor: rank, pid, incarnation, tasks, version held, env restarts (waits for busy actors)."""
        return self.group.call("info", timeout=self.timeouts.rollout_sample_s)

    def shutdown(self) -> None:
        self._inflight.clear()
        self.group.shutdown()

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
