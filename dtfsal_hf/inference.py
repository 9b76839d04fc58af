"""Video in, saliency maps out: the predictor behind `dtfsal predict`, the Space and the examples.

- `SaliencyPredictor` runs a `DTFSalModel` over a whole video: frames are decoded one at a time, grouped into
  clips (`dtfsal_hf.clips`), paired with the audio window that ends with each clip, and the maps are
  returned at the video's resolution. `iter_video_maps` streams (memory does not grow with the video's
  length); `predict_video` collects everything into a `VideoSaliency`.
- `predict_to_folder` writes one video's outputs: 8-bit PNG maps, one compressed `maps.npz`, an overlay MP4
  with the original sound, and a `done.json` marker written last, so an interrupted batch resumes where it
  stopped.
- `predict_videos` runs a list of videos (a failing file is reported, the others go on), shared between
  the processes of an `accelerate launch` / `torchrun` job.

Model ids besides folders and Hub ids: `demo` (the checkpoint bundled in `dtfsal_hf/assets/demo-checkpoint`),
`random` and `random-tiny` (untrained models, for checking the pipeline and timing it; their maps mean nothing).
"""

from __future__ import annotations

import filecmp
import itertools
import json
import math
import os
import queue
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .clips import iter_batches, iter_clips, iter_frame_maps
from .configuration_dtfsal import DTFSalConfig
from .mvit_attention import MVIT_ATTENTIONS
from .media import AudioTrack, Frame, audio_window, iter_frames, load_audio, probe_video, write_overlay_video
from .modeling_dtfsal import DTFSalModel
from .npz_stream import NpzMapWriter, iter_npz_maps
from .processing_dtfsal import DTFSalProcessor

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo-checkpoint"
# The clip the demo checkpoint is shown on, beside it in the assets.
SYNTHETIC_EXAMPLE_NAME = "synthetic_example.mp4"
RANDOM_MODELS = {"random": DTFSalConfig, "random-tiny": DTFSalConfig.tiny}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
# Public names of the clip alignments, and the names `dtfsal_hf.clips` uses for them.
ALIGNMENTS = {"last": "causal", "center": "centre", "causal": "causal", "centre": "centre"}
MARKER_NAME = "done.json"

ProgressCallback = Callable[[int, int | None], None]


def untrained_message(model_id: str) -> str:
    return (
        f"'{model_id}' is a randomly initialised, untrained DTFSal model: its saliency maps are meaningless "
        "(use it to check the pipeline or to time it, not to look at the maps)"
    )


@dataclass
class VideoSaliency:
    """The saliency maps of a whole video.

    Attributes:
        maps: `(frames, height, width)` at the video's resolution, float32 in [0, 1] (or uint8 in [0, 255]).
        times: `(frames,)` float64, each frame's presentation time in seconds from the first frame.
        fps: the video's nominal frame rate.
        size: `(height, width)` of the video as displayed.
        has_audio: whether the file has a sound track (without one the model saw silence).
        path: the video file.
    """

    maps: np.ndarray
    times: np.ndarray
    fps: float
    size: tuple[int, int]
    has_audio: bool
    path: str

    @property
    def num_frames(self) -> int:
        return int(self.maps.shape[0])


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(dtype, dtype)
        dtype = getattr(torch, name, None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16 (or None for float32), got {dtype!r}")
    return dtype


def _build_random_model(model_id: str) -> DTFSalModel:
    # A fixed seed, so every process of a distributed job (and every rerun) builds the same untrained model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DTFSalModel(RANDOM_MODELS[model_id]())


def load_model_and_processor(model_id_or_path: str | os.PathLike) -> tuple[DTFSalModel, DTFSalProcessor, bool]:
    """`(model, processor, trained)` for a folder, a Hub id, `demo`, `random` or `random-tiny`.

    The processor is read from the same place, or built from the model's configuration when it has none.
    """
    model_id = str(model_id_or_path)
    if model_id in RANDOM_MODELS:
        model = _build_random_model(model_id)
        return model, DTFSalProcessor.from_model_config(model.config), False
    if model_id == "demo":
        if not (DEMO_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(
                f"The demo checkpoint is not bundled with this installation (expected {DEMO_CHECKPOINT}/config.json). "
                "Give a trained model folder or Hub id, or 'random' / 'random-tiny' for an untrained model"
            )
        model_id = str(DEMO_CHECKPOINT)
    source = _model_source(model_id)
    try:
        model = DTFSalModel.from_pretrained(source)
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise FileNotFoundError(
            f"no model folder at {model_id}, and no model {model_id!r} could be loaded from the Hub: "
            f"{_first_line(error)}"
        ) from error
    try:
        processor = DTFSalProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = DTFSalProcessor.from_model_config(model.config)
    return model, processor, True


def _model_source(model_id: str) -> str:
    """A model folder, or a Hub id; anything else is refused with a message naming it."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_id} holds no config.json: not a model folder written by save_pretrained "
                "(or `dtfsal train`'s best/)"
            )
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"{model_id} is a file: a model is a folder written by save_pretrained, or a Hub id")
    if not _is_hub_id(model_id):
        raise FileNotFoundError(
            f"no model folder at {model_id} (nor is it a Hub id 'namespace/name'; other ids: demo, random, random-tiny)"
        )
    return model_id


def _is_hub_id(model_id: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return model_id.count("/") <= 1


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def is_demo_checkpoint(model) -> bool:
    """Whether `model` was loaded from the bundled demo checkpoint (`DEMO_CHECKPOINT`, model id `demo`)."""
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if not name:
        return False
    try:
        return Path(name).resolve() == DEMO_CHECKPOINT.resolve()
    except OSError:
        return False


def is_synthetic_example(path: str | os.PathLike) -> bool:
    """Whether `path` is the demo checkpoint's own synthetic example clip (or a copy of it, such as an upload)."""
    example = DEMO_CHECKPOINT.parent / SYNTHETIC_EXAMPLE_NAME
    path = Path(path)
    try:
        if not example.is_file() or not path.is_file() or path.stat().st_size != example.stat().st_size:
            return False
        return path.resolve() == example.resolve() or filecmp.cmp(path, example, shallow=False)
    except OSError:
        return False


def demo_message(how: str = "given as --model (or to SaliencyPredictor.from_pretrained)") -> str:
    """What the demo checkpoint is, said when it runs on another video; `how` tells where to give a trained model."""
    return (
        "the demo checkpoint was trained only on synthetic videos of coloured discs, each with its own tone "
        "(dtfsal_hf.data.synthetic): on any other video its maps mean nothing. For real videos use a trained "
        f"model: a folder written by `dtfsal train` (its best/) or a Hub id, {how}"
    )


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


class SaliencyPredictor:
    """Runs a `DTFSalModel` over whole videos.

    Args:
        model: a `DTFSalModel` (its configuration gives the clip length and input size); it is moved to `device`
            and `dtype` in place and put in eval mode.
        processor: the matching `DTFSalProcessor`; None builds it from the model's configuration.
        device: where the model runs (`"cpu"`, `"cuda"`, `"cuda:1"`, ...).
        dtype: the model's weights and activations: None (float32), `torch.bfloat16` or `torch.float16`.
        batch_size: clips per model call.
        stride: predict every `stride`-th frame (and the last); frames in between get maps interpolated in time.
        alignment: `"last"` (the clip predicts its last frame, the paper's choice) or `"center"`.
        normalize: `"max"` (default) divides each predicted map by its maximum, so the peak is 1 in PNGs and
            overlays (models trained with the KL loss give maps whose values are small; every saliency metric
            ignores this scale); None keeps the model's sigmoid outputs.
        trained: False for an untrained model: a warning says its maps are meaningless.
        model_id: the name the model was loaded under (recorded in `done.json`).
        attention: MViT attention kernel (`DTFSalModel.set_mvit_attention`): "auto" (the default: plain
            matrix products by blocks of queries on a CPU, `scaled_dot_product_attention` elsewhere), "sdpa",
            "blocked" or "eager" (torchvision's explicit form); the model is switched in place and its
            configuration records the kernel.

    `demo` is True when the model is the bundled demo checkpoint: on a video other than its synthetic example
    the predictor warns once (`warn_if_demo`) that its maps mean nothing there.
    """

    def __init__(
        self,
        model: DTFSalModel,
        processor: DTFSalProcessor | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 4,
        stride: int = 1,
        alignment: str = "last",
        normalize: str | None = "max",
        trained: bool = True,
        model_id: str | None = None,
        attention: str = "auto",
    ):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be 'last' or 'center', got {alignment!r}")
        if normalize not in ("max", None):
            raise ValueError(f"normalize must be 'max' or None, got {normalize!r}")
        self.normalize = normalize
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.stride = _check_positive_int("stride", stride)
        self.alignment = alignment
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if attention not in MVIT_ATTENTIONS:
            raise ValueError(f"attention must be one of {MVIT_ATTENTIONS}, got {attention!r}")
        # Same maps as torchvision's explicit attention (fp32: within 3e-5), faster and with less memory.
        self.model.set_mvit_attention(attention)
        self.processor = processor if processor is not None else DTFSalProcessor.from_model_config(model.config)
        self.trained = trained
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.demo = is_demo_checkpoint(model)
        # Set once the demo warning was given (by this predictor, or by a caller that said it its own way).
        self.warned_about_demo = False
        if not trained:
            warnings.warn(untrained_message(self.model_id), UserWarning, stacklevel=2)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 4,
        stride: int = 1,
        alignment: str = "last",
        normalize: str | None = "max",
        attention: str = "auto",
    ) -> "SaliencyPredictor":
        """Load a model folder or Hub id, `demo` (the bundled checkpoint), `random` (the paper's model, untrained)
        or `random-tiny` (the tiny test model, untrained)."""
        model, processor, trained = load_model_and_processor(model_id_or_path)
        return cls(model, processor, device=device, dtype=dtype, batch_size=batch_size, stride=stride,
                   alignment=alignment, normalize=normalize, trained=trained, model_id=str(model_id_or_path),
                   attention=attention)

    def warn_if_demo(self, path: str | os.PathLike) -> bool:
        """Warn, once per predictor, when the demo checkpoint runs on a video other than its synthetic example.
        Returns whether the maps of `path` come from the demo checkpoint on such a video."""
        if not self.demo or is_synthetic_example(path):
            return False
        if not self.warned_about_demo:
            self.warned_about_demo = True
            message = demo_message()
            warnings.warn(message[0].upper() + message[1:], UserWarning, stacklevel=3)
        return True

    @property
    def uses_audio(self) -> bool:
        return bool(getattr(self.model.config, "use_audio", True))

    def settings(self, stride: int | None = None, blur_sigma: float = 0.0, max_frames: int | None = None) -> dict:
        """What determines the maps: recorded in `done.json`, so a rerun with other settings redoes the video."""
        return {
            "model": self.model_id,
            "trained": self.trained,
            "dtype": str(self.dtype).removeprefix("torch."),
            "stride": self.stride if stride is None else stride,
            "alignment": self.alignment,
            "normalize": self.normalize,
            "blur_sigma": float(blur_sigma),
            "max_frames": max_frames,
        }

    @torch.no_grad()
    def predict_clips(self, clips: Sequence, audio: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        """Maps of a batch of clips at the model's resolution.

        Args:
            clips: each `(num_frames, height, width, 3)` uint8 RGB.
            audio: each clip's 16 kHz mono waveform ending with its last frame; None gives silence to an
                audio-visual model (with a warning).

        Returns:
            `(batch, model height, model width)` float32 in [0, 1], on the CPU.
        """
        kwargs = {}
        if self.uses_audio:
            kwargs = dict(audio=list(audio), sampling_rate=16000) if audio is not None else dict(silent_audio=True)
        inputs = self.processor(videos=list(clips), return_tensors="pt", **kwargs)
        features = inputs.get("input_features") if self.uses_audio else None
        output = self.model(
            pixel_values_videos=inputs["pixel_values_videos"].to(self.device, self.dtype),
            input_features=None if features is None else features.to(self.device, self.dtype),
        )
        return output.saliency_map.float().cpu()

    def _predicted_windows(self, windows: Iterable, track: AudioTrack | None, size: tuple[int, int], blur_sigma: float):
        """(window, map at the video's resolution) for each clip window, predicted `batch_size` at a time and brought
        to the video's size one at a time (a 4K map is 33 MB in float32)."""
        num_samples = self.processor.feature_extractor.num_samples
        for batch in iter_batches(windows, self.batch_size):
            audio = [audio_window(track, window.end_time, num_samples) for window in batch] if track is not None else None
            maps = self.predict_clips([window.images for window in batch], audio)
            for window, saliency_map in zip(batch, maps):
                resized = self.processor.post_process_saliency(saliency_map[None], target_sizes=size,
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
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        resized = video_processor.resize(tensor, size=video_processor.size, resample=video_processor.resample)
        return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())

    def _model_frames(self, path, max_frames: int | None) -> Iterator[Frame]:
        for frame in itertools.islice(iter_frames(path), max_frames):
            yield Frame(index=frame.index, time=frame.time, end_time=frame.end_time, image=self._model_sized(frame.image))

    def iter_maps(
        self,
        path: str | os.PathLike,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
    ) -> Iterator[tuple[Frame, np.ndarray]]:
        """`(frame, map)` for every frame, the map at the video's resolution; the `Frame` carries the index and the
        timestamps, and its image is the frame at the model's input size (the video is decoded once).

        Frames are resized as they are decoded and maps are brought to the video's size one at a time, so memory
        holds the clips at the model's size and two maps at the video's, whatever its resolution and length.
        """
        stride = self.stride if stride is None else _check_positive_int("stride", stride)
        if max_frames is not None:
            max_frames = _check_positive_int("max_frames", max_frames)
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0 (pixels), got {blur_sigma}")
        info = probe_video(path)
        self.warn_if_demo(path)
        # load_audio gives silence, with a warning, for a file without sound.
        track = load_audio(path) if self.uses_audio else None
        frames = prefetch(self._model_frames(path, max_frames), 2 * self.model.config.num_frames)
        windows = iter_clips(frames, self.model.config.num_frames, ALIGNMENTS[self.alignment], stride)
        predictions = self._predicted_windows(windows, track, (info.height, info.width), blur_sigma)
        total = min(info.num_frames, max_frames or info.num_frames) if info.num_frames else max_frames
        with _Progress(progress, total, Path(path).name) as report:
            for done, (frame, saliency_map) in enumerate(iter_frame_maps(predictions), start=1):
                yield frame, saliency_map
                report(done, total)

    def iter_frames_and_maps(
        self,
        path: str | os.PathLike,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
    ) -> Iterator[tuple[Frame, np.ndarray]]:
        """As `iter_maps`, the `Frame` holding the full-size picture with its timestamps.

        The pictures come from a second decoding of the file, in step with the maps: only a few full-size frames
        are held at once, whatever the stride (the frames between two targets wait for the second target's map)
        or the batch size.
        """
        maps = self.iter_maps(path, stride, blur_sigma, max_frames, progress)
        pictures = prefetch(itertools.islice(iter_frames(path), max_frames), 2)
        try:
            for small, saliency_map in maps:
                frame = next(pictures, None)
                if frame is None or frame.index != small.index or frame.time != small.time:
                    raise RuntimeError(f"{path}: decoding the file twice gave different frames (at frame {small.index})")
                yield frame, saliency_map
        finally:
            maps.close()
            pictures.close()

    def iter_video_maps(
        self,
        path: str | os.PathLike,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Stream `(frame_index, frame (H, W, 3) uint8 RGB, map (H, W) float32 in [0, 1])` over a video.

        Only the frames of the clips in flight are held, so memory does not grow with the video's length.

        Args:
            path: the video file.
            stride: overrides the predictor's stride for this video.
            blur_sigma: Gaussian blur of each map, in pixels at the model's resolution (0: none).
            max_frames: stop after this many frames (None: the whole video).
            progress: a callable `(done_frames, total_frames or None)`, None for a tqdm bar, False for nothing.
        """
        for frame, saliency_map in self.iter_frames_and_maps(path, stride, blur_sigma, max_frames, progress):
            yield frame.index, frame.image, saliency_map

    def predict_video(
        self,
        path: str | os.PathLike,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
        map_dtype: str = "float32",
    ) -> VideoSaliency:
        """All maps of a video at once (see `iter_video_maps` for the arguments).

        `map_dtype="uint8"` stores the maps as 0-255 (a quarter of the memory: a 640x360 video takes 230 kB per
        frame instead of 920 kB); use `iter_video_maps` or `predict_to_folder` for long videos.
        """
        if map_dtype not in ("float32", "uint8"):
            raise ValueError(f"map_dtype must be 'float32' or 'uint8', got {map_dtype!r}")
        info = probe_video(path)
        maps, times = [], []
        for frame, saliency_map in self.iter_maps(path, stride, blur_sigma, max_frames, progress):
            maps.append(to_uint8(saliency_map) if map_dtype == "uint8" else saliency_map.astype(np.float32))
            times.append(frame.time)
        return VideoSaliency(
            maps=np.stack(maps), times=np.asarray(times, dtype=np.float64), fps=info.fps,
            size=(info.height, info.width), has_audio=info.has_audio, path=str(path),
        )


class _Progress:
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


def to_uint8(saliency_map: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 8-bit grey levels (0-255, rounded); one float copy of the map is made."""
    saliency_map = np.asarray(saliency_map)
    scaled = np.clip(saliency_map if np.issubdtype(saliency_map.dtype, np.floating) else saliency_map.astype(np.float32),
                     0.0, 1.0)
    scaled *= 255.0
    return np.round(scaled, out=scaled).astype(np.uint8)


STATISTICS = ("center_x", "center_y", "center_x_norm", "center_y_norm", "entropy", "peak_x", "peak_y", "mean")
# Elements of a map converted to float64 at once by `saliency_statistics` (2 MB).
_STATISTICS_BLOCK = 1 << 18


def _map_statistics(saliency_map: np.ndarray) -> tuple[float, ...]:
    """`STATISTICS` of one (height, width) map, reading it by blocks of rows so float64 copies stay small.

    With the total T, the entropy of p = m / T is log2 T - sum(m log2 m) / T; the centre of mass comes from the
    row and column sums.
    """
    if saliency_map.ndim != 2 or 0 in saliency_map.shape:
        raise ValueError(f"each map must be (height, width), got shape {saliency_map.shape}")
    if np.issubdtype(saliency_map.dtype, np.floating) and (saliency_map < 0).any():
        raise ValueError("saliency maps must be non-negative")
    height, width = saliency_map.shape
    rows, columns, weighted_logs = np.zeros(height), np.zeros(width), 0.0
    step = max(1, _STATISTICS_BLOCK // width)
    for first in range(0, height, step):
        block = saliency_map[first : first + step].astype(np.float64)
        rows[first : first + step] = block.sum(axis=1)
        columns += block.sum(axis=0)
        positive = block[block > 0]
        weighted_logs += float((positive * np.log2(positive)).sum())
    total = float(rows.sum())
    peak_y, peak_x = divmod(int(np.argmax(saliency_map)), width)
    if total > 0:
        center_x = float((columns * np.arange(width)).sum()) / total
        center_y = float((rows * np.arange(height)).sum()) / total
        entropy = max(math.log2(total) - weighted_logs / total, 0.0)
    else:
        center_x = center_y = entropy = math.nan
    return center_x, center_y, center_x / width, center_y / height, entropy, peak_x, peak_y, total / (height * width)


def saliency_statistics(maps: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame statistics of maps `(frames, height, width)` (or one `(height, width)` map, or any iterable of
    maps, e.g. `iter_npz_maps("maps.npz")`), float or uint8, computed one map at a time: memory holds one map and
    a few megabytes, whatever the resolution and the number of frames.

    Returns arrays of shape `(frames,)`:
        center_x, center_y: the centre of mass in pixels (column, row), 0 at the top-left pixel's centre;
        center_x_norm, center_y_norm: the same divided by the width and height, in [0, 1];
        entropy: Shannon entropy in bits of the map normalised to sum 1 (log2(H*W) for a uniform map);
        peak_x, peak_y: position of the maximum; mean: the mean value (in the maps' own scale).
    A map that sums to zero has NaN centre and entropy.
    """
    if isinstance(maps, np.ndarray):
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3 or maps.shape[0] == 0:
            raise ValueError(f"maps must be (frames, height, width) with at least one frame, got shape {maps.shape}")
    rows = [_map_statistics(np.asarray(saliency_map)) for saliency_map in maps]
    if not rows:
        raise ValueError("maps must hold at least one frame, got none")
    columns = list(zip(*rows))
    result = {name: np.asarray(values, dtype=np.float64) for name, values in zip(STATISTICS, columns)}
    result["peak_x"], result["peak_y"] = result["peak_x"].astype(np.int64), result["peak_y"].astype(np.int64)
    return result


def output_name(video_path: str | os.PathLike) -> str:
    """The name of a video's output folder: its file name without extension, made safe to join to the output
    folder. A name of dots only (`...mp4` has the stem `..`, `..mp4` the stem `.`) would name the output folder's
    parent or the output folder itself: its dots become `_`. Characters that do not print (newlines...) become `_`."""
    name = "".join(character if character.isprintable() else "_" for character in Path(video_path).stem)
    if not name.strip("."):
        name = "_" * max(len(name), 1)
    return name


def output_paths(video_path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Where `predict_to_folder` writes a video's outputs: `<output_dir>/<output_name(video)>/...`.

    Raises `ValueError` when that folder would not lie directly inside `output_dir` (a link pointing elsewhere).
    """
    output_dir = Path(output_dir)
    folder = output_dir / output_name(video_path)
    if folder.resolve().parent != output_dir.resolve():
        raise ValueError(f"the output folder of {video_path}, {folder}, leads outside {output_dir} (to {folder.resolve()})")
    return {
        "folder": folder,
        "maps": folder / "maps",
        "npz": folder / "maps.npz",
        "overlay": folder / "overlay.mp4",
        "done": folder / MARKER_NAME,
    }


def source_identity(video_path: str | os.PathLike) -> dict | None:
    """What identifies the file a marker was written for: its absolute path, size and modification time (ns).
    None for a path that is not a file."""
    path = Path(video_path).resolve()
    try:
        status = path.stat()
    except OSError:
        return None
    return {"path": str(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns} if path.is_file() else None


def _requested(write_pngs: bool, write_npz: bool, write_overlay: bool) -> dict[str, bool]:
    return {"pngs": bool(write_pngs), "npz": bool(write_npz), "overlay": bool(write_overlay)}


def _read_marker(paths: dict[str, Path]) -> dict | None:
    try:
        marker = json.loads(paths["done"].read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finished_marker(paths: dict[str, Path], settings: dict, outputs: dict[str, bool],
                    video_path: str | os.PathLike | None = None) -> dict | None:
    """The `done.json` content when the video was finished with these settings and its outputs are all there; with
    `video_path`, also only when the marker was written for that very file (`source_identity`: path, size and
    modification time), so another file of the same name, or the same file changed, is predicted again."""
    marker = _read_marker(paths)
    if marker is None:
        return None
    if marker.get("settings") != settings or any(want and not marker.get("outputs", {}).get(name) for name, want in outputs.items()):
        return None
    if video_path is not None and (marker.get("source") is None or marker.get("source") != source_identity(video_path)):
        return None
    frames = marker.get("num_frames")
    if outputs["pngs"] and len(list(paths["maps"].glob("*.png"))) != frames:
        return None
    if outputs["npz"] and not paths["npz"].is_file():
        return None
    if outputs["overlay"] and not paths["overlay"].is_file():
        return None
    return marker


def _clear_outputs(paths: dict[str, Path]) -> None:
    """Remove what an earlier, unfinished or differently configured run left, so no stale frame survives."""
    paths["done"].unlink(missing_ok=True)
    if paths["maps"].is_dir():
        for png in paths["maps"].glob("*.png"):
            png.unlink()
    for name in ("npz", "overlay"):
        paths[name].unlink(missing_ok=True)


def _remove_failed(paths: dict[str, Path]) -> None:
    """After a failure: the temporary files and every output of the run go, and the folder if nothing else is in it."""
    _clear_outputs(paths)
    for temporary in (_overlay_partial(paths["overlay"]), paths["npz"].with_name(paths["npz"].name + ".tmp"),
                      paths["done"].with_name(MARKER_NAME + ".tmp")):
        temporary.unlink(missing_ok=True)
    for folder in (paths["maps"], paths["folder"]):
        try:
            folder.rmdir()
        except OSError:  # absent, or holding files of the user's
            pass


def _write_png(path: Path, saliency_map: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(saliency_map, mode="L").save(path, compress_level=3)


def predict_to_folder(
    predictor: SaliencyPredictor,
    video_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    overlay_alpha: float = 0.5,
    colormap: str = "jet",
    write_pngs: bool = True,
    write_npz: bool = True,
    write_overlay: bool = True,
    stride: int | None = None,
    blur_sigma: float = 0.0,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | bool | None = None,
    extra_marker: dict | None = None,
) -> dict[str, Path]:
    """Predict one video and write its outputs under `<output_dir>/<video stem>/`:

    - `maps/000001.png ...`: one 8-bit grey map per frame, at the video's resolution;
    - `maps.npz`: `maps` (frames, height, width) uint8 (the PNGs' values) and `times` (frames,) in seconds;
    - `overlay.mp4`: H.264, the heat map (`colormap`, weight `overlay_alpha` x map) over the frames, with the
      original sound as AAC;
    - `done.json`: written last: settings, frame count, timing. A video whose marker matches the settings and
      whose outputs are all present is skipped (unless `overwrite`); anything else is redone from scratch.

    The video is decoded once and memory stays flat. Returns the paths (`folder`, `maps`, `npz`, `overlay`,
    `done`). Other arguments as `SaliencyPredictor.iter_video_maps`; `extra_marker` adds fields to `done.json`.
    """
    if not (write_pngs or write_npz or write_overlay):
        raise ValueError("nothing to write: write_pngs, write_npz and write_overlay are all False")
    if write_overlay:
        check_overlay_options(overlay_alpha, colormap)
    paths = output_paths(video_path, output_dir)
    settings = predictor.settings(stride, blur_sigma, max_frames)
    outputs = _requested(write_pngs, write_npz, write_overlay)
    if not overwrite and finished_marker(paths, settings, outputs, video_path) is not None:
        return paths
    started = time.perf_counter()
    info = probe_video(video_path)  # an unreadable file fails here, before anything is written
    source = source_identity(video_path)
    _clear_outputs(paths)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    try:
        count = _write_outputs(predictor, video_path, paths, info, outputs, overlay_alpha, colormap,
                               (stride, blur_sigma, max_frames, progress))
    except BaseException:
        _remove_failed(paths)
        raise
    marker = {
        "video": str(Path(video_path).resolve()),
        "source": source,
        "num_frames": count,
        "fps": info.fps,
        "size": [info.height, info.width],
        "has_audio": info.has_audio,
        "settings": settings,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - started, 3),
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra_marker or {}),
    }
    partial = paths["done"].with_name(MARKER_NAME + ".tmp")
    partial.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(partial, paths["done"])
    return paths


def _write_outputs(predictor, video_path, paths: dict, info, outputs: dict, alpha: float, colormap: str, options) -> int:
    """Stream the maps of a video into its PNGs, `maps.npz` and overlay; returns the number of frames."""
    if outputs["pngs"]:
        paths["maps"].mkdir(exist_ok=True)
    npz = NpzMapWriter(paths["npz"]) if outputs["npz"] else None
    count = 0

    def saved(pairs):
        nonlocal count
        for frame, saliency_map in pairs:
            grey = to_uint8(saliency_map)
            if outputs["pngs"]:
                _write_png(paths["maps"] / f"{frame.index + 1:06d}.png", grey)
            if npz is not None:
                npz.add(grey, frame.time)
            count += 1
            yield frame, saliency_map

    try:
        if outputs["overlay"]:
            _write_overlay(saved(predictor.iter_frames_and_maps(video_path, *options)), video_path, paths["overlay"],
                           info, alpha, colormap)
        else:
            for _ in saved(predictor.iter_maps(video_path, *options)):
                pass
        if npz is not None:
            npz.close()
    except BaseException:
        if npz is not None:
            npz.discard()
        raise
    return count


def _in_step(pairs: Iterator[tuple]) -> tuple[Iterator, Iterator]:
    """The first and the second items of `pairs` as two iterators, for a consumer that takes one of each in turn,
    first then second (`zip`), holding one pair. (`itertools.tee` keeps its items in blocks of 57 until both sides
    have passed a block: 57 frames and maps of a 4K video are 3 GB.)"""
    slot: list = []

    def firsts():
        for first, second in pairs:
            slot.append(second)
            yield first

    def seconds():
        while slot:
            yield slot.pop()

    return firsts(), seconds()


def _overlay_partial(path: Path) -> Path:
    return path.with_name(path.stem + ".partial.mp4")


def _write_overlay(pairs: Iterator, video_path, path: Path, info, alpha: float, colormap: str) -> None:
    partial = _overlay_partial(path)
    frames, maps = _in_step(pairs)
    try:
        write_overlay_video(frames, maps, video_path if info.has_audio else None, partial, fps=info.fps or 30.0,
                            alpha=alpha, colormap=colormap)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Video files from files and folders (a folder gives its files with a video extension, sorted).

    A path that does not exist is kept (it is reported as failed when its turn comes). Raises `ValueError`
    when two inputs would share an output folder (same `output_name`).
    """
    videos = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS))
        else:
            # A missing file stays in the list: it fails on its own, reported, and the others go on.
            videos.append(path)
    unique = list(dict.fromkeys(videos))
    names: dict[str, Path] = {}
    for video in unique:
        name = output_name(video)
        if name in names:
            raise ValueError(
                f"{names[name]} and {video} would both write to '<output>/{name}/': "
                "predict them into different output folders"
            )
        names[name] = video
    return unique


@dataclass
class VideoResult:
    """The outcome of one video in `predict_videos`: `status` is "done", "skipped" or "failed"."""

    video: Path
    status: str
    seconds: float = 0.0
    num_frames: int | None = None
    error: str | None = None


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def process_share(videos: Sequence) -> tuple[list, int, int, object]:
    """`(this process's videos, process index, number of processes, accelerate state)`.

    Under `accelerate launch` or `torchrun`, `accelerate.PartialState` shares the list out in contiguous parts,
    one per process, so each video is handled once; a plain run gets the whole list (state None).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return list(videos), 0, 1, None
    try:
        from datetime import timedelta

        from accelerate import PartialState
    except ImportError as error:
        raise ImportError("sharing videos between processes needs accelerate: pip install 'dtfsal_hf[train]'") from error
    # PartialState only sets up CPU processes when told to (accelerate launch --cpu sets ACCELERATE_USE_CPU).
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not _accelerator_available()
    # Processes may finish their shares hours apart: the final barrier must not time out.
    state = PartialState(cpu=cpu, timeout=timedelta(days=7))
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate set up {state.num_processes} process(es): "
            "every process would predict every video. Launch with `accelerate launch` (add --cpu without GPUs)"
        )
    with state.split_between_processes(list(videos)) as share:
        share = list(share)
    return share, state.process_index, state.num_processes, state


def predict_videos(
    predictor: SaliencyPredictor,
    videos: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    log: Callable[[str], None] = print,
    process_index: int = 0,
    **options,
) -> list[VideoResult]:
    """`predict_to_folder` for each video; a failing video is logged and the others go on.

    `options` go to `predict_to_folder`. Returns one `VideoResult` per video, in order.
    """
    results = []
    for video in map(Path, videos):
        started = time.perf_counter()
        try:
            paths = output_paths(video, output_dir)
            settings = predictor.settings(options.get("stride"), options.get("blur_sigma", 0.0), options.get("max_frames"))
            wanted = _requested(options.get("write_pngs", True), options.get("write_npz", True),
                                options.get("write_overlay", True))
            marker = None if options.get("overwrite") else finished_marker(paths, settings, wanted, video)
            if marker is not None:
                log(f"[process {process_index}] skipped {video}: finished earlier ({paths['done']})")
                results.append(VideoResult(video, "skipped", num_frames=marker.get("num_frames")))
                continue
            previous = _read_marker(paths)
            if previous is not None and previous.get("video") != str(video.resolve()):
                log(f"[process {process_index}] {paths['folder']} holds the outputs of {previous.get('video')}: "
                    f"replacing them with those of {video}")
            predict_to_folder(predictor, video, output_dir, extra_marker={"process_index": process_index}, **options)
        except Exception as error:  # one bad file must not stop the batch
            message = f"{type(error).__name__}: {error}"
            log(f"[process {process_index}] FAILED {video}: {message}")
            results.append(VideoResult(video, "failed", time.perf_counter() - started, error=message))
            continue
        seconds = time.perf_counter() - started
        frames = json.loads(paths["done"].read_text())["num_frames"]
        log(f"[process {process_index}] done {video}: {frames} frames in {seconds:.1f} s -> {paths['folder']}")
        results.append(VideoResult(video, "done", seconds, frames))
    return results


def _default_device(state) -> str:
    if state is not None:
        return str(state.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_overlay_options(overlay_alpha: float, colormap: str) -> None:
    """Raise `ValueError` for an overlay opacity outside [0, 1] or an unknown matplotlib colour map."""
    from matplotlib import colormaps

    if not 0.0 <= overlay_alpha <= 1.0:
        raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
    if colormap not in colormaps:
        raise ValueError(f"unknown colormap {colormap!r}: use a matplotlib colour map name such as 'jet' or 'inferno'")


def predict_job(
    inputs: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 4,
    stride: int = 1,
    alignment: str = "last",
    normalize: str | None = "max",
    attention: str = "auto",
    log: Callable[[str], None] = print,
    **options,
) -> list[VideoResult]:
    """What `dtfsal predict` does: find the videos, take this process's share, load the model, predict each
    video into `output_dir`, log a summary. Returns this process's `VideoResult`s.

    Under several processes every process loads the model on its own device (`accelerate`'s choice unless
    `device` is given) and writes its own videos; they wait for each other before returning.
    """
    check_overlay_options(options.get("overlay_alpha", 0.5), options.get("colormap", "jet"))
    videos = find_videos(inputs)
    if not videos:
        raise ValueError(f"no video files found in {[str(item) for item in inputs]} (extensions: {', '.join(VIDEO_EXTENSIONS)})")
    share, index, count, state = process_share(videos)
    prefix = f"[process {index}]"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised, untrained.*")
        predictor = SaliencyPredictor.from_pretrained(model, device=device or _default_device(state), dtype=dtype,
                                                      batch_size=batch_size, stride=stride, alignment=alignment,
                                                      normalize=normalize, attention=attention)
    if not predictor.trained:
        log(f"{prefix} WARNING: {untrained_message(str(model))}")
    if predictor.demo and not all(is_synthetic_example(video) for video in share):
        log(f"{prefix} WARNING: {demo_message()}")
        predictor.warned_about_demo = True
    log(f"{prefix} {len(share)} of {len(videos)} videos on {predictor.device} ({count} process{'es' if count > 1 else ''})")
    results = predict_videos(predictor, share, output_dir, log=log, process_index=index, **options)
    failed = [result for result in results if result.status == "failed"]
    done = sum(result.status == "done" for result in results)
    log(f"{prefix} finished: {done} written, {len(results) - done - len(failed)} skipped, {len(failed)} failed"
        + ("".join(f"\n  {result.video}: {result.error}" for result in failed)))
    if state is not None:
        state.wait_for_everyone()
    return results


__all__ = [
    "DEMO_CHECKPOINT",
    "SaliencyPredictor",
    "VideoResult",
    "VideoSaliency",
    "find_videos",
    "finished_marker",
    "load_model_and_processor",
    "iter_npz_maps",
    "output_name",
    "output_paths",
    "predict_job",
    "check_overlay_options",
    "demo_message",
    "is_demo_checkpoint",
    "is_synthetic_example",
    "predict_to_folder",
    "predict_videos",
    "process_share",
    "STATISTICS",
    "saliency_statistics",
    "source_identity",
    "to_uint8",
    "untrained_message",
]
