"""Reading frames, maps, fixations and audio from disk, and cutting the model's audio window."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLING_RATE = 16000
"""The audio rate the model's log-mel front end expects."""

AUDIO_WINDOW_SAMPLES = 24560
"""Samples of audio per clip: 152 log-mel frames of 25 ms every 10 ms, (152 − 1)·160 + 400."""


def read_frame(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB, `(height, width, 3)`."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_saliency_map(path: str | Path) -> np.ndarray:
    """A continuous map stored as an 8- or 16-bit grayscale image, float32 in [0, 1], `(height, width)`."""
    with Image.open(path) as image:
        if image.mode.startswith("I"):
            # 16-bit maps (Pillow opens them as "I;16" or "I").
            return np.asarray(image, dtype=np.float32) / 65535.0
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_fixation_map(path: str | Path) -> np.ndarray:
    """A binary fixation map, bool `(height, width)`: a PNG/JPG (non-zero = fixated) or a `.mat` file.

    `.mat` files are the STAViS `fixMap_%05d.mat`, whose binary map is stored under the key `eyeMap`.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        content = loadmat(path)
        if "eyeMap" not in content:
            keys = sorted(key for key in content if not key.startswith("__"))
            raise ValueError(f"{path}: expected the key 'eyeMap' in the fixation .mat file, found {keys}")
        return np.asarray(content["eyeMap"]) > 0
    with Image.open(path) as image:
        # JPEG noise can leave small non-zero values around a fixation: only bright pixels count.
        threshold = 127 if path.suffix.lower() in (".jpg", ".jpeg") else 0
        return np.asarray(image.convert("L")) > threshold


def read_video_frames(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames of a video file, uint8 `(num_indices, height, width, 3)`.

    `indices` are 0-based frame numbers (repeats and any order allowed); `None` decodes every frame.
    Decoding (`dtfsal_hf.media.iter_frames`) runs from the start of the file up to the last index
    asked for.
    """
    from ..media import iter_frames

    wanted = None if indices is None else set(int(i) for i in indices)
    decoded: dict[int, np.ndarray] = {}
    for frame in iter_frames(path):
        if wanted is None or frame.index in wanted:
            decoded[frame.index] = frame.image
        if wanted is not None and len(decoded) == len(wanted):
            break
    if indices is None:
        return np.stack([decoded[i] for i in range(len(decoded))])
    missing = sorted(wanted - set(decoded))
    if missing:
        raise ValueError(f"{path}: frames {missing[:5]} asked for, but the video has fewer frames")
    return np.stack([decoded[int(i)] for i in indices])


def load_audio(path: str | Path, sampling_rate: int = SAMPLING_RATE):
    """The first sound track of a file (wav, or a video's track) as a mono `media.AudioTrack`.

    Delegates to `dtfsal_hf.media.load_audio`: channels averaged, resampled to `sampling_rate`, and
    the track's start time measured on the video's clock.
    """
    from ..media import load_audio as load_track

    return load_track(path, sampling_rate)


def audio_window(
    waveform: np.ndarray, sample_rate: int, end_time_s: float, num_samples: int = AUDIO_WINDOW_SAMPLES
) -> np.ndarray:
    """The `num_samples` of audio ending at `end_time_s`, zero-padded outside the file, float32 1-D.

    `waveform` starts at time 0. For a clip, `end_time_s` is the end of its last frame,
    `(last_frame_index + 1) / fps`; the window then covers the last 1.535 s at 16 kHz (SPEC §2).
    Before the file's start (and past its end) the window holds zeros. For a track that starts later
    than its video, use `dtfsal_hf.media.audio_window` with the `AudioTrack`.
    """
    from ..media import AudioTrack
    from ..media import audio_window as track_window

    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D (mono samples), got shape {waveform.shape}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return track_window(AudioTrack(waveform, int(sample_rate), 0.0), end_time_s, num_samples)


__all__ = [
    "AUDIO_WINDOW_SAMPLES",
    "SAMPLING_RATE",
    "audio_window",
    "load_audio",
    "read_fixation_map",
    "read_frame",
    "read_saliency_map",
    "read_video_frames",
]
