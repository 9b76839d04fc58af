"""Video processor for DTFSal: clips of RGB frames -> `pixel_values_videos`, and maps back to video size.

Each clip holds exactly `num_frames` consecutive frames (which frames make a clip is `dtfsal_hf.clips`'s
job). Frames are resized to `size` (bilinear, antialiased), scaled to [0, 1] and normalised with the
ImageNet mean and standard deviation.
"""

import math

import numpy as np
import torch

from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor


class DTFSalVideoProcessor(BaseVideoProcessor):
    r"""
    Turns clips of `num_frames` RGB frames into `pixel_values_videos` of shape
    `(batch, num_frames, 3, size["height"], size["width"])` float32.

    Accepted clips: numpy arrays or tensors `(frames, height, width, 3)` or `(frames, 3, height, width)`, uint8 in
    [0, 255] (or float with `do_rescale=False`), one clip or a list / 5-D batch of clips. Defaults: 32 frames at
    224x384, as the paper.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 224, "width": 384}
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_center_crop = False
    do_sample_frames = False
    num_frames = 32
    model_input_names = ["pixel_values_videos"]

    def __init__(self, **kwargs: Unpack[VideosKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "DTFSalVideoProcessor":
        """Build the processor for a `DTFSalConfig` (uses `num_frames` and `image_size` = [height, width])."""
        height, width = config.image_size
        return cls(num_frames=config.num_frames, size={"height": int(height), "width": int(width)}, **kwargs)

    def preprocess(self, videos, **kwargs: Unpack[VideosKwargs]) -> BatchFeature:
        """
        Args:
            videos: one clip or a batch of clips (see the class docstring).
            return_tensors: `"pt"` (default), `"np"`, or None.

        Returns:
            `BatchFeature` with `pixel_values_videos` (batch, num_frames, 3, height, width) float32.
        """
        num_frames = kwargs.get("num_frames") or self.num_frames
        for position, clip in enumerate(self._as_clips(videos)):
            self._check_clip(clip, position, num_frames)
        kwargs.setdefault("return_tensors", "pt")
        return super().preprocess(videos, **kwargs)

    @staticmethod
    def _as_clips(videos) -> list:
        if isinstance(videos, (str, bytes)) or hasattr(videos, "__fspath__"):
            raise ValueError(
                "DTFSalVideoProcessor takes decoded frames, not a path: decode the file with "
                "dtfsal_hf.media.iter_frames and build clips with dtfsal_hf.clips.iter_clips"
            )
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 4:
                return [videos]
            if videos.ndim == 5:
                return list(videos)
            raise ValueError(
                f"expected a clip (frames, height, width, 3) or a batch of clips (batch, frames, height, width, 3), "
                f"got shape {tuple(videos.shape)}"
            )
        if isinstance(videos, (list, tuple)) and videos:
            return list(videos)
        raise ValueError(f"expected a clip or a non-empty list of clips, got {type(videos).__name__}")

    @staticmethod
    def _check_clip(clip, position: int, num_frames: int) -> None:
        shape = tuple(getattr(clip, "shape", ()))
        if len(shape) != 4 or not (shape[-1] == 3 or shape[1] == 3):
            raise ValueError(
                f"clip {position} must be (frames, height, width, 3) or (frames, 3, height, width) RGB, got "
                f"{shape if shape else type(clip).__name__}"
            )
        if shape[0] != num_frames:
            raise ValueError(f"clip {position} must hold {num_frames} frames, got {shape[0]}")

    def _preprocess(self, videos, return_tensors=None, **kwargs) -> BatchFeature:
        # Stacking here gives one (batch, frames, 3, height, width) tensor for every return type.
        output = super()._preprocess(videos, return_tensors=None, **kwargs)
        stacked = torch.stack(output["pixel_values_videos"]).to(torch.float32)
        return BatchFeature(data={"pixel_values_videos": stacked}, tensor_type=return_tensors)

    def post_process_saliency(
        self, saliency_maps, target_sizes=None, blur_sigma: float | None = None, normalize: str | None = "max"
    ) -> list[torch.Tensor]:
        """Saliency maps back at the video's resolution, scaled as `dtfsal predict` writes them.

        Args:
            saliency_maps: `(batch, height, width)` (tensor or array), e.g. `DTFSalOutput.saliency_map`.
            target_sizes: one `(height, width)` for all maps or one per map; None keeps the model's resolution.
            blur_sigma: standard deviation in pixels of a Gaussian blur applied at the model's resolution before
                resizing (the audio-visual benchmarks use 2); None for no blur.
            normalize: `"max"` (default, as `dtfsal predict`): each map is clipped to [0, 1] and divided by its
                maximum, so its peak is 1 (a model trained with the KL loss gives small values, e.g. peaks near
                0.05, that look black when plotted; saliency metrics ignore the scale). None: clipped to [0, 1] only.

        Returns:
            A list of `(height, width)` float32 tensors in [0, 1], one per map.
        """
        if normalize not in ("max", None):
            raise ValueError(f"normalize must be 'max' or None, got {normalize!r}")
        maps = torch.as_tensor(np.asarray(saliency_maps) if not isinstance(saliency_maps, torch.Tensor) else saliency_maps)
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3:
            raise ValueError(f"saliency_maps must be (batch, height, width), got shape {tuple(maps.shape)}")
        maps = maps.detach().to(device="cpu", dtype=torch.float32)
        if blur_sigma is not None and blur_sigma > 0:
            maps = gaussian_blur(maps, blur_sigma)
        sizes = self._target_sizes(target_sizes, maps)
        return [_scaled(_resize_map(saliency_map, size), normalize) for saliency_map, size in zip(maps, sizes)]

    @staticmethod
    def _target_sizes(target_sizes, maps: torch.Tensor) -> list[tuple[int, int]]:
        if target_sizes is None:
            return [tuple(maps.shape[-2:])] * maps.shape[0]
        sizes = torch.as_tensor(target_sizes).reshape(-1, 2).tolist()
        if len(sizes) == 1:
            sizes = sizes * maps.shape[0]
        if len(sizes) != maps.shape[0]:
            raise ValueError(f"expected {maps.shape[0]} target sizes (one per map), got {len(sizes)}")
        return [(int(height), int(width)) for height, width in sizes]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (batch, height, width) maps in their own floating dtype; kernel radius ceil(3 sigma),
    edges replicated. The one blur: `post_process_saliency`'s and the STAViS protocol's (`evaluation`)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype if maps.is_floating_point() else torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]  # (B, H, W) -> (B, 1, H, W)
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def _scaled(saliency_map: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """Clip to [0, 1]; with `normalize="max"` divide by the maximum (an all-zero map stays zero)."""
    saliency_map = saliency_map.clamp(0.0, 1.0)
    peak = float(saliency_map.max())
    return saliency_map / peak if normalize == "max" and peak > 0 else saliency_map


def _resize_map(saliency_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(saliency_map.shape) == tuple(size):
        return saliency_map
    shrinking = size[0] < saliency_map.shape[0] or size[1] < saliency_map.shape[1]
    resized = torch.nn.functional.interpolate(
        saliency_map[None, None], size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized[0, 0]


__all__ = ["DTFSalVideoProcessor"]
