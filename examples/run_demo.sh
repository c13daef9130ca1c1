#!/usr/bin/env bash
# Runs the demo (examples/demo.py) in ./.venv, creating it and installing nnunet_uda first.
# Extra arguments go to the demo, e.g. --epochs 30. Output: ./demo_output.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python examples/demo.py "$@"
