"""`vlaforge recipe check` knows the latent-action stages: the valid chain passes, wrong chains and latent keys are
refused with file, line and key (exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlaforge.platform import cli

BASE = """\
name: base
ray:
  num_cpus: 4
envs:
  tasks: [reach-v3]
  max_episode_steps: 100
train:
  num_learners: 2
  batch_size: 8
rollout:
  num_actors: 2
  envs_per_actor: 2
"""
CHAIN = "stages:\n  - name: lam\n    kind: lam\n  - name: lp\n    kind: latent_pretrain\n  - name: bc\n  - name: ppo\n    kind: ppo\n"

CASES = [
    ("pretrain-without-lam", "stages:\n  - name: lp\n    kind: latent_pretrain\n  - name: bc\n",
     "4: stages.0.kind = 'latent_pretrain'", "put a lam stage before it, or set latent.lam_dir"),
    ("ppo-right-after-pretrain", "stages:\n  - name: lam\n    kind: lam\n  - name: lp\n    kind: latent_pretrain\n"
     "  - name: ppo\n    kind: ppo\n", "8: stages.2.kind = 'ppo'", "put a bc stage between them"),
    ("latent-head-in-the-policy-block", CHAIN + "policy:\n  head:\n    type: latent\n", "12: policy.head.type = 'latent'",
     "latent_pretrain stages swap in the 'latent' head themselves"),
    ("gap-longer-than-episodes", CHAIN + "latent:\n  gap: 100\n", "11: latent.gap = 100", "use gap < 100"),
    ("unknown-quantizer", CHAIN + "latent:\n  model:\n    quantizer: vqvae\n", "12: latent.model.quantizer = 'vqvae'",
     "unknown latent quantizer"),
    ("fsq-levels", CHAIN + "latent:\n  model:\n    quantizer: fsq\n    fsq_levels: [3, 3]\n", "11: latent.model",
     "their product must equal codebook_size"),
    ("video-path-missing", CHAIN + "latent:\n  data_path: /nonexistent/video\n",
     "11: latent.data_path = '/nonexistent/video'", "a LeRobot v3 dataset folder"),
    ("lam-dir-missing", "stages:\n  - name: lp\n    kind: latent_pretrain\nlatent:\n  lam_dir: /nonexistent/lam\n",
     "6: latent.lam_dir = '/nonexistent/lam'", "a trained latent action model folder"),
    ("lam-objective", CHAIN + "train:\n  objective: ppo\n", "11: train.objective = 'ppo'",
     "a stage of kind 'lam' runs train.objective 'latent_action'"),
]


def check(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["recipe", "check", "-q", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def test_the_latent_chain_passes(base, capsys):
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\n" + CHAIN)
    assert check(capsys, str(f)) == (0, "")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_wrong_latent_recipes_are_refused_with_file_line_and_key(base, capsys, case):
    _, text, where, what = case
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\n" + text)
    code, err = check(capsys, str(f))
    assert code == 2 and "Traceback" not in err, err
    assert f"{f}:{where}" in err, err
    assert what in err, err
