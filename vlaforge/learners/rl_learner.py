"""RLLearnerActor: a DeepSpeed rank that fine-tunes an exported policy with PPO / GRPO / RLOO.

    group = WorkerGroup(RLLearnerActor, train.num_learners, cpus_per_worker=train.cpus_per_learner, ...)
    group.call("setup_rl", train, "<run>/bc/policy")       # collective: load policy (+ fresh value head), ref copy
    group.call("export_policy", "<run>/ppo/init")           # rank 0 writes it: build the rollout pool from this dir
    handle = group.call("publish_weights")[0]               # v = start_version + 1: the starting weights
    for it in ...:
        batch = <rollout pool> -> TensorDict [B, T]         # one ray.put by the driver, passed to every rank
        metrics = group.call("train_rl", batch_ref)[0]      # collective; identical metrics on every rank
        handle = group.call("publish_weights")[0]           # rank 0: WeightsHandle(v + 1); others: None

One update: objective.prepare (advantages: PPO GAE on this rank's rows with global statistics; GRPO group
advantages on the full batch, then this rank's share of decisions) -> reference outputs (once per update,
only if kl_coef > 0) -> epochs x num_minibatches DeepSpeed steps (gradient all-reduce + clipping from
train.deepspeed) -> metrics averaged over steps and ranks, namespaced ``train/``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor, _model, init_distributed
from vlaforge.learners.engine import ds_config, lr_scheduler, seed_everything
from vlaforge.learners.ppo import REF_PREFIX, RLContext
from vlaforge.learners.registry import OBJECTIVES, build_objective, total_loss
from vlaforge.runtime import checkpoint as ckpt
from vlaforge.runtime.process import apply_process_env, set_threads
from vlaforge.policies import build_policy
from vlaforge.policies.io import load_pretrained

_VALUE_PREFIX = "value."  # the value head's parameter names in VLAPolicy
_EVAL_CHUNK = 64  # rows per no-grad forward (bootstrap values, reference outputs)


def load_rl_policy(policy_dir: str, value_head: bool, seed: int) -> tuple[torch.nn.Module, torch.nn.Module, Any, Any, Any]:
    """-> (trainable policy, frozen reference, processor, cfg, spec). A BC export without a value head gets a
    freshly initialised one (seeded: identical on every rank); any OTHER missing or unexpected key is an error."""
    ref, processor, cfg, spec, _ = load_pretrained(policy_dir)  # strict load of exactly what was saved
    rl_cfg = cfg.model_copy(update={"value_head": bool(value_head or cfg.value_head)})
    seed_everything(seed)
    build_cfg = rl_cfg.model_copy(update={"vision": rl_cfg.vision.model_copy(update={"pretrained": False})})
    model = build_policy(build_cfg, spec)
    result = model.load_state_dict(ref.state_dict(), strict=False)
    bad = [k for k in result.missing_keys if not k.startswith(_VALUE_PREFIX)]
    if bad or result.unexpected_keys:
        raise ValueError(f"{policy_dir}: checkpoint does not match the RL policy: missing {bad[:5]}, unexpected "
                         f"{list(result.unexpected_keys)[:5]} (only the value head '{_VALUE_PREFIX}*' may be absent)")
    model.cfg = rl_cfg
    ref.requires_grad_(False).eval()
    return model, ref, processor, rl_cfg, spec


class RLLearnerActor(LearnerActor):
    # -- setup ----------------------------------------------------------------------------------------
    def setup_rl(self, train: TrainConfig | dict, policy_dir: str, start_version: int = 0,
                 collective_timeout_s: float | None = None) -> dict[str, Any]:
        """Collective. ``train.objective`` in {"ppo", "grpo", "rloo"} (hyper-parameters: train.ppo / train.grpo).
        ``start_version``: the version before the first publish (publishes are start_version + 1, + 2, ...);
        ``collective_timeout_s``: the process group's timeout (runtime.timeouts.collective_s).
        Returns {rank, world_size, num_params, num_trainable, value_head, objective, spec}."""
        apply_process_env()
        self.train_cfg = _model(train, TrainConfig)
        if self.train_cfg.deepspeed.zero_stage == 3:
            # ZeRO-3 gathers parameters collectively in every forward; the bootstrap-value forwards differ in
            # number between ranks (each rank's own rows), so ranks would wait on each other forever.
            raise ValueError("RL learners support train.deepspeed.zero_stage 0-2 (a VLA of this size needs no "
                             "parameter partitioning); set zero_stage: 1")
        set_threads(self.train_cfg.threads_per_learner)
        import deepspeed
        import torchrl.objectives.value.functional  # noqa: F401 -- ~1.8 s once, here rather than in the first update

        init_distributed(self.train_cfg, collective_timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        name = self.train_cfg.objective
        factory = OBJECTIVES.get(name)
        if factory is None or not getattr(factory, "rl", False):  # tagged where registered (ppo.py, grpo.py)
            rl = sorted(n for n, f in OBJECTIVES.items() if getattr(f, "rl", False))
            raise ValueError(f"train.objective {name!r} is not an RL objective; setup_rl takes one of {rl}")
        model, ref, self.processor, self.policy_cfg, self.spec = load_rl_policy(
            policy_dir, getattr(factory, "uses_critic", False), self.train_cfg.seed)
        self.objective = build_objective(name, self.train_cfg, model)
        self.rl_cfg = self.objective.cfg
        self.ref = ref if self.rl_cfg.kl_coef > 0 else None  # no KL: no reference forward, no memory
        if self.ref is not None:
            self.kl_mode = self.objective.kl_mode  # "analytic" on a head without one fails here, before any update
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=self._param_groups(model),
            config=ds_config(self.train_cfg, self.world_size),
            # train.steps counts RL updates; each is epochs x num_minibatches optimizer steps
            lr_scheduler=lambda opt: lr_scheduler(
                opt, self.train_cfg, self.train_cfg.steps * self.rl_cfg.epochs * self.rl_cfg.num_minibatches),
        )
        if self.ref is not None:
            self.ref.to(self.engine.device)
        seed_everything(self.train_cfg.seed + 1 + 1_000_003 * self.rank)
        self.rl_update, self.version, self._published_update = 0, int(start_version), -1
        self._publisher = None
        return {"rank": self.rank, "world_size": self.world_size, "objective": name,
                "num_params": sum(p.numel() for p in model.parameters()),
                "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "value_head": bool(self.policy_cfg.value_head), "spec": self.spec.to_dict()}

    def _param_groups(self, model: torch.nn.Module) -> list:
        """The trainable parameters; with train.ppo.critic_lr the critic's ('value.*') in their own param group
        at that learning rate (the LR schedule's LambdaLR scales every group's own base lr)."""
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        critic_lr = getattr(self.rl_cfg, "critic_lr", None)
        if critic_lr is None:
            return [p for _, p in params]
        critic = [p for n, p in params if n.startswith(_VALUE_PREFIX)]
        if not critic:
            raise ValueError("train.ppo.critic_lr is set but the policy has no critic parameters ('value.*')")
        return [{"params": [p for n, p in params if not n.startswith(_VALUE_PREFIX)]},
                {"params": critic, "lr": float(critic_lr)}]

    # -- helpers --------------------------------------------------------------------------------------
    def _all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and self.world_size > 1:
            x = x.clone()
            dist.all_reduce(x)
        return x

    def _inputs(self, obs: TensorDictBase, train: bool) -> TensorDictBase:
        inp = self.processor(obs.select(keys.OBS), train=train, device=self.engine.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.train_cfg.deepspeed.precision)
        if dtype is not None:  # DeepSpeed casts the module, not its inputs
            inp = inp.apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
        return inp

    @torch.no_grad()
    def _values(self, obs: TensorDictBase) -> torch.Tensor:
        """value_fn for bootstrapping: raw observations [N] -> V (N, 1) with the current weights."""
        outs = [self.engine(self._inputs(obs[i : i + _EVAL_CHUNK], False)).get(keys.VALUE).float()
                for i in range(0, obs.batch_size[0], _EVAL_CHUNK)]
        return torch.cat(outs).cpu()

    @torch.no_grad()
    def _reference(self, samples: TensorDictBase) -> None:
        """Once per update (the reference is frozen): analytic KL -> the reference head's outputs it needs
        (ref_<key>, e.g. REF_ACTION_MEAN / REF_ACTION_LOG_STD); k3 -> REF_LOG_PROB, the reference's log-prob
        of the stored chunk (+ head extras), the same call PPO makes on the trained policy."""
        head_keys = self.ref.head.reference_keys() if self.kl_mode == "analytic" else ()
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for i in range(0, samples.batch_size[0], _EVAL_CHUNK):
            mb = samples[i : i + _EVAL_CHUNK]
            out = self.ref(self.processor(mb.select(keys.OBS), train=False, device=self.engine.device))  # float32
            for k in head_keys:
                parts[REF_PREFIX + k].append(out.get(k).float().cpu())
            if self.kl_mode != "analytic":
                extras = mb.get(keys.HEAD_EXTRAS) if keys.HEAD_EXTRAS in mb.keys() else None
                lp = self.ref.log_prob(out, mb.get(keys.ACTION_CHUNK), mb.get(keys.ACTION_PAD).bool(), extras)
                parts[keys.REF_LOG_PROB].append(lp.float().cpu())
        for k, v in parts.items():
            samples.set(k, torch.cat(v))

    def _reduce_mean(self, sums: dict[str, float], count: int) -> dict[str, float]:
        names = sorted(sums)
        vec = self._all_sum(torch.tensor([sums[k] / max(1, count) for k in names], dtype=torch.float64))
        return {k: float(v) / self.world_size for k, v in zip(names, vec.tolist())}

    # -- one RL update ----------------------------------------------------------------------------------
    def train_rl(self, batch: TensorDictBase) -> dict[str, float]:
        """Collective: one update on the rollout batch [B, T] (every rank gets the same batch and takes its
        share). Returns train/* metrics, identical on every rank; train/skipped = 1 if no rank had data.
        A minibatch step whose loss or gradient is NaN/Inf on any rank is skipped on every rank and counted
        (train/nonfinite_skips, train/nonfinite_streak), as in ``train_steps``."""
        if self.engine is None or not hasattr(self, "rl_update"):
            raise RuntimeError("RLLearnerActor.train_rl called before setup_rl()")
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"train_rl takes the rollout TensorDict [B, T], got {type(batch).__name__}")
        t0 = time.perf_counter()
        cfg, obj = self.rl_cfg, self.objective
        # Eval mode for the whole update (gradients flow all the same): no dropout, so the recomputed log-probs
        # equal the rollout's (ratio 1 before the first step) -- as RLHF trainers disable dropout for PPO.
        self.engine.eval()
        obj.set_update(self.rl_update)
        ctx = RLContext(self.rank, self.world_size, self._all_sum, self._values, self.rl_update)
        samples, prep = obj.prepare(batch.to("cpu"), ctx)
        n = samples.batch_size[0]
        n_min = int(self._extreme(n, "MIN"))
        base = {f"train/{k}": float(v) for k, v in prep.items()}
        base.update({"train/update": float(self.rl_update), "train/critic_warmup": float(not obj.policy_enabled)})
        if keys.POLICY_VERSION in batch.keys():
            base["train/policy_lag"] = float(self.version - batch.get(keys.POLICY_VERSION).double().mean())
        if n_min == 0:  # e.g. dynamic sampling dropped every group: nothing to learn from, nothing changes
            return {**base, "train/skipped": 1.0, "train/step": float(self.global_step)}
        t_prep = self._extreme(time.perf_counter() - t0, "MAX")  # the slowest rank sets the pace
        if self.ref is not None:
            self._reference(samples)
        mbs = min(cfg.num_minibatches, n_min)  # the same number of optimizer steps on every rank
        gen = torch.Generator().manual_seed(self.train_cfg.seed * 1_000_003 + self.rl_update * 7919 + self.rank)
        sums: dict[str, float] = defaultdict(float)
        steps = epochs = skipped = 0
        kl_stopped = False
        for _ in range(cfg.epochs):
            epoch_kl, epoch_steps = 0.0, 0
            for idx in torch.tensor_split(torch.randperm(n, generator=gen), mbs):
                mb = samples[idx]
                inp = self._maybe_nan(self._inputs(mb, cfg.augment))
                inp.update(mb.exclude(keys.OBS).to(self.engine.device))
                out = self.engine(inp)  # the head's output (e.g. ACTION_MEAN / HEAD_FEATURES) [+ VALUE (b, 1)]
                losses = obj(inp.update(out))
                loss = total_loss(losses)
                if cfg.target_kl is not None and cfg.kl_stop == "minibatch" and obj.policy_enabled:
                    kl_now = float(self._all_sum(torch.tensor([float(losses["approx_kl"])], dtype=torch.float64)))
                    if kl_now / self.world_size > 1.5 * cfg.target_kl:  # the same on every rank: all stop here
                        kl_stopped = True
                        break
                lrs = self.engine.get_lr()  # [actor] or [actor, critic] (train.ppo.critic_lr)
                if not self.guard.step(self.engine, loss):  # every rank agrees: same step counts everywhere
                    skipped += 1
                    continue
                gn = self.engine.get_global_grad_norm()
                sums["loss"] += float(loss.detach())
                sums["lr"] += float(lrs[0])
                if len(lrs) > 1:
                    sums["critic_lr"] += float(lrs[1])
                sums["grad_norm"] += float(gn) if gn is not None else float("nan")
                for k, v in losses.items():
                    sums[k] += float(v.detach())
                epoch_kl += float(losses["approx_kl"])
                steps += 1
                epoch_steps += 1
            epochs += 1
            if kl_stopped:
                break
            if cfg.target_kl is not None and epoch_steps:  # all ranks see the same mean: they stop together
                mean_kl = float(self._all_sum(torch.tensor([epoch_kl / epoch_steps], dtype=torch.float64))) / self.world_size
                if mean_kl > cfg.target_kl:
                    break
        self.rl_update += 1
        elapsed = time.perf_counter() - t0
        t = self._extreme(elapsed, "MAX")
        total = float(self._all_sum(torch.tensor([n * epochs], dtype=torch.float64)))
        metrics = {f"train/{k}": v for k, v in self._reduce_mean(sums, steps).items()}  # no loss entries if all skipped
        metrics.update(base)
        metrics.update(self.nonfinite_metrics(skipped))
        metrics.update({"train/skipped": 0.0, "train/epochs": float(epochs), "train/optimizer_steps": float(steps),
                        "train/kl_stopped": float(kl_stopped),
                        "train/samples": total, "train/samples_per_s": total / max(float(t), 1e-9),
                        "train/prepare_s": t_prep, "train/update_s": float(t), "train/step": float(self.global_step)})
        return metrics

    def _extreme(self, v: float, op: str) -> float:
        """min / max of a scalar over the ranks."""
        x = torch.tensor([float(v)], dtype=torch.float64)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(x, op=getattr(dist.ReduceOp, op))
        return float(x)

    # -- weights --------------------------------------------------------------------------------------
    def publish_weights(self) -> Any:
        """Rank 0: publish the trainable parameters (object store) -> WeightsHandle; other ranks: None.
        One version per update: calling again without an update returns the same handle. Call it on every
        rank (``group.call``) so that every rank tracks the version."""
        from vlaforge.runtime.weights import WeightPublisher

        if self.rank == 0 and self._publisher is None:
            self._publisher = WeightPublisher(trainable_only=True, start_version=self.version)
        if self._published_update == self.rl_update and (self.rank != 0 or self._publisher.latest is not None):
            return self._publisher.latest if self.rank == 0 else None
        handle = self._publisher.publish(self.engine.module) if self.rank == 0 else None  # ZeRO <= 2: full params
        self.version += 1  # every rank tracks the version (policy lag, checkpoints)
        self._published_update = self.rl_update
        return handle

    # -- checkpoints ----------------------------------------------------------------------------------
    def rl_status(self) -> dict[str, int]:
        """Updates done and the last published version (the driver's resume point)."""
        return {"update": int(self.rl_update), "version": int(self.version)}

    def _rl_state(self) -> dict[str, Any]:
        return {"update": self.rl_update, "version": self.version, "objective": self.objective.state_dict_rl()}

    def save_checkpoint(self, run_dir: str) -> str:
        """Collective: DeepSpeed state + RNG + RL state (update count, version, reward normaliser) + export."""
        path = ckpt.save(self.engine, run_dir, self.global_step, rank=self.rank, meta=self._meta(),
                         rank_state={"rl": self._rl_state()}, keep=self.train_cfg.keep_checkpoints,
                         export=self._export)
        return str(path)

    def load_checkpoint(self, path: str) -> int:
        step, state = ckpt.load(self.engine, path, rank=self.rank, meta=self._meta())
        if "rl" not in state:
            raise ckpt.CheckpointError(f"{path} is not an RL learner checkpoint (no RL state); start RL from its "
                                       "exported policy dir with setup_rl instead")
        rl = state["rl"]
        self.rl_update, self.version = int(rl["update"]), int(rl["version"])
        self.objective.load_state_dict_rl(rl["objective"])
        self._publisher, self._published_update = None, -1  # the next publish sends the restored weights as v + 1
        return step

    def rollback(self, path: str, lr_scale: float) -> int:
        """As LearnerActor.rollback; the weights version stays monotonic (the checkpoint's is older than what
        the actors hold, and they load only newer versions): the next publish is a new, higher version."""
        version = self.version
        step = super().rollback(path, lr_scale)
        self.version = max(self.version, version)
        return step

    def state_checksums(self) -> dict[str, Any]:
        from vlaforge.learners.engine import optimizer_checksum

        return {"rank": self.rank, "step": self.global_step, "params": self.param_checksum(),
                "optimizer": optimizer_checksum(self.engine.optimizer), "rl": self._rl_state()}

    def train_steps(self, n: int) -> dict[str, float]:
        raise RuntimeError("RLLearnerActor trains with train_rl(batch); train_steps is the BC path of LearnerActor")

    def trainable_state(self) -> dict[str, Any]:
        """name -> numpy copy of the trainable parameters (tests / debugging)."""
        return {k: p.detach().cpu().numpy().copy() for k, p in self.engine.module.named_parameters() if p.requires_grad}


__all__ = ["RLLearnerActor", "load_rl_policy"]
