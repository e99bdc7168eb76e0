"""RewardLearner: the reward model on the DeepSpeed learner ranks (a LearnerActor with another model).

Only setup, the batch preparation and the export differ from the VLA's learner: the step loop
(``train_steps``: metrics all-reduced over ranks), checkpoints and the export plumbing are inherited.

    data = ray.put(build_success_set(episodes, rm_cfg))                 # or build_preference_set: [P, 2, L]
    group = WorkerGroup(RewardLearner, recipe.train.num_learners, cpus_per_worker=..., name="rm-learner")
    group.call("setup", recipe.train, rm_cfg, data)                     # collective
    metrics = group.call("train_steps", rm_cfg.steps)[0]                # train/loss_rm, train/rm_accuracy, ...
    held_out = group.call_rank0("evaluate", eval_set)                   # rm_eval/auroc, ...
    group.call("export_policy", out_dir)                                # rank 0 writes save_reward_model
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor, _model
from vlaforge.learners.engine import backend, ds_config, lr_scheduler, micro_batch, seed_everything
from vlaforge.learners.registry import build_objective
from vlaforge.learners.reward_model import evaluate_reward_model, prepare_batch, spec_of, train_config_for
from vlaforge.learners.stream import ShardStream
from vlaforge.runtime.process import apply_process_env, set_threads
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import RewardModel, RewardProcessor, save_reward_model


class RewardLearner(LearnerActor):
    def setup(self, train: TrainConfig | dict, reward_model: RewardModelConfig | dict,  # type: ignore[override]
              data: TensorDictBase) -> dict[str, Any]:
        """Collective. ``train``: the recipe's train block (ranks, threads, DeepSpeed stage); the RM's own
        steps / lr / batch come from ``reward_model``. ``data``: a labeled set (every rank gets all of it and
        reads its own shard). Returns {rank, world_size, num_params, num_samples, batches_per_epoch}."""
        apply_process_env()
        self.rm_cfg = _model(reward_model, RewardModelConfig)
        self.train_cfg = train_config_for(self.rm_cfg, _model(train, TrainConfig))
        set_threads(self.train_cfg.threads_per_learner)
        import deepspeed  # after the env: DS_ACCELERATOR / TORCH_EXTENSIONS_DIR are read at import

        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend=backend(self.train_cfg))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.rm_cfg.batch_size % self.world_size:
            raise ValueError(f"reward_model.batch_size ({self.rm_cfg.batch_size}) must be divisible by the "
                             f"{self.world_size} learner ranks")
        self.data, self.spec = data, spec_of(data)

        seed_everything(self.train_cfg.seed)  # same seed on every rank: identical initial weights
        model = RewardModel(self.rm_cfg, self.spec)
        self.processor = RewardProcessor.fit(self.rm_cfg, data)
        self.objective = build_objective(self.train_cfg.objective, self.train_cfg, model)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config(self.train_cfg, self.world_size),
            lr_scheduler=lambda opt: lr_scheduler(opt, self.train_cfg),
        )
        seed_everything(self.train_cfg.seed + 1 + 1_000_003 * self.rank)  # per-rank augmentation noise
        self.stream = ShardStream(len(data), lambda idx: self.data[idx], micro_batch(self.train_cfg, self.world_size),
                                  self.rank, self.world_size, seed=self.train_cfg.seed)
        return {"rank": self.rank, "world_size": self.world_size, "num_params": sum(p.numel() for p in model.parameters()),
                "num_samples": len(data), "batches_per_epoch": self.stream.batches_per_epoch}

    def _prepare(self, batch: TensorDictBase) -> TensorDictBase:
        inp = prepare_batch(self.processor, batch, train=True, device=self.engine.device)  # frames [N]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.train_cfg.deepspeed.precision)
        if dtype is not None:  # DeepSpeed casts the module, not its inputs; labels stay float32
            for k in (keys.PIXELS, keys.STATE_NORM):
                if k in inp.keys():
                    inp.set(k, inp.get(k).to(dtype))
        return inp

    def evaluate(self, data: TensorDictBase) -> dict[str, float]:
        """Not collective (call_rank0): held-out metrics of this rank's weights (identical on every rank)."""
        return evaluate_reward_model(self.engine.module, self.processor, data)

    def _meta(self) -> dict[str, Any]:
        return {
            "model_config": {"reward_model": self.rm_cfg.model_dump(mode="json"), "spec": self.spec.to_dict()},
            "params": {n: list(getattr(p, "ds_shape", p.shape)) for n, p in self.engine.module.named_parameters()},
            "objective": self.train_cfg.objective,
            "world_size": self.world_size,
            "zero_stage": self.train_cfg.deepspeed.zero_stage,
        }

    def _write_policy(self, module: torch.nn.Module, directory) -> None:
        save_reward_model(directory, module, self.processor,
                          extra={"global_step": self.global_step, "objective": self.train_cfg.objective})
