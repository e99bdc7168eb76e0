"""Latent action model: shapes, the quantizers' gradients, dead-code resets, the latent head, and the hand-over of
a latent-pretrained backbone to BC (weights compared)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.policies.latent_action.config import LatentActionConfig
from vlaforge.policies.latent_action.model import LAMProcessor, LatentActionModel
from vlaforge.policies.latent_action.quantizers import QUANTIZERS, build_quantizer

QUANTIZER_NAMES = ("nsvq", "vq_ema", "fsq")


def _cfg(q: str, **kw) -> LatentActionConfig:
    return LatentActionConfig(quantizer=q, image_size=32, channels=[8, 16], hidden=32, **kw)


def test_registry_holds_the_three_quantizers():
    assert set(QUANTIZER_NAMES) <= set(QUANTIZERS.names())


@pytest.mark.parametrize("q", QUANTIZER_NAMES)
def test_model_shapes_and_code_range(q, one_torch_thread):
    torch.manual_seed(0)
    model = LatentActionModel(_cfg(q), cameras=2)
    raw = TensorDict({keys.IMAGE: torch.randint(0, 255, (5, 2, 48, 48, 3), dtype=torch.uint8),
                      keys.NEXT_IMAGE: torch.randint(0, 255, (5, 2, 48, 48, 3), dtype=torch.uint8)}, [5])
    inp = LAMProcessor(32)(raw)
    assert inp[keys.LAM_FRAMES].shape == (5, 6, 32, 32)  # cameras stacked on channels, resized to 32
    out = model(inp)
    assert out[keys.LAM_PRED].shape == (5, 6, 32, 32)
    codes = out[keys.LATENT_CODES]
    assert codes.shape == (5, 4) and codes.dtype == torch.int64 and 0 <= int(codes.min()) and int(codes.max()) < 8
    assert out[keys.LAM_AUX_LOSS].shape == (5,)
    # inference: the codes the LAM labels with drive the forward model exactly as its own eval forward does
    model.eval()
    ev = model(inp)
    assert torch.equal(model.label(inp[keys.LAM_FRAMES], inp[keys.LAM_NEXT_FRAMES]), ev[keys.LATENT_CODES])
    torch.testing.assert_close(model.predict_from_codes(inp[keys.LAM_FRAMES], ev[keys.LATENT_CODES]), ev[keys.LAM_PRED])
    with pytest.raises(ValueError, match="LAMProcessor"):
        model(TensorDict({keys.LAM_FRAMES: torch.zeros(2, 3, 32, 32), keys.LAM_NEXT_FRAMES: torch.zeros(2, 3, 32, 32)}, [2]))


def test_vq_ema_passes_the_gradient_straight_through():
    q = build_quantizer(_cfg("vq_ema", code_dim=6)).train()
    q.initialized.fill_(True)  # keep the random rows (the first-batch init is tested below)
    z = torch.randn(4, 4, 6, requires_grad=True)  # (B, N = num_codes, D)
    w = torch.randn(4, 4, 6)
    before = q.embed.clone()
    out = q(z)
    (out.out * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # d out / d z = identity
    torch.testing.assert_close(out.out.detach(), before[out.codes])  # the forward value is the code
    assert not torch.equal(q.embed, before)  # the EMA moved the codebook towards the assigned z
    assert out.aux_loss > 0  # commitment pulls z to its code


def test_nsvq_gradient_reaches_encoder_and_codebook():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("nsvq", code_dim=6)).train()
    z = torch.randn(8, 4, 6, requires_grad=True)
    out = q(z)
    assert not torch.equal(out.out, q.codebook[out.codes])  # noise substitution while training
    out.out.pow(2).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    used = out.codes.unique()
    assert q.codebook.grad[used].abs().sum() > 0  # through ||z - q||
    q.eval()
    ev = q(z.detach())
    assert torch.equal(ev.out, q.codebook[ev.codes].detach())  # hard codes at inference


def test_fsq_rounds_with_a_straight_through_gradient():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("fsq", code_dim=6, fsq_levels=[2, 4])).train()
    z = torch.randn(16, 4, 6, requires_grad=True)
    out = q(z)
    assert int(out.codes.max()) < 8 and int(out.codes.min()) >= 0
    out.out.sum().backward()
    assert z.grad.abs().sum() > 0 and q.proj_in.weight.grad.abs().sum() > 0
    # the rounding itself is the identity for the gradient: d rounded / d bounded = 1
    h = torch.randn(5, 2, requires_grad=True)
    b = q._bound(h)
    r = b + (b.round() - b).detach()
    g1, = torch.autograd.grad(r.sum(), h)
    g2, = torch.autograd.grad(q._bound(h).sum(), h)
    torch.testing.assert_close(g1, g2)
    # codebook_vectors are what the forward model sees for each code
    q.eval()
    ev = q(z.detach())
    torch.testing.assert_close(q.codebook_vectors()[ev.codes], ev.out)


@pytest.mark.parametrize("q", ("vq_ema", "nsvq"))
def test_dead_code_reset_revives_unused_codes(q):
    """A crafted batch: the encoder outputs sit around 4 points near the origin, 7 of 8 codes far away -> one
    code takes every assignment; the reset moves the 7 dead codes onto encoder outputs and they get used."""
    torch.manual_seed(0)
    quant = build_quantizer(_cfg(q, code_dim=2, reset_every=1, dead_usage=0.5, ema_decay=0.1)).train()
    quant.initialized.fill_(True)  # the crafted codebook below, not the data-dependent init, is the start
    rows = quant.embed if q == "vq_ema" else quant.codebook.data
    rows[:] = 100.0
    rows[0] = 0.0
    centers = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    z = (centers[torch.arange(64) % 4] + 0.01 * torch.randn(64, 2)).reshape(16, 4, 2)
    quant.eval()
    assert quant(z).codes.unique().tolist() == [0]  # collapsed
    quant.train()
    quant(z)  # accounting -> codes 1..7 dead -> reset onto batch z
    assert int(quant.resets) == 7
    assert (rows.abs() < 5).all()  # every code now sits among the encoder outputs
    quant.eval()
    assert len(quant(z).codes.unique()) >= 3  # revived: several codes share the batch
    counts = quant.pop_interval()
    assert counts.shape == (4, 8) and counts.sum() == 64 and counts[:, 0].sum() == 64  # per position, training only
    assert quant.pop_interval().sum() == 0


def test_fsq_never_resets():
    quant = build_quantizer(_cfg("fsq", reset_every=1, dead_usage=0.9)).train()
    quant(torch.zeros(4, 4, 16))
    assert int(quant.resets) == 0


def test_config_checks_fsq_levels_and_image_size():
    with pytest.raises(ValueError, match="product"):
        LatentActionConfig(quantizer="fsq", fsq_levels=[3, 3])
    with pytest.raises(ValueError, match="only applies"):
        LatentActionConfig(quantizer="nsvq", fsq_levels=[8])
    with pytest.raises(ValueError, match="divisible"):
        LatentActionConfig(image_size=36, channels=[8, 8, 8])


def test_laom_action_decoder_learns_from_labelled_rows_only(one_torch_thread):
    from vlaforge.learners.latent_action import LatentActionLoss

    torch.manual_seed(0)
    cfg = _cfg("nsvq", action_loss_coef=2.0)
    with pytest.raises(ValueError, match="action_loss_coef"):
        LatentActionModel(cfg, cameras=1)  # LAOM without the labelled data's action dim
    model = LatentActionModel(cfg, cameras=1, action_dim=3)
    has = torch.tensor([False, False, True, True])
    td = TensorDict({keys.LAM_FRAMES: torch.rand(4, 3, 32, 32), keys.LAM_NEXT_FRAMES: torch.rand(4, 3, 32, 32),
                     keys.LAM_ACTIONS: torch.tensor([[9.0] * 3, [9.0] * 3, [0.5] * 3, [-0.5] * 3]),
                     keys.LAM_HAS_ACTIONS: has}, [4])
    out = model(td)
    assert out[keys.LAM_ACTION_PRED].shape == (4, 3)
    losses = LatentActionLoss(8, action_coef=2.0)(td.update(out))
    pred = out[keys.LAM_ACTION_PRED].detach()
    want = (pred[2:] - td[keys.LAM_ACTIONS][2:]).pow(2).mean()  # the unlabelled rows' 9.0 never counts
    torch.testing.assert_close(losses["action_mse"], want)
    torch.testing.assert_close(losses["loss_action"], 2.0 * want)
    losses["loss_action"].backward()
    assert model.idm[-1].weight.grad.abs().sum() > 0  # the action labels shape the codes (through the IDM)


@pytest.mark.parametrize("q", ("vq_ema", "nsvq"))
def test_codebook_starts_on_the_first_batch_of_encoder_outputs(q):
    torch.manual_seed(0)
    quant = build_quantizer(_cfg(q, code_dim=3)).train()
    z = 5.0 + torch.randn(8, 4, 3)  # far from the random initial rows
    quant.eval()
    assert len(quant(z).codes.unique()) <= 2  # random rows: the nearest one or two take everything
    quant.train()
    quant(z)
    rows = (quant.embed if q == "vq_ema" else quant.codebook).detach()
    if q == "nsvq":  # every row is one of the batch's encoder outputs
        assert all(bool((z.reshape(-1, 3) == r).all(-1).any()) for r in rows)
    assert bool(quant.initialized) and (rows - 5.0).abs().max() < 5  # now among the encoder outputs
    quant.eval()
    assert len(quant(z).codes.unique()) >= 4
