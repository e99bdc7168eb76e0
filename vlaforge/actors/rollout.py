"""Rollout actor: B simulators + a policy replica -> decision-level trajectories [B, T] for RL.

Decision level. One trajectory time step is one policy DECISION: the policy plans a chunk of K actions
for all B simulators in ONE batched forward pass, and the first n = n_action_steps of them run
open-loop. PPO (learners) treats the chunk as ONE action: its log-prob is the action head's (gaussian: the
log-density of the chunk as sampled, summed over the EXECUTED positions; tokens / diffusion / flow: see
vlaforge/policies/heads/), and its reward is the sum of the env rewards over those steps. A chunk cut by an
episode end (success or time limit at position j < n-1) has positions j+1.. marked (``ACTION_PAD`` True),
and whatever else the head needs to recompute the log-prob (the token sequence, the denoising chain) is
stored under ``HEAD_EXTRAS``, so the learner recomputes exactly the stored quantity with
``policy.log_prob(out, td[ACTION_CHUNK], td[ACTION_PAD], td[HEAD_EXTRAS])``. That is why the worker plans
itself rather than through ``PolicyRunner``: the mask is known only after the chunk ran. (Discounting per
decision is the learner's choice; ``EXEC_STEPS`` gives the env steps each decision covered.)

Per decision t, the TensorDict [B, T] holds (keys from vlaforge.keys):
    observation/*            the env observation the decision saw (image uint8, state, privileged,
                             instruction strings, task_index)
    action_chunk             float32 (B, T, K, A) normalised chunk as sampled
    action_is_pad            bool    (B, T, K)    True = position not executed
    action_log_prob          float32 (B, T)       the head's log-prob (gaussian: over the executed positions)
    head_extras/*            (B, T, ...)          what the head's log_prob needs (e.g. denoise_chain
                             (B, T, S+1, K, A), action_tokens (B, T, N)); empty for the gaussian head
    state_value              float32 (B, T, 1)    at decision time (policies with a value head)
    exec_steps               int64   (B, T)       env steps covered (1..n)
    policy_version           int64   (B, T)       weights version that planned the chunk
    next/observation/*       each sim's observation after its last executed step: the TERMINAL
                             observation when the episode ended (bootstrapping on truncation)
    next/reward              float32 (B, T, 1)    sum over the executed steps
    next/done|terminated|truncated|success  bool (B, T, 1)   over the executed steps
    group_id                 int64   (B, T)       only with rollout.group_size G > 1 (GRPO / RLOO)
Simulators are auto-reset at decision boundaries with fresh seeds from the worker's seeded stream, and
episodes continue across sample calls; episodes that ended in a call come back as ``EpisodeStats``.
With G > 1 every call instead starts fresh episodes, G consecutive simulators sharing one initial state
(task and reset seed), so row b's first episode is one of G rollouts from that state. With
``rollout.episode_rows`` every call starts fresh episodes too (one seed per simulator): a row is a whole
episode, so GAE sees each episode from its initial state to its end.
A simulator that ended mid-chunk idles (zero action, results ignored) until the boundary (the env
contract steps all B; Meta-World refuses steps past its 500-step horizon, so with max_episode_steps near
500 keep it a multiple of n_action_steps).

Env failures. An env that raises in step/reset is closed and recreated (fresh episodes from the seed
stream); the partial trajectory of this sample call is discarded and counted (``dropped_steps`` in
trajectory steps, ``dropped_env_steps``), and the call starts over, so the caller always gets a full,
consistent [B, T] of one policy version. After ``max_env_retries`` recreations in one call the worker
raises ``RolloutEnvError``; the pool then restarts the whole actor (counted against ``max_restarts``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.trajectory import EpisodeStats, EpisodeTracker, RolloutResult, decision_row, run_chunk
from vlaforge.envs import make_env
from vlaforge.envs.config import EnvConfig
from vlaforge.envs.tasks import resolve_tasks
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.processor import VLAProcessor
from vlaforge.policies.spec import PolicySpec


class RolloutEnvError(RuntimeError):
    """The env of a rollout actor kept failing within one sample call (after ``max_env_retries`` recreations).

    Carries what that call discarded (in ``args``, so the counts survive Ray's exception pickling)."""

    def __init__(self, message: str, dropped_steps: int = 0, dropped_env_steps: int = 0):
        super().__init__(message, int(dropped_steps), int(dropped_env_steps))

    def __str__(self) -> str:
        return str(self.args[0])

    @property
    def dropped_steps(self) -> int:
        return int(self.args[1])

    @property
    def dropped_env_steps(self) -> int:
        return int(self.args[2])


class _EnvFailure(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(repr(cause))
        self.cause = cause


@dataclass(frozen=True)
class PolicySource:
    """Where a rollout actor gets its replica: an exported policy dir, or config + spec + processor dicts
    (a fresh model; the first weights handle then overwrites its trainable parameters)."""

    policy_dir: str | None = None
    config: dict | None = None  # PolicyConfig.model_dump(mode="json")
    spec: dict | None = None  # PolicySpec.to_dict()
    processor: dict | None = None  # VLAProcessor.to_dict()

    def __post_init__(self) -> None:
        parts = [p is not None for p in (self.config, self.spec, self.processor)]
        if (self.policy_dir is not None) == any(parts) or (self.policy_dir is None and not all(parts)):
            raise ValueError("PolicySource: give either policy_dir, or all of config, spec and processor")

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "PolicySource":
        return cls(policy_dir=str(path))

    @classmethod
    def from_parts(cls, cfg: PolicyConfig, spec: PolicySpec, processor: VLAProcessor) -> "PolicySource":
        return cls(config=cfg.model_dump(mode="json"), spec=spec.to_dict(), processor=processor.to_dict())

    def build(self) -> tuple[torch.nn.Module, VLAProcessor, PolicyConfig, PolicySpec]:
        if self.policy_dir is not None:
            from vlaforge.policies.io import load_pretrained

            policy, processor, cfg, spec, _ = load_pretrained(self.policy_dir)
            return policy, processor, cfg, spec
        from vlaforge.policies.vla import build_policy

        cfg, spec = PolicyConfig.model_validate(self.config), PolicySpec.from_dict(self.spec)
        return build_policy(cfg, spec).eval(), VLAProcessor.from_dict(self.processor), cfg, spec


def actor_tasks(tasks: Sequence[str], rank: int, num_envs: int, one_task_per_actor: bool = False, group_size: int = 1) -> list[str]:
    """Tasks of one actor's B simulators: global group g = (rank * B + i) // G runs tasks[g % len(tasks)]
    (round-robin over the pool; G = 1: per simulator), or tasks[rank % len(tasks)] for every slot when the
    renderer needs one scene per env (MuJoCo-Warp)."""
    tasks = resolve_tasks(tasks)
    if one_task_per_actor:
        return [tasks[rank % len(tasks)]] * num_envs
    return [tasks[((rank * num_envs + i) // group_size) % len(tasks)] for i in range(num_envs)]


class RolloutWorker:
    """A plain class; the pool turns it into a Ray actor (one process, ``threads_per_actor`` torch threads).

    ``weights``: the subscriber side of the weight broadcast (``maybe_load(module, handle) -> bool`` and
    ``version``), or a zero-argument factory of one -- injected by the platform, so actors never import it.
    ``rank`` defaults to the ``RANK`` env var (set by WorkerGroup); ``incarnation`` counts restarts of
    this rank and moves the seed stream, so a restarted actor does not replay its predecessor's episodes.
    """

    def __init__(
        self,
        env_cfg: EnvConfig | dict,
        policy: PolicySource,
        cfg: RolloutConfig | dict,
        tasks: Sequence[str],
        weights: Any,
        rank: int | None = None,
        incarnation: int = 0,
        device: str = "cpu",
    ):
        self.env_cfg = EnvConfig.model_validate(env_cfg) if isinstance(env_cfg, dict) else env_cfg
        self.cfg = RolloutConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self.incarnation = int(incarnation)
        torch.set_num_threads(self.cfg.threads_per_actor)  # Ray pins OMP_NUM_THREADS=1: choose deliberately
        self.device = torch.device(device)
        self.policy, self.processor, self.policy_cfg, spec = policy.build()
        self.policy.to(self.device).eval()
        self.weights = weights() if callable(weights) else weights
        seed = self.cfg.seed or 0
        self._rng = np.random.default_rng([seed, self.rank, self.incarnation])  # reset seeds + action noise
        self._gen = torch.Generator(device=self.device).manual_seed(int(self._rng.integers(2**62)))
        self.tasks = actor_tasks(tasks, self.rank, self.cfg.envs_per_actor, self.env_cfg.render_backend == "warp",
                                 self.cfg.group_size)
        self.total_env_restarts = 0
        self.env = None
        self.env = self._make_env()  # failures here propagate: the pool sees a dead actor and restarts it
        self._check_spec(spec)
        self._obs = self._reset_all()

    # -- env lifecycle --------------------------------------------------------------------------------
    def _seeds(self, n: int) -> list[int]:
        return [int(s) for s in self._rng.integers(0, 2**31 - 1, size=n)]

    def _make_env(self):
        return make_env(self.env_cfg, self.tasks, seed=self._seeds(1)[0])

    def _reset_all(self) -> TensorDict:
        self._episodes = EpisodeTracker(tuple(self.tasks))
        return self.env.reset(seeds=self._seeds(len(self.tasks)))

    def _recreate_env(self) -> None:
        old, self.env = self.env, None
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001 -- a broken env may fail to close; it is dropped either way
                pass
        try:
            self.env = self._make_env()
            self._obs = self._reset_all()
        except Exception as e:  # noqa: BLE001
            self.env = None
            raise _EnvFailure(e) from e

    def _check_spec(self, spec: PolicySpec) -> None:
        es = self.env.spec
        got = (tuple(es.image_shape), es.state_dim, es.action_dim)
        want = (tuple(spec.image_shape), spec.state_dim, spec.action_dim)
        if got != want:
            raise ValueError(
                f"rollout actor {self.rank}: the env gives (image (V,H,W,3), state dim, action dim) = {got} but the "
                f"policy was built for {want}: make envs.image_size / cameras / state match the policy's spec."
            )

    # -- acting ---------------------------------------------------------------------------------------
    def _plan(self, obs: TensorDictBase):
        n = self.policy_cfg.n_action_steps
        prepared = self.processor(obs, train=False, device=self.device)
        out = self.policy(prepared)
        act = self.policy.act(out, self.cfg.deterministic, self._gen)  # ACTION_CHUNK (B, K, A) normalised, extras
        chunk = act.get(keys.ACTION_CHUNK)
        raw = self.processor.unnormalize_action(chunk[:, :n])  # (B, n, A)
        raw = raw.clamp(self.env.spec.action_low, self.env.spec.action_high)
        return out, chunk, act.get(keys.HEAD_EXTRAS), raw.cpu()

    def _rollout(self, rows: list[TensorDict], num_steps: int, version: int, timing: dict[str, float]) -> EpisodeStats:
        """Append ``num_steps`` decision rows [B] to ``rows`` (the caller sees how far it got if the env fails)."""
        if self.env is None:
            self._recreate_env()
        group_id = None
        if self.cfg.group_size > 1:  # GRPO: fresh episodes, G simulators per initial state
            g, n_groups = self.cfg.group_size, len(self.tasks) // self.cfg.group_size
            self._episodes = EpisodeTracker(tuple(self.tasks))
            try:
                self._obs = self.env.reset(seeds=[s for s in self._seeds(n_groups) for _ in range(g)])
            except Exception as e:  # noqa: BLE001
                raise _EnvFailure(e) from e
            base = int(self._rng.integers(2**62))  # ids unique across actors and calls (random 62-bit base)
            group_id = base + torch.arange(len(self.tasks)) // g  # (B,)
        elif self.cfg.episode_rows:  # PPO: each row is one whole episode from its initial state
            self._episodes = EpisodeTracker(tuple(self.tasks))
            try:
                self._obs = self.env.reset(seeds=self._seeds(len(self.tasks)))
            except Exception as e:  # noqa: BLE001
                raise _EnvFailure(e) from e
        episodes = EpisodeStats()
        for _ in range(num_steps):
            obs = self._obs
            t0 = time.perf_counter()
            with torch.no_grad():
                out, chunk, extras, raw = self._plan(obs)
            t1 = time.perf_counter()
            try:
                outcome = run_chunk(self.env, raw)  # (B, n, A) open-loop
            except Exception as e:  # noqa: BLE001 -- any simulator error: the caller recreates the env
                raise _EnvFailure(e) from e
            t2 = time.perf_counter()
            pad = torch.ones(chunk.shape[:2], dtype=torch.bool)  # (B, K): positions >= n never execute
            pad[:, : outcome.executed.shape[1]] = ~outcome.executed
            with torch.no_grad():
                # the learner's exact call (same pad, same extras): ratio == 1 before its first step
                log_prob = self.policy.log_prob(out, chunk, pad.to(chunk.device), extras).cpu()  # (B,)
            value = out.get(keys.VALUE).cpu() if keys.VALUE in out.keys() else None
            row = decision_row(obs, chunk.cpu(), pad, log_prob, value, outcome, version, extras.cpu())
            if group_id is not None:
                row.set(keys.GROUP_ID, group_id)
            rows.append(row)
            done = self._episodes.add(outcome, episodes)
            t3 = time.perf_counter()
            if done.numel():  # auto-reset at the decision boundary, fresh seeds from our stream
                try:
                    self._obs = self.env.reset(env_ids=done.tolist(), seeds=self._seeds(done.numel()))
                except Exception as e:  # noqa: BLE001
                    raise _EnvFailure(e) from e
            else:
                self._obs = outcome.last_obs
            timing["policy_s"] += (t1 - t0) + (t3 - t2)
            timing["env_s"] += (t2 - t1) + (time.perf_counter() - t3)
        return episodes

    def sample(self, handle: Any = None, num_steps: int | None = None) -> RolloutResult:
        """Load ``handle``'s weights if newer, then run T = ``num_steps`` (default steps_per_sample) decisions."""
        t_start = time.perf_counter()
        if handle is not None and handle.version > self.weights.version:
            if getattr(handle, "ref", None) is None:  # a collective handle: the data came (or not) over the group
                raise RuntimeError(
                    f"rollout actor {self.rank} holds weights v{self.weights.version} but was asked to sample with "
                    f"v{handle.version}, which was published over the collective group and not received here: run "
                    "pool.receive_weights() together with the learner's publish before sample()")
            self.weights.maybe_load(self.policy, handle)
        load_s = time.perf_counter() - t_start
        version = int(self.weights.version)
        num_steps = int(num_steps or self.cfg.steps_per_sample)
        b = len(self.tasks)
        dropped = dropped_env = restarts = 0
        last_error: BaseException | None = None
        for _attempt in range(self.cfg.max_env_retries + 1):
            timing = {"load_s": load_s, "policy_s": 0.0, "env_s": 0.0}
            rows: list[TensorDict] = []
            try:
                episodes = self._rollout(rows, num_steps, version, timing)
                break
            except _EnvFailure as e:
                # Everything this call produced so far is discarded (the in-progress episodes die with the
                # env): count it in trajectory steps and in executed env steps, then start over.
                last_error = e.cause
                restarts += 1
                self.total_env_restarts += 1
                dropped += b * len(rows)
                dropped_env += int(sum(int(r.get(keys.EXEC_STEPS).sum()) for r in rows))
                try:
                    self._recreate_env()
                except _EnvFailure as e2:  # the next attempt retries the construction
                    last_error = e2.cause
        else:
            raise RolloutEnvError(
                f"rollout actor {self.rank}: env {self.env_cfg.backend!r} {self.tasks} failed {restarts} times in one "
                f"sample call (rollout.max_env_retries={self.cfg.max_env_retries}); last error: {last_error!r}",
                dropped,
                dropped_env,
            ) from last_error
        data = torch.stack(rows, dim=1)  # [B, T]
        timing["sample_s"] = time.perf_counter() - t_start
        return RolloutResult(
            data=data,
            episodes=episodes,
            version=version,
            rank=self.rank,
            env_steps=int(data.get(keys.EXEC_STEPS).sum()),
            dropped_steps=dropped,
            dropped_env_steps=dropped_env,
            env_restarts=restarts,
            timing=timing,
        )

    # -- small RPCs for the pool ---------------------------------------------------------------------
    def load_weights(self, handle: Any) -> int:
        """Load (e.g. a collective broadcast, called together with the publisher); returns the version held."""
        self.weights.maybe_load(self.policy, handle)
        return int(self.weights.version)

    def set_weights(self, weights: Any) -> int:
        """Replace the subscriber (e.g. join a collective group: ``weights`` is a factory that rendezvouses).
        The new one starts at the version this replica holds (its weights are still loaded)."""
        old, version = self.weights, int(self.weights.version)
        self.weights = weights() if callable(weights) else weights
        self.weights.version = max(int(self.weights.version), version)
        if hasattr(old, "close"):
            old.close()  # a previous collective group (e.g. broken by a restarted peer)
        return int(self.weights.version)

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "pid": os.getpid(), "incarnation": self.incarnation, "tasks": list(self.tasks),
                "version": int(self.weights.version), "env_restarts": self.total_env_restarts}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
