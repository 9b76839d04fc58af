"""Frames in, saliency maps out: the one loop from frames to clips, audio windows, the processor and the model.

`SaliencyLoop.iter_maps(frames, audio=None, ...)` takes frames from anywhere:

- a video file (decoded with PyAV, its sound track heard unless `audio` says otherwise);
- a folder of frame images (`.jpg`, `.png`, ..., sorted by name, as the datasets store them), with the one `.wav`
  file it holds as its sound, if any;
- a sequence of `(height, width, 3)` uint8 RGB arrays;
- an iterable of `media.Frame`s or of `(image, time)` pairs (time in seconds), e.g. a generator.

Frames without their own timestamps are `1 / fps` apart. `audio` is a file (video or sound), an `AudioTrack`, a
16 kHz waveform (or any rate, with `sampling_rate`), or None: the file's own sound, or silence with a warning.
Each clip's audio window ends where the clip's last frame ends (`ClipWindow.end_time`), the rule training uses too.

This file is model-side (copied with the model's remote code), so the `video-saliency` pipeline runs this very loop
where `dtfsal_hf` is not installed; `dtfsal_hf.inference.SaliencyPredictor` is built on it.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .clips import ALIGNMENTS, alignment_name, iter_batches, iter_clips, iter_frame_maps
from .media import AudioReader, AudioTrack, Frame, VideoInfo, audio_window, iter_frames, probe_video, resample_audio

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Public names of the clip alignments, and the names `clips.py` uses for them.
SAMPLING_RATE = 16000
DEFAULT_FPS = 30.0

ProgressCallback = Callable[[int, int | None], None]


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def prefetch(items: Iterable, max_items: int = 16) -> Iterator:
    """Yield `items` in order while a background thread produces up to `max_items` ahead.

    Decoding a video (PyAV) and running the model (torch) both release the GIL, so frames for the next clips
    are decoded while the model computes. Errors of the producer are raised in the consumer; closing the
    generator stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max_items)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as error:  # handed to the consumer
            buffer.put((done, error))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


class Progress:
    """Context manager giving a `report(done, total)` function: the user's callback, a tqdm bar, or nothing."""

    def __init__(self, progress: ProgressCallback | bool | None, total: int | None, description: str):
        self.progress, self.total, self.description, self.bar = progress, total, description, None

    def __enter__(self) -> ProgressCallback:
        if callable(self.progress):
            return self.progress
        if self.progress is None or self.progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.description, unit="frame", dynamic_ncols=True)
            return lambda done, total: self.bar.update(done - self.bar.n)
        return lambda done, total: None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class FrameSource:
    """Where frames come from, as `iter_maps` reads them.

    Attributes:
        frames: a fresh iterator of `media.Frame`s (index, time, end time, full-size image), each call.
        size: `(height, width)` of the frames, None until the first frame is read (arrays, generators).
        num_frames: the number of frames where known (a file's declared count, a folder, a list).
        name: what the progress bar shows.
        path: the video file or folder, None for frames given in memory.
        audio: the source's own sound: a file to read (a video, a folder's `.wav`), or None.
    """

    frames: Callable[[], Iterator[Frame]]
    size: tuple[int, int] | None
    num_frames: int | None
    name: str
    path: str | None = None
    audio: str | None = None


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)  # writable, as torch wants it


def _timed_frames(images: Iterable, fps: float) -> Iterator[Frame]:
    """`media.Frame`s from images, `(image, time)` pairs or `Frame`s (kept as they are); untimed frames are `1 / fps`
    apart. A frame given without its end ends where the next begins (the last lasts `1 / fps`)."""
    pending = None
    for index, item in enumerate(images):
        if isinstance(item, Frame):  # timed already, its end included
            if pending is not None:
                raise ValueError("give frames either all as media.Frame objects or none of them")
            if item.index != index:
                raise ValueError(f"frames must arrive in order from 0: got index {item.index} at position {index}")
            yield Frame(index=item.index, time=item.time, end_time=item.end_time,
                        image=_checked_image(item.image, index))
            continue
        if isinstance(item, tuple) and len(item) == 2:
            image, time = item
            end = float(time) + 1.0 / fps  # if it is the last
        else:
            image, time, end = item, index / fps, (index + 1) / fps  # = media.untimed_frame_times
        image = _checked_image(image, index)
        if pending is not None:
            yield Frame(index=pending[0], time=pending[1], end_time=float(time), image=pending[2])
        pending = (index, float(time), image, end)
    if pending is not None:
        yield Frame(index=pending[0], time=pending[1], end_time=pending[3], image=pending[2])


def _checked_image(image, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"frame {index} must be a (height, width, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return image


def _folder_source(folder: Path, fps: float) -> FrameSource:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"{folder} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
    sounds = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")
    if len(sounds) > 1:
        raise ValueError(f"{folder} holds {len(sounds)} .wav files: which is the frames' sound? Give it as audio")
    height, width = _read_image(images[0]).shape[:2]
    return FrameSource(lambda: _timed_frames(map(_read_image, images), fps), (height, width), len(images),
                       folder.name, str(folder), str(sounds[0]) if sounds else None)


def frame_source(frames, fps: float | None = None) -> FrameSource:
    """The `FrameSource` of a video file, a folder of frame images, a sequence of arrays or an iterable of frames
    (see the module's docstring); `fps` spaces frames that carry no time (default 30; a file's own times win)."""
    if fps is not None and not (isinstance(fps, (int, float)) and 0 < fps < float("inf")):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    fps = float(fps or DEFAULT_FPS)
    if isinstance(frames, (str, os.PathLike)):
        path = Path(frames)
        if path.is_dir():
            return _folder_source(path, fps)
        info = probe_video(path)  # an unreadable file fails here, before any work
        # A file without sound is read as silence by `AudioReader`, which says so.
        return FrameSource(lambda: iter_frames(path), (info.height, info.width), info.num_frames or None, path.name,
                           str(path), str(path))
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if isinstance(frames, Sequence):
        if not frames:
            raise ValueError("frames is empty: give at least one frame")
        return FrameSource(lambda: _timed_frames(frames, fps), None, len(frames), "frames")
    if isinstance(frames, Iterable):
        once = iter(frames)
        return FrameSource(lambda: _timed_frames(once, fps), None, None, "frames")
    raise ValueError(f"frames must be a video file, a folder of frame images, a list of images or an iterable of "
                     f"frames, got {type(frames).__name__}")


def is_frame_folder(path) -> bool:
    """Whether `path` is a folder of frame images (and no video files): one video stored as pictures."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())


def source_info(path, fps: float | None = None) -> VideoInfo:
    """What `probe_video` says of a video file; for a folder of frame images, the same from its first image, its
    count and `fps` (default 30), `has_audio` when it holds its `.wav`."""
    if not Path(path).is_dir():
        return probe_video(path)
    source = frame_source(path, fps)
    rate = float(fps or DEFAULT_FPS)
    return VideoInfo(path=str(path), width=source.size[1], height=source.size[0], rotation=0, fps=rate,
                     num_frames=source.num_frames, duration=source.num_frames / rate, video_codec="images",
                     has_audio=source.audio is not None)


def audio_track(audio, source: FrameSource, sampling_rate: int | None = None) -> AudioTrack | AudioReader:
    """The sound the clips hear: `audio` (a file, an `AudioTrack`, a waveform at `sampling_rate`), or the source's
    own sound; silence, with a warning, when there is none. A file is read as the clips need it (`AudioReader`:
    seconds of sound held, whatever the track's length); close it after use."""
    if isinstance(audio, AudioTrack):
        return audio if audio.sampling_rate == SAMPLING_RATE else AudioTrack(
            resample_audio(audio.waveform, audio.sampling_rate, SAMPLING_RATE), SAMPLING_RATE, audio.start_time)
    if isinstance(audio, (str, os.PathLike)):
        return AudioReader(audio, SAMPLING_RATE)
    if audio is not None:
        waveform = np.asarray(audio, dtype=np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"audio must be a mono waveform (samples,), got shape {waveform.shape}")
        if sampling_rate is None:
            raise ValueError("a waveform needs its sampling_rate (e.g. sampling_rate=16000)")
        rate = check_positive_int("sampling_rate", sampling_rate)
        return AudioTrack(waveform if rate == SAMPLING_RATE else resample_audio(waveform, rate, SAMPLING_RATE),
                          SAMPLING_RATE)
    if source.audio is not None:
        return AudioReader(source.audio, SAMPLING_RATE)
    warnings.warn(f"{source.name} has no sound: the model hears silence", UserWarning, stacklevel=3)
    return AudioTrack(np.zeros(0, dtype=np.float32), SAMPLING_RATE)


class SaliencyLoop:
    """A `DTFSalModel` and its `DTFSalProcessor` run over a stream of frames, clip by clip.

    Args:
        model: a `DTFSalModel` in eval mode, where it should run (its device and dtype are used).
        processor: the matching `DTFSalProcessor`.
        batch_size: clips per model call.
        stride: predict every `stride`-th frame (and the last); frames in between get maps interpolated in time.
        alignment: `"last"` (the clip predicts its last frame, the paper's choice) or `"center"`.
        normalize: `"max"` divides each predicted map by its maximum (peak 1 in PNGs and overlays; every saliency
            metric ignores this scale); None keeps the model's sigmoid outputs.
    """

    def __init__(self, model, processor, batch_size: int = 4, stride: int = 1, alignment: str = "last",
                 normalize: str | None = "max"):
        alignment = alignment_name(alignment)
        if normalize not in ("max", None):
            raise ValueError(f"normalize must be 'max' or None, got {normalize!r}")
        self.model, self.processor = model, processor
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.stride = check_positive_int("stride", stride)
        self.alignment, self.normalize = alignment, normalize

    @property
    def uses_audio(self) -> bool:
        return bool(getattr(self.model.config, "use_audio", True))

    def saliency_maps(self, inputs: dict) -> torch.Tensor:
        """The model on processor outputs (`pixel_values_videos`, `input_features` or None, `frame_times` when
        given): `(batch, height, width)` float32 maps. `SaliencyPredictor` runs its `Runtime` here; this is the
        model as it stands, inputs in its dtype."""
        parameter = next(self.model.parameters())
        features, times = inputs.get("input_features"), inputs.get("frame_times")
        timed = {} if times is None else {"frame_times": times.to(parameter.device)}
        with torch.inference_mode():
            output = self.model(
                pixel_values_videos=inputs["pixel_values_videos"].to(parameter.device, parameter.dtype),
                input_features=None if features is None else features.to(parameter.device, parameter.dtype),
                **timed,
            )
        return output.saliency_map.float()

    def clip_inputs(self, clips: Sequence, audio: Sequence[np.ndarray] | None = None,
                    frame_times: Sequence | None = None) -> dict:
        """The processor's model inputs (tensors) for a batch of clips: `pixel_values_videos`, and for an
        audio-visual model `input_features` (silence, with a warning, when `audio` is None) and `frame_times`
        when given. Arguments as `predict_clips`."""
        kwargs = {}
        if self.uses_audio:
            kwargs = dict(audio=list(audio), sampling_rate=SAMPLING_RATE) if audio is not None else dict(silent_audio=True)
            if frame_times is not None:
                kwargs["frame_times"] = list(frame_times)
        inputs = self.processor(videos=list(clips), return_tensors="pt", **kwargs)
        return {key: inputs[key] for key in ("pixel_values_videos", "input_features", "frame_times")
                if key in inputs and (self.uses_audio or key == "pixel_values_videos")}

    def window_inputs(self, windows: Sequence, track: AudioTrack | None) -> dict:
        """`clip_inputs` of a batch of `clips.ClipWindow`s: each with the sound that ends at the end of its last frame
        (`track` None: silence), on its frames' decoded times (a variable frame rate kept)."""
        num_samples = self.processor.feature_extractor.num_samples
        audio = [audio_window(track, window.end_time, num_samples) for window in windows] if track is not None else None
        times = [[(frame.time, frame.end_time) for frame in window.frames] for window in windows]
        return self.clip_inputs([window.images for window in windows], audio, frame_times=times)

    def predict_clips(self, clips: Sequence, audio: Sequence[np.ndarray] | None = None,
                      frame_times: Sequence | None = None) -> torch.Tensor:
        """Maps of a batch of clips at the model's resolution.

        Args:
            clips: each `(num_frames, height, width, 3)` uint8 RGB.
            audio: each clip's 16 kHz mono waveform ending with its last frame; None gives silence to an
                audio-visual model (with a warning).
            frame_times: each clip's frames' `(start, end)` times in seconds, `(num_frames, 2)`, on the clock where
                its audio ends at the end of its last frame; None takes the model's nominal frame rate.

        Returns:
            `(batch, model height, model width)` float32 in [0, 1], on the CPU.
        """
        return self.saliency_maps(self.clip_inputs(clips, audio, frame_times)).cpu()

    def predict_windows(self, windows: Sequence, track: AudioTrack | None) -> torch.Tensor:
        """Maps of a batch of `clips.ClipWindow`s at the model's resolution (`window_inputs`)."""
        return self.saliency_maps(self.window_inputs(windows, track)).cpu()

    def _predicted_windows(self, windows: Iterable, track: AudioTrack | None, sizes: list | None, blur_sigma: float):
        """(window, map) for each clip window, predicted `batch_size` at a time; with `sizes` (holding the frames'
        `(height, width)` once the first frame is read), each map is brought to that size one at a time (a 4K map
        is 33 MB in float32), else kept at the model's size."""
        for batch in iter_batches(windows, self.batch_size):
            maps = self.predict_windows(batch, track)
            for window, saliency_map in zip(batch, maps):
                if sizes is None:
                    yield window, saliency_map.numpy()
                    continue
                resized = self.processor.post_process_saliency(saliency_map[None], target_sizes=tuple(sizes[0]),
                                                               blur_sigma=blur_sigma or None, normalize=self.normalize)
                yield window, resized[0].numpy()

    def _model_sized(self, image: np.ndarray) -> np.ndarray:
        """`image` (H, W, 3) uint8 resized to the model's input size by the processor's own resize, once per frame:
        the processor then finds clips at its size and leaves them as they are, so the maps are those of the
        full-size frames, and a clip holds small frames whatever the video's resolution."""
        video_processor = self.processor.video_processor
        if not video_processor.do_resize:
            return image
        # (H, W, 3) -> (1, 3, H, W), as the processor hands frames to its resize
        image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)  # torch wants it writable
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
        resized = video_processor.resize(tensor, size=video_processor.size, resample=video_processor.resample)
        return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())

    def _model_frames(self, frames: Iterator[Frame], max_frames: int | None, sizes: list) -> Iterator[Frame]:
        for frame in itertools.islice(frames, max_frames):
            if not sizes:
                sizes.append(frame.image.shape[:2])
            yield Frame(index=frame.index, time=frame.time, end_time=frame.end_time, image=self._model_sized(frame.image))

    def iter_maps(
        self,
        frames,
        audio=None,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
        fps: float | None = None,
        sampling_rate: int | None = None,
        video_size: bool = True,
    ) -> Iterator[tuple[Frame, np.ndarray]]:
        """`(frame, map)` for every frame; the `Frame` carries the index and the timestamps, and its image is the
        frame at the model's input size (frames are read once).

        Args:
            frames: a video file, a folder of frame images, a sequence of images, or an iterable of `media.Frame`s
                or `(image, time)` pairs (see the module's docstring).
            audio: a file, an `AudioTrack` or a waveform at `sampling_rate`; None: the source's own sound.
            stride: overrides the loop's stride.
            blur_sigma: Gaussian blur of each map, in pixels at the model's resolution (0: none).
            max_frames: stop after this many frames (None: all).
            progress: a callable `(done_frames, total_frames or None)`, None for a tqdm bar, False for nothing.
            fps: the frame rate of frames without timestamps (default 30).
            video_size: maps at the frames' resolution, normalised as the loop says (default); False: the model's
                maps as they are, at its resolution (what evaluation blurs and resizes itself).

        Frames are resized as they are read and maps are brought to the frames' size one at a time, so memory
        holds the clips at the model's size and two maps at the frames' size, whatever their resolution and number.
        """
        stride = self.stride if stride is None else check_positive_int("stride", stride)
        if max_frames is not None:
            max_frames = check_positive_int("max_frames", max_frames)
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0 (pixels), got {blur_sigma}")
        source = frame_source(frames, fps)
        yield from self._iter_source_maps(source, audio, stride, blur_sigma, max_frames, progress, sampling_rate,
                                          video_size)

    def _iter_source_maps(self, source: FrameSource, audio, stride, blur_sigma, max_frames, progress, sampling_rate,
                          video_size: bool) -> Iterator[tuple[Frame, np.ndarray]]:
        track = audio_track(audio, source, sampling_rate) if self.uses_audio else None
        try:
            yield from self._iter_track_maps(source, track, stride, blur_sigma, max_frames, progress, video_size)
        finally:
            if isinstance(track, AudioReader):
                track.close()

    def _iter_track_maps(self, source: FrameSource, track, stride, blur_sigma, max_frames, progress,
                         video_size: bool) -> Iterator[tuple[Frame, np.ndarray]]:
        num_frames = self.model.config.num_frames
        sizes: list = [] if source.size is None else [source.size]
        frames = prefetch(self._model_frames(source.frames(), max_frames, sizes), 2 * num_frames)
        windows = iter_clips(frames, num_frames, self.alignment, stride)
        # The frames' size is known once the first frame is read, before the first clip is predicted.
        predictions = self._predicted_windows(windows, track, sizes if video_size else None, blur_sigma)
        total = min(source.num_frames, max_frames or source.num_frames) if source.num_frames else max_frames
        with Progress(progress, total, source.name) as report:
            for done, (frame, saliency_map) in enumerate(iter_frame_maps(predictions), start=1):
                yield frame, saliency_map
                report(done, total)


__all__ = [
    "ALIGNMENTS",
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "ProgressCallback",
    "SaliencyLoop",
    "audio_track",
    "frame_source",
    "is_frame_folder",
    "prefetch",
    "source_info",
]
