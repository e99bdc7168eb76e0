"""Reward model (policies layer): shapes, encoder reuse, processor errors, safetensors round trip,
config validation, and the AUROC / Pearson helpers on hand-computed cases."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.policies import load_pretrained
from vlaforge.policies.io import CONFIG_FILE
from vlaforge.policies.reward_config import RewardModelConfig
from vlaforge.policies.reward_model import (
    RewardModel,
    RewardProcessor,
    auroc,
    load_reward_model,
    pearson,
    predict_logits,
    rm_spec,
    save_reward_model,
)
from vlaforge.policies.vision import CNNVision

S = 5


def rm_cfg(**over) -> RewardModelConfig:
    base = dict(enabled=True, dim=32, heads=2, vision={"channels": [8, 16], "keypoints": 4},
                language={"vocab_size": 128, "max_tokens": 6, "layers": 0})
    base.update(over)
    return RewardModelConfig(**base)


def frames(b: int, v: int = 1, hw: int = 32, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({keys.IMAGE: torch.randint(0, 256, (b, v, hw, hw, 3), dtype=torch.uint8, generator=g),
                     keys.STATE: torch.randn(b, S, generator=g)}, batch_size=[b])
    td.set(keys.INSTRUCTION, NonTensorStack.from_list([["open the drawer", "press the button"][i % 2] for i in range(b)]))
    return td


@pytest.mark.parametrize("use_state,cameras", [(False, 1), (True, 2)])
def test_forward_shapes_and_registry_encoders(use_state, cameras):
    cfg = rm_cfg(use_state=use_state)
    data = frames(6, v=cameras)
    torch.manual_seed(0)
    model = RewardModel(cfg, rm_spec((cameras, 32, 32, 3), S))
    assert isinstance(model.vision, CNNVision)  # the VLA's own encoder class, built from its registry
    proc = RewardProcessor.fit(cfg, data)
    inp = proc(data)
    assert (keys.STATE_NORM in inp.keys()) == use_state
    out = model(inp)
    assert out.get(keys.RM_LOGIT).shape == (6,) and torch.isfinite(out.get(keys.RM_LOGIT)).all()
    # predict_logits keeps any batch shape and matches a plain forward in eval mode
    logits = predict_logits(model, proc, torch.stack([data, data]), batch_size=4)
    assert logits.shape == (2, 6)
    with torch.no_grad():
        assert torch.allclose(logits[1], model.eval()(proc(data)).get(keys.RM_LOGIT), atol=1e-5)


def test_instruction_changes_the_logit():
    cfg = rm_cfg()
    torch.manual_seed(0)
    model = RewardModel(cfg, rm_spec((1, 32, 32, 3), S)).eval()
    proc = RewardProcessor.fit(cfg)
    a = frames(2)
    b = a.clone()
    b.set(keys.INSTRUCTION, NonTensorStack.from_list(["pick up the red block", "slide the puck left"]))
    with torch.no_grad():
        assert not torch.allclose(model(proc(a)).get(keys.RM_LOGIT), model(proc(b)).get(keys.RM_LOGIT))


def test_processor_errors_name_the_problem():
    proc = RewardProcessor.fit(rm_cfg(use_state=True), frames(4))
    bad = frames(2)
    bad.set(keys.IMAGE, bad.get(keys.IMAGE).float())
    with pytest.raises(ValueError, match=r"observation/image must be uint8 \(B, V, H, W, 3\)"):
        proc(bad)
    with pytest.raises(KeyError, match="observation/instruction"):
        proc(frames(2).exclude(keys.INSTRUCTION))
    wrong_state = frames(2)
    wrong_state.set(keys.STATE, torch.zeros(2, S + 1))
    with pytest.raises(ValueError, match=r"observation/state must be \(B=2, S=5\)"):
        proc(wrong_state)
    with pytest.raises(ValueError, match="use_state needs a labeled set"):
        RewardProcessor.fit(rm_cfg(use_state=True), None)


def test_round_trip_and_wrong_kind(tmp_path):
    from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained

    cfg = rm_cfg(use_state=True, output="binary", shaping=0.5, threshold=0.7)
    data = frames(5)
    torch.manual_seed(1)
    model = RewardModel(cfg, rm_spec((1, 32, 32, 3), S))
    proc = RewardProcessor.fit(cfg, data)
    path = save_reward_model(tmp_path / "rm", model, proc, extra={"auroc": 0.9})
    model2, proc2, extra = load_reward_model(path)
    assert extra == {"auroc": 0.9} and model2.cfg == cfg and not model2.training
    assert torch.equal(predict_logits(model, proc, data), predict_logits(model2, proc2, data))
    assert json.loads((path / CONFIG_FILE).read_text())["kind"] == "reward_model"

    with pytest.raises(ValueError, match="has no 'policy' entry"):  # an RM is not a policy
        load_pretrained(path)
    pcfg = PolicyConfig(dim=16, heads=2, layers=1, chunk_size=2, n_action_steps=1,
                        vision={"channels": [8], "keypoints": 0}, language={"layers": 0})
    pspec = PolicySpec((1, 32, 32, 3), S, 2)
    stats = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S}, "action": {"min": [-1, -1], "max": [1, 1]}}
    ppath = save_pretrained(tmp_path / "policy", build_policy(pcfg, pspec), VLAProcessor.from_stats(pcfg, stats), pcfg, pspec)
    with pytest.raises(ValueError, match="not a reward model checkpoint"):  # and a policy is not an RM
        load_reward_model(ppath)


def test_config_validation():
    with pytest.raises(ValidationError, match="set reward_model.enabled: true"):
        RewardModelConfig(mode="rm")
    with pytest.raises(ValidationError, match="divisible"):
        RewardModelConfig(dim=30, heads=4)
    with pytest.raises(ValidationError):
        RewardModelConfig(kind="ranking")
    enc = rm_cfg(dim=48, heads=3).encoder_config()
    assert (enc.dim, enc.heads, enc.vision.channels) == (48, 3, [8, 16])


def test_auroc_matches_hand_counts():
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: of 4 (pos, neg) pairs 3 are ordered right -> 0.75
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts 1/2: pairs (0.5 vs 0.5) = 0.5, (0.5 vs 0.2) = 1 -> 0.75
    assert auroc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.75)
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == 1.0
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 0, 1])) == 0.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) != auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))  # NaN


def test_pearson():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    # centred x = [-1.5, -.5, .5, 1.5], y = [.5, -.5, .5, -.5]: sum xy = -1, sum x^2 = 5, sum y^2 = 1 -> -1/sqrt(5)
    assert pearson(x, torch.tensor([1.0, 0.0, 1.0, 0.0])) == pytest.approx(-0.4472136, abs=1e-6)
    with pytest.raises(ValueError):
        pearson(x, x[:3])
