#!/usr/bin/env bash
# Create or reuse the project virtual environment and install Lumi into it.
# Sourced by scripts/lumi and scripts/test; safe to run repeatedly (skips work when up to date).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LUMI_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Lumi needs Python >= 3.10")'
    echo "[lumi] creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi

# PyTorch: keep whatever build is already installed (e.g. a user's CUDA build); otherwise install
# the pinned CPU build that lies on this machine class's disk. An unpinned `torch` would pull a
# multi-GB CUDA build.
if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "[lumi] installing torch==${LUMI_TORCH_VERSION:-2.13.0}" >&2
    "$VENV/bin/pip" install --quiet "torch==${LUMI_TORCH_VERSION:-2.13.0}"
fi

STAMP="$VENV/.lumi-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$VENV/bin/python" -c 'import lumi' >/dev/null 2>&1; then
    echo "[lumi] installing lumi-lab and its dependencies into $VENV" >&2
    "$VENV/bin/pip" install --quiet -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
