"""The console script: exit codes and messages for user mistakes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlaforge.platform.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_recipe_check_ok():
    p = run("recipe", "check", "configs/quickstart.yaml", "train.steps=5")
    assert p.returncode == 0, p.stderr
    assert "steps: 5" in p.stdout


def test_bad_recipe_exits_2_without_traceback(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  stepss: 5\n")
    for cmd in (("recipe", "check", str(f)), ("train", str(f)), ("demos", str(f))):
        p = run(*cmd)
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        assert f"{f}:2: train.stepss: unknown key. Did you mean 'steps'?" in p.stderr


def test_missing_recipe_and_bad_override():
    p = run("recipe", "check", "configs/nope.yaml")
    assert p.returncode == 2 and "recipe file not found" in p.stderr and "Traceback" not in p.stderr
    p = run("recipe", "check", "configs/quickstart.yaml", "train.lr=fast")
    assert p.returncode == 2 and "train.lr: Input should be a valid number" in p.stderr


def test_eval_missing_checkpoint(tmp_path):
    p = run("eval", str(tmp_path / "nothing"))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "nothing" in p.stderr


def test_resume_without_run_dir():
    p = run("train", "configs/quickstart.yaml", "--resume")
    assert p.returncode == 2 and "--resume needs --run-dir" in p.stderr
