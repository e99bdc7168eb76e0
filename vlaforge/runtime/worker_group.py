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

import socket
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from vlaforge.runtime.process import process_env


class WorkerError(RuntimeError):
    """A rank raised (or died) inside a fanned-out call; ``rank`` and ``method`` say where."""

    def __init__(self, group: str, rank: int, world: int, method: str, cause: BaseException):
        self.rank, self.method, self.cause = rank, method, cause
        super().__init__(f"{group}: rank {rank}/{world} failed in {method}(): {cause}")


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
    ):
        if num_workers < 1:
            raise ValueError(f"WorkerGroup {name!r}: num_workers must be >= 1, got {num_workers}")
        self.name, self.world_size = name, num_workers
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
        self._remote_cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
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
        return ray.get(task.remote())

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

    def call_rank0(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``method`` on rank 0 only (must not be a collective, or it waits for the other ranks forever)."""
        return self.get([getattr(self.actors[0], method).remote(*args, **kwargs)], method, timeout)[0]

    def get(self, refs: Sequence[ray.ObjectRef], method: str = "?", timeout: float | None = None) -> list:
        """Wait for per-rank refs; the first failing rank raises :class:`WorkerError` at once."""
        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                ranks = sorted(pending.values())
                raise TimeoutError(f"{self.name}: {method}() did not finish within {timeout} s on ranks {ranks}")
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except (RayTaskError, RayActorError) as e:
                    raise WorkerError(self.name, rank, len(refs), method, e) from e
        return results

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
