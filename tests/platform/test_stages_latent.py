"""lam -> latent_pretrain -> bc as ONE recipe on real Ray and DeepSpeed (2 ranks): the latent stages train on a
video dataset whose action column is all NaN (no NaN anywhere: neither reads actions), the bc stage starts from
the latent-pretrained backbone with a new head on a small labelled set, and --resume skips finished stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from vlaforge.data import format as F
from vlaforge.data.writer import DatasetWriter
from vlaforge.platform.driver import train
from vlaforge.platform.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SIZE, STATE_DIM = 32, 4
TASKS = ("push the block left", "push the block right")


def write(root: Path, episodes: int, labelled: bool, length: int = 14) -> Path:
    """A block moving left or right (the task) over a coloured floor; action = the block's velocity, or all NaN."""
    rng = np.random.default_rng(episodes + labelled)
    feats = {F.IMAGE_PREFIX + "main": F.video_feature(SIZE, SIZE), F.STATE_KEY: F.vector_feature("float32", STATE_DIM),
             F.ACTION_KEY: F.vector_feature("float32", 2)}
    with DatasetWriter(root, fps=10, features=feats, robot_type="tiny") as w:
        for ep in range(episodes):
            task, y = ep % 2, int(rng.integers(4, 24))
            step = 1 if task else -1
            img = np.full((length, SIZE, SIZE, 3), (60, 90, 120), np.uint8)
            x = 12 + step * np.arange(length)
            for t in range(length):
                img[t, y:y + 6, x[t]:x[t] + 6] = 255
            action = np.tile([[step, 0.0]], (length, 1)).astype(np.float32)
            state = np.stack([x, np.full(length, y), np.zeros(length), np.ones(length)], 1).astype(np.float32)
            w.add_episode({F.IMAGE_PREFIX + "main": img, F.STATE_KEY: state,
                           F.ACTION_KEY: action if labelled else np.full_like(action, np.nan)}, task=TASKS[task])
    return root


def overrides(video: Path, labelled: Path, bc_steps: int = 4) -> list[str]:
    return [
        f"data.path={labelled}", f"latent.data_path={video}", "eval.enabled=false", "logging.wandb=false",
        "policy.dim=32", "policy.layers=1", "policy.heads=2", "policy.vision.channels=[8,16]", "policy.chunk_size=4",
        "policy.n_action_steps=2", "train.steps=4", "train.batch_size=8", "train.warmup_steps=0", "train.log_every=2",
        "train.checkpoint_every=2", "latent.model.quantizer=vq_ema", "latent.model.image_size=32",
        "latent.model.channels=[8,16]", "latent.model.hidden=32", "latent.model.reset_every=2", "latent.gap=2",
        "latent.inspect_pairs=3", "latent.inspect_per_code=2",
        "stages=[{name: lam, kind: lam}, {name: lp, kind: latent_pretrain},"
        f" {{name: bc, kind: bc, set: {{train: {{steps: {bc_steps}}}}}}}]",
    ]


@pytest.fixture(scope="module")
def latent_run(ray_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("latent")
    video, labelled = write(base / "video", 12, labelled=False), write(base / "labelled", 4, labelled=True)
    run_dir = base / "run"
    summary = train(load_recipe(ROOT / "configs" / "quickstart.yaml", overrides(video, labelled)), run_dir=run_dir)
    return run_dir, video, labelled, summary


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_latent_stages_train_on_all_nan_actions_without_a_nan(latent_run):
    run_dir, _, _, summary = latent_run
    assert list(summary["stages"]) == ["lam", "lp", "bc"]
    lam = json.loads((run_dir / "lam" / "stage.json").read_text())
    assert lam["policy_dir"] is None and lam["init"] is None  # first stage: nothing to pass on
    recs = rows(run_dir)
    lam_rows = [r for r in recs if "train/loss_recon" in r]
    lp_rows = [r for r in recs if "train/loss_latent" in r]
    assert len(lam_rows) == 2 and len(lp_rows) == 2
    for r in lam_rows + lp_rows:
        assert math.isfinite(r["train/loss"]) and r["train/nonfinite_total"] == 0
    for r in lam_rows:  # codebook health every log interval
        assert 1.0 <= r["train/codebook_perplexity"] <= r["train/codebook_perplexity_pooled"] + 1e-6 <= 8.0 + 1e-6
        assert sum(r[f"train/code_usage/{c}"] for c in range(8)) == pytest.approx(1.0)
        assert {"train/codebook_dead", "train/codebook_resets"} <= set(r)
    health = json.loads((run_dir / "lam" / "codebook.json").read_text())
    collapsed = health["perplexity"] < 1.5 or health["dead"] > 4
    log = (run_dir / "run.log").read_text()
    assert collapsed == any("codebook collapsed" in w for w in summary["warnings"])
    assert collapsed == ("WARNING the latent action codebook collapsed" in log.replace("lam: ", ""))


@pytest.mark.slow
def test_inspection_images_in_the_stage_folder_and_on_the_dashboard(latent_run):
    from PIL import Image

    run_dir = latent_run[0]
    recon = Image.open(run_dir / "lam" / "inspect" / "recon.png")
    assert recon.size == (4 * (SIZE + 4), 3 * (SIZE + 4))  # 3 pairs x (o_t | real | predicted | error)
    for p in range(4):
        strip = Image.open(run_dir / "lam" / "inspect" / f"codes_pos{p}.png")
        assert strip.size == (2 * (2 * SIZE + 4), 8 * (SIZE + 4))  # one strip per code, 2 pairs each
    res = json.loads((run_dir / "lam" / "inspect" / "inspect.json").read_text())
    assert res["val_mse"] > 0 and res["copy_mse"] > 0 and len(res["usage"]) == 4
    assert res["code_gain"] == pytest.approx(res["shuffled_mse"] / res["val_mse"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"eval/lam/recon", "eval/lam/codes_pos0"} <= set(acc.Tags()["images"])


@pytest.mark.slow
def test_bc_starts_from_the_latent_backbone_with_a_new_head(latent_run):
    run_dir, _, _, summary = latent_run
    bc = json.loads((run_dir / "bc" / "stage.json").read_text())
    assert bc["init"].endswith("lp/checkpoints/step-4/policy")
    latent = load_file(Path(bc["init"]) / "model.safetensors")
    final = load_file(Path(summary["policy_dir"]) / "model.safetensors")
    assert "head.queries" in latent and "head.queries" not in final  # the latent head is gone
    assert any(k.startswith("head.") for k in final)
    assert {k for k in latent if k.startswith("backbone.")} == {k for k in final if k.startswith("backbone.")}
    cfg = json.loads((Path(summary["policy_dir"]) / "config.json").read_text())
    assert cfg["policy"]["head"]["type"] == "gaussian" and cfg["spec"]["action_dim"] == 2


@pytest.mark.slow
def test_resume_skips_finished_latent_stages_and_continues_bc(latent_run):
    run_dir, video, labelled, _ = latent_run
    lam_ckpts = sorted(p.name for p in (run_dir / "lam" / "checkpoints").iterdir())
    summary = train(load_recipe(ROOT / "configs" / "quickstart.yaml", overrides(video, labelled, bc_steps=6)),
                    run_dir=run_dir, resume=True)
    log = (run_dir / "run.log").read_text()
    assert "stage lam already finished" in log and "stage lp already finished" in log
    assert "resumed bc from" in log and summary["policy_dir"].endswith("bc/checkpoints/step-6/policy")
    assert sorted(p.name for p in (run_dir / "lam" / "checkpoints").iterdir()) == lam_ckpts


@pytest.mark.slow
def test_laom_adds_an_action_term_from_the_labelled_data(latent_run, tmp_path):
    """LAOM on: the lam stage also trains an action decoder on the labelled set's pairs (the video keeps its
    all-NaN actions: a NaN would show in every loss)."""
    _, video, labelled, _ = latent_run
    over = overrides(video, labelled) + ["latent.model.action_loss_coef=1.0", "latent.action_batch=4",
                                         "train.steps=2", "stages=[{name: lam, kind: lam}]"]
    summary = train(load_recipe(ROOT / "configs" / "quickstart.yaml", over), run_dir=tmp_path / "run")
    assert summary["policy_dir"] is None  # a lam-only recipe hands on no policy
    (r,) = [r for r in rows(tmp_path / "run") if "train/loss_action" in r]
    assert math.isfinite(r["train/loss_action"]) and math.isfinite(r["train/loss_recon"]) and r["train/action_mse"] > 0
    lam = json.loads((tmp_path / "run" / "lam" / "checkpoints" / "step-2" / "policy" / "config.json").read_text())
    assert lam["action_dim"] == 2 and "LAOM" in (tmp_path / "run" / "run.log").read_text()
