"""RolloutPool with real Ray actors on real Meta-World (32 px, B=2, T=2, tiny policy): versions in sync and
async mode, restarts after ray.kill / os.kill (SIGKILL) / SIGSTOP (a hang) with re-sync, env failures, the
restart budget."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import torch

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs import EnvConfig
from vlaforge.platform.rollout_pool import RolloutPool, RolloutPoolError
from vlaforge.runtime.config import TimeoutsConfig
from vlaforge.runtime.weights import WeightPublisher, WeightsHandle
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

pytestmark = pytest.mark.slow

# The test module is not importable inside Ray workers (pytest importlib mode): ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

S, A, B, T = 4, 4, 2, 2
# actor -> test signals (one machine): one folder per test session, made at import; the actor classes are
# pickled by value, so every actor process sees this very path (a fixed path let two sessions interfere)
MARKERS = Path(tempfile.mkdtemp(prefix="vlaforge-rollout-test-"))
PCFG = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                    vision={"channels": [8, 16], "keypoints": 4}, language={"vocab_size": 128, "max_tokens": 6, "layers": 1})
SPEC = PolicySpec((1, 32, 32, 3), S, A)
STATS = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S},
         "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}


FLAKY_STEPS = [0]  # env.step calls in this process, over every env instance


def flaky_env(cfg, tasks, seed):
    """Meta-World that raises on the process's 3rd env step and on every step from the 8th on."""
    from vlaforge.envs.metaworld import make_metaworld_env

    env = make_metaworld_env(cfg, tasks, seed)
    step = env.step

    def maybe_fail(action, **kw):
        FLAKY_STEPS[0] += 1
        n = FLAKY_STEPS[0]
        if n == 3 or n >= 8:
            raise RuntimeError(f"simulated simulator crash at step {n}")
        return step(action, **kw)

    env.step = maybe_fail
    return env


class MarkedWorker(RolloutWorker):
    """RolloutWorker + the test-only env registered in the actor process, and a 'sample started' marker
    (with an optional pause, so the test can kill the process mid-call)."""

    def __init__(self, *args, **kwargs):
        from vlaforge.envs.base import ENV_REGISTRY as registry  # the actor process's own registry (not a
        # by-value copy of this module's global)

        registry["test_flaky"] = flaky_env
        super().__init__(*args, **kwargs)

    def sample(self, handle=None, num_steps=None):
        (MARKERS / f"{os.getpid()}.started").touch()
        if (MARKERS / "pause").exists():
            time.sleep(5.0)
        return super().sample(handle, num_steps)


def make_policy(seed: int):
    torch.manual_seed(seed)
    return build_policy(PCFG, SPEC).eval()


def make_pool(mode: str = "sync", backend: str = "metaworld", num_actors: int = 2, timeouts_cfg=None, **over) -> RolloutPool:
    env_cfg = EnvConfig(backend=backend, image_size=32, tasks=["reach-v3", "push-v3"], state="proprio", max_episode_steps=5)
    cfg = RolloutConfig(num_actors=num_actors, envs_per_actor=B, steps_per_sample=T, mode=mode, **over)
    source = PolicySource.from_parts(PCFG, SPEC, VLAProcessor.from_stats(PCFG, STATS))
    return RolloutPool(env_cfg, source, cfg, seed=7, worker_cls=MarkedWorker, name=f"rollout-{mode}-{backend}-{num_actors}",
                       timeouts_cfg=timeouts_cfg)


SAMPLE_DEADLINE_S = 20.0  # a 2x2 sample takes well under a second; 20 s leaves room for a loaded machine


def recomputed_log_prob(policy, data):
    flat = data.reshape(-1)
    proc = VLAProcessor.from_stats(PCFG, STATS)
    with torch.no_grad():
        out = policy(proc(flat, train=False))
        return policy.log_prob(out, flat[keys.ACTION_CHUNK], pad=flat[keys.ACTION_PAD])


@pytest.fixture(scope="module")
def sync_pool(ray_cluster):
    pool = make_pool("sync", max_restarts=3, timeouts_cfg=TimeoutsConfig(rollout_sample_s=SAMPLE_DEADLINE_S))
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def learner():
    """The learner side: a policy that 'trains' (changes) between versions, and the publisher."""
    return {"policy": make_policy(123), "pub": WeightPublisher()}


def train_and_publish(learner):
    with torch.no_grad():
        for p in learner["policy"].parameters():
            p.add_(0.02 * torch.randn_like(p))
    return learner["pub"].publish(learner["policy"])


def test_sync_batches_carry_one_version_and_the_published_weights(sync_pool, learner):
    for v in (1, 2):
        handle = train_and_publish(learner)
        batch = sync_pool.sample(handle)
        assert handle.version == v and batch.versions == [v, v] and sorted(batch.ranks) == [0, 1]
        assert batch.data.batch_size == (2 * B, T) and (batch.data[keys.POLICY_VERSION] == v).all()
        # the actors' log-probs are the learner's own on the same data: the weights of v were loaded
        torch.testing.assert_close(recomputed_log_prob(learner["policy"], batch.data),
                                   batch.data.reshape(-1)[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
    m = batch.metrics
    assert m["rollout/policy_lag"] == 0 and m["rollout/actor_restarts"] == 0 and m["rollout/env_steps_per_s"] > 0
    assert m["rollout/env_steps"] == float(batch.data[keys.EXEC_STEPS].sum()) and m["time/rollout_s"] > 0
    assert "time/broadcast_s" in m and {i["version"] for i in sync_pool.info()} == {2}


def test_ray_kill_between_calls_restarts_and_resyncs(sync_pool, learner):
    import ray

    before = sync_pool.info()
    ray.kill(sync_pool.group.actors[1], no_restart=True)
    handle = train_and_publish(learner)
    batch = sync_pool.sample(handle)
    assert batch.versions == [handle.version] * 2 and (batch.data[keys.POLICY_VERSION] == handle.version).all()
    assert batch.metrics["rollout/actor_restarts"] == 1
    after = sync_pool.info()
    assert after[1]["incarnation"] == 1 and after[1]["pid"] != before[1]["pid"] and after[1]["version"] == handle.version
    assert after[0]["pid"] == before[0]["pid"]
    torch.testing.assert_close(recomputed_log_prob(learner["policy"], batch.data),
                               batch.data.reshape(-1)[keys.LOG_PROB], rtol=1e-4, atol=1e-3)


def _signal_mid_sample(pid: int, sig: int, done: list) -> threading.Thread:
    """Start a thread that sends `sig` to actor `pid` once it sits inside sample() (its marker file appears; the
    pause file holds it there), appending pid to `done`. The pause is lifted first: the replacement must not pause."""
    marker = MARKERS / f"{pid}.started"
    marker.unlink(missing_ok=True)
    (MARKERS / "pause").touch()

    def send():
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.01)
        (MARKERS / "pause").unlink(missing_ok=True)
        os.kill(pid, sig)
        done.append(pid)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_os_kill_mid_sample_restarts_discards_and_counts(sync_pool, learner):
    pid = sync_pool.info()[0]["pid"]
    killed = []
    dropped_before = sync_pool.counters["dropped_steps"]
    thread = _signal_mid_sample(pid, signal.SIGKILL, killed)  # a death mid-call
    handle = train_and_publish(learner)
    batch = sync_pool.sample(handle)
    thread.join()
    assert killed == [pid]
    assert batch.versions == [handle.version] * 2 and (batch.data[keys.POLICY_VERSION] == handle.version).all()
    assert batch.data.batch_size == (2 * B, T)
    assert batch.metrics["rollout/actor_restarts"] == 2
    assert sync_pool.counters["dropped_steps"] - dropped_before == B * T  # the lost request, counted once
    info = sync_pool.info()[0]
    assert info["pid"] != pid and info["incarnation"] == 1 and info["version"] == handle.version


def _proc_state(pid: int) -> str:
    """'R', 'S', 'T' (stopped), 'Z' (zombie) ... or '' once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def test_sigstop_mid_sample_is_a_hang_killed_replaced_and_resynced(sync_pool, learner):
    before = sync_pool.info()[1]
    pid = before["pid"]
    stopped = []
    thread = _signal_mid_sample(pid, signal.SIGSTOP, stopped)  # alive but silent: only a deadline can tell
    handle = train_and_publish(learner)
    t0 = time.time()
    batch = sync_pool.sample(handle)
    thread.join()
    detected = sync_pool.events[-1]["time"] - t0  # the replacement's own start-up comes on top (slow under load)
    assert stopped == [pid] and SAMPLE_DEADLINE_S <= detected < SAMPLE_DEADLINE_S + 15
    assert batch.versions == [handle.version] * 2 and (batch.data[keys.POLICY_VERSION] == handle.version).all()
    assert batch.metrics["rollout/actor_restarts"] == 3 and batch.metrics["rollout/actor_hangs"] == 1
    info = sync_pool.info()[1]
    assert info["pid"] != pid and info["incarnation"] == before["incarnation"] + 1
    assert info["version"] == handle.version  # re-synced: the replacement loaded the newest weights
    torch.testing.assert_close(recomputed_log_prob(learner["policy"], batch.data),
                               batch.data.reshape(-1)[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
    assert sync_pool.events[-1]["fault"] == "rollout actor hung" and sync_pool.events[-1]["rank"] == 1
    deadline = time.time() + 30  # the stopped process was killed, not left behind
    while _proc_state(pid) not in ("", "Z") and time.time() < deadline:
        time.sleep(0.2)
    assert _proc_state(pid) in ("", "Z")


def test_a_bug_in_an_actor_is_raised_not_restarted(sync_pool, learner):
    other = build_policy(PCFG.model_copy(update={"dim": 16, "heads": 2}), SPEC)  # a different architecture
    bad = WeightPublisher(start_version=learner["pub"].version).publish(other)
    with pytest.raises(RolloutPoolError, match=r"(?s)not restarted.*LayoutMismatch"):
        sync_pool.sample(bad)
    assert sync_pool.counters["actor_restarts"] == 3


def test_async_mode_respects_the_staleness_bound(ray_cluster):
    pub, policy = WeightPublisher(), make_policy(5)
    with make_pool("async", max_policy_lag=1) as pool:
        h1 = pub.publish(policy)
        b1 = pool.sample(h1)
        assert b1.versions == [1, 1]  # first call: submitted with v1
        # Each actor was resubmitted with v1 as its result came in; the learner publishes v2 meanwhile. The
        # first results of this call come from those v1 requests (lag 1 <= max_policy_lag: kept); a fast actor
        # may already deliver a second, v2 result within the same call.
        h2 = pub.publish(policy)
        b2 = pool.sample(h2)
        assert b2.versions[0] == 1 and set(b2.versions) <= {1, 2} and b2.metrics["rollout/policy_lag_max"] == 1
        # Two versions later the in-flight requests (v <= 2) are >= 2 behind: dropped, counted, re-requested
        # with v4. (Each is dropped when it arrives: a fast actor may fill this call with two v4 results first,
        # leaving the other old request to be dropped in a later call.)
        pub.publish(policy)
        h4 = pub.publish(policy)
        b4 = pool.sample(h4)
        assert b4.versions == [4, 4] and b4.metrics["rollout/policy_lag_max"] == 0
        stale = b4.metrics["rollout/stale_results"]
        assert 1 <= stale <= 2 and b4.metrics["rollout/dropped_stale_steps"] == stale * B * T
        for b in (b1, b2, b4):  # every row that reached the learner was within the bound when it was returned
            assert b.metrics["rollout/policy_lag_max"] <= 1


def test_env_failures_recreate_then_the_restart_budget_stops_the_run(ray_cluster):
    with make_pool("sync", backend="test_flaky", num_actors=1, max_restarts=0, max_env_retries=1) as pool:
        batch = pool.sample(None)  # step 3 crashes: env recreated in the actor, the call starts over
        assert batch.data.batch_size == (B, T) and batch.metrics["rollout/env_restarts"] == 1
        assert batch.metrics["rollout/dropped_steps"] == B * 1  # one decision (B rows) was discarded
        assert batch.metrics["rollout/dropped_env_steps"] == B * 2
        with pytest.raises(RolloutPoolError, match=r"restart 1 of this run and rollout.max_restarts=0") as info:
            pool.sample(None)  # from step 8 on every step crashes: RolloutEnvError -> restart -> over budget
        assert "RolloutEnvError" in str(info.value) and "simulated simulator crash" in str(info.value)
        assert pool.counters["actor_restarts"] == 1


class LearnerStandIn:
    """Learner rank 0 of the collective path: owns the policy, is rank 0 (src) of the weight group."""

    def __init__(self, seed: int):
        self.policy, self.b = make_policy(seed), None

    def address(self) -> tuple[str, int]:
        from vlaforge.runtime.weights import rendezvous_address

        return rendezvous_address()

    def join(self, addr: str, port: int, world: int) -> None:
        from vlaforge.runtime.weights import CollectiveBroadcaster, layout_of_module

        self.b = CollectiveBroadcaster(rank=0, world_size=world, master_addr=addr, master_port=port,
                                       layout=layout_of_module(self.policy), backend="gloo", timeout_s=60)

    def train_and_publish(self):
        with torch.no_grad():
            for p in self.policy.parameters():
                p.add_(0.02 * torch.randn_like(p))
        return self.b.publish(self.policy)

    def get_policy(self):
        return self.policy


def test_collective_broadcast_reaches_the_actors(ray_cluster):
    import ray

    learner = ray.remote(LearnerStandIn).options(num_cpus=1).remote(11)
    with make_pool("sync", num_actors=1, broadcast="collective") as pool:
        with pytest.raises(RolloutPoolError, match="join_weight_group"):
            pool.sample(WeightsHandle(1, None, None, 0))  # no group yet: a clear error, not a hang
        assert pool.sample(None).versions == [0]  # None: the weights the actors were built with (no broadcast)
        addr, port = ray.get(learner.address.remote())
        ray.get([learner.join.remote(addr, port, 2), *pool.join_weight_group(addr, port, backend="gloo", timeout_s=60)])
        for v in (1, 2):
            received = pool.receive_weights()  # every actor waits for the broadcast ...
            handle = ray.get(learner.train_and_publish.remote())  # ... that learner rank 0 sends now
            assert ray.get(received) == [v] and handle.ref is None
            batch = pool.sample(handle)  # already loaded: sample() does not touch the group
            assert batch.versions == [v] and (batch.data[keys.POLICY_VERSION] == v).all()
        torch.testing.assert_close(recomputed_log_prob(ray.get(learner.get_policy.remote()), batch.data),
                                   batch.data.reshape(-1)[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
        skipped = WeightsHandle(handle.version + 1, None, handle.layout, handle.nbytes)  # published, not received
        with pytest.raises(RolloutPoolError, match="not received here"):
            pool.sample(skipped)
    ray.kill(learner)
