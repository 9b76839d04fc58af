"""Small test videos written with PyAV, and what a written MP4 holds."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
SIZE = (72, 128)  # (height, width): not the tiny model's 64x96, so maps must be resized back


def write_test_video(path: Path, num_frames: int = 12, with_audio: bool = True, size=SIZE, fps: int = FPS,
                     times: list[float] | None = None, sound: str = "tone") -> Path:
    """H.264 + AAC: a white square moving right over a grey background, and a 440 Hz tone (`sound="noise"`: seeded
    white noise, whose every window differs). `times` (seconds, one per frame) makes a variable-frame-rate video
    (millisecond timestamps; use a container that keeps them, e.g. `.mkv`)."""
    height, width = size
    time_base = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = time_base
        audio = container.add_stream("aac", rate=16000) if with_audio else None
        if audio is not None:
            audio.layout = "mono"
        for index in range(num_frames):
            image = np.full((height, width, 3), 60, np.uint8)
            left = (index * 4) % (width - 16)
            image[height // 2 - 8 : height // 2 + 8, left : left + 16] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(round(times[index] / time_base)) if times is not None else index
            frame.time_base = time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            seconds = times[-1] + 1.0 / fps if times is not None else num_frames / fps
            _encode_sound(container, audio, seconds, sound)
    return path


def _encode_sound(container, stream, seconds: float, sound: str = "tone") -> None:
    rate, frame_size = 16000, stream.codec_context.frame_size or 1024
    count = int(seconds * rate)
    if sound == "noise":
        samples = (0.3 * np.random.default_rng(0).standard_normal(count)).clip(-1, 1).astype(np.float32)
    else:
        samples = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(count) / rate)).astype(np.float32)
    for start in range(0, samples.shape[0], frame_size):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + frame_size].copy(), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def streams_of(path: Path) -> dict:
    """{"video": (duration s, frames), "audio": (duration s, codec)} of an MP4, read back with PyAV."""
    found = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            found[stream.type] = (duration, stream.frames if stream.type == "video" else stream.codec_context.name)
    return found
