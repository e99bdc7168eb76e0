"""Checkpoint IO: exact round trip, atomic overwrite, clear errors for missing / corrupt files."""

from __future__ import annotations

import json

import pytest
import torch

from vlaforge import keys
from vlaforge.policies import load_pretrained, save_pretrained
from vlaforge.policies.io import CONFIG_FILE, PROCESSOR_FILE, WEIGHTS_FILE


@pytest.fixture
def saved(tmp_path, tiny_cfg, spec, stats):
    from vlaforge.policies import VLAProcessor, build_policy

    cfg = tiny_cfg(value_head=True, action_norm="mean_std")
    torch.manual_seed(1)
    policy = build_policy(cfg, spec)
    with torch.no_grad():  # make the round trip non-trivial: not the init values
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    proc = VLAProcessor.from_stats(cfg, stats)
    path = save_pretrained(tmp_path / "ckpt", policy, proc, cfg, spec, extra={"step": 7, "task": "push"})
    return path, policy.eval(), proc, cfg, spec


def test_round_trip_gives_identical_outputs(saved, make_obs):
    path, policy, proc, cfg, spec = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, PROCESSOR_FILE])
    policy2, proc2, cfg2, spec2, extra = load_pretrained(path)
    assert cfg2 == cfg and spec2 == spec and extra == {"step": 7, "task": "push"}
    assert not policy2.training
    obs = make_obs(3)
    with torch.no_grad():
        a, b = policy(proc(obs)), policy2(proc2(obs))
    for k in (keys.ACTION_MEAN, keys.ACTION_LOG_STD, keys.VALUE):
        assert torch.equal(a[k], b[k]), k
    raw = torch.randn(2, 4)
    assert torch.equal(proc.unnormalize_action(raw), proc2.unnormalize_action(raw))
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["vlaforge_version"] and config["spec"]["state_dim"] == 7


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(saved, tiny_cfg, spec, stats):
    from vlaforge.policies import VLAProcessor, build_policy

    path, *_ = saved
    cfg = tiny_cfg(dim=16, heads=2)
    save_pretrained(path, build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats), cfg, spec)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .tmp / .old leftovers
    assert load_pretrained(path)[2].dim == 16


def test_failed_save_keeps_the_old_checkpoint(saved, tiny_cfg, spec, stats):
    from vlaforge.policies import VLAProcessor, build_policy

    path, *_ = saved
    before = (path / WEIGHTS_FILE).read_bytes()
    cfg = tiny_cfg()
    with pytest.raises(TypeError, match="`extra` must be JSON-serialisable"):
        save_pretrained(path, build_policy(cfg, spec), VLAProcessor.from_stats(cfg, stats), cfg, spec, extra={"x": object()})
    assert (path / WEIGHTS_FILE).read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_corrupt_weights_named(saved):
    path, *_ = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])  # truncated download / disk full
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt"):
        load_pretrained(path)
    (path / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt"):
        load_pretrained(path)


def test_missing_and_invalid_files_named(saved, tmp_path):
    path, *_ = saved
    (path / PROCESSOR_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"processor\.json is not valid JSON"):
        load_pretrained(path)
    (path / PROCESSOR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"processor\.json"):
        load_pretrained(path)
    (path / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nope")


def test_weights_that_do_not_match_the_config(saved):
    path, *_ = saved
    config = json.loads((path / CONFIG_FILE).read_text())
    config["policy"]["dim"] = 16
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match the model in .*config\.json"):
        load_pretrained(path)
