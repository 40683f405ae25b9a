#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install raylens into it.
# Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
stamp="$venv/.raylens-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing raylens and its dependencies (first time: several minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch/torchvision first, pinned exactly: these two are taken from the machine's local wheels.
  "$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
  echo "$want" > "$stamp"
fi
