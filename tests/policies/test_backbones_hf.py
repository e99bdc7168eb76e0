"""Backbone "hf": a tiny randomly initialised Idefics3 (SmolVLM's classes) written to a local folder, loaded
through the same from_pretrained(local_files_only=True) path real weights take."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import build_objective, total_loss
from vlaforge.policies import PolicySpec, VLAProcessor, build_policy, load_pretrained, save_pretrained
from vlaforge.policies.backbones.tiny_vlm import write_tiny_idefics3


SPEC = PolicySpec(image_shape=(2, 32, 32, 3), state_dim=7, action_dim=4)  # 2 cameras


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_idefics3(tmp_path_factory.mktemp("tiny_idefics3"))


@pytest.fixture
def hf_cfg(tiny_cfg, vlm_dir):
    def make(**backbone):
        # vision/language reset to defaults: they configure the other backbone (an error with hf)
        return tiny_cfg(vision={}, language={}, backbone={"type": "hf", "path": str(vlm_dir), **backbone})
    return make


def _build(cfg, stats):
    torch.manual_seed(0)
    return build_policy(cfg, SPEC), VLAProcessor.from_stats(cfg, stats)


def _vlm_params(policy):
    return {n: p for n, p in policy.named_parameters() if n.startswith("backbone.vlm.")}


def test_forward_backward_frozen(hf_cfg, stats, make_obs):
    policy, proc = _build(hf_cfg(), stats)
    td = proc(make_obs(3, v=2, with_chunk=True), train=True)
    inputs = td[keys.VLM_INPUTS]
    assert inputs["pixel_values"].shape == (3, 2, 3, 32, 32)  # the VLM's own preprocessing: 2 cameras, 32 px
    assert inputs["input_ids"].shape[0] == 3 and keys.PIXELS not in td.keys()
    out = policy(td)
    assert out[keys.ACTION_MEAN].shape == (3, 4, 4) and torch.isfinite(out[keys.ACTION_MEAN]).all()
    objective = build_objective("bc", TrainConfig(), policy)
    total_loss(objective(td.update(out))).backward()
    vlm = _vlm_params(policy)
    assert vlm and all(not p.requires_grad and p.grad is None for p in vlm.values())  # frozen VLM
    trainable = policy.named_trainable_parameters()
    assert trainable and not any(n.startswith("backbone.vlm.") for n in trainable)
    assert all(p.grad is not None for p in trainable.values())  # readout, state, queries, head all get gradient


def test_save_load_round_trip(hf_cfg, stats, make_obs, tmp_path):
    policy, proc = _build(hf_cfg(num_layers=1), stats)
    obs = make_obs(2, v=2)
    policy.eval()
    with torch.no_grad():
        before = policy(proc(obs))[keys.ACTION_MEAN]
    out = save_pretrained(tmp_path / "ckpt", policy, proc, policy.cfg, SPEC)
    saved = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("backbone.vlm.") for k in saved)  # self-contained weights (fine-tuned VLMs too)
    loaded, proc2, cfg2, spec2, _ = load_pretrained(out)
    assert cfg2 == policy.cfg and spec2 == SPEC and proc2.vlm.path == proc.vlm.path
    with torch.no_grad():
        after = loaded(proc2(obs))[keys.ACTION_MEAN]
    torch.testing.assert_close(after, before)


def test_lora_trains_only_adapters_and_readout(hf_cfg, stats, make_obs, tmp_path):
    cfg = hf_cfg(lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    policy, proc = _build(cfg, stats)
    vlm_trainable = [n for n, p in _vlm_params(policy).items() if p.requires_grad]
    assert vlm_trainable and all(".lora_A." in n or ".lora_B." in n for n in vlm_trainable)
    assert any("text_model" in n for n in vlm_trainable) and any("vision_model" in n for n in vlm_trainable)
    base = {n: p.detach().clone() for n, p in _vlm_params(policy).items() if not p.requires_grad}
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    td = proc(make_obs(4, v=2, with_chunk=True), train=True)
    objective = build_objective("bc", TrainConfig(), policy)
    lora_b = {n: p.detach().clone() for n, p in _vlm_params(policy).items() if ".lora_B." in n}
    for _ in range(2):
        opt.zero_grad()
        total_loss(objective(td.clone().update(policy(td)))).backward()
        opt.step()
    now = _vlm_params(policy)
    assert all(torch.equal(now[n], v) for n, v in base.items())  # base VLM weights untouched
    assert any(not torch.equal(now[n], v) for n, v in lora_b.items())  # adapters moved (B starts at 0)
    # The adapters are part of the checkpoint and load back strictly.
    loaded, proc2, *_ = load_pretrained(save_pretrained(tmp_path / "lora", policy, proc, cfg, SPEC))
    sd = loaded.state_dict()
    assert all(torch.equal(sd[n], p) for n, p in policy.state_dict().items())


def test_unfrozen_vlm_gets_gradient(hf_cfg, stats, make_obs):
    policy, proc = _build(hf_cfg(freeze=False), stats)
    td = proc(make_obs(2, v=2, with_chunk=True), train=True)
    total_loss(build_objective("bc", TrainConfig(), policy)(td.update(policy(td)))).backward()
    grads = [p.grad for n, p in _vlm_params(policy).items() if "text_model.layers.0." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_num_layers_reads_an_earlier_layer(hf_cfg, stats, make_obs):
    full, proc = _build(hf_cfg(), stats)
    short, _ = _build(hf_cfg(num_layers=1), stats)
    assert len(short.backbone.vlm.text_model.layers) == 1 and len(full.backbone.vlm.text_model.layers) == 2
    # Same init (seed) for everything else, the same loaded VLM weights: only the dropped layer differs.
    td = proc(make_obs(2, v=2))
    full.eval(), short.eval()
    with torch.no_grad():
        assert not torch.allclose(full(td)[keys.ACTION_MEAN], short(td)[keys.ACTION_MEAN])


def test_loads_the_folder_weights(hf_cfg, vlm_dir):
    """pretrained: the VLM's weights are exactly the folder's (an Idefics3ForConditionalGeneration snapshot,
    the layout of SmolVLM on the hub, loaded without its LM head); pretrained: false only takes its config."""
    saved = load_file(str(vlm_dir / "model.safetensors"))
    vlm = build_policy(hf_cfg(), SPEC).backbone.vlm.state_dict()
    assert vlm and all(torch.equal(v, saved["model." + k]) for k, v in vlm.items())
    scratch = build_policy(hf_cfg(pretrained=False), SPEC).backbone.vlm.state_dict()
    w = "text_model.layers.0.self_attn.q_proj.weight"
    assert scratch[w].shape == vlm[w].shape and not torch.equal(scratch[w], vlm[w])


def test_bc_loss_falls(hf_cfg, stats, make_obs):
    policy, proc = _build(hf_cfg(lora={"r": 4}), stats)
    objective = build_objective("bc", TrainConfig(), policy)
    td = proc(make_obs(8, v=2, with_chunk=True, seed=3))
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = objective(td.clone().update(policy(td)))
        opt.zero_grad()
        total_loss(loss).backward()
        opt.step()
        losses.append(loss["loss_bc"].item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_processor_dict_round_trip(hf_cfg, stats, make_obs):
    _, proc = _build(hf_cfg(prompt="task: {instruction}"), stats)
    again = VLAProcessor.from_dict(proc.to_dict())
    obs = make_obs(3, v=2)
    a, b = proc(obs)[keys.VLM_INPUTS], again(obs)[keys.VLM_INPUTS]
    assert set(a.keys()) == set(b.keys()) and all(torch.equal(a[k], b[k]) for k in a.keys())
    assert proc.vlm.text("push", 2).endswith("task: push")


def test_clear_errors(hf_cfg, tiny_cfg, tmp_path, vlm_dir):
    with pytest.raises(FileNotFoundError, match="policy.backbone.path: .* has no config.json"):
        build_policy(hf_cfg(path=str(tmp_path)), SPEC)
    with pytest.raises(ValueError, match="num_layers=5 exceeds the VLM's 2 decoder layers"):
        build_policy(hf_cfg(num_layers=5), SPEC)
    with pytest.raises(ValueError, match="target_modules"):
        build_policy(hf_cfg(lora={"target_modules": ["nope"]}), SPEC)
    with pytest.raises(ValueError, match="only applies to backbone.type 'hf'"):
        tiny_cfg(backbone={"path": str(vlm_dir)})
    with pytest.raises(ValueError, match="policy.vision configures the encoders of backbone 'vlaforge'"):
        tiny_cfg(backbone={"type": "hf", "path": str(vlm_dir)})  # tiny_cfg sets policy.vision


def test_paligemma_family(tiny_cfg, stats, make_obs, tmp_path):
    """The same adapter on a second family: PaliGemma (its processor flattens a batch's images)."""
    from vlaforge.policies.backbones.tiny_vlm import write_tiny_paligemma

    path = write_tiny_paligemma(tmp_path / "tiny_paligemma")
    cfg = tiny_cfg(vision={}, language={}, backbone={"type": "hf", "path": str(path), "num_layers": 1,
                                                     "lora": {"r": 2}})
    policy, proc = _build(cfg, stats)
    assert type(policy.backbone.vlm).__name__ == "PaliGemmaModel" and len(policy.backbone.vlm.language_model.layers) == 1
    td = proc(make_obs(3, v=2, with_chunk=True), train=True)
    assert td[keys.VLM_INPUTS]["pixel_values"].shape == (3, 2, 3, 32, 32)
    total_loss(build_objective("bc", TrainConfig(), policy)(td.update(policy(td)))).backward()
    lora = [p for n, p in _vlm_params(policy).items() if p.requires_grad]
    assert lora and all(p.grad is not None for p in lora)
    policy.eval()
    obs = make_obs(2, v=2)
    with torch.no_grad():
        before = policy(proc(obs))[keys.ACTION_MEAN]
    loaded, proc2, *_ = load_pretrained(save_pretrained(tmp_path / "ckpt", policy, proc, cfg, SPEC))
    with torch.no_grad():
        torch.testing.assert_close(loaded(proc2(obs))[keys.ACTION_MEAN], before)
