"""`SaliencyPredictor`: a `DTFSalModel` run over whole videos, maps at the video's resolution.

Frames are decoded one at a time, grouped into clips (`dtfsal_hf.clips`), paired with the audio window that ends
with each clip, and the maps are brought to the video's resolution. `iter_maps` streams (memory does not grow
with the video's length); `predict_video` collects everything into a `VideoSaliency`. The model runs as its
`Runtime` says (`runtime.py`).
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..media import Frame
from ..modeling_dtfsal import DTFSalModel
from ..processing_dtfsal import DTFSalProcessor
from .loading import demo_message, is_demo_checkpoint, is_synthetic_example, load_model_and_processor, untrained_message
from ..saliency_loop import ProgressCallback, SaliencyLoop, frame_source, prefetch, source_info
from .outputs import to_uint8
from .runtime import Runtime

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


class SaliencyPredictor(SaliencyLoop):
    """Runs a `DTFSalModel` over whole videos, frame folders or frames in memory (`SaliencyLoop.iter_maps`), as its
    `Runtime` says.

    Args:
        model: a `DTFSalModel` (its configuration gives the clip length and input size); it is readied in place by
            the runtime (`Runtime.prepare`: attention kernel, device, dtype) and put in eval mode.
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
            matrix products by blocks of queries for bf16 / fp16 on a CPU without AMX,
            `scaled_dot_product_attention` otherwise), "sdpa", "blocked" or "eager" (torchvision's explicit
            form); the model is switched in place and its configuration records the kernel.
        runtime: a `Runtime` (e.g. one of `runtime.PRESETS`: autocast, float32 islands, channels-last, compile); it
            replaces `dtype` and `attention`, which otherwise make the runtime (weights cast to `dtype`).

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
        runtime: Runtime | None = None,
    ):
        processor = processor if processor is not None else DTFSalProcessor.from_model_config(model.config)
        super().__init__(model, processor, batch_size=batch_size, stride=stride, alignment=alignment,
                         normalize=normalize)
        self.device = torch.device(device)
        # The default kernel gives the maps of torchvision's explicit attention (fp32: within 3e-5), faster and with
        # less memory.
        self.runtime = runtime if runtime is not None else Runtime(attention=attention, dtype=dtype)
        self.dtype = self.runtime.dtype
        self.runner = self.runtime.prepare(model, self.device)
        slow = self.runtime.slow_reason(self.device)
        if slow:
            warnings.warn(slow[0].upper() + slow[1:], UserWarning, stacklevel=2)
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
        runtime: Runtime | None = None,
    ) -> "SaliencyPredictor":
        """Load a model folder or Hub id, `demo` (the bundled checkpoint), `random` (the paper's model, untrained)
        or `random-tiny` (the tiny test model, untrained)."""
        model, processor, trained = load_model_and_processor(model_id_or_path)
        return cls(model, processor, device=device, dtype=dtype, batch_size=batch_size, stride=stride,
                   alignment=alignment, normalize=normalize, trained=trained, model_id=str(model_id_or_path),
                   attention=attention, runtime=runtime)

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

    def settings(self, stride: int | None = None, blur_sigma: float = 0.0, max_frames: int | None = None,
                 fps: float | None = None) -> dict:
        """What determines the maps: recorded in `done.json`, so a rerun with other settings redoes the video."""
        # Recorded only where they are used, so markers written without them stay valid.
        precision = {} if self.runtime.precision == "cast" else {"precision": self.runtime.precision}
        precision |= {} if fps is None else {"fps": float(fps)}
        return {
            "model": self.model_id,
            "trained": self.trained,
            "dtype": str(self.dtype).removeprefix("torch."),
            **precision,
            "stride": self.stride if stride is None else stride,
            "alignment": self.alignment,
            "normalize": self.normalize,
            "blur_sigma": float(blur_sigma),
            "max_frames": max_frames,
        }

    def saliency_maps(self, inputs: dict) -> torch.Tensor:
        """The model on processor outputs, as the runtime runs it: `(batch, height, width)` float32 maps."""
        return self.runtime.saliency_maps(self.runner, inputs, self.device)

    def iter_maps(self, frames, audio=None, stride: int | None = None, blur_sigma: float = 0.0,
                  max_frames: int | None = None, progress: ProgressCallback | bool | None = None,
                  fps: float | None = None, sampling_rate: int | None = None,
                  video_size: bool = True) -> Iterator[tuple[Frame, np.ndarray]]:
        """`SaliencyLoop.iter_maps`, with the demo checkpoint's warning for a video or folder that is not its
        synthetic example."""
        if isinstance(frames, (str, os.PathLike)):
            self.warn_if_demo(frames)
        return super().iter_maps(frames, audio, stride=stride, blur_sigma=blur_sigma, max_frames=max_frames,
                                 progress=progress, fps=fps, sampling_rate=sampling_rate, video_size=video_size)

    def iter_frames_and_maps(
        self,
        path: str | os.PathLike,
        stride: int | None = None,
        blur_sigma: float = 0.0,
        max_frames: int | None = None,
        progress: ProgressCallback | bool | None = None,
        fps: float | None = None,
    ) -> Iterator[tuple[Frame, np.ndarray]]:
        """As `iter_maps` on a video file or a folder of frame images, the `Frame` holding the full-size picture with
        its timestamps.

        The pictures come from a second decoding of the file, in step with the maps: only a few full-size frames
        are held at once, whatever the stride (the frames between two targets wait for the second target's map)
        or the batch size.
        """
        maps = self.iter_maps(path, stride=stride, blur_sigma=blur_sigma, max_frames=max_frames, progress=progress,
                              fps=fps)
        pictures = prefetch(itertools.islice(frame_source(path, fps).frames(), max_frames), 2)
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
        info = source_info(path)
        maps, times = [], []
        for frame, saliency_map in self.iter_maps(path, stride=stride, blur_sigma=blur_sigma, max_frames=max_frames,
                                                  progress=progress):
            maps.append(to_uint8(saliency_map) if map_dtype == "uint8" else saliency_map.astype(np.float32))
            times.append(frame.time)
        return VideoSaliency(
            maps=np.stack(maps), times=np.asarray(times, dtype=np.float64), fps=info.fps,
            size=(info.height, info.width), has_audio=info.has_audio, path=str(path),
        )


__all__ = ["SaliencyPredictor", "VideoSaliency"]
