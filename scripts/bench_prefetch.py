"""Whole-video prediction with frames decoded in a background thread (the default) against decoding in
the model's thread, interleaved in one run: `python scripts/bench_prefetch.py [VIDEO]` (default DHF1K 002)."""

import sys
import time
from pathlib import Path

import numpy as np

from dtfsal_hf import inference

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "dhf1k_002" / "002.AVI"


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_VIDEO)
    predictor = inference.SaliencyPredictor.from_pretrained("demo", batch_size=4)
    background = inference.prefetch
    times = {"background decoding": [], "inline decoding": []}
    frames = 0
    for _ in range(3):
        for mode in times:
            inference.prefetch = background if mode == "background decoding" else (lambda items, max_items=16: iter(items))
            start = time.perf_counter()
            frames = len(predictor.predict_video(path, progress=False).maps)
            times[mode].append(time.perf_counter() - start)
    inference.prefetch = background
    for mode, values in times.items():
        median = float(np.median(values))
        print(f"{mode}: median {median:.2f} s for {frames} frames ({frames / median:.1f} frames/s), runs {[round(v, 2) for v in values]}")
    ratio = np.median(times["inline decoding"]) / np.median(times["background decoding"])
    print(f"inline / background: {ratio:.2f}x")


if __name__ == "__main__":
    main()
