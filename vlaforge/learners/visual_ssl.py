"""Objective "visual_ssl": time-contrastive pretraining of the VLA's vision encoder on unlabeled video.

Why time-contrastive (TCN, Sermanet et al. 2018; the time-contrastive term of R3M, Nair et al. 2022) and not
masked autoencoding: it trains the encoder through its own pooled tokens, so it fits every vision backbone of
the policy (the from-scratch CNN and EfficientNet-lite have no patches to mask), needs no pixel decoder that is
thrown away afterwards, and at 64 px on CPU costs one encoder pass per view. Its signal -- frames close in time
of the same episode look alike, everything else is told apart -- is what a manipulation policy needs from
pixels: arm and object positions, not textures. MAE stays possible as a second objective in its own file.

    IMAGE, NEXT_IMAGE (B, V, H, W, 3) --FramePairProcessor--> PIXELS, PIXELS_PAIR (B, V, 3, H, W) (+ random shift)
    --VisionSSLModel: policy.backbone.vision -> tokens (2B, V*T, dim) -> mean -> MLP -> L2 norm--> EMBEDDING(_PAIR) (B, D)
    --TimeContrastiveLoss: symmetric InfoNCE, positives on the diagonal, the other B-1 pairs negatives--> loss_tcn

``VisualSSLLearner`` is the DeepSpeed rank (LearnerActor's train_steps / checkpoints / rollback unchanged): it
trains the wrapper, and every export writes the whole VLA policy (head untouched) with the labelled data's
processor, so the next stage (bc, latent_pretrain) loads it like any exported policy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.errors import VlaforgeError
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.deepspeed_learner import LearnerActor, _load_init, _model, init_distributed
from vlaforge.learners.engine import ds_config, lr_scheduler, micro_batch, seed_everything
from vlaforge.learners.registry import build_objective, register_objective
from vlaforge.learners.stream import ShardStream
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained
from vlaforge.policies.augment import random_shift
from vlaforge.runtime.process import apply_process_env, set_threads


class FramePairProcessor:
    """uint8 frames -> float pixels in [0, 1], (B, V, H, W, 3) -> (B, V, 3, H, W); random shift when training."""

    def __init__(self, shift_pad: int):
        self.shift_pad = int(shift_pad)

    def _pixels(self, img: torch.Tensor, train: bool, device) -> torch.Tensor:
        b, v, h, w, c = img.shape
        px = img.to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, V, 3, H, W)
        if train and self.shift_pad > 0:
            px = random_shift(px.reshape(b * v, c, h, w), self.shift_pad).reshape(b, v, c, h, w)
        return px

    def __call__(self, td: TensorDictBase, train: bool = True, device: Any = "cpu") -> TensorDict:
        return TensorDict({keys.PIXELS: self._pixels(td.get(keys.IMAGE), train, device),
                           keys.PIXELS_PAIR: self._pixels(td.get(keys.NEXT_IMAGE), train, device)},
                          batch_size=td.batch_size, device=device)


class VisionSSLModel(nn.Module):
    """The whole VLA (so checkpoints and the export carry it) + a projection head; only the vision encoder
    and the projection train (the rest is frozen here: DeepSpeed gets no gradient-free parameters)."""

    def __init__(self, policy: nn.Module, proj_dim: int):
        super().__init__()
        vision = getattr(getattr(policy, "backbone", None), "vision", None)
        if vision is None:
            raise ValueError(f"visual_ssl needs a policy backbone with its own vision encoder (policy.backbone.type "
                             f"'vlaforge'); {type(getattr(policy, 'backbone', policy)).__name__} has none")
        self.policy = policy
        dim = policy.cfg.dim
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        policy.requires_grad_(False)
        for p in vision.parameters():  # a frozen pretrained trunk (policy.vision.freeze) stays frozen
            p.requires_grad_(True)
        if policy.cfg.vision.freeze:
            vision.trunk.requires_grad_(False)

    @property
    def vision(self) -> nn.Module:
        return self.policy.backbone.vision

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, V, 3, H, W) -> (N, D) unit vectors."""
        tokens = self.vision(pixels)  # (N, V*T, dim)
        return F.normalize(self.proj(tokens.mean(dim=1)), dim=-1)

    def forward(self, td: TensorDictBase) -> TensorDict:
        a, p = td.get(keys.PIXELS), td.get(keys.PIXELS_PAIR)
        z = self.embed(torch.cat([a, p], dim=0))  # one pass over both views: (2B, D)
        za, zp = z.split(a.shape[0])
        return TensorDict({keys.EMBEDDING: za, keys.EMBEDDING_PAIR: zp}, batch_size=[a.shape[0]])


class TimeContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over a batch of (frame, nearby frame) pairs: row i's positive is column i.
    Returns loss_tcn and detached diagnostics: top-1 retrieval accuracy, mean positive / negative cosine."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, td: TensorDictBase) -> TensorDict:
        za, zp = td.get(keys.EMBEDDING), td.get(keys.EMBEDDING_PAIR)  # (B, D) each, unit norm
        if za.shape != zp.shape or za.ndim != 2 or za.shape[0] < 2:
            raise ValueError(f"visual_ssl needs (B >= 2, D) embeddings of both views, got {tuple(za.shape)} "
                             f"and {tuple(zp.shape)}: raise train.batch_size")
        sim = za.float() @ zp.float().T  # (B, B) cosine similarities
        target = torch.arange(sim.shape[0], device=sim.device)
        logits = sim / self.temperature
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        with torch.no_grad():
            off = ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
            acc = (logits.argmax(dim=1) == target).float().mean()
        return TensorDict({"loss_tcn": loss, "tcn_accuracy": acc, "pos_cosine": sim.diagonal().mean().detach(),
                           "neg_cosine": sim[off].mean().detach()}, batch_size=[])


@register_objective("visual_ssl")
def make_visual_ssl(train: TrainConfig, model: nn.Module) -> nn.Module:
    return TimeContrastiveLoss(train.visual_ssl.temperature)


class VisualSSLLearner(LearnerActor):
    """One DeepSpeed rank of the visual_ssl stage. ``setup`` differs from BC's: the frames come from the
    unlabeled video (``video_path``), the policy's shapes and processor from the labelled dataset
    (``dataset_path``: the one the next stage trains on), so the export is the policy that stage expects."""

    def setup(self, train: TrainConfig | dict, policy: PolicyConfig | dict, dataset_path: str, video_path: str = "",
              init_policy: str | None = None, skip_bad_episodes: bool = False,
              collective_timeout_s: float | None = None) -> dict[str, Any]:
        if not video_path:
            raise ValueError("VisualSSLLearner.setup needs video_path (the unlabeled video's dataset folder)")
        apply_process_env()
        self.train_cfg, self.policy_cfg = _model(train, TrainConfig), _model(policy, PolicyConfig)
        set_threads(self.train_cfg.threads_per_learner)
        import deepspeed

        from vlaforge.data.dataset import ChunkDataset
        from vlaforge.data.frame_pairs import FramePairDataset
        from vlaforge.data.reader import DatasetReader

        init_distributed(self.train_cfg, collective_timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # One labelled episode is enough for the shapes; the processor's statistics are the whole dataset's.
        first = ChunkDataset(dataset_path, chunk_size=self.policy_cfg.chunk_size,
                             episodes=DatasetReader(dataset_path).episode_indices[:1])
        self.spec = PolicySpec(image_shape=tuple(first.images.shape[1:]), state_dim=first.state.shape[1],
                               action_dim=first.actions.shape[1])
        video_cams = DatasetReader(video_path).camera_keys
        if not set(first.camera_keys) <= set(video_cams):
            raise VlaforgeError(f"{video_path}: the unlabeled video has cameras {video_cams}, the policy needs "
                                f"{first.camera_keys} (the labelled data's): record the same camera "
                                "(data.video.camera for an mp4 folder)")
        cfg = self.train_cfg.visual_ssl
        self.dataset = FramePairDataset(video_path, gap=cfg.gap, cameras=first.camera_keys,
                                        skip_bad_episodes=skip_bad_episodes)
        if tuple(self.dataset.images.shape[1:]) != self.spec.image_shape:
            raise VlaforgeError(f"{video_path}: video frames are {tuple(self.dataset.images.shape[2:4])}, the policy's "
                                f"images {self.spec.image_shape[1:3]}: set data.video.image_size (mp4) or record "
                                "at envs.image_size")

        seed_everything(self.train_cfg.seed)  # identical initial weights on every rank
        policy_model = build_policy(self.policy_cfg, self.spec)
        self.vla_processor = VLAProcessor.from_stats(self.policy_cfg, first.stats)
        if init_policy is not None:
            # a latent-pretrained start gives its backbone only (None): the labelled data's processor stays
            self.vla_processor = _load_init(policy_model, init_policy, self.policy_cfg, self.spec) or self.vla_processor
        model = VisionSSLModel(policy_model, cfg.proj_dim)
        self.processor = FramePairProcessor(cfg.shift_pad)
        self.objective = build_objective("visual_ssl", self.train_cfg, model)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config(self.train_cfg, self.world_size),
            lr_scheduler=lambda opt: lr_scheduler(opt, self.train_cfg))
        seed_everything(self.train_cfg.seed + 1 + 1_000_003 * self.rank)  # own pair offsets / shifts per rank
        self.stream = ShardStream(len(self.dataset), self.dataset.get_batch, micro_batch(self.train_cfg, self.world_size),
                                  self.rank, self.world_size, seed=self.train_cfg.seed)
        return {"rank": self.rank, "world_size": self.world_size,
                "num_params": sum(p.numel() for p in model.vision.parameters()),
                "num_samples": len(self.dataset), "batches_per_epoch": self.stream.batches_per_epoch,
                "spec": self.spec.to_dict(), "bad_episodes": {str(e): w for e, w in self.dataset.bad_episodes.items()},
                "video_episodes": len(self.dataset.episodes)}

    def _write_policy(self, module: torch.nn.Module, directory) -> None:
        # The VLA alone (projection dropped), with the labelled data's processor: a normal policy export.
        save_pretrained(directory, module.policy, self.vla_processor, self.policy_cfg, self.spec,
                        extra={"global_step": self.global_step, "objective": "visual_ssl"})
