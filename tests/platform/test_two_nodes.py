"""Two Ray nodes on one machine (both on 127.0.0.1, each with its own resources, temp and working dir):
`vlaforge submit` of a tiny BC -> PPO recipe places learners and rollout actors on BOTH nodes, and every
checkpoint and evaluation lands in the one absolute run directory the client chose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
# test_submit.TINY (cached demos) + a PPO stage of ONE update. 3 CPUs per node and 2 CPUs per learner:
# the two learner bundles cannot share a node (PACK spills), and the 1 CPU left on each node takes one
# rollout actor each -- so placement on both nodes follows from the resources, not from luck.
RECIPE = [
    "envs.tasks=[reach-v3,drawer-close-v3]", "envs.image_size=32", "envs.max_episode_steps=120",
    "demos.episodes_per_task=2", "policy.dim=32", "policy.layers=1", "policy.heads=2",
    "policy.vision.channels=[8,16]", "train.steps=6", "train.log_every=3", "train.checkpoint_every=3",
    "train.batch_size=8", "train.warmup_steps=0", "train.cpus_per_learner=2", "eval.episodes_per_task=2",
    "eval.envs_per_worker=2", "eval.videos_per_task=1", "logging.wandb_mode=offline",
    "rollout.num_actors=2", "rollout.envs_per_actor=2", "rollout.steps_per_sample=4",
    "stages=[{name: bc, kind: bc, eval_end: false}, {name: ppo, kind: ppo, set: {envs: {terminate_on_success: false}, "
    "train: {objective: ppo, steps: 1, checkpoint_every: 1, warmup_steps: 0, "
    "ppo: {epochs: 1, num_minibatches: 2, critic_warmup_updates: 0}}}}]",
]


@pytest.mark.slow
def test_submit_on_two_nodes(ray_two_nodes, tmp_path):
    c = ray_two_nodes
    env = c.client_env()
    run_dir = tmp_path / "two-nodes"
    p = subprocess.run([sys.executable, "-m", "vlaforge", "submit", "configs/quickstart.yaml", *RECIPE,
                        "--address", c.address, "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.split("job:")[1].split()[0]
    auth = {"Authorization": f"Bearer {c.token}"}

    # `jobs logs --follow` streams the driver's output until the job ends; exit 0 only when it SUCCEEDED
    follow = subprocess.run([sys.executable, "-m", "vlaforge", "jobs", "logs", job_id, "--address", c.address, "--follow"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    assert f"run:         {run_dir.resolve()}" in follow.stdout  # the driver's closing summary
    info = requests.get(f"{c.address}/api/jobs/{job_id}", headers=auth, timeout=30).json()
    assert info["status"] == "SUCCEEDED"

    # placement, from Ray's state API (dead actors of the job are kept): each group spans both nodes
    nodes = {n["node_id"] for n in c.nodes()}
    assert len(nodes) == 2
    actors = c.state("actors", job_id=info["job_id"])
    where: dict[str, set[str]] = {}
    for a in actors:
        where.setdefault(a["class_name"], set()).add(a["node_id"])
    for cls in ("LearnerActor", "RLLearnerActor", "RolloutWorker"):
        assert where.get(cls) == nodes, (cls, where)

    # one run directory holds both stages' checkpoints and evaluations (written from both nodes)
    assert (run_dir / "bc" / "checkpoints" / "step-6" / "policy" / "model.safetensors").exists()
    ppo_latest = (run_dir / "ppo" / "checkpoints" / "latest").read_text().strip()  # step-N counts optimizer steps
    assert (run_dir / "ppo" / "checkpoints" / ppo_latest / "policy" / "model.safetensors").exists()
    for ev in ("eval-start", "eval"):
        res = json.loads((run_dir / "ppo" / ev / "eval.json").read_text())
        assert res["pooled"]["episodes"] == 4 and res["videos"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_dir"] == str(run_dir.resolve())
    assert Path(summary["policy_dir"]).is_absolute() and Path(summary["policy_dir"]).exists()
