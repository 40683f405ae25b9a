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
# Debian's headless Chromium and its driver, for the search page's browser test (tests/ray/test_serve_search.py).
# Installed only when missing and when we are root or have password-less sudo; otherwise skipped quietly
# (the browser test then skips and says why). Nothing is downloaded by Selenium: the test names these paths.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then sudo_cmd=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo_cmd="sudo -n"; else sudo_cmd="skip"; fi
    if [ "$sudo_cmd" != "skip" ]; then
      echo "[bootstrap] installing Debian's chromium and chromium-driver (browser test)"
      $sudo_cmd apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
        || echo "[bootstrap] could not install chromium; the browser test will skip"
    fi
  fi
fi
