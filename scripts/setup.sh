#!/usr/bin/env bash
# Installs vlaforge into ./.venv on a fresh machine (Python 3.11 + gcc + the torch 2.13.0 CPU wheel).
# Idempotent: a second call only re-checks and returns in a few seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
# Headless Chromium + its driver (Debian packages) for the dashboard test: installed when missing and this
# is a Debian/Ubuntu machine where we are root. Elsewhere that one test skips with a message.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium + chromium-driver (apt-get)" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "[setup] warning: could not install chromium; the dashboard browser test will skip" >&2
  fi
fi
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
