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


def test_version_and_python_dash_m():
    from vlaforge import __version__

    for argv in ([sys.executable, "-m", "vlaforge", "--version"], [sys.executable, "-m", "vlaforge.platform.cli", "--version"]):
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == f"vlaforge {__version__}", p
    p = subprocess.run([sys.executable, "-m", "vlaforge", "recipe", "check", "configs/quickstart.yaml", "-q"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_every_argument_has_help():
    import argparse

    from vlaforge.platform.cli import _parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{path} {choice.dest}: subcommand without help"
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            else:
                yield path, action

    actions = list(walk(_parser(), "vlaforge"))
    assert len(actions) > 40
    missing = [f"{path} {a.option_strings or a.dest}" for path, a in actions if not a.help]
    assert not missing, missing


def test_overrides_before_or_after_options():
    from vlaforge.platform.cli import _parse

    for argv in (["train", "R.yaml", "--run-dir", "X", "train.lr=1e-4"],
                 ["train", "R.yaml", "train.lr=1e-4", "--run-dir", "X"],
                 ["train", "--run-dir", "X", "R.yaml", "train.lr=1e-4"]):
        args = _parse(argv)
        assert (args.recipe, str(args.run_dir), args.overrides) == ("R.yaml", "X", ["train.lr=1e-4"]), argv
    args = _parse(["train", "R.yaml", "a.b=1", "--resume", "--run-dir", "X", "c.d=2", "e.f=[1,2]"])
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=[1,2]"] and args.resume
    args = _parse(["submit", "R.yaml", "--address", "http://127.0.0.1:1", "train.steps=3"])
    assert args.overrides == ["train.steps=3"]


def test_unknown_options_and_stray_words_are_refused():
    for argv in (("train", "configs/quickstart.yaml", "--run-dri", "X"), ("train", "configs/quickstart.yaml", "--run-dir", "X", "oops"),
                 ("jobs", "list", "train.lr=1")):
        p = run(*argv)
        assert p.returncode == 2 and "unrecognized arguments" in p.stderr, (argv, p.stderr)


def test_train_with_override_after_run_dir_reaches_the_recipe(tmp_path):
    """The issue's example: an override after --run-dir is applied (here: it makes the recipe invalid)."""
    p = run("train", "configs/quickstart.yaml", "--run-dir", str(tmp_path / "x"), "train.lr=-1")
    assert p.returncode == 2 and "train.lr" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()
