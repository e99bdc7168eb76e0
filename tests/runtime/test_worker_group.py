"""WorkerGroup: rank env vars, fan-out, a real torch.distributed rendezvous, error propagation with the rank."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from vlaforge.runtime.worker_group import WorkerError, WorkerGroup

# The test module is not importable inside Ray workers (pytest importlib mode): ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Probe:
    """A plain class (no Ray decorator): WorkerGroup decorates it at launch."""

    def __init__(self, tag: str):
        self.tag = tag

    def env(self) -> dict[str, str]:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        return {k: os.environ.get(k, "") for k in keys + ("TORCH_EXTENSIONS_DIR",)} | {"pid": str(os.getpid())}

    def echo(self, x: int, scale: int = 1) -> tuple[str, int, int]:
        return self.tag, int(os.environ["RANK"]), x * scale

    def allreduce_rank(self) -> float:
        """Sum of ranks over a gloo group built from the env vars alone (env:// rendezvous)."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t)
        return float(t.item())

    def allreduce_loop(self, seconds: float) -> int:
        """All-reduces for ``seconds`` (a stand-in for a training call: a collective every few ms)."""
        import time

        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        n, end = 0, time.monotonic() + seconds
        while True:
            # Every rank must leave on the same iteration: each rank's own clock would let one rank start
            # one more all_reduce that its peer never joins (a hang until gloo's timeout). MIN of "still
            # time left" is that agreement -- and still a collective every iteration.
            go = torch.tensor([1.0 if time.monotonic() < end else 0.0])
            dist.all_reduce(go, op=dist.ReduceOp.MIN)
            if go.item() == 0.0:
                return n
            n += 1

    def fail_on(self, rank: int) -> int:
        me = int(os.environ["RANK"])
        if me == rank:
            raise ValueError(f"deliberate failure on rank {me}")
        return me


@pytest.mark.slow
def test_worker_group_env_fanout_and_errors(ray_cluster):
    group = WorkerGroup(Probe, 2, cpus_per_worker=1, name="probe", init_args=("t",))
    try:
        envs = group.call("env")
        assert [e["RANK"] for e in envs] == ["0", "1"]
        assert {e["WORLD_SIZE"] for e in envs} == {"2"}
        # One node: node-local ranks equal global ranks; both ranks share one rendezvous address.
        assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
        assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
        assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1
        assert int(envs[0]["MASTER_PORT"]) > 0 and envs[0]["MASTER_ADDR"]
        assert envs[0]["pid"] != envs[1]["pid"]  # one process per rank
        # The shared JIT-op cache reaches every rank (DeepSpeed builds its ops once).
        assert {e["TORCH_EXTENSIONS_DIR"] for e in envs} == {os.environ["TORCH_EXTENSIONS_DIR"]}

        assert group.call("echo", 3, scale=2) == [("t", 0, 6), ("t", 1, 6)]
        assert group.call_each("echo", [(1,), (5,)]) == [("t", 0, 1), ("t", 1, 5)]
        assert group.call_rank0("echo", 7) == ("t", 0, 7)
        refs = group.call_async("echo", 1)
        assert [r[1] for r in ray_cluster.get(refs)] == [0, 1]

        # The env vars are enough for a real collective: 0 + 1 on both ranks.
        assert group.call("allreduce_rank", timeout=120) == [1.0, 1.0]

        with pytest.raises(WorkerError) as info:
            group.call("fail_on", 1)
        assert info.value.rank == 1 and info.value.method == "fail_on"
        assert "rank 1/2" in str(info.value) and "deliberate failure on rank 1" in str(info.value)
        with pytest.raises(ValueError, match="2 ranks"):
            group.call_each("echo", [(1,)])
    finally:
        group.shutdown()
    assert group.actors == []


@pytest.mark.slow
def test_worker_group_dead_rank_and_unplaceable(ray_cluster):
    group = WorkerGroup(Probe, 2, cpus_per_worker=1, name="probe2", init_args=("t",))
    try:
        ray_cluster.kill(group.actors[1], no_restart=True)
        with pytest.raises(WorkerError, match="rank 1/2"):
            group.call("echo", 1)
    finally:
        group.shutdown()
    # More CPUs than the 4-CPU test cluster has: a clear error, not a hang.
    with pytest.raises(RuntimeError, match="could not place 2 bundles"):
        WorkerGroup(Probe, 2, cpus_per_worker=3, name="toobig", placement_timeout_s=2)


@pytest.mark.slow
def test_a_killed_rank_is_blamed_not_its_peer_and_a_deadline_bounds_every_call(ray_cluster):
    """SIGKILL of rank 1 inside a collective: rank 0 fails too (gloo: connection closed), but the error names
    rank 1 as dead. A call that overruns its deadline on live ranks is a 'timeout' naming the method."""
    import signal
    import threading

    group = WorkerGroup(Probe, 2, cpus_per_worker=1, name="probe3", init_args=("t",), probe=True, probe_s=5)
    try:
        assert group.call("allreduce_loop", 0.1, timeout=120)[0] > 0  # rendezvous done
        with pytest.raises(WorkerError) as slow:
            group.call("allreduce_loop", 10.0, timeout=2)
        assert slow.value.kind == "timeout" and slow.value.lost and "allreduce_loop() on ranks [0, 1]" in str(slow.value)
        assert group.call("echo", 1, timeout=120)[0][2] == 1  # the slow loop ended: the same ranks go on
        pid = group.processes()[1][0]
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(WorkerError) as info:
            group.call("allreduce_loop", 60.0, timeout=60)
        assert info.value.kind == "died" and info.value.rank == 1 and "rank 1/2 died in allreduce_loop()" in str(info.value)
    finally:
        group.shutdown()
