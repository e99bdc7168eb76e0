"""LearnerActor: one DeepSpeed rank. A plain class; vlaforge.runtime.worker_group.WorkerGroup launches N of
them as Ray actors with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT / LOCAL_RANK already set.

    group = WorkerGroup(LearnerActor, train.num_learners, cpus_per_worker=train.cpus_per_learner, ...)
    group.call("setup", train, policy, dataset_path)          # collective: init_distributed + initialize
    metrics = group.call("train_steps", 25)[0]                 # identical on every rank (all-reduced)
    group.call("save_checkpoint", run_dir)                     # collective, atomic
    group.call("export_policy", out_dir)                       # collective; rank 0 writes safetensors

Per step: raw batch (ChunkDataset) -> processor (normalise, tokenise, augment) -> engine(model) ->
objective(TensorDict) -> sum of loss_* -> engine.backward -> engine.step (all-reduce, clip, AdamW, LR).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDictBase

from vlaforge.learners.config import TrainConfig
from vlaforge.learners.engine import (
    StepGuard,
    backend,
    ds_config,
    local_world,
    lr_scheduler,
    micro_batch,
    nan_inputs,
    optimizer_checksum,
    param_checksum,
    seed_everything,
    set_lr_scale,
)
from vlaforge.learners.registry import build_objective, total_loss
from vlaforge.learners.stream import ShardStream
from vlaforge.manifest import write_manifest
from vlaforge.runtime import checkpoint as ckpt
from vlaforge.runtime.process import apply_process_env, set_threads
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained


def _model(x: Any, cls: type) -> Any:
    return x if isinstance(x, cls) else cls.model_validate(x)


def init_distributed(train: TrainConfig, collective_timeout_s: float | None) -> None:
    """deepspeed.init_distributed with the recipe's process-group timeout (runtime.timeouts.collective_s):
    a collective whose peer hung raises after it instead of DeepSpeed's default 30 min."""
    import datetime

    import deepspeed

    if dist.is_initialized():  # setup may run twice in one process (e.g. after a failed resume)
        return
    kw = {} if collective_timeout_s is None else {"timeout": datetime.timedelta(seconds=float(collective_timeout_s))}
    deepspeed.init_distributed(dist_backend=backend(train), **kw)


class LearnerActor:
    def __init__(self) -> None:
        self.engine: Any = None
        self.rank, self.world_size = local_world()
        self.guard = StepGuard()  # NaN/Inf: skip the step on every rank, count it
        self._nan_steps = 0  # chaos / tests: the next n optimizer steps of this rank get NaN inputs
        self._kill_in: int | None = None  # chaos / tests: SIGKILL this rank's process before its n-th next step

    # -- setup ----------------------------------------------------------------------------------------
    def setup(
        self,
        train: TrainConfig | dict,
        policy: PolicyConfig | dict,
        dataset_path: str,
        policy_spec: PolicySpec | dict | None = None,
        episodes: list[int] | None = None,
        init_policy: str | None = None,
        skip_bad_episodes: bool = False,
        collective_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Collective. ``policy_spec`` defaults to the dataset's shapes; ``episodes`` selects a split;
        ``init_policy`` (an exported policy folder) gives the starting weights and processor (a stage
        that continues a previous one) instead of a fresh initialisation; ``skip_bad_episodes`` (the
        recipe's data.skip_bad_episodes) drops episodes of unreadable files instead of failing;
        ``collective_timeout_s`` is the process group's timeout (runtime.timeouts.collective_s; None:
        DeepSpeed's default).
        Returns {rank, world_size, num_params, num_samples, batches_per_epoch, spec, bad_episodes}."""
        apply_process_env()
        self.train_cfg, self.policy_cfg = _model(train, TrainConfig), _model(policy, PolicyConfig)
        set_threads(self.train_cfg.threads_per_learner)
        import deepspeed  # after the env: DS_ACCELERATOR / TORCH_EXTENSIONS_DIR are read at import

        init_distributed(self.train_cfg, collective_timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

        from vlaforge.data.dataset import ChunkDataset

        self.dataset = ChunkDataset(dataset_path, chunk_size=self.policy_cfg.chunk_size, episodes=episodes,
                                    skip_bad_episodes=skip_bad_episodes)
        data_spec = PolicySpec(
            image_shape=tuple(self.dataset.images.shape[1:]),  # (V, H, W, 3)
            state_dim=self.dataset.state.shape[1],
            action_dim=self.dataset.actions.shape[1],
        )
        spec = data_spec if policy_spec is None else _spec(policy_spec)
        if spec != data_spec:
            raise ValueError(f"policy_spec {spec} does not match the dataset {dataset_path}: {data_spec}")
        self.spec = spec

        seed_everything(self.train_cfg.seed)  # same seed on every rank: identical initial weights
        model = build_policy(self.policy_cfg, spec)
        self.processor = VLAProcessor.from_stats(self.policy_cfg, self.dataset.stats)
        if init_policy is not None:
            self.processor = _load_init(model, init_policy, self.policy_cfg, spec) or self.processor
        self.objective = build_objective(self.train_cfg.objective, self.train_cfg, model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=trainable,
            config=ds_config(self.train_cfg, self.world_size),
            lr_scheduler=lambda opt: lr_scheduler(opt, self.train_cfg),
        )
        # From here on each rank draws its own augmentation / dropout noise.
        seed_everything(self.train_cfg.seed + 1 + 1_000_003 * self.rank)
        self.stream = ShardStream(
            len(self.dataset), self.dataset.get_batch, micro_batch(self.train_cfg, self.world_size),
            self.rank, self.world_size, seed=self.train_cfg.seed,
        )
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "num_params": sum(p.numel() for p in model.parameters()),
            "num_samples": len(self.dataset),
            "batches_per_epoch": self.stream.batches_per_epoch,
            "spec": spec.to_dict(),
            "bad_episodes": {str(e): why for e, why in self.dataset.bad_episodes.items()},  # skipped: episode -> why
        }

    # -- training -------------------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        return int(self.engine.global_steps)

    def get_global_step(self) -> int:
        return self.global_step

    def _prepare(self, batch: TensorDictBase) -> TensorDictBase:
        inp = self.processor(batch, train=True, device=self.engine.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.train_cfg.deepspeed.precision)
        if dtype is not None:  # DeepSpeed casts the module, not its inputs
            inp = inp.apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
        return inp

    def kill_in_steps(self, n: int) -> int:
        """Chaos / tests: this rank's process SIGKILLs itself right before its ``n``-th next optimizer step
        (n >= 1): a real death in the middle of a training call, at a deterministic point. Returns n."""
        self._kill_in = max(1, int(n))
        return self._kill_in

    def _maybe_die(self) -> None:
        if self._kill_in is not None:
            self._kill_in -= 1
            if self._kill_in <= 0:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGKILL)

    def _maybe_nan(self, inp: TensorDictBase) -> TensorDictBase:
        self._maybe_die()
        if self._nan_steps > 0:
            self._nan_steps -= 1
            return nan_inputs(inp)
        return inp

    def poison_steps(self, n: int) -> int:
        """Chaos / tests: the next ``n`` optimizer steps of THIS rank see NaN inputs (a NaN batch). Returns n."""
        self._nan_steps = int(n)
        return self._nan_steps

    def nonfinite_metrics(self, skipped: int) -> dict[str, float]:
        return {"train/nonfinite_skips": float(skipped), "train/nonfinite_streak": float(self.guard.streak),
                "train/nonfinite_total": float(self.guard.total)}

    def train_steps(self, n: int, nonfinite_limit: int | None = None) -> dict[str, float]:
        """Collective: n optimizer steps over this rank's shard. Returns the metrics averaged over the
        applied steps and over the ranks (identical on every rank): train/loss, train/lr, train/grad_norm,
        train/samples_per_s, train/step, plus the objective's entries (train/loss_bc, train/nll, ...).

        A step whose loss or gradient is NaN/Inf on any rank is skipped on every rank (``StepGuard``) and
        counted: train/nonfinite_skips (this call), train/nonfinite_streak (in a row, at the end). The call
        returns early once the streak reaches ``nonfinite_limit`` (the driver then rolls back)."""
        if self.engine is None:
            raise RuntimeError("LearnerActor.train_steps called before setup()")
        self.engine.train()
        sums: dict[str, float] = defaultdict(float)
        applied = skipped = 0
        t0 = time.perf_counter()
        for _ in range(int(n)):
            inp = self._maybe_nan(self._prepare(self.stream.next()))
            out = self.engine(inp)  # ACTION_MEAN, ACTION_LOG_STD (B, K, A)
            losses = self.objective(inp.update(out))
            loss = total_loss(losses)
            lr = self.engine.get_lr()[0]  # the LR this step is taken with
            if not self.guard.step(self.engine, loss):  # every rank agrees: same applied/skipped counts
                skipped += 1
                if nonfinite_limit is not None and self.guard.streak >= nonfinite_limit:
                    break
                continue
            applied += 1
            sums["loss"] += float(loss.detach())
            sums["lr"] += float(lr)
            gn = self.engine.get_global_grad_norm()
            sums["grad_norm"] += float(gn) if gn is not None else float("nan")
            for k, v in losses.items():
                sums[k] += float(v.detach())
        elapsed = time.perf_counter() - t0
        names = sorted(sums)
        vec = torch.tensor([sums[k] / max(1, applied) for k in names], dtype=torch.float64)
        t = torch.tensor([elapsed], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(vec)
            vec /= self.world_size
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the step rate is set by the slowest rank
        metrics = {f"train/{k}": float(v) for k, v in zip(names, vec.tolist())}  # no loss entries if all were skipped
        metrics["train/samples_per_s"] = applied * self.train_cfg.batch_size / max(float(t), 1e-9)
        metrics["train/step"] = float(self.global_step)
        metrics["train/epoch"] = float(self.stream.epoch)
        metrics.update(self.nonfinite_metrics(skipped))
        return metrics

    def rollback(self, path: str, lr_scale: float) -> int:
        """Collective: back to checkpoint ``path`` after a run of non-finite steps, the LR schedule scaled to
        ``lr_scale`` x train.lr from there on. Returns the checkpoint's global step."""
        step = self.load_checkpoint(path)
        self.set_lr_scale(lr_scale)
        self.guard.streak, self._nan_steps = 0, 0
        return step

    def set_lr_scale(self, scale: float) -> float:
        """Run the LR schedule at ``scale`` x train.lr (1.0: the recipe's). Returns the LR of the next step."""
        return set_lr_scale(self.engine, self.train_cfg.lr, float(scale))

    # -- checks ---------------------------------------------------------------------------------------
    def param_checksum(self) -> str:
        """Hash of the full parameters (equal on all ranks after every step unless ZeRO-3 partitions them)."""
        return param_checksum(self.engine.module)

    def state_checksums(self) -> dict[str, Any]:
        return {"rank": self.rank, "step": self.global_step, "params": self.param_checksum(),
                "optimizer": optimizer_checksum(self.engine.optimizer), "data": self.stream.state_dict()}

    # -- checkpoints ----------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "model_config": {"policy": self.policy_cfg.model_dump(mode="json"), "spec": self.spec.to_dict()},
            "params": {n: list(getattr(p, "ds_shape", p.shape)) for n, p in self.engine.module.named_parameters()},
            "objective": self.train_cfg.objective,
            "world_size": self.world_size,
            "zero_stage": self.train_cfg.deepspeed.zero_stage,
        }

    def save_checkpoint(self, run_dir: str) -> str:
        """Collective: <run_dir>/checkpoints/step-N (DeepSpeed state + RNG + data position + policy export),
        committed atomically with a manifest (runtime/checkpoint.py); returns the committed folder."""
        path = ckpt.save(
            self.engine, run_dir, self.global_step, rank=self.rank, meta=self._meta(),
            rank_state={"data": self.stream.state_dict()}, keep=self.train_cfg.keep_checkpoints,
            export=self._export,
        )
        return str(path)

    def load_checkpoint(self, path: str) -> int:
        """Collective: a run dir (its latest that verifies), its checkpoints dir, or a step-N dir. Every rank
        verifies the manifest before DeepSpeed unpickles anything. Returns the global step."""
        step, state = ckpt.load(self.engine, path, rank=self.rank, meta=self._meta())
        self.stream.load_state_dict(state["data"])
        if step != self.global_step:
            raise ckpt.CheckpointError(f"{path}: checkpoint says step {step}, DeepSpeed restored {self.global_step}")
        return step

    def export_policy(self, directory: str) -> str | None:
        """Collective: safetensors policy (+ processor, config) for eval / publication; rank 0 writes."""
        self._export(Path(directory))
        return str(directory) if self.rank == 0 else None

    def _export(self, directory: Path) -> None:
        module = self.engine.module
        if self.train_cfg.deepspeed.zero_stage == 3:  # parameters are partitioned: gather them (collective)
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if self.rank == 0:
                    self._write_policy(module, directory)
        elif self.rank == 0:
            self._write_policy(module, directory)
        if self.rank == 0:  # the export's own sha256 manifest: verified loading / publication check it
            write_manifest(directory)

    def _write_policy(self, module: torch.nn.Module, directory: Path) -> None:
        save_pretrained(directory, module, self.processor, self.policy_cfg, self.spec,
                        extra={"global_step": self.global_step, "objective": self.train_cfg.objective})


def _load_init(model: torch.nn.Module, directory: str, cfg: PolicyConfig, spec: PolicySpec) -> VLAProcessor | None:
    """Copy an exported policy's weights into ``model``; the processor (normalisation) comes with them. A latent-
    pretrained policy gives its backbone only (None: the caller keeps the processor of its own data)."""
    from vlaforge.policies.io import load_pretrained

    src, processor, src_cfg, src_spec, _ = load_pretrained(directory)
    if src_cfg.head.type != cfg.head.type and "latent" in (src_cfg.head.type, cfg.head.type):  # latent <-> actions
        from vlaforge.policies.latent_action.transfer import keep_backbone

        keep_backbone(model, src, src_cfg, src_spec, cfg, spec, directory)  # new head; normaliser of this data
        return None
    if src_cfg != cfg or src_spec != spec:
        raise ValueError(
            f"init policy {directory} was built with a different policy config or spec "
            f"({src_cfg.model_dump()} / {src_spec}) than this stage ({cfg.model_dump()} / {spec})"
        )
    model.load_state_dict(src.state_dict())
    return processor


def _spec(x: PolicySpec | dict) -> PolicySpec:
    return x if isinstance(x, PolicySpec) else PolicySpec.from_dict(x)
