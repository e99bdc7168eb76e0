"""Latent-action objectives and the latent -> BC hand-over as the BC learner does it (LearnerActor's _load_init):
the backbone's weights arrive unchanged, the head is the new one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.data.stats import numeric_stats
from vlaforge.learners.deepspeed_learner import _load_init
from vlaforge.learners.latent_action import LatentActionLoss, perplexity
from vlaforge.learners.latent_pretrain import LatentPretrainLoss
from vlaforge.learners.registry import OBJECTIVES, total_loss
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained
from vlaforge.policies.config import LatentHeadConfig


def test_objectives_are_registered_and_lam_loss_terms():
    assert {"latent_action", "latent_pretrain"} <= set(OBJECTIVES)
    o_t, o_tk = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    td = TensorDict({keys.LAM_FRAMES: o_t, keys.LAM_NEXT_FRAMES: o_tk, keys.LAM_PRED: o_tk * 0.5 + o_t * 0.5,
                     keys.LATENT_CODES: torch.tensor([[0, 1]] * 6), keys.LAM_AUX_LOSS: torch.full((6,), 0.1)}, [6])
    out = LatentActionLoss(codebook_size=4)(td)
    torch.testing.assert_close(out["loss_recon"], ((o_tk - o_t) * 0.5).pow(2).mean())
    torch.testing.assert_close(out["copy_mse"], (o_tk - o_t).pow(2).mean())
    torch.testing.assert_close(out["recon_gain"], torch.tensor(4.0))
    # each position always gives the same code (position 0: code 0, position 1: code 1): collapsed per position,
    # though the pooled usage (two codes, equally used) would say perplexity 2
    torch.testing.assert_close(out["perplexity"], torch.tensor(1.0))
    torch.testing.assert_close(perplexity(torch.tensor([[0, 1], [1, 0]] * 3), 4), torch.tensor(2.0))
    torch.testing.assert_close(total_loss(out), out["loss_recon"] + out["loss_quant"])
    assert float(perplexity(torch.zeros(10, dtype=torch.long), 8)) == pytest.approx(1.0)


def test_latent_pretrain_loss():
    logits = torch.full((2, 3, 4), -10.0)
    codes = torch.tensor([[0, 1, 2], [3, 3, 3]])
    logits.scatter_(-1, codes[..., None], 10.0)
    out = LatentPretrainLoss()(TensorDict({keys.LATENT_LOGITS: logits, keys.LATENT_CODES: codes}, [2]))
    assert float(out["loss_latent"]) < 1e-6 and float(out["code_accuracy"]) == 1.0
    assert float(out["chance"]) == pytest.approx(3 / 6)  # code 3: three of the six
    with pytest.raises(ValueError, match="disagree on N"):
        LatentPretrainLoss()(TensorDict({keys.LATENT_LOGITS: logits, keys.LATENT_CODES: codes[:, :2]}, [2]))


POLICY = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2, vision={"channels": [8, 16]})


def _stats(state_dim: int, action_dim: int) -> dict:
    rng = np.random.default_rng(0)
    return {"observation.state": numeric_stats(rng.normal(size=(10, state_dim))),
            "action": numeric_stats(rng.uniform(-1, 1, size=(10, action_dim)))}


@pytest.mark.parametrize("video_state_dim", [4, 1])
def test_bc_keeps_the_latent_pretrained_backbone_and_replaces_the_head(tmp_path, video_state_dim, one_torch_thread):
    latent_cfg = POLICY.model_copy(update={"head": POLICY.head.model_copy(update={
        "type": "latent", "latent": LatentHeadConfig(num_codes=3, codebook_size=5)})})
    latent_spec = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=video_state_dim, action_dim=1)
    torch.manual_seed(1)
    latent = build_policy(latent_cfg, latent_spec)
    out = latent(VLAProcessor.from_stats(latent_cfg, _stats(video_state_dim, 1))(TensorDict({
        keys.IMAGE: torch.zeros(2, 1, 32, 32, 3, dtype=torch.uint8), keys.STATE: torch.zeros(2, video_state_dim),
        keys.INSTRUCTION: ["a", "b"]}, [2])))
    assert out[keys.LATENT_LOGITS].shape == (2, 3, 5)
    with pytest.raises(ValueError, match="bc stage"):
        latent.act(out)
    save_pretrained(tmp_path / "latent", latent, VLAProcessor.from_stats(latent_cfg, _stats(video_state_dim, 1)),
                    latent_cfg, latent_spec)

    bc_spec = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=3)
    torch.manual_seed(2)
    bc = build_policy(POLICY, bc_spec)
    fresh = {k: v.clone() for k, v in bc.state_dict().items()}
    assert _load_init(bc, str(tmp_path / "latent"), POLICY, bc_spec) is None  # BC keeps its own data's normaliser
    got, src = bc.state_dict(), latent.state_dict()
    backbone = [k for k in got if k.startswith("backbone.")]
    state_enc = [k for k in backbone if k.startswith("backbone.state.")]
    for k in backbone:
        if k in state_enc and video_state_dim != 4:
            assert torch.equal(got[k], fresh[k])  # no robot state in the video: the state encoder starts fresh
        else:
            assert torch.equal(got[k], src[k]), k  # the pretrained backbone, bit for bit
    heads = [k for k in got if k.startswith("head.")]
    assert heads and all(torch.equal(got[k], fresh[k]) for k in heads)  # the new action head, untouched
    assert not any(k in src for k in heads)  # ... and not the latent head's


def test_a_different_backbone_is_refused(tmp_path):
    latent_cfg = POLICY.model_copy(update={"head": POLICY.head.model_copy(update={"type": "latent"})})
    spec = PolicySpec(image_shape=(1, 32, 32, 3), state_dim=4, action_dim=1)
    save_pretrained(tmp_path / "latent", build_policy(latent_cfg, spec), VLAProcessor.from_stats(latent_cfg, _stats(4, 1)),
                    latent_cfg, spec)
    other = POLICY.model_copy(update={"dim": 64})
    with pytest.raises(ValueError, match="policy.dim"):
        _load_init(build_policy(other, spec), str(tmp_path / "latent"), other, PolicySpec((1, 32, 32, 3), 4, 3))
