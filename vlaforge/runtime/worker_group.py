"""One small class that owns the distributed plumbing: N ranks of a Ray actor class (OpenRLHF launcher style).

Rank layout (PACK: fill a node before spilling to the next; bundle i hosts rank i)::

    placement group  [ bundle 0 | bundle 1 | bundle 2 | bundle 3 ]   each {CPU: c, GPU: g}
                       node A     node A     node B     node B
    RANK               0          1          2          3
    LOCAL_RANK         0          1          0          1          (node-local index; 0 on GPU, see below)
    MASTER_ADDR:PORT   node A's IP : a free port found on node A (rank 0 hosts the rendezvous store)

The env vars are set through each actor's ``runtime_env`` so they exist before the class is even
imported: ``torch.distributed`` / ``deepspeed.init_distributed`` read them with the ``env://`` method.
The actor class stays a plain class; it knows nothing of Ray.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from vlaforge.runtime import timeouts
from vlaforge.runtime.config import TimeoutsConfig
from vlaforge.runtime.process import process_env

_DEFAULT = TimeoutsConfig()
PROBE_GROUP = "vlaforge-probe"  # a second thread in each rank that answers liveness probes during a long call


class WorkerError(RuntimeError):
    """A rank raised, died or hung inside a fanned-out call; ``rank``, ``method`` and ``kind`` say where and how.

    kind: "raised" (a Python exception on the rank), "died" (its process is gone: killed, OOM, segfault),
    "hung" (alive but answers no liveness probe: stopped, deadlocked), "timeout" (every rank still answers
    probes but the call overran its deadline). ``lost`` is True for the last three: the group is broken and
    the work must restart from a checkpoint, whereas "raised" is usually a bug that would repeat."""

    def __init__(self, group: str, rank: int, world: int, method: str, cause: BaseException | str,
                 kind: str = "raised", detail: str = ""):
        self.rank, self.method, self.cause, self.kind = rank, method, cause, kind
        what = {"raised": "failed in", "died": "died in", "hung": "hung in", "timeout": "timed out in"}[kind]
        text = str(cause)
        if kind == "died":  # Ray's death notice runs to a dozen lines of generic causes: its first line says it
            text = text.strip().splitlines()[0] if text.strip() else type(cause).__name__
        super().__init__(f"{group}: rank {rank}/{world} {what} {method}(): {text}" + (f" ({detail})" if detail else ""))

    @property
    def lost(self) -> bool:
        return self.kind != "raised"


def _pid_and_node(_self: Any = None) -> tuple[int, str]:
    return os.getpid(), ray.get_runtime_context().get_node_id()


def _free_port() -> int:
    # Bind port 0 to let the OS pick; the small race until rank 0 binds it is accepted (as OpenRLHF/verl).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@ray.remote(num_cpus=0)
def _node_ip_and_free_port() -> tuple[str, int]:
    return ray.util.get_node_ip_address(), _free_port()


class WorkerGroup:
    """N ranks of ``actor_cls`` in one placement group, with rank env vars and fan-out calls.

    ``group.call("m", *a, **kw)`` runs ``m`` on every rank with the same arguments and returns the results
    in rank order; an exception on any rank is raised as :class:`WorkerError` naming the rank, as soon as
    it arrives (collective calls on the other ranks would otherwise hang waiting for the dead peer).
    """

    def __init__(
        self,
        actor_cls: type,
        num_workers: int,
        *,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        strategy: str = "PACK",
        name: str = "workers",
        env_vars: dict[str, str] | None = None,
        init_args: Sequence[Any] = (),
        init_kwargs: dict[str, Any] | None = None,
        placement_timeout_s: float = 120.0,
        timeout_s: float = _DEFAULT.learner_call_s,
        probe_s: float = _DEFAULT.probe_s,
        probe: bool = False,
    ):
        """``timeout_s``: deadline of every call that names none; ``probe``: give each rank a second thread
        (a Ray concurrency group) that answers liveness probes during a long call, so a timeout or error can
        name the rank that hung rather than its peers blocked in a collective. Only for classes that keep no
        thread-bound state (an EGL context made current in ``__init__`` would be on another thread)."""
        if num_workers < 1:
            raise ValueError(f"WorkerGroup {name!r}: num_workers must be >= 1, got {num_workers}")
        self.name, self.world_size = name, num_workers
        self.timeout_s, self.probe_s, self._probe = float(timeout_s), float(probe_s), bool(probe)
        bundle = {"CPU": float(cpus_per_worker)}
        if gpus_per_worker > 0:
            bundle["GPU"] = float(gpus_per_worker)
        self._pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy, name=f"{name}-pg")
        try:
            ray.get(self._pg.ready(), timeout=placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self._pg)
            raise RuntimeError(
                f"WorkerGroup {name!r}: could not place {num_workers} bundles of {bundle} ({strategy}) within "
                f"{placement_timeout_s:.0f} s; cluster resources: {ray.cluster_resources()}. Lower num_workers or "
                "cpus/gpus per worker, or add nodes."
            ) from None

        bundle_nodes = placement_group_table(self._pg)["bundles_to_node_id"]  # {bundle index: node id}
        master_addr, master_port = self._rendezvous(bundle_nodes[0])
        if isinstance(actor_cls, ray.actor.ActorClass):
            self._remote_cls, self._probe = actor_cls, False  # concurrency groups are fixed at decoration
        else:
            self._remote_cls = ray.remote(concurrency_groups={PROBE_GROUP: 1})(actor_cls) if probe else ray.remote(actor_cls)
        self._resources = (float(cpus_per_worker), float(gpus_per_worker))
        self._init_args, self._init_kwargs = tuple(init_args), dict(init_kwargs or {})
        self._rank_env: list[dict[str, str]] = []
        for rank in range(num_workers):
            node = bundle_nodes[rank]
            local_rank = sum(1 for r in range(rank) if bundle_nodes[r] == node)
            local_world = sum(1 for r in range(num_workers) if bundle_nodes[r] == node)
            self._rank_env.append({
                **process_env(),
                **(env_vars or {}),
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "RANK": str(rank),
                "WORLD_SIZE": str(num_workers),
                # With GPUs Ray narrows CUDA_VISIBLE_DEVICES to the actor's own device(s), so the device index
                # seen inside the actor is 0 whatever the node-local position (OpenRLHF does the same).
                "LOCAL_RANK": "0" if gpus_per_worker > 0 else str(local_rank),
                "LOCAL_WORLD_SIZE": str(local_world),
            })
        self.actors: list[ray.actor.ActorHandle] = [self._spawn(rank) for rank in range(num_workers)]

    def _spawn(self, rank: int, **init_kwargs: Any) -> ray.actor.ActorHandle:
        """Start rank ``rank``'s actor in its bundle, with its env vars (init kwargs override the group's)."""
        cpus, gpus = self._resources
        return self._remote_cls.options(
            num_cpus=cpus,
            num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self._pg, placement_group_bundle_index=rank),
            runtime_env={"env_vars": self._rank_env[rank]},
            name=None,
        ).remote(*self._init_args, **{**self._init_kwargs, **init_kwargs})

    def restart(self, rank: int, **init_kwargs: Any) -> ray.actor.ActorHandle:
        """Replace rank ``rank``'s actor (dead or alive) by a fresh one in the same bundle, same env vars."""
        if not 0 <= rank < len(self.actors):
            raise ValueError(f"{self.name}.restart: rank {rank} not in [0, {len(self.actors)})")
        try:
            ray.kill(self.actors[rank], no_restart=True)  # frees the bundle's CPUs for the new actor
        except Exception:  # noqa: BLE001 -- already dead is fine
            pass
        self.actors[rank] = self._spawn(rank, **init_kwargs)
        return self.actors[rank]

    @staticmethod
    def _rendezvous(node_id: str) -> tuple[str, int]:
        """IP of rank 0's node and a port free there (asked on that node unless it is the driver's)."""
        if node_id == ray.get_runtime_context().get_node_id():
            return ray.util.get_node_ip_address(), _free_port()
        task = _node_ip_and_free_port.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        )
        return timeouts.get(task.remote(), _DEFAULT.actor_start_s, f"free-port probe on node {node_id}")

    # -- fan-out ------------------------------------------------------------------------------------
    def call_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Start ``method(*args, **kwargs)`` on every rank; ObjectRefs in rank order."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_each(self, method: str, per_rank_args: Sequence[Sequence[Any]], timeout: float | None = None) -> list:
        """Run ``method(*per_rank_args[r])`` on rank r (e.g. a sharded batch); results in rank order."""
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"{self.name}.call_each({method}): {len(per_rank_args)} arg tuples for {self.world_size} ranks")
        refs = [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_rank_args)]
        return self.get(refs, method, timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> list:
        """Run ``method`` on every rank with the same arguments and wait; results in rank order."""
        return self.get(self.call_async(method, *args, **kwargs), method, timeout)

    def call_rank(self, rank: int, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``method`` on one rank (must not be a collective, or it waits for the other ranks forever)."""
        ref = getattr(self.actors[rank], method).remote(*args, **kwargs)
        return self.get([ref], method, timeout, ranks=[rank])[0]

    def call_rank0(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self.call_rank(0, method, *args, timeout=timeout, **kwargs)

    def get(self, refs: Sequence[ray.ObjectRef], method: str = "?", timeout: float | None = None,
            ranks: Sequence[int] | None = None) -> list:
        """Wait for per-rank refs (deadline: ``timeout`` or the group's ``timeout_s``). The first failure raises
        :class:`WorkerError` naming the rank that caused it: a dead or hung rank rather than the peers that
        failed or blocked in a collective because of it."""
        timeout = self.timeout_s if timeout is None else float(timeout)
        ranks = list(range(len(refs))) if ranks is None else list(ranks)
        pending = dict(zip(refs, ranks))
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise self._diagnose(method, None, None, pending, f"did not finish within {timeout:g} s")
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)  # ready: returns at once
                except (RayTaskError, RayActorError) as e:
                    raise self._diagnose(method, rank, e, pending, "") from e
        return [results[r] for r in ranks]

    def _diagnose(self, method: str, rank: int | None, err: BaseException | None, pending: dict, why: str) -> WorkerError:
        """The culprit of a failed or overdue call. A rank killed mid-collective makes its peers raise (gloo:
        connection closed) or block: give the other ranks ``probe_s`` to show their own state, then blame,
        in order, a rank that died, a rank that answers no probe (hung), the rank that raised first."""
        world = self.world_size
        if err is not None and isinstance(err, RayActorError):
            return WorkerError(self.name, rank, world, method, err, "died")
        died: dict[int, BaseException] = {}
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.probe_s if err is not None else 0)
            for ref in ready:
                r = pending.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError as e:
                    died[r] = e
                except RayTaskError:
                    pass
        if died:
            r = min(died)
            return WorkerError(self.name, r, world, method, died[r], "died",
                               f"rank {rank} failed first: {err}" if err is not None else "")
        waiting = sorted(pending.values())
        hung = self._unresponsive(waiting)
        if hung:
            alive = [r for r in waiting if r not in hung]
            detail = f"{why}; " if why else ""
            detail += f"ranks {hung} answer no liveness probe within {self.probe_s:g} s (stopped or deadlocked)"
            if alive:
                detail += f"; ranks {alive} are alive (blocked in a collective on it)"
            cause = f"rank {hung[0]} is not responding" if err is None else err
            return WorkerError(self.name, hung[0], world, method, cause, "hung", detail)
        if err is not None:
            return WorkerError(self.name, rank, world, method, err, "raised")
        return WorkerError(self.name, waiting[0], world, method, f"{method}() on ranks {waiting} {why}", "timeout",
                           "every rank answers liveness probes: a slow call, or a deadlock between alive ranks; "
                           "raise runtime.timeouts if the call is just slow")

    def _unresponsive(self, ranks: Sequence[int]) -> list[int]:
        """Ranks whose liveness probe gets no answer within ``probe_s`` (every rank if probing is off)."""
        if not ranks:
            return []
        if not self._probe:
            return list(ranks)
        refs = {self.actors[r].__ray_call__.options(concurrency_group=PROBE_GROUP).remote(_pid_and_node): r for r in ranks}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.probe_s)
        answered = set()
        for ref in ready:
            try:
                ray.get(ref)
                answered.add(refs[ref])
            except (RayTaskError, RayActorError):
                pass
        return [r for r in ranks if r not in answered]

    def processes(self) -> list[tuple[int, str]]:
        """(pid, node id) of every rank (through the probe thread when probing: answers during a long call)."""
        opts = {"concurrency_group": PROBE_GROUP} if self._probe else {}
        refs = [a.__ray_call__.options(**opts).remote(_pid_and_node) for a in self.actors]
        return [tuple(x) for x in timeouts.get(refs, self.probe_s if self._probe else self.timeout_s,
                                               f"{self.name}: pid query of every rank")]

    def shutdown(self) -> None:
        """Kill every rank and free the placement group (idempotent)."""
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 -- already dead is fine
                pass
        self.actors = []
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001 -- the cluster may already be gone
                pass
            self._pg = None

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
