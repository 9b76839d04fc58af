#!/usr/bin/env bash
# Reproduces the bundled demo checkpoint (dtfsal_hf/assets/demo-checkpoint) and the example clip
# (dtfsal_hf/assets/synthetic_example.mp4). The tiny audio-visual DTFSal, trained from scratch on the
# fast-switching synthetic audio-visual task with its recipe (examples/configs/synthetic_fast_av.yaml:
# 400 steps of 8 clips), about 6 minutes of training on 2 CPU threads (docs/benchmarks.md); weights match the
# bundled ones in quality, not bit for bit (the order of floating-point sums differs between devices and
# thread counts).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m dtfsal_hf.cli train --config examples/configs/synthetic_fast_av.yaml --output-dir runs/demo

ASSETS=dtfsal_hf/assets
mkdir -p "$ASSETS/demo-checkpoint"
# The package defines the model, so the remote-code copies that save_pretrained writes are left out.
cp runs/demo/best/{config.json,model.safetensors,processor_config.json,training_summary.json} "$ASSETS/demo-checkpoint/"
cp runs/demo/test/summary.json "$ASSETS/demo-checkpoint/test_summary.json"
# ... and so are the entries that point to them (`auto_map`, `custom_pipelines`).
"$PYTHON" - <<'PY'
import json
from pathlib import Path

def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in ("auto_map", "custom_pipelines")}
    return value

for name in ("config.json", "processor_config.json"):
    path = Path("dtfsal_hf/assets/demo-checkpoint") / name
    path.write_text(json.dumps(strip(json.loads(path.read_text())), indent=2, sort_keys=True) + "\n")
PY

# The example clip: a synthetic video drawn with a seed the training set never used, with its sound.
"$PYTHON" - <<'PY'
import tempfile
from pathlib import Path

import numpy as np

from dtfsal_hf.data import SyntheticConfig, generate_synthetic_dataset
from dtfsal_hf.data.io import read_frame
from dtfsal_hf.media import load_audio, write_overlay_video

with tempfile.TemporaryDirectory() as folder:
    config = SyntheticConfig(num_videos=3, duration_s=8.0, seed=2024)
    root = generate_synthetic_dataset(folder, config, progress=False)
    video = root / "video_frames" / config.database / "synth_0000"
    frames = [read_frame(path) for path in sorted(video.glob("img_*.jpg"))]
    sound = load_audio(root / "video_audio" / config.database / "synth_0000" / "synth_0000.wav")
    blank = [np.zeros(frames[0].shape[:2], dtype=np.float32)] * len(frames)
    write_overlay_video(frames, blank, sound, Path("dtfsal_hf/assets/synthetic_example.mp4"), fps=config.fps, alpha=0.0, crf=18)
PY
ls -la "$ASSETS" "$ASSETS/demo-checkpoint"
