"""VLAProcessor: normalisation round trips, tokenizer, augmentation, serialisation, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.policies import HashedTokenizer, VLAProcessor
from vlaforge.policies.augment import random_shift
from vlaforge.policies.processor import instructions_as_list


@pytest.mark.parametrize("mode", ["min_max", "mean_std"])
def test_action_normalisation_round_trip(tiny_cfg, stats, mode):
    proc = VLAProcessor.from_stats(tiny_cfg(action_norm=mode), stats)
    raw = torch.rand(5, 3, 4) * 4 - 2
    back = proc.unnormalize_action(proc.normalize_action(raw))
    assert torch.allclose(back, raw, atol=1e-5)
    assert torch.isfinite(proc.normalize_action(raw)).all()  # the constant dim 2 (std 0 / min == max)


def test_min_max_maps_data_range_to_unit_interval(tiny_cfg, stats):
    proc = VLAProcessor.from_stats(tiny_cfg(action_norm="min_max"), stats)
    lo, hi = torch.tensor(stats["action"]["min"]), torch.tensor(stats["action"]["max"])
    n_lo, n_hi = proc.normalize_action(lo), proc.normalize_action(hi)
    varying = lo != hi
    assert torch.allclose(n_lo[varying], torch.full_like(n_lo[varying], -1.0))
    assert torch.allclose(n_hi[varying], torch.full_like(n_hi[varying], 1.0))
    assert n_lo[~varying].abs().max() == 0  # a constant dim maps to 0


def test_state_normalisation_and_std_clamp(tiny_cfg, stats, make_obs):
    stats["observation.state"]["std"][3] = 0.0
    cfg = tiny_cfg(state_std_min=0.05)
    proc = VLAProcessor.from_stats(cfg, stats)
    obs = make_obs(3)
    out = proc(obs)
    mean = torch.tensor(stats["observation.state"]["mean"])
    std = torch.tensor(stats["observation.state"]["std"]).clamp_min(0.05)
    assert torch.allclose(out[keys.STATE_NORM], (obs[keys.STATE] - mean) / std)


def test_outputs_shapes_dtypes(processor, make_obs):
    out = processor(make_obs(3, v=2, with_chunk=True))
    assert out[keys.PIXELS].shape == (3, 2, 3, 32, 32) and out[keys.PIXELS].dtype == torch.float32
    assert 0.0 <= out[keys.PIXELS].min() and out[keys.PIXELS].max() <= 1.0
    assert out[keys.TOKENS].dtype == torch.int64 and out[keys.TOKENS].shape == (3, 6)
    assert out[keys.TOKENS_MASK].dtype == torch.bool
    assert out[keys.TARGET_CHUNK].shape == (3, 4, 4)
    assert out[keys.ACTION_PAD][0, -1] and not out[keys.ACTION_PAD][1:].any()
    # channel-last uint8 -> channel-first float, pixel by pixel
    raw = make_obs(3, v=2)[keys.IMAGE]
    assert torch.equal(out[keys.PIXELS][1, 1, 2], raw[1, 1, :, :, 2].float() / 255)


def test_instruction_as_plain_list_and_single_string(processor, make_obs):
    obs = make_obs(2)
    ref = processor(obs)[keys.TOKENS]
    plain = {keys.IMAGE: obs[keys.IMAGE], keys.STATE: obs[keys.STATE]}
    td = TensorDict(plain, batch_size=[2])
    td.set_non_tensor(keys.INSTRUCTION, "push the puck to the goal")  # one string for every env
    assert torch.equal(processor(td)[keys.TOKENS][1], ref[0])

    td2 = TensorDict(plain, batch_size=[2])
    td2.set(keys.INSTRUCTION, ["Push the puck to the goal", "open the drawer!"])
    assert torch.equal(processor(td2)[keys.TOKENS], ref)


def test_instructions_as_list_accepts_lists_and_rejects_junk():
    assert instructions_as_list(["a", "b"], 2) == ["a", "b"]
    assert instructions_as_list("a", 3) == ["a", "a", "a"]
    with pytest.raises(ValueError, match="has 1 strings, expected batch size 2"):
        instructions_as_list(["a"], 2)
    with pytest.raises(TypeError, match="observation/instruction must be"):
        instructions_as_list(torch.zeros(2), 2)


def test_tokenizer_padding_mask_truncation_and_normalisation():
    tok = HashedTokenizer(vocab_size=64, max_tokens=4)
    ids, mask = tok(["Open the DRAWER!", "a b c d e f", ""])
    assert ids.shape == (3, 4) and ids.dtype == torch.int64
    assert mask.tolist() == [[True, True, True, False], [True] * 4, [False] * 4]
    assert (ids[~mask] == 0).all() and (ids[mask] >= 1).all() and (ids < 64).all()
    assert tok.encode("open-the drawer") == tok.encode("OPEN  the, drawer.")
    assert tok.encode("drawer")[0] == 1 + zlib.crc32(b"drawer") % 63
    assert tok.encode("a b c d e f") == tok.encode("a b c d")  # truncation keeps the first words


def test_tokenizer_is_deterministic_across_processes():
    import vlaforge.policies.tokenizer as mod

    # Load the module file alone (not the whole package) to keep the child process cheap.
    code = (
        "import importlib.util as u;"
        f"s = u.spec_from_file_location('tok', {mod.__file__!r}); m = u.module_from_spec(s); s.loader.exec_module(m);"
        "print(m.HashedTokenizer(4096, 8).encode('pick up the red block and place it'))"
    )
    # A fixed hash seed in the child, a random one here: Python's hash() would disagree between the two.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert child.strip() == str(HashedTokenizer(4096, 8).encode("pick up the red block and place it"))


def test_augmentation_only_in_train_mode(processor, make_obs):
    obs = make_obs(6)
    plain = processor(obs)[keys.PIXELS]
    assert torch.equal(processor(obs, train=False)[keys.PIXELS], plain)
    aug = processor(obs, train=True, generator=torch.Generator().manual_seed(1))[keys.PIXELS]
    assert aug.shape == plain.shape
    assert not torch.equal(aug, plain)
    off_cfg = VLAProcessor.from_dict({**processor.to_dict(), "image_augment": "none"})
    assert torch.equal(off_cfg(obs, train=True)[keys.PIXELS], plain)


def test_random_shift_is_a_translation():
    x = torch.rand(4, 3, 16, 16)
    pad = 3
    out = random_shift(x, pad, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate")
    for i in range(4):  # each output is exactly one (dy, dx) window of the padded image
        hits = [
            (dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 16, dx : dx + 16])
        ]
        assert hits, f"image {i} is not a shifted window"


def test_serialisation_round_trip(processor, make_obs):
    d = json.loads(json.dumps(processor.to_dict()))
    other = VLAProcessor.from_dict(d)
    obs = make_obs(3, with_chunk=True)
    a, b = processor(obs), other(obs)
    for k in (keys.PIXELS, keys.STATE_NORM, keys.TOKENS, keys.TOKENS_MASK, keys.TARGET_CHUNK):
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda td: td.set(keys.IMAGE, td[keys.IMAGE].float()), r"observation/image must be uint8 \(B, V, H, W, 3\)"),
        (lambda td: td.set(keys.IMAGE, td[keys.IMAGE][..., :1].contiguous()), r"observation/image .*got .*\(2, 1, 32, 32, 1\)"),
        (lambda td: td.set(keys.STATE, td[keys.STATE][:, :5]), r"observation/state must be float \(B=2, S=7\)"),
        (lambda td: td.set(keys.ACTION_CHUNK, torch.zeros(2, 3, 4)), r"action_chunk must be float \(B, K, A\) = \(2, 4, 4\)"),
        (lambda td: td.set(keys.ACTION_PAD, torch.zeros(2, 4)), r"action_is_pad must be bool \(B, K\)"),
        (lambda td: td.del_(keys.STATE), r"no 'observation/state'"),
    ],
)
def test_clear_errors(processor, make_obs, mutate, match):
    td = make_obs(2, with_chunk=True)
    mutate(td)
    with pytest.raises((ValueError, KeyError), match=match):
        processor(td)


def test_instruction_count_mismatch(processor, make_obs):
    td = make_obs(2)
    td2 = TensorDict({keys.IMAGE: td[keys.IMAGE], keys.STATE: td[keys.STATE]}, batch_size=[])
    td2.set_non_tensor(keys.INSTRUCTION, ["a", "b", "c"])
    with pytest.raises((ValueError, TypeError), match="observation/instruction"):
        processor(td2)


def test_missing_stats_named(tiny_cfg, stats):
    del stats["action"]["min"]
    with pytest.raises(KeyError, match=r"stats\['action'\] has no 'min'"):
        VLAProcessor.from_stats(tiny_cfg(action_norm="min_max"), stats)
