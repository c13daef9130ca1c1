#!/usr/bin/env bash
# Runs the test suite in ./.venv, creating it and installing nnunet_uda with its test extras first.
# The first run installs nnU-Net and PyTorch (a few GB); later runs reuse the environment. Two pytest-xdist
# workers share the tests, each module in one worker (its module fixtures are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e ".[test]"
exec .venv/bin/python -m pytest tests -p no:cacheprovider -n 2 --dist loadfile "$@"
