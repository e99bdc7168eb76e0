"""The ``vlaforge`` command line: train, eval, demos, recipe check, submit, jobs, dashboard, publish.

User mistakes (bad recipe, missing file, bad argument, refused token) print one clear message and exit 2
with no traceback; anything else is a bug and keeps its traceback. Recipe overrides (KEY.PATH=VALUE) may
stand before or after the options: ``vlaforge train R.yaml --run-dir X train.lr=1e-4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlaforge import __version__
from vlaforge.errors import VlaforgeError

OVERRIDES_HELP = "recipe overrides KEY.PATH=VALUE, before or after the options, e.g. train.lr=3e-4 envs.tasks=[reach-v3]"
ADDRESS_HELP = "the Ray dashboard / job server address, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)"
TIMEOUT_HELP = "seconds to wait for each answer of the Ray job server (default: %(default)s)"


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def _address(p: argparse.ArgumentParser) -> None:
    import os

    from vlaforge.platform.submit import DEFAULT_TIMEOUT_S

    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help=ADDRESS_HELP)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help=TIMEOUT_HELP)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlaforge", description="vlaforge: train, evaluate, submit, watch and publish "
                                "vision-language-action robot policies")
    p.add_argument("--version", action="version", version=f"vlaforge {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="run a recipe: demos -> training -> evaluation -> checkpoint")
    t.add_argument("recipe", help="YAML recipe, e.g. configs/quickstart.yaml")
    _overrides(t)
    t.add_argument("--run-dir", type=Path, help="where the run writes (default: runs/<name>-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")

    e = sub.add_parser("eval", help="evaluate a checkpoint on its fixed initial-state set (hashes verified first)")
    e.add_argument("checkpoint", type=Path, help="a policy folder, a published folder, a checkpoint step folder or a run folder")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="eval.* / envs.* overrides, e.g. eval.episodes_per_task=50")
    e.add_argument("--out", type=Path, help="output folder (default: <checkpoint>/eval-<timestamp>)")

    d = sub.add_parser("demos", help="generate (or reuse cached) expert demonstrations for a recipe")
    d.add_argument("recipe", help="YAML recipe whose envs/demos blocks say what to generate")
    _overrides(d)
    d.add_argument("--unlabeled", action="store_true",
                   help="build the recipe's unlabeled video (data.video: rollouts with actions dropped, an mp4 folder, "
                        "or a LeRobot folder) instead; demos.policy / demos.drop_actions record action-free rollouts too")

    r = sub.add_parser("recipe", help="recipe tools")
    rsub = r.add_subparsers(dest="recipe_command", required=True, metavar="SUBCOMMAND")
    c = rsub.add_parser("check", help="validate a recipe (with overrides) and print it resolved")
    c.add_argument("recipe", help="YAML recipe to validate")
    _overrides(c)
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")

    s = sub.add_parser("submit", help="submit a recipe to a Ray cluster as a Ray job (token auth on)")
    s.add_argument("recipe", help="YAML recipe inside the working dir, e.g. configs/quickstart.yaml")
    _overrides(s)
    _address(s)
    s.add_argument("--run-dir", type=Path, help="absolute run directory the job writes (default: ./runs/<name>-<timestamp>, "
                                                "made absolute; on a multi-node cluster a shared file system)")
    s.add_argument("--working-dir", type=Path, help="project folder uploaded as the job's working dir (default: .)")
    s.add_argument("--python", help="Python of the pinned install on the cluster nodes (default: this Python)")
    s.add_argument("--follow", action="store_true", help="print the job's log until it ends; exit 0 only if it succeeded")

    j = sub.add_parser("jobs", help="list, inspect, follow or stop Ray jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    jl = jsub.add_parser("list", help="every job of the cluster: id, status, run dir")
    _address(jl)
    for name, helptext in (("status", "status, message and run dir of one job"),
                           ("logs", "the job's log (driver output)"), ("stop", "stop a running job and wait until it stopped")):
        jp = jsub.add_parser(name, help=helptext)
        jp.add_argument("job_id", help="the id `vlaforge submit` printed (raysubmit_...)")
        _address(jp)
        if name == "logs":
            jp.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    db = sub.add_parser("dashboard", help="serve a run's TensorBoard on 127.0.0.1 (no account needed)")
    db.add_argument("run_dir", type=Path, help="a run directory (or a folder of runs)")
    db.add_argument("--port", type=int, default=6006, help="port (default: %(default)s; 0 picks a free one)")
    db.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, loopback only)")

    pb = sub.add_parser("publish", help="write a verified, self-contained model folder (Hugging Face layout)")
    pb.add_argument("checkpoint", type=Path, help="a policy folder, a checkpoint step folder, a stage or a run folder")
    pb.add_argument("--to", required=True, help="output folder, or hf://USER/REPO to push to the Hugging Face Hub")
    pb.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse stops collecting a positional list at the first option; overrides given after options come
    back as unknown arguments: they join ``overrides`` when they look like KEY=VALUE, else it is an error."""
    p = _parser()
    args, extra = p.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and not hasattr(args, "overrides")):
        p.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


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

    recipe = load_recipe(args.recipe, args.overrides)
    if args.unlabeled:
        from vlaforge.platform.driver import make_video

        path = make_video(recipe)
        from vlaforge.data.unlabeled import describe

        d = describe(path)
        print(f"unlabeled video: {path} ({d['episodes']} episodes, {d['frames']} frames, "
              f"{'action column present (ignored)' if d['action_column'] else 'no action column'})")
        return 0
    path = make_demos(recipe)
    print(f"demonstrations: {path}")
    return 0


def _need_address(args) -> str:
    if not args.address:
        raise VlaforgeError("no Ray address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return args.address


def _cmd_submit(args) -> int:
    from vlaforge.platform import submit

    address = _need_address(args)
    job_id, run_dir = submit.submit(args.recipe, args.overrides, address, run_dir=args.run_dir,
                                    working_dir=args.working_dir, python=args.python, timeout=args.timeout)
    print(f"job:     {job_id}")
    print(f"run dir: {run_dir}")
    print(f"follow:  vlaforge jobs logs {job_id} --address {address} --follow")
    if args.follow:
        status = submit.follow_logs(address, job_id, timeout=args.timeout)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _cmd_jobs(args) -> int:
    from vlaforge.platform import submit

    address = _need_address(args)
    if args.jobs_command == "list":
        for r in submit.list_jobs(address, args.timeout):
            print(f"{r['job_id']:<32} {r['status']:<10} {r['run_dir']}")
    elif args.jobs_command == "status":
        st = submit.job_status(address, args.job_id, args.timeout)
        for k in ("job_id", "status", "message", "run_dir", "entrypoint"):
            print(f"{k + ':':<12}{st[k]}")
    elif args.jobs_command == "logs":
        if args.follow:
            status = submit.follow_logs(address, args.job_id, timeout=args.timeout)
            return 0 if status == "SUCCEEDED" else 1
        print(submit.job_logs(address, args.job_id, args.timeout), end="")
    elif args.jobs_command == "stop":
        print(f"job {args.job_id}: {submit.stop_job(address, args.job_id, args.timeout)}")
    return 0


def _cmd_dashboard(args) -> int:
    from vlaforge.platform.dashboard import serve

    serve(args.run_dir, host=args.host, port=args.port)
    return 0


def _cmd_publish(args) -> int:
    from vlaforge.platform.publish import publish

    where = publish(args.checkpoint, args.to, force=args.force)
    print(f"published: {where}")
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demos": _cmd_demos, "recipe": _cmd_recipe_check,
            "submit": _cmd_submit, "jobs": _cmd_jobs, "dashboard": _cmd_dashboard, "publish": _cmd_publish}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return COMMANDS[args.command](args)
    except VlaforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a user mistake found inside a Ray actor arrives wrapped (WorkerError, RayTaskError)
        user = _user_error(e)
        if user is None:
            raise
        print(f"error: {user}", file=sys.stderr)
        return user.code


def _user_error(e: BaseException, depth: int = 6) -> VlaforgeError | None:
    """The VlaforgeError inside a remote failure (a damaged dataset or checkpoint found by a learner rank),
    so that it prints as one line like a local one instead of a remote traceback."""
    for _ in range(depth):
        if isinstance(e, VlaforgeError):
            return e
        nxt = getattr(e, "cause", None) or e.__cause__  # WorkerError.cause, RayTaskError.cause, raise ... from
        if not isinstance(nxt, BaseException):
            return None
        e = nxt
    return None


if __name__ == "__main__":
    sys.exit(main())
