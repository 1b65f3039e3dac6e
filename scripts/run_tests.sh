#!/usr/bin/env bash
# Installs nst-jax with its test dependencies (torch CPU 2.13.0 for the reference checks) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
# The browser test drives Debian's Chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } ||
    echo "warning: could not install chromium; the browser test needs /usr/bin/chromium" >&2
fi
python3 -m pytest -q -n 2 --durations=15 "$@"
