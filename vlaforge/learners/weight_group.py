"""Learner side of ``rollout.broadcast: collective``: learner rank 0 as rank 0 (the src) of a torch.distributed
weight group whose other ranks are the rollout actors (runtime/weights/collective.py).

```
driver (platform/weight_sync.py)         learner ranks 0..N-1 (this mixin)          rollout actors 1..K
  addr, port = rank0.weight_group_address()   rank 0: a free port on ITS node
  join: rank0.join_weight_group(..) + pool.join_weight_group(..)      (waited on together: the rendezvous)
  per update: pool.receive_weights() + learners.broadcast_weights()   (together: one collective)
                                          rank 0: publish over the group -> WeightsHandle(v, ref=None)
                                          all ranks: version += 1 (policy lag, checkpoints)
```
The group is separate from DeepSpeed's default group (see collective.py for why); ranks 1..N-1 of the
learners take no part in it but track the version. Kept out of rl_learner.py (a mixin) so that the RL
learner's file stays about learning.
"""

from __future__ import annotations

from typing import Any

from vlaforge.runtime.weights import CollectiveBroadcaster, layout_of_module, rendezvous_address


class WeightGroupMixin:
    """Needs ``self.rank``, ``self.engine``, ``self.version``, ``self.rl_update``, ``self._published_update``."""

    _weight_group: CollectiveBroadcaster | None = None

    def weight_group_address(self) -> tuple[str, int, str]:
        """Rank 0: (this node's address, a free port, the backend "auto" resolves to here: nccl with CUDA)."""
        import torch

        host, port = rendezvous_address()
        return host, port, "nccl" if torch.cuda.is_available() else "gloo"

    def join_weight_group(self, master_addr: str, master_port: int, world_size: int, backend: str,
                          bucket_mb: float, timeout_s: float) -> int:
        """Rank 0 builds the src side of a NEW group (rendezvous: the rollout actors join at the same time);
        other ranks do nothing. A previous group (one whose actor was restarted) is closed first. Returns
        the version the group starts from."""
        if self.rank == 0:
            old, self._weight_group = self._weight_group, None
            if old is not None:
                old.close()
            self._weight_group = CollectiveBroadcaster(
                rank=0, world_size=world_size, master_addr=master_addr, master_port=master_port,
                layout=layout_of_module(self.engine.module), bucket_mb=bucket_mb, backend=backend,
                timeout_s=timeout_s, start_version=self.version)
        return int(self.version)

    def broadcast_weights(self) -> Any:
        """Every rank (``group.call``): rank 0 sends the trainable parameters over the weight group as the next
        version (returns once every actor received them; the driver starts the actors' receive together
        with this call) -> WeightsHandle(v, ref=None); other ranks: None. Always a new version (the actors
        wait for one), also without an update in between (after a group re-formation or a rollback)."""
        handle = None
        if self.rank == 0:
            if self._weight_group is None:
                raise RuntimeError("broadcast_weights() before join_weight_group(): the driver forms the group first")
            handle = self._weight_group.publish(self.engine.module)  # ZeRO <= 2: every rank holds full params
        self.version += 1
        self._published_update = self.rl_update
        return handle
