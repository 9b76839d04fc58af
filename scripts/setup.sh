#!/usr/bin/env bash
# Create .venv and install dtfsal_hf with every extra (training, demo, export, tests).
# The torch trio is named first so pip takes the versions already built for this platform.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The torch build takes about 6 GB in .venv; pip's cache would hold a second copy of what it downloads.
export PIP_NO_CACHE_DIR=1
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ "${free_kb:-0}" -lt 8000000 ] && [ ! -x .venv/bin/python ]; then
    echo "setup: $(df -Ph . | awk 'NR == 2 {print $4}') free on $(pwd): installing needs about 8 GB" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1" "torchaudio>=2.4,<=2.11.0"
.venv/bin/python -m pip install -q -e ".[dev]"
