"""The RL stage's weight broadcast, one object for both transports (``rollout.broadcast``).

    sync = WeightSync(recipe, learners)
    handle = sync.publish()            # object_store: learner rank 0 publishes v; collective: None (no group yet:
                                       #   the actors are built from the exported start policy, the same weights)
    pool = RolloutPool(...)
    handle = sync.attach(pool, handle) # collective: form the group (learner rank 0 + K actors), broadcast v
    batch, handle = sync.sample(pool, handle)   # collective: an actor restart re-forms the group, re-broadcasts
    ...update...
    handle = sync.publish()            # collective: the learners' send and the actors' receive, together

object_store: one ``ray.put`` of the flat buffer per version; actors load lazily at their next sample.
collective: a torch.distributed group (learners/weight_group.py, runtime/weights/collective.py); both sides
must run at once, so the driver starts the actors' receive and the learner's send together and waits on
both (bounded by runtime.timeouts.weights_s). NCCL (GPU actors) runs the same code with backend "nccl"; it
is not exercised on this project's CPU machines -- gloo is, in tests/platform/test_weight_sync.py.
"""

from __future__ import annotations

import logging
from typing import Any

from vlaforge.runtime import timeouts

log = logging.getLogger(__name__)


class WeightSync:
    def __init__(self, recipe: Any, learners: Any) -> None:
        self.cfg, self.learners = recipe.rollout, learners
        self.timeout_s = float(recipe.runtime.timeouts.weights_s)
        self.collective = self.cfg.broadcast == "collective"
        self.pool = None
        self.groups_formed = 0  # collective: 1 + re-formations after actor restarts (run summary, tests)

    def publish(self) -> Any:
        """A new weights version for the actors (after an update): object_store -> its handle; collective ->
        the handle of the broadcast the actors just received (None before ``attach``)."""
        if not self.collective:
            return self.learners.call("publish_weights")[0]
        if self.pool is None:
            return None
        return self._broadcast()

    def attach(self, pool: Any, handle: Any) -> Any:
        """The pool exists: collective -> form the group and broadcast the current weights (a new version)."""
        self.pool = pool
        if not self.collective:
            return handle
        self._form_group()
        return self._broadcast()

    def sample(self, pool: Any, handle: Any) -> tuple[Any, Any]:
        """``pool.sample(handle)``; collective: when a restarted actor broke the group (WeightGroupLost), form
        a new one, broadcast, sample again (the pool's restart budget bounds the retries). -> (batch, handle)."""
        from vlaforge.platform.rollout_pool import WeightGroupLost

        while True:
            try:
                return pool.sample(handle), handle
            except WeightGroupLost as e:
                log.warning("rollout: %s; forming a new weight group", e)
                self._form_group()
                handle = self._broadcast()

    def _form_group(self) -> None:
        addr, port, auto = self.learners.call_rank0("weight_group_address")
        backend = auto if self.cfg.broadcast_backend == "auto" else self.cfg.broadcast_backend
        world = self.pool.num_actors + 1
        actor_refs = self.pool.join_weight_group(addr, port, backend=backend, timeout_s=self.timeout_s)
        learner_refs = self.learners.call_async("join_weight_group", addr, port, world, backend,
                                                self.cfg.broadcast_bucket_mb, self.timeout_s)
        # The rendezvous needs every member at once: wait on both sides together.
        self.learners.get(learner_refs, "join_weight_group", self.timeout_s)
        timeouts.get(actor_refs, self.timeout_s, f"{len(actor_refs)} rollout actors joining the weight group")
        self.groups_formed += 1
        log.info("weight group %d formed: learner rank 0 + %d rollout actors, %s at %s:%d", self.groups_formed,
                 world - 1, backend, addr, port)

    def _broadcast(self) -> Any:
        acks = self.pool.receive_weights()  # the actors' receive, started before the send
        handle = self.learners.call("broadcast_weights", timeout=self.timeout_s)[0]
        versions = timeouts.get(acks, self.timeout_s, f"{len(acks)} rollout actors receiving weights")
        if any(v != handle.version for v in versions):
            raise RuntimeError(f"weight group: actors hold versions {versions} after broadcasting v{handle.version}")
        return handle
