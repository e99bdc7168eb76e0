"""publish -> load -> eval round trip on a real tiny run; tampered, truncated and unlisted files refused;
a stage starting from a published folder; the hf:// path without a token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vlaforge
from vlaforge.platform.driver import evaluate_checkpoint, train
from vlaforge.platform.publish import publish
from vlaforge.platform.recipe import load_recipe
from vlaforge.policies.io import IntegrityError, load_pretrained

ROOT = Path(__file__).resolve().parents[2]
# test_driver.py's tiny recipe (its cached demonstrations are reused)
TINY = [
    "envs.tasks=[reach-v3,drawer-close-v3]", "envs.image_size=32", "envs.max_episode_steps=120",
    "demos.episodes_per_task=2", "policy.dim=32", "policy.layers=1", "policy.heads=2",
    "policy.vision.channels=[8,16]", "train.steps=6", "train.log_every=3", "train.checkpoint_every=3",
    "train.batch_size=8", "train.warmup_steps=0", "eval.episodes_per_task=2", "eval.envs_per_worker=2",
    "eval.videos_per_task=1", "logging.wandb_mode=offline", "stages=[{name: bc, kind: bc}]",
]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlaforge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def published(ray_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("publish")
    run_dir = base / "run"
    train(load_recipe(ROOT / "configs" / "quickstart.yaml", TINY), run_dir=run_dir)
    out = base / "published"
    p = cli("publish", str(run_dir), "--to", str(out))
    assert p.returncode == 0, p.stderr
    return run_dir, out


@pytest.mark.slow
def test_published_folder_layout_and_model_card(published):
    run_dir, out = published
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "processor.json", "run_card.json", "recipe.yaml", "eval.json",
            "provenance.json", "README.md", "MANIFEST.json"} <= names
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    ev = json.loads((run_dir / "bc" / "eval" / "eval.json").read_text())
    card = (out / "README.md").read_text()
    for task, v in ev["tasks"].items():  # the evaluation table: success, CI, episodes, seeds
        assert f"| {task} | {v['success_rate']:.0%} | [{v['ci_low']:.0%}, {v['ci_high']:.0%}] | 2 | 1000000-1000001 |" in card
    assert "Instructions used" in card and ev["episodes"][0]["instruction"] in card
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["git_commit"] and f"git commit: `{prov['git_commit']}`" in card
    assert prov["datasets"][0]["fingerprint"] and prov["datasets"][0]["fingerprint"] in card
    assert prov["parent_checkpoint"] is None and "parent checkpoint: none" in card
    assert "reward model: none" in card
    assert load_recipe(out / "recipe.yaml").train.steps == 6


@pytest.mark.slow
def test_from_pretrained_then_eval_round_trip(published, tmp_path):
    run_dir, out = published
    policy, processor, cfg, spec, extra = vlaforge.from_pretrained(out)
    original = load_pretrained(run_dir / "bc" / "checkpoints" / "step-6" / "policy")[0]
    for (k, a), (_, b) in zip(policy.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), k
    p = cli("eval", str(out), "--out", str(tmp_path / "ev"))
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    before = json.loads((run_dir / "bc" / "eval" / "eval.json").read_text())
    # same weights, same fixed initial states, deterministic policy: the same episodes succeed
    assert [(e["task"], e["seed"], e["success"]) for e in again["episodes"]] == \
           [(e["task"], e["seed"], e["success"]) for e in before["episodes"]]


@pytest.mark.slow
def test_tampered_truncated_and_unverified_folders_are_refused(published, tmp_path):
    _, out = published
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # same size, one bit pattern changed
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 differs"):
        vlaforge.from_pretrained(tampered)
    p = cli("eval", str(tampered))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{tampered / 'model.safetensors'}: sha256 differs" in p.stderr

    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    with open(truncated / "config.json", "r+b") as f:
        f.truncate(10)
    with pytest.raises(IntegrityError, match=r"config\.json: 10 bytes, the manifest recorded \d+ \(truncated"):
        vlaforge.from_pretrained(truncated)
    p = cli("eval", str(truncated))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "config.json: 10 bytes" in p.stderr

    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / "MANIFEST.json").unlink()
    with pytest.raises(IntegrityError, match="MANIFEST.json: missing"):
        vlaforge.from_pretrained(bare)

    p = cli("publish", str(tampered), "--to", str(tmp_path / "again"))  # publishing refuses it too
    assert p.returncode == 2 and "sha256 differs" in p.stderr and not (tmp_path / "again").exists()


@pytest.mark.slow
def test_stage_init_from_published_folder(published, tmp_path):
    _, out = published
    over = [*TINY[:-1], "train.steps=2", "train.log_every=1", "train.checkpoint_every=2", "eval.enabled=false",
            f"stages=[{{name: ft, kind: bc, init: {out}}}]"]
    summary = train(load_recipe(ROOT / "configs" / "quickstart.yaml", over), run_dir=tmp_path / "ft")
    record = json.loads((tmp_path / "ft" / "ft" / "stage.json").read_text())
    assert record["init"] == str(out) and Path(summary["policy_dir"]).exists()
    # a publish of the fine-tuned policy names its parent: the published folder and its weights' hash
    p = cli("publish", str(tmp_path / "ft"), "--to", str(tmp_path / "ft-pub"))
    assert p.returncode == 0, p.stderr
    prov = json.loads((tmp_path / "ft-pub" / "provenance.json").read_text())
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert prov["parent_checkpoint"] == {"path": str(out), "weights_sha256": manifest["files"]["model.safetensors"]["sha256"]}

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    (tampered / "processor.json").write_text((tampered / "processor.json").read_text().replace("{", "{ ", 1))
    p = cli("train", "configs/quickstart.yaml", *over[:-1], f"stages=[{{name: ft, kind: bc, init: {tampered}}}]",
            "--run-dir", str(tmp_path / "refused"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "processor.json" in p.stderr, p.stderr


def test_push_to_hub_without_token_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"))  # no stored login either
    p = cli("publish", str(tmp_path), "--to", "hf://someone/some-policy", env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in p.stderr
    p = cli("publish", str(tmp_path), "--to", "hf://not-a-repo", env=env)
    assert p.returncode == 2 and "expected hf://USER/REPO" in p.stderr
