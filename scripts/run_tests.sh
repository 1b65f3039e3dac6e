#!/usr/bin/env bash
# Installs nst-jax with its test dependencies (torch CPU 2.13.0 for the reference checks) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q -n 2 --durations=15 "$@"
