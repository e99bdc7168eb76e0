"""DeepSpeed ranks of the latent-action stages: the same LearnerActor (train_steps, checkpoints, NaN guard,
resume), set up over frame pairs instead of action chunks.

    LatentActionLearner   lam stage: FramePairDataset -> LAMProcessor -> LatentActionModel -> objective latent_action
    LatentPretrainLearner latent_pretrain stage: FramePairDataset labelled ONCE by the frozen LAM (every rank
                          labels the same pairs in eval mode: identical codes, no collective) -> VLAProcessor
                          -> VLA with the latent head -> objective latent_pretrain

Labelling once vs on the fly: one LAM encoder pass per pair at setup (bench/latent.py measures it) instead of one
per pair per epoch; o_t's random-shift augmentation then still varies while its code stays that of the clean pair.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.frame_pairs import FramePairDataset
from vlaforge.data.stats import numeric_stats
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor, _load_init, _model, init_distributed
from vlaforge.learners.engine import ds_config, lr_scheduler, micro_batch, seed_everything
from vlaforge.learners.latent_action import counts_perplexity
from vlaforge.learners.registry import build_objective
from vlaforge.learners.stream import ShardStream
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy
from vlaforge.policies.latent_action.config import LatentConfig
from vlaforge.policies.latent_action.io import load_lam, save_lam
from vlaforge.policies.latent_action.model import LAMProcessor, LatentActionModel
from vlaforge.runtime.process import apply_process_env, set_threads

LATENT_ACTION_DIM = 1  # a latent policy emits no env actions: placeholder action dim + normaliser (bc replaces both)


def _start(actor: LearnerActor, train, collective_timeout_s: float | None):
    apply_process_env()
    actor.train_cfg = _model(train, TrainConfig)
    set_threads(actor.train_cfg.threads_per_learner)
    import deepspeed  # after the env: DS_ACCELERATOR / TORCH_EXTENSIONS_DIR are read at import

    init_distributed(actor.train_cfg, collective_timeout_s)
    actor.rank, actor.world_size = dist.get_rank(), dist.get_world_size()
    return deepspeed


def _engine(actor: LearnerActor, deepspeed, model: torch.nn.Module, dataset: FramePairDataset) -> dict[str, Any]:
    """Objective, DeepSpeed engine and the rank's data stream (as LearnerActor.setup builds them)."""
    actor.objective = build_objective(actor.train_cfg.objective, actor.train_cfg, model)
    actor.engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config(actor.train_cfg, actor.world_size), lr_scheduler=lambda opt: lr_scheduler(opt, actor.train_cfg))
    seed_everything(actor.train_cfg.seed + 1 + 1_000_003 * actor.rank)
    actor.dataset = dataset
    actor.stream = ShardStream(len(dataset), dataset.get_batch, micro_batch(actor.train_cfg, actor.world_size),
                               actor.rank, actor.world_size, seed=actor.train_cfg.seed)
    return {"rank": actor.rank, "world_size": actor.world_size, "num_params": sum(p.numel() for p in model.parameters()),
            "num_samples": len(dataset), "num_episodes": len(dataset.episodes),
            "batches_per_epoch": actor.stream.batches_per_epoch,
            "bad_episodes": {str(e): why for e, why in dataset.bad_episodes.items()}}


class PairedStream:
    """LAOM: each step's video micro batch together with ``labelled``'s (a tuple); one resumable position each."""

    def __init__(self, video: ShardStream, labelled: ShardStream):
        self.video, self.labelled = video, labelled
        self.batches_per_epoch = video.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.video.epoch

    def next(self) -> tuple[TensorDictBase, TensorDictBase]:
        return self.video.next(), self.labelled.next()

    def state_dict(self) -> dict[str, Any]:
        return {"video": self.video.state_dict(), "labelled": self.labelled.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.video.load_state_dict(state["video"])
        self.labelled.load_state_dict(state["labelled"])


class LatentActionLearner(LearnerActor):
    def setup(self, train: TrainConfig | dict, latent: LatentConfig | dict, dataset_path: str,
              episodes: list[int] | None = None, labelled_path: str | None = None, skip_bad_episodes: bool = False,
              collective_timeout_s: float | None = None) -> dict[str, Any]:
        """Collective. Trains the LAM on the frame pairs (gap latent.gap) of ``episodes`` of ``dataset_path``;
        with LAOM (latent.model.action_loss_coef > 0) also on the labelled pairs of ``labelled_path``."""
        deepspeed = _start(self, train, collective_timeout_s)
        if self.train_cfg.deepspeed.zero_stage == 3:  # the codebook resets write whole rows on every rank
            raise ValueError("the lam stage supports train.deepspeed.zero_stage 0-2 (a latent action model of this "
                             "size needs no parameter partitioning); set zero_stage: 1")
        self.latent_cfg = lc = _model(latent, LatentConfig)
        dataset = FramePairDataset(dataset_path, lc.gap, episodes, skip_bad_episodes=skip_bad_episodes)
        labelled = None
        if lc.model.action_loss_coef > 0:
            if labelled_path is None:
                raise ValueError("latent.model.action_loss_coef > 0 (LAOM) needs labelled data: labelled_path")
            labelled = FramePairDataset(labelled_path, lc.gap, cameras=dataset.camera_keys, actions=True,
                                        skip_bad_episodes=skip_bad_episodes)
        seed_everything(self.train_cfg.seed)  # same initial weights (and codebook) on every rank
        model = LatentActionModel(lc.model, cameras=dataset.images.shape[1],
                                  action_dim=0 if labelled is None else labelled.actions.shape[1])
        self.processor = LAMProcessor(lc.model.image_size)
        self.spec = {"cameras": model.cameras, "image_shape": list(dataset.images.shape[1:]), "action_dim": model.action_dim}
        info = _engine(self, deepspeed, model, dataset)
        if labelled is not None:
            self.stream = PairedStream(self.stream, ShardStream(len(labelled), labelled.get_batch, lc.action_batch,
                                                                self.rank, self.world_size, seed=self.train_cfg.seed + 1))
            info["labelled_pairs"] = len(labelled)
        return info

    def _prepare(self, batch) -> TensorDictBase:
        if not isinstance(batch, tuple):
            return super()._prepare(batch)
        video, labelled = (super(LatentActionLearner, self)._prepare(b) for b in batch)
        video.set(keys.LAM_ACTIONS, torch.zeros(video.batch_size[0], labelled.get(keys.LAM_ACTIONS).shape[1],
                                                dtype=labelled.get(keys.LAM_ACTIONS).dtype, device=video.device))
        video.set(keys.LAM_HAS_ACTIONS, torch.zeros(video.batch_size[0], dtype=torch.bool, device=video.device))
        labelled.set(keys.LAM_HAS_ACTIONS, torch.ones(labelled.batch_size[0], dtype=torch.bool, device=video.device))
        return torch.cat([video, labelled])  # (B_video + B_labelled,): one LAM forward, one backward

    def codebook_health(self) -> dict[str, Any]:
        """Code usage since the previous call (all ranks' counts): perplexity per code position (mean, and of the
        pooled usage), the pooled usage histogram, dead codes (unused at every position), resets so far."""
        q = self.engine.module.quantizer
        per_pos = q.pop_interval().cpu()  # (N, C)
        pooled = per_pos.sum(0)
        return {"usage": (pooled / pooled.sum().clamp_min(1.0)).tolist(), "count": float(pooled.sum()),
                "perplexity": float(counts_perplexity(per_pos).mean()),
                "perplexity_per_position": counts_perplexity(per_pos).tolist(),
                "perplexity_pooled": float(counts_perplexity(pooled)), "dead": int((pooled == 0).sum()),
                "dead_ema": int(q.dead().sum()), "resets": int(q.resets), "codebook_size": q.size}

    def _meta(self) -> dict[str, Any]:
        return {"model_config": {"latent": self.latent_cfg.model_dump(mode="json"), "spec": self.spec},
                "params": {n: list(getattr(p, "ds_shape", p.shape)) for n, p in self.engine.module.named_parameters()},
                "objective": self.train_cfg.objective, "world_size": self.world_size,
                "zero_stage": self.train_cfg.deepspeed.zero_stage}

    def _write_policy(self, module: torch.nn.Module, directory: Path) -> None:
        save_lam(directory, module, self.processor, extra={"global_step": self.global_step, "gap": self.latent_cfg.gap})


def label_pairs(lam: LatentActionModel, processor: LAMProcessor, dataset: FramePairDataset,
                batch_size: int = 256) -> torch.Tensor:
    """Codes (N, num_codes) of every frame pair of ``dataset`` (the LAM in eval mode: deterministic)."""
    out = []
    for lo in range(0, len(dataset), batch_size):
        inp = processor(dataset.get_batch(torch.arange(lo, min(lo + batch_size, len(dataset)))))
        out.append(lam.label(inp.get(keys.LAM_FRAMES), inp.get(keys.LAM_NEXT_FRAMES)))
    return torch.cat(out)


def latent_policy_stats(dataset: FramePairDataset) -> dict[str, dict[str, np.ndarray]]:
    """The video's state / image stats plus a placeholder [-1, 1] action entry (no actions exist here)."""
    return {**dataset.stats(), F.ACTION_KEY: numeric_stats(np.array([[-1.0] * LATENT_ACTION_DIM, [1.0] * LATENT_ACTION_DIM]))}


class LatentPretrainLearner(LearnerActor):
    def setup(self, train: TrainConfig | dict, policy: PolicyConfig | dict, lam_dir: str, dataset_path: str,
              gap: int, episodes: list[int] | None = None, init_policy: str | None = None,
              skip_bad_episodes: bool = False, collective_timeout_s: float | None = None) -> dict[str, Any]:
        """Collective. ``policy`` has head.type "latent" sized like the LAM at ``lam_dir``; ``init_policy``: an
        exported latent policy to continue from (same config)."""
        deepspeed = _start(self, train, collective_timeout_s)
        self.policy_cfg = _model(policy, PolicyConfig)
        dataset = FramePairDataset(dataset_path, gap, episodes, skip_bad_episodes=skip_bad_episodes)
        t0 = time.perf_counter()
        lam, lam_processor, _ = load_lam(lam_dir)
        dataset.set_codes(label_pairs(lam, lam_processor, dataset))
        label_s, codebook_size = time.perf_counter() - t0, lam.cfg.codebook_size
        del lam
        self.spec = PolicySpec(image_shape=tuple(dataset.images.shape[1:]), state_dim=dataset.state.shape[1],
                               action_dim=LATENT_ACTION_DIM)
        seed_everything(self.train_cfg.seed)
        model = build_policy(self.policy_cfg, self.spec)
        self.processor = VLAProcessor.from_stats(self.policy_cfg, latent_policy_stats(dataset))
        if init_policy is not None:
            self.processor = _load_init(model, init_policy, self.policy_cfg, self.spec) or self.processor
        info = _engine(self, deepspeed, model, dataset)
        codes = dataset.codes
        info.update(label_s=label_s, code_histogram=torch.bincount(codes.flatten(), minlength=codebook_size).tolist(),
                    has_state=dataset.has_state, spec=self.spec.to_dict())
        return info

    def _prepare(self, batch: TensorDictBase) -> TensorDictBase:
        inp = super()._prepare(batch)
        inp.set(keys.LATENT_CODES, batch.get(keys.LATENT_CODES).to(inp.device))
        return inp
