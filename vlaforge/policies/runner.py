"""PolicyRunner: a trained policy in the env loop, with action chunking.

Each env owns a queue of the raw actions left from its last chunk. A step pops one action per env;
only the envs whose queue is empty are re-planned, in ONE batched forward pass over those envs.

RL needs what produced the actions; `step` returns, per env, the chunk it is executing (normalised,
as sampled), that chunk's log_prob and the value at planning time. log_prob counts only the executed
positions (< n_action_steps); ACTION_PAD marks the others, so a learner recomputes the same quantity with
``policy.log_prob(out, chunk, pad=td[ACTION_PAD])``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.processor import VLAProcessor


class PolicyRunner:
    def __init__(
        self,
        policy: nn.Module,
        processor: VLAProcessor,
        n_action_steps: int,
        deterministic: bool = True,
        action_low: float = -1.0,
        action_high: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        k = policy.cfg.chunk_size
        if not 1 <= n_action_steps <= k:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={k}], got {n_action_steps}")
        self.policy, self.processor = policy, processor
        self.n_action_steps, self.chunk_size = int(n_action_steps), k
        self.deterministic, self.generator = deterministic, generator
        self.action_low, self.action_high = action_low, action_high
        self._remaining: torch.Tensor | None = None  # int64 (B,): actions left in each env's queue
        self.num_forward = 0  # forward passes so far (tests, metrics)

    # -- queue management ---------------------------------------------------------------------------
    def reset(self, env_ids: torch.Tensor | Sequence[int] | None = None) -> None:
        """Empty the queues of ``env_ids`` (int indices or a bool mask (B,)); None = all envs (and forget B)."""
        if env_ids is None or self._remaining is None:
            self._remaining = None
            return
        ids = torch.as_tensor(env_ids, device=self._remaining.device)
        if ids.dtype == torch.bool:
            if ids.shape != self._remaining.shape:
                raise ValueError(f"reset mask must be (B={self._remaining.shape[0]},), got {tuple(ids.shape)}")
            ids = ids.nonzero().flatten()
        self._remaining[ids.long()] = 0

    def _allocate(self, b: int, device: torch.device) -> None:
        a, k = self.processor.action_dim, self.chunk_size
        self._remaining = torch.zeros(b, dtype=torch.int64, device=device)
        self._actions = torch.zeros(b, self.n_action_steps, a, device=device)  # raw, clipped (B, n, A)
        self._chunk = torch.zeros(b, k, a, device=device)  # normalised chunk as sampled (B, K, A)
        self._log_prob = torch.zeros(b, device=device)  # (B,)
        self._value = torch.zeros(b, 1, device=device)  # (B, 1)
        self._exec_pad = (torch.arange(k, device=device) >= self.n_action_steps).expand(b, k)  # (B, K)

    # -- acting ---------------------------------------------------------------------------------------
    def act(self, obs: TensorDictBase) -> torch.Tensor:
        """Raw action (B, A) for every env (unnormalised, clipped to [action_low, action_high])."""
        return self.step(obs).get(keys.ACTION)

    def step(self, obs: TensorDictBase) -> TensorDict:
        """-> TensorDict [B]: ACTION (B, A) raw; ACTION_CHUNK (B, K, A) normalised; LOG_PROB (B,);
        VALUE (B, 1) when the policy has a value head; ACTION_PAD (B, K) (True = not executed);
        REPLANNED bool (B,); CHUNK_STEP int64 (B,)."""
        image = obs.get(keys.IMAGE)
        b, device = image.shape[0], image.device
        if self._remaining is None:
            self._allocate(b, device)
        elif self._remaining.shape[0] != b:
            raise ValueError(
                f"batch size changed from {self._remaining.shape[0]} to {b} envs: call runner.reset() first"
            )
        replan = self._remaining == 0  # (B,)
        if replan.any():
            self._plan(obs, replan.nonzero().flatten())
        rows = torch.arange(b, device=device)
        chunk_step = self.n_action_steps - self._remaining  # (B,) position of this step's action
        action = self._actions[rows, chunk_step]  # (B, A)
        self._remaining -= 1
        out = {
            keys.ACTION: action,
            keys.ACTION_CHUNK: self._chunk.clone(),
            keys.LOG_PROB: self._log_prob.clone(),
            keys.ACTION_PAD: self._exec_pad.clone(),
            keys.REPLANNED: replan,
            keys.CHUNK_STEP: chunk_step,
        }
        if self.policy.cfg.value_head:
            out[keys.VALUE] = self._value.clone()
        return TensorDict(out, batch_size=[b], device=device)

    def _plan(self, obs: TensorDictBase, idx: torch.Tensor) -> None:
        """One forward pass over the envs ``idx`` (int64 (N,)); fills their queues."""
        sub = obs if idx.numel() == obs.batch_size[0] else obs[idx]
        dev = next(self.policy.parameters()).device
        was_training = self.policy.training
        if was_training:  # train()/eval() walk every module (~4 ms here): only when needed
            self.policy.eval()
        try:
            with torch.inference_mode():
                prepared = self.processor(sub, train=False, device=dev)
                out = self.policy(prepared)
                act = self.policy.act(out, self.deterministic, self.generator)
                chunk = act.get(keys.ACTION_CHUNK)  # (N, K, A) normalised
                log_prob = self.policy.log_prob(out, chunk, self._exec_pad[: idx.numel()].to(dev),
                                                act.get(keys.HEAD_EXTRAS))  # (N,)
                raw = self.processor.unnormalize_action(chunk[:, : self.n_action_steps])  # (N, n, A)
                raw = raw.clamp(self.action_low, self.action_high)
                home = self._actions.device
                self._actions[idx] = raw.to(home)
                self._chunk[idx] = chunk.to(home)
                self._log_prob[idx] = log_prob.to(home)
                if keys.VALUE in out.keys():
                    self._value[idx] = out.get(keys.VALUE).to(home)
                self._remaining[idx] = self.n_action_steps
        finally:
            if was_training:
                self.policy.train()
        self.num_forward += 1
