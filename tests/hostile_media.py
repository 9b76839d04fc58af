"""Media files a careful user or an attacker may hand over, written here with PyAV: sound of 1 to 16 channels in
any layout (7.1 included), truncated and damaged files, and helpers that run a decode in a child process so a
crash (a signal) fails the test instead of ending pytest."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TONE_HZ = 440.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def channel_levels(layout: str) -> np.ndarray:
    """A distinct tone level per channel (0.05, 0.10, ...); 0 on LFE channels, which AAC low-passes."""
    names = [channel.name for channel in av.AudioLayout(layout).channels]
    return np.array([0.0 if name == "LFE" else 0.05 * (index + 1) for index, name in enumerate(names)], np.float32)


def _encode_sound(container, stream, layout: str, rate: int, seconds: float) -> None:
    """A 440 Hz tone at `channel_levels(layout)` per channel. The frames are built packed (one interleaved buffer):
    PyAV cannot build or read planar frames of 8 channels or more."""
    levels = channel_levels(layout)
    converter = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
    frame_size = stream.codec_context.frame_size or 1024
    total = int(seconds * rate)
    for start in range(0, total, frame_size):
        count = min(frame_size, total - start)
        tone = np.sin(2 * np.pi * TONE_HZ * np.arange(start, start + count) / rate).astype(np.float32)
        samples = (tone[:, None] * levels[None, :]).astype(np.float32)  # (n, channels), interleaved below
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate, frame.pts = rate, start
        for converted in converter.resample(frame):
            container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


def make_clip(
    path: Path,
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    layout: str = "stereo",
    rate: int = 48000,
    num_frames: int = 24,
    fps: int = 12,
    size: tuple[int, int] = (48, 64),
    options: dict | None = None,
    noise: int = 48,
) -> Path:
    """A small video (frame i grey at level 10 * i with seeded noise, so the pictures, not the headers, make up
    most of the file) with the tone of `_encode_sound` as its sound.
    `options` go to the muxer, e.g. `{"movflags": "faststart"}` (MP4 index first)."""
    height, width = size
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        audio = container.add_stream(audio_codec, rate=rate) if audio_codec is not None else None  # before any packet
        if audio is not None:
            audio.layout = layout
        rng = np.random.default_rng(0)
        for index in range(num_frames):
            image = (10 * index) % 200 + rng.integers(0, noise + 1, (height, width, 3))
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _encode_sound(container, audio, layout, rate, num_frames / fps)
    return path


def make_unordered_wav(path: Path, channels: int, rate: int = 16000, seconds: float = 1.0) -> Path:
    """A plain PCM WAV of `channels` channels without a channel mask: FFmpeg gives it a layout with no order."""
    count = int(rate * seconds)
    tone = np.sin(2 * np.pi * TONE_HZ * np.arange(count) / rate)
    levels = 0.05 * (np.arange(channels) + 1)
    data = np.round(tone[:, None] * levels[None, :] * 32767).astype("<i2").tobytes()
    header = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
    header += (rate * channels * 2).to_bytes(4, "little") + (channels * 2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    path.write_bytes(header + b"data" + len(data).to_bytes(4, "little") + data)
    return path


def truncated(source: Path, target: Path, fraction: float) -> Path:
    target.write_bytes(source.read_bytes()[: int(source.stat().st_size * fraction)])
    return target


def zeroed_block(source: Path, target: Path, start: float = 0.5, length: float = 0.1) -> Path:
    data = bytearray(source.read_bytes())
    first, count = int(len(data) * start), int(len(data) * length)
    data[first : first + count] = bytes(count)
    target.write_bytes(bytes(data))
    return target


def flipped_bytes(source: Path, target: Path, count: int = 5, seed: int = 0) -> Path:
    """`count` random bytes of the middle half replaced: the decoder conceals the damage and flags the frames."""
    data = bytearray(source.read_bytes())
    chooser = random.Random(seed)
    for _ in range(count):
        data[chooser.randrange(len(data) // 4, len(data) * 3 // 4)] = chooser.randrange(256)
    target.write_bytes(bytes(data))
    return target


_SOUND_PROBE = """
import json, sys, warnings
import numpy as np
from dtfsal_hf import media
warnings.simplefilter("ignore")
for path in sys.argv[1:]:
    print(json.dumps({"started": path}), flush=True)
    result = {"path": path}
    for name, rate in (("model", 16000), ("overlay", None)):
        try:
            rate = rate or media.probe_video(path).audio_sampling_rate
            track = media.load_audio(path, sampling_rate=rate)
            steady = track.waveform[len(track.waveform) // 8 : -len(track.waveform) // 8]
            spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
            result[name] = {"rate": track.sampling_rate, "rms": float(np.sqrt(np.mean(steady**2))),
                            "peak_hz": float(np.argmax(spectrum) * track.sampling_rate / len(steady))}
        except ValueError as error:
            result[name] = {"error": str(error)}
    print(json.dumps(result), flush=True)
"""


def sound_in_child(paths: list[Path], timeout: float = 240) -> dict[str, dict]:
    """`load_audio` at 16 kHz ("model") and at the track's own rate ("overlay", as `write_overlay_video` reads it)
    for each file, in a child process. A crash is reported as an AssertionError naming the file being read."""
    completed = subprocess.run(
        [sys.executable, "-c", _SOUND_PROBE, *map(str, paths)], capture_output=True, text=True, timeout=timeout,
        cwd=REPO_ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0:
        started = [line["started"] for line in lines if "started" in line]
        raise AssertionError(
            f"reading the sound ended the process with status {completed.returncode} while on "
            f"{started[-1] if started else '?'}: {completed.stderr[-2000:]}"
        )
    return {line["path"]: line for line in lines if "path" in line}
