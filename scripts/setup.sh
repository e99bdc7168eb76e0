#!/usr/bin/env bash
# Installs vlaforge into ./.venv on a fresh machine (Python 3.11 + gcc + the torch 2.13.0 CPU wheel).
# Idempotent: a second call only re-checks and returns in a few seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip=".venv/bin/python -m pip"
stamp=.venv/.vlaforge-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing vlaforge into $root/.venv (first time: about 2-5 minutes)" >&2
# 1) torch first and exactly pinned: the CPU wheel on disk; a range would fetch a CUDA build.
$pip install --quiet torch==2.13.0
# 2) the project with its pins (DeepSpeed builds from its sdist against the installed torch).
$pip install --quiet -e ".[dev]" torch==2.13.0
# 3) Meta-World without its deps: it pins mujoco==3.3.0 but runs on 4.0.0 with our weld fix (STACK.md).
$pip install --quiet --no-deps metaworld==3.1.1
echo "$want" > "$stamp"
echo "[setup] done" >&2
