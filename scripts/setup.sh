#!/usr/bin/env bash
# Create .venv and install dtfsal_hf with every extra (training, demo, export, tests).
# The torch trio is named first so pip takes the versions already built for this platform.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1" "torchaudio>=2.4,<=2.11.0"
.venv/bin/python -m pip install -q -e ".[dev]"
