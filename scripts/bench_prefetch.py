"""Whole-video prediction with frames decoded in a background thread (the default) against decoding in
the model's thread, interleaved in one run: `python scripts/bench_prefetch.py [VIDEO]` (default DHF1K 002)."""
import time, warnings
import numpy as np
from dtfsal_hf import inference

import sys
from pathlib import Path

path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared/data/dhf1k_002/002.AVI")
predictor = inference.SaliencyPredictor.from_pretrained("demo", batch_size=4)
original = inference.prefetch
times = {"prefetch": [], "inline": []}
for repeat in range(3):
    for mode in ("prefetch", "inline"):
        inference.prefetch = original if mode == "prefetch" else (lambda items, max_items=16: iter(items))
        start = time.perf_counter()
        maps = predictor.predict_video(path, progress=False).maps
        times[mode].append(time.perf_counter() - start)
inference.prefetch = original
for mode, values in times.items():
    print(f"{mode}: median {np.median(values):.2f} s for {len(maps)} frames ({len(maps) / np.median(values):.1f} frames/s), runs {[round(v, 2) for v in values]}")
print(f"ratio inline / prefetch: {np.median(times['inline']) / np.median(times['prefetch']):.2f}")
