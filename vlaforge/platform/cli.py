"""The ``vlaforge`` command line: train, eval, demos, recipe check.

User mistakes (bad recipe, missing file, bad argument) print one clear message and exit 2 with no
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlaforge.errors import VlaforgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlaforge", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="run a recipe: demos -> training -> evaluation -> checkpoint")
    t.add_argument("recipe", help="YAML recipe, e.g. configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE, e.g. train.lr=3e-4 envs.tasks=[reach-v3]")
    t.add_argument("--run-dir", type=Path, help="where the run writes (default: runs/<name>-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")

    e = sub.add_parser("eval", help="evaluate a checkpoint on its fixed initial-state set")
    e.add_argument("checkpoint", type=Path, help="a policy folder, a checkpoint step folder or a run folder")
    e.add_argument("overrides", nargs="*", help="eval.* / envs.* overrides, e.g. eval.episodes_per_task=50")
    e.add_argument("--out", type=Path, help="output folder (default: <checkpoint>/eval-<timestamp>)")

    d = sub.add_parser("demos", help="generate (or reuse cached) expert demonstrations for a recipe")
    d.add_argument("recipe")
    d.add_argument("overrides", nargs="*")

    r = sub.add_parser("recipe", help="recipe tools")
    rsub = r.add_subparsers(dest="recipe_command", required=True, metavar="SUBCOMMAND")
    c = rsub.add_parser("check", help="validate a recipe (with overrides) and print it resolved")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")
    return p


def _cmd_recipe_check(args) -> int:
    from vlaforge.platform.recipe import check_recipe, dump_recipe

    recipe, notes = check_recipe(args.recipe, args.overrides)
    for note in notes:
        print(f"# note: {note}", file=sys.stderr)
    if not args.quiet:
        print(dump_recipe(recipe), end="")
        print(f"# OK: {args.recipe} is valid", file=sys.stderr)
    return 0


def _cmd_train(args) -> int:
    from vlaforge.platform.driver import train
    from vlaforge.platform.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    train(recipe, run_dir=args.run_dir, resume=args.resume)
    return 0


def _cmd_eval(args) -> int:
    from vlaforge.platform.driver import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, overrides=args.overrides, out_dir=args.out)
    return 0


def _cmd_demos(args) -> int:
    from vlaforge.platform.driver import make_demos
    from vlaforge.platform.recipe import load_recipe

    path = make_demos(load_recipe(args.recipe, args.overrides))
    print(f"demonstrations: {path}")
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demos": _cmd_demos, "recipe": _cmd_recipe_check}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except VlaforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
