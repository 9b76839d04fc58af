"""Reading and writing video files with PyAV.

- `probe_video` describes a file (size, frame rate, sound track) without decoding it.
- `iter_frames` decodes RGB frames one at a time with their presentation times, so memory does not
  grow with the video's length; `frame_times` gives the same times without converting the pictures.
- `load_audio` decodes the sound track, averages the channels to mono and resamples it to 16 kHz
  with `torchaudio.functional.resample`; a file without a sound track gives silence and a warning.
- `AudioReader` is the same track decoded as it is read, holding seconds of it whatever its length: the
  predictor and the overlay encoder read sound files this way.
- `audio_window` cuts the samples that end at a given time, zero-padded outside the track.
- `write_overlay_video` encodes frames blended with their saliency maps as H.264 MP4, with the
  original sound as AAC.

All times are in seconds on one clock whose zero is the first frame of the video stream, so frame
times and audio times can be compared directly, also for variable frame rate video.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio

TARGET_SAMPLING_RATE = 16000


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream and its first sound track.

    `width` and `height` are those of the frames as displayed, after the stream's `rotation`
    (degrees, counter-clockwise; phones store portrait video as rotated landscape frames).
    """

    path: str
    width: int
    height: int
    rotation: int
    fps: float
    num_frames: int | None
    duration: float | None
    video_codec: str
    has_audio: bool
    audio_codec: str | None = None
    audio_sampling_rate: int | None = None
    audio_channels: int | None = None


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame: `image` is (height, width, 3) uint8 RGB; times are in seconds."""

    index: int
    time: float
    end_time: float
    image: np.ndarray


@dataclass(frozen=True, eq=False)
class AudioTrack:
    """A mono waveform (samples,) float32 in [-1, 1]; `start_time` is the time of its first sample."""

    waveform: np.ndarray
    sampling_rate: int
    start_time: float = 0.0

    @property
    def duration(self) -> float:
        return self.waveform.shape[0] / self.sampling_rate

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples `start` to `stop` (indices from the first sample; any integers), zero outside the track."""
        return _zero_padded(self.waveform, 0, start, stop)

    def available(self, stop: int) -> int:
        """`stop`, or the track's length where it ends before."""
        return min(stop, self.waveform.shape[0])


def _zero_padded(held: np.ndarray, held_start: int, start: int, stop: int) -> np.ndarray:
    """Samples `start`..`stop` of a track of which `held` is the part from `held_start`; zeros elsewhere."""
    window = np.zeros(max(stop - start, 0), dtype=np.float32)
    first, last = max(start, held_start), min(stop, held_start + held.shape[0])
    if last > first:
        window[first - start : last - start] = held[first - held_start : last - held_start]
    return window


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such video file: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as error:
        raise ValueError(
            f"Cannot read {path} as a video file: not a video, or truncated ({type(error).__name__}: {error})"
        ) from error


def _video_stream(container: av.container.InputContainer, path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise ValueError(f"{path} has no video stream (streams found: {[s.type for s in container.streams]})")
    return container.streams.video[0]


def _stream_start(stream) -> float:
    """Time (s) of a stream's first packet on the container clock; 0 when the container omits it."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _first_frame_rotation(container, stream, path) -> int:
    for _, _, _, rotation in _decoded_video_frames(container, stream, path, convert=False):
        return rotation
    raise ValueError(f"{path}: no video frame could be decoded (empty or truncated file)")


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file from its headers (and its first frame's rotation)."""
    with _open(path) as container:
        video = _video_stream(container, path)
        rotation = _first_frame_rotation(container, video, path)
        width, height = video.codec_context.width, video.codec_context.height
        if rotation % 180:
            width, height = height, width
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = None
        if video.duration is not None and video.time_base is not None:
            duration = float(video.duration * video.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(
            path=str(path),
            width=width,
            height=height,
            rotation=rotation,
            fps=_frame_rate(video),
            num_frames=video.frames or None,
            duration=duration,
            video_codec=video.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sampling_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
        )


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    # Phones store portrait video as landscape frames plus a display rotation (degrees, counter-clockwise).
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns:
        image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
    return image


def _decoded_video_frames(container, stream, path, convert: bool = True) -> Iterator[tuple]:
    """(time, duration, RGB image or None, rotation) of each decoded frame, in presentation order."""
    count = 0
    try:
        for frame in container.decode(stream):
            time = float(frame.pts * frame.time_base) if frame.pts is not None else None
            duration = float(frame.duration * frame.time_base) if frame.duration else None
            rotation = int(frame.rotation or 0)
            if frame.is_corrupt:
                # The decoder concealed damaged data: the picture is partly made up.
                raise ValueError(f"{path} is corrupt: frame {count + 1} could not be decoded intact")
            count += 1
            yield time, duration, _to_rgb(frame, rotation) if convert else None, rotation
    except av.error.FFmpegError as error:
        raise ValueError(
            f"{path} is truncated or corrupt: decoding failed after {count} frames ({type(error).__name__}: {error})"
        ) from error


def _relative_times(decoded, origin: float | None, nominal: float) -> Iterator[tuple[float, float | None, np.ndarray]]:
    """(time, duration, image) with times from the video's start; a frame without timestamp follows the last."""
    following = 0.0
    for time, duration, image, _ in decoded:
        if origin is None:
            origin = time if time is not None else 0.0
        time = time - origin if time is not None else following
        following = time + (duration or nominal)
        yield time, duration, image


def _finished_frame(pending: tuple, next_time: float | None, nominal: float) -> Frame:
    """A frame ends where the next one starts; the last one after its own duration (or 1 / fps)."""
    index, time, duration, image = pending
    end = next_time if next_time is not None and next_time > time else time + (duration or nominal)
    return Frame(index=index, time=time, end_time=end, image=image)


def iter_frames(path: str | os.PathLike) -> Iterator[Frame]:
    """Decode a video frame by frame, in presentation order.

    Each `Frame` carries its index, its start time from the frame's timestamp, and its end time: the start of
    the next frame (so variable frame rate is kept), or for the last frame its own duration or 1 / fps.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a video, has no video stream or no decodable frame; a frame is damaged (the
            decoder flags it corrupt); or the file holds fewer frames than its header declares (truncated). The
            last two are raised where they are found: the frames before them have been yielded.
    """
    return _timed_frames(path, convert=True)


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Each frame's `(start, end)` in seconds, `(frames, 2)` float64: exactly the times `iter_frames` gives its
    `Frame`s (the frames are decoded, not converted to pictures). Training clips time their frames and end their
    audio with these, as the predictor does with the decoded `Frame`s. Raises as `iter_frames`."""
    return np.array([(frame.time, frame.end_time) for frame in _timed_frames(path, convert=False)], dtype=np.float64)


def untimed_frame_times(num_frames: int, fps: float) -> np.ndarray:
    """`(start, end)` of frames without timestamps (extracted pictures), `1 / fps` apart from 0: frame `i` lasts from
    `i / fps` to `(i + 1) / fps`. `(num_frames, 2)` float64."""
    starts = np.arange(num_frames, dtype=np.float64)
    return np.stack([starts, starts + 1], axis=1) / float(fps)


def _timed_frames(path, convert: bool) -> Iterator[Frame]:
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        origin = _stream_start(stream) if stream.start_time is not None else None
        nominal = 1.0 / _frame_rate(stream) if _frame_rate(stream) > 0 else 1.0 / 30.0
        pending = None  # held back until the next frame gives its end time
        decoded = _relative_times(_decoded_video_frames(container, stream, path, convert), origin, nominal)
        for index, (time, duration, image) in enumerate(decoded):
            if pending is not None:
                yield _finished_frame(pending, time, nominal)
            pending = (index, time, duration, image)
        if pending is None:
            raise ValueError(f"{path}: no video frame could be decoded (empty or truncated file)")
        last = _finished_frame(pending, None, nominal)
        yield last
        _check_complete(path, stream, last, nominal, origin or 0.0)


def _declared_video_duration(stream) -> float | None:
    """The video track's length as its header gives it (Matroska writes it as a tag), in seconds."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except (AttributeError, ValueError):
        return None


def _check_complete(path, stream, last: Frame, nominal: float, start: float = 0.0) -> None:
    """Raise when fewer frames were decoded than the header declares: the file is truncated or damaged.

    The frame count is compared where the container gives one (MP4, MOV, AVI: one frame of slack); otherwise the
    end of the last frame is compared with the track's declared length (Matroska, WebM: 1.5 frames of slack).
    Streams without either (MPEG-TS) cannot be checked. The declared length counts from time 0, the frames' times
    from the track's `start`: a track starting late (an encoder delay, a copied stream) is not taken for a short one.
    """
    decoded = last.index + 1
    if stream.frames:
        if decoded < stream.frames - 1:
            raise ValueError(
                f"{path} is truncated or corrupt: the container declares {stream.frames} frames but only {decoded} "
                "could be decoded"
            )
        return
    declared = _declared_video_duration(stream)
    if declared is not None and start + last.end_time < declared - 1.5 * nominal:
        raise ValueError(
            f"{path} is truncated or corrupt: the video track declares {declared:.2f} s but frames could be decoded "
            f"only up to {last.end_time:.2f} s ({decoded} frames)"
        )


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Decode all frames at once: images (frames, height, width, 3) uint8 and start times (frames,) in seconds.

    Use `iter_frames` for long videos: this holds the whole video in memory.
    """
    frames = list(iter_frames(path))
    return np.stack([f.image for f in frames]), np.array([f.time for f in frames], dtype=np.float64)


class _PackedFloat:
    """Decoded sound frames as packed float32 arrays (n, channels), whatever the format, layout or channel count.

    Planar frames are never turned into arrays here: PyAV's `to_ndarray` reads the plane pointers of a planar
    frame until it finds a null one, and a frame of 8 channels has none after its eighth, so it reads past the
    end (a crash, 7.1 sound being common). Packed data has one plane whatever the channel count, including
    layouts without a channel order. A new resampler is set up whenever the format or layout changes.
    """

    def __init__(self) -> None:
        self.resampler, self.setup = None, None

    def convert(self, frame: av.AudioFrame) -> Iterator[tuple[np.ndarray, int]]:
        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        if setup != self.setup:
            self.resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
            self.setup = setup
        for converted in self.resampler.resample(frame):
            # (1, n * channels) interleaved -> (n, channels)
            yield converted.to_ndarray().reshape(-1, converted.layout.nb_channels), converted.sample_rate


def _audio_chunks(container, stream, path) -> Iterator[tuple[float | None, np.ndarray, int]]:
    """(time, samples (n, channels) float32, sampling rate) of each decoded audio frame."""
    packed = _PackedFloat()
    try:
        for frame in container.decode(stream):
            time = float(frame.pts * frame.time_base) if frame.pts is not None else None
            for samples, rate in packed.convert(frame):
                yield time, samples, rate
                time = None
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: the sound track is truncated or corrupt ({type(error).__name__}: {error})") from error


def resample_audio(waveform: np.ndarray, orig_sampling_rate: int, sampling_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Resample a mono waveform (samples,) with `torchaudio.functional.resample` (windowed sinc)."""
    if int(orig_sampling_rate) != orig_sampling_rate or orig_sampling_rate <= 0:
        raise ValueError(f"orig_sampling_rate must be a positive integer, got {orig_sampling_rate!r}")
    if orig_sampling_rate == sampling_rate:
        return np.asarray(waveform, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    return torchaudio.functional.resample(tensor, int(orig_sampling_rate), int(sampling_rate)).numpy()


class _StreamingResampler:
    """`resample_audio` over a waveform that arrives in pieces, holding only a block and its context.

    torchaudio's windowed-sinc resampler maps every `orig / g` input samples onto `new / g` output samples
    (g = gcd): blocks cut at multiples of `orig / g`, each resampled with enough input on both sides, give
    the output of resampling the whole waveform at once (to float rounding), and memory no longer grows
    with the length of the track before it is resampled.
    """

    def __init__(self, orig_sampling_rate: int, sampling_rate: int, block_periods: int = 4000, context_periods: int = 64):
        gcd = math.gcd(orig_sampling_rate, sampling_rate)
        self.orig, self.new = orig_sampling_rate, sampling_rate
        self.period_in, self.period_out = orig_sampling_rate // gcd, sampling_rate // gcd
        self.block = self.period_in * block_periods
        self.context = self.period_in * context_periods
        self.pending = np.zeros(self.context, dtype=np.float32)  # zeros before the start, as the full resampler pads
        self.arrived: list[np.ndarray] = []  # decoded pieces not yet joined to `pending`
        self.arrived_length = 0
        self.outputs: list[np.ndarray] = []

    def _resample_block(self, length: int, right_context: np.ndarray | None = None) -> None:
        end = self.context + length
        piece = self.pending[: end + self.context] if right_context is None else np.concatenate(
            [self.pending[:end], right_context]
        )
        resampled = resample_audio(piece, self.orig, self.new)
        first = self.context // self.period_in * self.period_out
        count = -(-length * self.new // self.orig)  # ceil, as the full resampler's output length
        self.outputs.append(resampled[first : first + count])
        self.pending = self.pending[length:]

    def add(self, samples: np.ndarray) -> None:
        self.arrived.append(samples)
        self.arrived_length += samples.shape[0]
        if self.pending.shape[0] + self.arrived_length >= self.context + self.block + self.context:
            self._gather()
            while self.pending.shape[0] >= self.context + self.block + self.context:
                self._resample_block(self.block)

    def _gather(self) -> None:
        self.pending = np.concatenate([self.pending, *self.arrived])
        self.arrived, self.arrived_length = [], 0

    def take(self) -> np.ndarray:
        """The output resampled since the last call (and forget it)."""
        taken = np.concatenate(self.outputs) if self.outputs else np.zeros(0, dtype=np.float32)
        self.outputs = []
        return taken

    def finish(self) -> np.ndarray:
        self._gather()
        remaining = self.pending.shape[0] - self.context
        if remaining > 0:
            self._resample_block(remaining, right_context=np.zeros(self.context, dtype=np.float32))
        return np.concatenate(self.outputs) if self.outputs else np.zeros(0, dtype=np.float32)


def load_audio(path: str | os.PathLike, sampling_rate: int = TARGET_SAMPLING_RATE) -> AudioTrack:
    """Decode the first sound track of a file as mono float32 at `sampling_rate` (16 kHz by default).

    Channels are averaged (as VGGish does) and the track is resampled block by block as it is decoded, so
    only the result (about 4 MB per minute at 16 kHz) grows with the length. The track's start time is on
    the same clock as `iter_frames`. A file without a sound track gives one second of silence starting at 0
    and a `UserWarning` saying so; `audio_window` zero-pads beyond it, so every clip then gets silent audio.
    """
    with AudioReader(path, sampling_rate) as reader:  # the whole track: its decoded pieces joined once
        waveform = np.concatenate([reader._held, *reader._decoded]) if reader._decoded is not None else reader._held
    if waveform.shape[0] == 0:
        if not reader._warned:
            warnings.warn(f"{path}: the sound track holds no decodable samples: using silent audio", UserWarning, stacklevel=2)
        return AudioTrack(np.zeros(sampling_rate, dtype=np.float32), sampling_rate, 0.0)
    return AudioTrack(waveform, reader.sampling_rate, reader.start_time)


class AudioReader:
    """A file's first sound track, decoded as it is read: the `load_audio` track (mono float32 at `sampling_rate`;
    None: the track's own rate), with the same values, start time and silence rules, holding only what has not
    been read past.

    `samples(start, stop)` decodes as far as `stop` and forgets what comes before `start`, so reading forwards
    (a clip's window after the one before, an encoder's next block) holds a window and at most one resampling
    block (seconds of sound) whatever the track's length, and decodes no further than the last read. Reading
    back before what was forgotten decodes the track again from its start. `close()` (or `with`) releases the file.
    """

    def __init__(self, path: str | os.PathLike, sampling_rate: int | None = TARGET_SAMPLING_RATE) -> None:
        self.path, self._target_rate, self._warned = path, sampling_rate, False
        self._container = self._chunks = self._decoded = None
        self._start()

    def _start(self) -> None:
        """Open the file and decode its first sound frame (rate, start time); the held samples begin at 0."""
        self.close()
        self._held, self._held_start, self._exhausted, self._resampler = np.zeros(0, dtype=np.float32), 0, False, None
        container = self._container = _open(self.path)
        origin = _stream_start(_video_stream(container, self.path)) if container.streams.video else 0.0
        self.sampling_rate, self.start_time = self._target_rate or TARGET_SAMPLING_RATE, 0.0
        if not container.streams.audio:
            self._silent(f"{self.path} has no sound track: using silent audio")
            return
        stream = container.streams.audio[0]
        self._chunks = _audio_chunks(container, stream, self.path)
        first = next(self._chunks, None)
        if first is None:
            self._silent(f"{self.path}: the sound track holds no decodable samples: using silent audio")
            return
        time, samples, self._rate = first
        self.sampling_rate = self._target_rate or int(self._rate)
        self.start_time = (time if time is not None else _stream_start(stream)) - origin
        if self.sampling_rate != self._rate:
            self._resampler = _StreamingResampler(int(self._rate), self.sampling_rate)
        self._append(self._mono(samples))
        self._decoded = self._pieces()

    def _silent(self, message: str) -> None:
        if not self._warned:  # once, not again when the track is read again from its start
            warnings.warn(message, UserWarning, stacklevel=4)
            self._warned = True
        self._exhausted = True

    def _mono(self, samples: np.ndarray) -> np.ndarray:
        """A decoded frame's samples (n, channels) averaged to mono at the reader's rate (what the resampler has
        ready: whole blocks)."""
        mono = samples.mean(axis=1, dtype=np.float32)
        if self._resampler is None:
            return mono
        self._resampler.add(mono)
        return self._resampler.take()

    def _pieces(self) -> Iterator[np.ndarray]:
        """The rest of the track in decoded pieces, at the reader's rate, then what the resampler held back."""
        for _, samples, rate in self._chunks:
            if rate != self._rate:
                raise ValueError(f"{self.path}: the sampling rate changes inside the sound track ({self._rate} -> {rate} Hz)")
            yield self._mono(samples)
        if self._resampler is not None:
            yield self._resampler.finish()

    def _append(self, samples: np.ndarray) -> None:
        if samples.shape[0]:
            self._held = np.concatenate([self._held, samples]) if self._held.shape[0] else samples

    def _decode_until(self, stop: int) -> None:
        while not self._exhausted and self._held_start + self._held.shape[0] < stop:
            piece = next(self._decoded, None)
            if piece is None:
                self._exhausted = True
            else:
                self._append(piece)

    @property
    def held_samples(self) -> int:
        """Samples decoded and not yet forgotten."""
        return self._held.shape[0]

    def available(self, stop: int) -> int:
        """`stop`, or the track's length where it ends before (decoding as far as `stop`)."""
        if max(stop, 0) < self._held_start:
            return stop
        self._decode_until(stop)
        return stop if not self._exhausted else min(stop, self._held_start + self._held.shape[0])

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples `start` to `stop` (indices from the track's first sample), zero outside the track; what comes
        before `start` is forgotten."""
        if max(start, 0) < self._held_start:
            self._start()  # read back before what was forgotten: decode again from the start
        self._decode_until(stop)
        window = _zero_padded(self._held, self._held_start, start, stop)
        drop = min(max(start - self._held_start, 0), self._held.shape[0])
        if drop:  # a view: the memory goes when the next decoded samples are joined on
            self._held, self._held_start = self._held[drop:], self._held_start + drop
        return window

    def close(self) -> None:
        for generator in (self._decoded, self._chunks):
            if generator is not None:
                generator.close()
        if self._container is not None:
            self._container.close()
        self._container = self._chunks = self._decoded = None

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def audio_window(track: AudioTrack | AudioReader, end_time: float, num_samples: int = 24560) -> np.ndarray:
    """The `num_samples` samples of `track` that end at `end_time` (s), zero-padded outside the track.

    With the default length this is the 1.535 s of audio one clip's 9 VGGish examples cover (SPEC §2).
    Returns (num_samples,) float32.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    end = int(round((end_time - track.start_time) * track.sampling_rate))
    return track.samples(end - num_samples, end)


@functools.lru_cache(maxsize=8)
def _colormap_table(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def overlay_saliency(image: np.ndarray, saliency_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a map in [0, 1] over an RGB image (H, W, 3) uint8; the map is resized to the image if needed.

    The colour weight grows with the map value, so low-saliency regions keep the original image.
    """
    saliency_map = np.asarray(saliency_map, dtype=np.float32)
    if saliency_map.ndim != 2:
        raise ValueError(f"saliency_map must be (height, width), got shape {saliency_map.shape}")
    height, width = image.shape[:2]
    if saliency_map.shape != (height, width):
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(saliency_map)[None, None], size=(height, width), mode="bilinear", align_corners=False
        )
        saliency_map = resized[0, 0].numpy()
    saliency_map = np.clip(saliency_map, 0.0, 1.0)
    levels = np.round(saliency_map * 255).astype(np.uint8)
    weight = alpha * saliency_map
    keep = 1.0 - weight
    table = _colormap_table(colormap)
    blended = np.empty(image.shape, dtype=np.uint8)
    # Channel by channel, so a 4K frame needs a few (H, W) float32 planes rather than (H, W, 3) ones.
    for channel in range(3):
        plane = image[..., channel] * keep
        plane += table[levels, channel] * weight
        blended[..., channel] = np.clip(plane, 0, 255, out=plane)
    return blended


def _even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row / column when a side is odd."""
    pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return image


class _AudioEncoder:
    """Encodes a sound track (an `AudioTrack` or `AudioReader`) as mono AAC bit by bit, so audio and video packets
    stay interleaved in the file and only the sound near the frames being written is held; sample 0 of the
    output plays with the first frame."""

    def __init__(self, container, track: AudioTrack | AudioReader) -> None:
        self.container, self.track, self.rate = container, track, track.sampling_rate
        self.offset = int(round(track.start_time * self.rate))  # output sample of the track's first sample
        self.stream = container.add_stream("aac", rate=self.rate)
        self.stream.layout = "mono"
        self.position = 0

    def encode_until(self, seconds: float) -> None:
        frame_size = self.stream.codec_context.frame_size or 1024
        wanted = int(math.ceil(seconds * self.rate))
        end = min(wanted, self.offset + self.track.available(wanted - self.offset))
        while self.position < end:
            start = self.position - self.offset
            chunk = self.track.samples(start, start + frame_size)[None, :]  # zero-padded past the track's end
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self.position
            self.container.mux(self.stream.encode(frame))
            self.position += frame_size

    def close(self, seconds: float) -> None:
        self.encode_until(seconds)
        self.container.mux(self.stream.encode(None))


def _checked_image(item, shape: tuple | None) -> np.ndarray:
    image = item.image if isinstance(item, Frame) else np.asarray(item)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"frames must be (height, width, 3) uint8, got {image.shape} {image.dtype}")
    if shape is not None and image.shape != shape:
        raise ValueError(f"all frames must have the size of the first one, {shape}; got {image.shape}")
    return image


def write_overlay_video(
    frames: Iterable[np.ndarray | Frame],
    maps: Iterable[np.ndarray],
    audio: AudioTrack | AudioReader | str | os.PathLike | None,
    path: str | os.PathLike,
    fps: float,
    alpha: float = 0.5,
    colormap: str = "jet",
    crf: int = 20,
) -> int:
    """Encode frames blended with their saliency maps as an H.264 MP4, with the sound as AAC.

    Args:
        frames: RGB images (H, W, 3) uint8, or `Frame`s (their timestamps are kept, for variable frame rate).
        maps: one map (h, w) in [0, 1] per frame, at any resolution (resized to the frame).
        audio: an `AudioTrack` or `AudioReader`, or the path of the source video whose sound is re-encoded (mono,
            at its own sampling rate, read as the frames are written); None for no sound.
        path: the output `.mp4`.
        fps: the frame rate used for plain images (and the nominal rate of the stream).

    Returns the number of frames written. Both iterables are consumed lazily, so memory stays bounded.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pairs = iter(zip(frames, maps, strict=True))
    first = next(pairs, None)
    if first is None:
        raise ValueError("write_overlay_video got no frames")
    shape = _checked_image(first[0], None).shape
    if audio is not None and not isinstance(audio, (AudioTrack, AudioReader)) and not probe_video(audio).has_audio:
        audio = None
    rate, time_base = Fraction(fps).limit_denominator(1001), Fraction(1, 90000)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack, av.open(str(path), mode="w", format="mp4") as container:
        if audio is not None and not isinstance(audio, (AudioTrack, AudioReader)):
            audio = stack.enter_context(AudioReader(audio, sampling_rate=None))
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height = shape[1] + shape[1] % 2, shape[0] + shape[0] % 2
        # A short rate-control lookahead (veryfast's is 10 frames): 175 MB less for a 4K overlay.
        video.pix_fmt, video.options = "yuv420p", {"crf": str(crf), "preset": "veryfast", "x264-params": "rc-lookahead=4"}
        video.codec_context.time_base = time_base
        sound = _AudioEncoder(container, audio) if audio is not None else None
        last_pts, count = -1, 0
        for item, saliency_map in itertools.chain([first], pairs):
            image = _checked_image(item, shape)
            time = item.time if isinstance(item, Frame) else count / rate
            frame = av.VideoFrame.from_ndarray(_even(overlay_saliency(image, saliency_map, alpha, colormap)), format="rgb24")
            # Timestamps must increase strictly, even where the source repeats one.
            frame.pts, frame.time_base = max(int(round(time / time_base)), last_pts + 1), time_base
            container.mux(video.encode(frame))
            last_pts, count = frame.pts, count + 1
            if sound is not None:
                sound.encode_until(float(last_pts * time_base))
        container.mux(video.encode(None))
        if sound is not None:
            sound.close(float(last_pts * time_base + 1 / rate))
    return count


__all__ = [
    "AudioReader",
    "AudioTrack",
    "Frame",
    "TARGET_SAMPLING_RATE",
    "VideoInfo",
    "audio_window",
    "frame_times",
    "iter_frames",
    "load_audio",
    "overlay_saliency",
    "probe_video",
    "read_frames",
    "resample_audio",
    "untimed_frame_times",
    "write_overlay_video",
]
