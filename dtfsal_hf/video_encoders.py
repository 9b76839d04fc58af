"""Visual encoders behind one contract: torchvision's video networks returning four stage features.

Every encoder here is a `VideoStageEncoder`: `forward(videos)` takes `(batch, 3, frames, height, width)` and
returns four tensors, finest first, stage i of shape `(batch, out_channels[i], frames / temporal_strides[i],
height / spatial_strides[i], width / spatial_strides[i])`. The feature enhancement and the decoders are built
from those three tuples alone, so any network that states them can stand in for MViTv2.

| name | network | out_channels | temporal_strides | spatial_strides |
|---|---|---|---|---|
| `mvit_v2_s` | MViTv2-S | 96, 192, 384, 768 | 2, 2, 2, 2 | 4, 8, 16, 32 |
| `s3d` | S3D | 192, 480, 832, 1024 | 2, 2, 4, 8 | 4, 8, 16, 32 |
| `swin3d_t` / `_s` / `_b` | Video Swin | C, 2C, 4C, 8C (C = 96, 96, 128) | 2, 2, 2, 2 | 4, 8, 16, 32 |
| `r2plus1d_18` | R(2+1)D-18 | 64, 128, 256, 512 | 1, 2, 4, 8 | 2, 4, 8, 16 |

Each keeps torchvision's parameter names, so the published Kinetics-400 checkpoints load key for key
(`load_pretrained`, URL or local file, read as weights only; the classifier is dropped). Where a checkpoint's
tensors depend on the clip or window size they are resized: MViTv2's relative-position tables
(`encoders.load_kinetics_mvit_weights`) and Video Swin's relative-position bias tables when the attention window
differs from the checkpoint's. S3D's and R(2+1)D's convolution kernels do not depend on the clip size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.video import (
    MViT_V2_S_Weights,
    R2Plus1D_18_Weights,
    S3D_Weights,
    Swin3D_B_Weights,
    Swin3D_S_Weights,
    Swin3D_T_Weights,
    s3d,
)
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D
from torchvision.models.video.swin_transformer import SwinTransformer3d

from .encoders import MViTStageEncoder, _load_checked, load_kinetics_mvit_weights, load_state_dict_source

__all__ = [
    "VideoStageEncoder",
    "MViTVisualEncoder",
    "S3DEncoder",
    "Swin3DEncoder",
    "R2Plus1DEncoder",
    "SWIN3D_SIZES",
    "KINETICS400_URLS",
    "resize_swin_bias_tables",
]

Source = str | os.PathLike | Mapping[str, torch.Tensor]

# torchvision's published Kinetics-400 checkpoints (file names carry a sha256 prefix, checked on download).
KINETICS400_URLS = {
    "mvit_v2_s": MViT_V2_S_Weights.KINETICS400_V1.url,
    "s3d": S3D_Weights.KINETICS400_V1.url,
    "swin3d_t": Swin3D_T_Weights.KINETICS400_V1.url,
    "swin3d_s": Swin3D_S_Weights.KINETICS400_V1.url,
    "swin3d_b": Swin3D_B_Weights.KINETICS400_V1.url,
    "r2plus1d_18": R2Plus1D_18_Weights.KINETICS400_V1.url,
}

# torchvision's swin3d_t / swin3d_s / swin3d_b, as its builders write them.
SWIN3D_SIZES = {
    "swin3d_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin3d_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin3d_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


class VideoStageEncoder(nn.Module):
    """Base of the visual encoders: the contract the rest of the model is built from.

    Subclasses set `out_channels`, `temporal_strides` and `spatial_strides` (four entries each, finest stage
    first) and implement `forward(videos)`: `(batch, 3, frames, height, width)` -> four
    `(batch, out_channels[i], frames / temporal_strides[i], height / spatial_strides[i], width / spatial_strides[i])`.
    `load_pretrained(source)` loads published weights where the encoder has them (`pretrained_url`).
    """

    out_channels: tuple[int, ...] = ()
    temporal_strides: tuple[int, ...] = ()
    spatial_strides: tuple[int, ...] = ()
    pretrained_url: str | None = None

    def stage_shapes(self, num_frames: int, image_size: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """(channels, frames, height, width) of each stage for clips of `num_frames` x `image_size`."""
        height, width = image_size
        return [
            (channels, num_frames // t, height // s, width // s)
            for channels, t, s in zip(self.out_channels, self.temporal_strides, self.spatial_strides)
        ]

    def check_clip_size(self, num_frames: int, image_size: Sequence[int]) -> None:
        """Raise `ValueError` unless every stage's strides divide the clip: the contract's shapes are exact."""
        name = type(self).__name__
        temporal, spatial = max(self.temporal_strides), max(self.spatial_strides)
        if num_frames % temporal:
            raise ValueError(f"{name} needs a number of frames divisible by {temporal}, got {num_frames}")
        if len(image_size) != 2 or any(size % spatial for size in image_size):
            raise ValueError(f"{name} needs a frame height and width divisible by {spatial}, got {list(image_size)}")

    def load_pretrained(self, source: Source | None = None) -> None:
        """Load the published weights (default: `pretrained_url`) from a URL, a local file or a state dict."""
        raise NotImplementedError(f"{type(self).__name__} has no published weights to load")


def _to_channels_first(features: torch.Tensor) -> torch.Tensor:
    # (B, T, H, W, C) -> (B, C, T, H, W)
    return features.permute(0, 4, 1, 2, 3).contiguous()


class MViTVisualEncoder(MViTStageEncoder, VideoStageEncoder):
    """MViTv2 (`encoders.MViTStageEncoder`, the paper's encoder) under the visual-encoder contract. Parameter
    names and the fast attention kernels (`encoders.set_mvit_attention`) are those of `MViTStageEncoder`.

    Args:
        num_frames, image_size: the clip (frames, [height, width]).
        depths, dims, heads: blocks, channels and attention heads per stage (defaults: `mvit_v2_s`).
        kv_stride: key/value pooling stride of the first block (T, H, W).
        stochastic_depth: drop-path rate of the last block.
    """

    temporal_strides = (2, 2, 2, 2)
    spatial_strides = (4, 8, 16, 32)
    pretrained_url = KINETICS400_URLS["mvit_v2_s"]

    def __init__(
        self,
        num_frames: int,
        image_size: Sequence[int],
        depths: Sequence[int] = (1, 2, 11, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        heads: Sequence[int] = (1, 2, 4, 8),
        kv_stride: Sequence[int] = (1, 8, 8),
        stochastic_depth: float = 0.2,
    ):
        self.out_channels = tuple(int(d) for d in dims)
        VideoStageEncoder.check_clip_size(self, num_frames, image_size)
        super().__init__(num_frames, image_size, depths, dims, heads, kv_stride, stochastic_depth)

    def load_pretrained(self, source: Source | None = None) -> None:
        load_kinetics_mvit_weights(self, self.pretrained_url if source is None else source)


class S3DEncoder(VideoStageEncoder):
    """torchvision's S3D (separable 3D Inception), features taken after its second convolution, Mixed_3c,
    Mixed_4f and Mixed_5c. The network has a fixed size (7.91M parameters without the classifier).

    Args:
        num_frames: frames per clip, a multiple of 8.
        image_size: [height, width], multiples of 32.
    """

    out_channels = (192, 480, 832, 1024)
    temporal_strides = (2, 2, 4, 8)
    spatial_strides = (4, 8, 16, 32)
    pretrained_url = KINETICS400_URLS["s3d"]
    # Indices in torchvision's `S3D.features` whose outputs are the four stages.
    stage_ends = (3, 6, 12, 15)

    def __init__(self, num_frames: int, image_size: Sequence[int]):
        super().__init__()
        self.check_clip_size(num_frames, image_size)
        self.features = s3d().features

    def forward(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """`videos` (B, 3, T, H, W) -> four (B, C_i, T / t_i, H / s_i, W / s_i)."""
        stages = []
        features = videos
        for index, layer in enumerate(self.features):
            features = layer(features)
            if index in self.stage_ends:
                stages.append(features)
        return stages

    def load_pretrained(self, source: Source | None = None) -> None:
        """torchvision's Kinetics-400 S3D (`s3d-d76dad2f.pth`); its classifier is dropped."""
        state = load_state_dict_source(self.pretrained_url if source is None else source)
        state = {key: value for key, value in state.items() if not key.startswith("classifier.")}
        _load_checked(self, state, "S3D")


class Swin3DEncoder(VideoStageEncoder):
    """torchvision's Video Swin Transformer (`SwinTransformer3d`), returning the output of each of its four stages
    (before the classifier's final LayerNorm). Attention is torchvision's shifted-window attention.

    Args:
        num_frames: frames per clip, a multiple of `patch_size[0]`.
        image_size: [height, width], multiples of 8 * `patch_size[1]`.
        variant: published size whose weights `load_pretrained` fetches: `"swin3d_t"`, `"swin3d_s"` or `"swin3d_b"`;
            `embed_dim`, `depths`, `num_heads` default to its sizes (`SWIN3D_SIZES`).
        window_size: attention window (T, H, W); a checkpoint trained with another window has its
            relative-position bias tables resized on loading (`resize_swin_bias_tables`).
        patch_size, mlp_ratio, stochastic_depth: as torchvision's `SwinTransformer3d`.
    """

    def __init__(
        self,
        num_frames: int,
        image_size: Sequence[int],
        variant: str = "swin3d_t",
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        window_size: Sequence[int] = (8, 7, 7),
        patch_size: Sequence[int] = (2, 4, 4),
        mlp_ratio: float = 4.0,
        stochastic_depth: float = 0.1,
    ):
        super().__init__()
        if variant not in SWIN3D_SIZES:
            raise ValueError(f"variant must be one of {sorted(SWIN3D_SIZES)}, got {variant!r}")
        sizes = SWIN3D_SIZES[variant]
        embed_dim = sizes["embed_dim"] if embed_dim is None else embed_dim
        depths = list(sizes["depths"] if depths is None else depths)
        num_heads = list(sizes["num_heads"] if num_heads is None else num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads need one entry per stage (4), got {depths} and {num_heads}")
        self.variant = variant
        self.window_size = tuple(int(w) for w in window_size)
        self.pretrained_url = KINETICS400_URLS[variant]
        self.out_channels = tuple(embed_dim * 2**i for i in range(4))
        self.temporal_strides = (patch_size[0],) * 4
        self.spatial_strides = tuple(patch_size[1] * 2**i for i in range(4))
        self.check_clip_size(num_frames, image_size)
        swin = SwinTransformer3d(
            patch_size=list(patch_size), embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            window_size=list(window_size), mlp_ratio=mlp_ratio, stochastic_depth_prob=stochastic_depth,
        )
        self.patch_embed = swin.patch_embed
        self.features = swin.features  # stage, merge, stage, merge, stage, merge, stage
        self.gradient_checkpointing = False

    def forward(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """`videos` (B, 3, T, H, W) -> four (B, C * 2^i, T / 2, H / 2^(i+2), W / 2^(i+2))."""
        tokens = self.patch_embed(videos)  # (B, T', H', W', C)
        stages = []
        for index, layer in enumerate(self.features):
            if self.gradient_checkpointing and self.training:
                tokens = checkpoint(layer, tokens, use_reentrant=False)
            else:
                tokens = layer(tokens)
            if index % 2 == 0:  # even entries are stages, odd ones patch merging
                stages.append(_to_channels_first(tokens))
        return stages

    def load_pretrained(self, source: Source | None = None, checkpoint_window: Sequence[int] = (8, 7, 7)) -> None:
        """torchvision's Kinetics-400 Video Swin weights of `variant` (trained with `checkpoint_window`); the
        classifier (`norm`, `head`) is dropped and the bias tables are resized to this encoder's window."""
        state = load_state_dict_source(self.pretrained_url if source is None else source)
        state = {key: value for key, value in state.items() if not key.startswith(("norm.", "head."))}
        own = self.state_dict()
        state = resize_swin_bias_tables(state, checkpoint_window, self.window_size)
        for key in own:
            # The index is a function of the window, not learned: always this encoder's own.
            if key.endswith("relative_position_index") and key in state:
                state[key] = own[key]
        _load_checked(self, state, f"Video Swin ({self.variant})")


def resize_swin_bias_tables(
    state: Mapping[str, torch.Tensor], source_window: Sequence[int], target_window: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Resize Video Swin's relative-position bias tables in `state` from `source_window` to `target_window` (T, H, W).

    A table has shape ((2 Wt - 1) (2 Wh - 1) (2 Ww - 1), heads), a 3-D grid of window offsets flattened; it is
    resized trilinearly, corners to corners (`align_corners=True`), so the zero offset and the extreme offsets
    keep their biases.
    """
    source_grid = tuple(2 * w - 1 for w in source_window)
    target_grid = tuple(2 * w - 1 for w in target_window)
    resized = dict(state)
    if source_grid == target_grid:
        return resized
    for key, table in state.items():
        if not key.endswith("relative_position_bias_table"):
            continue
        if table.shape[0] != math.prod(source_grid):
            raise ValueError(f"{key} has {table.shape[0]} rows, not the {math.prod(source_grid)} of a {list(source_window)} window")
        heads = table.shape[1]
        # (L, heads) -> (1, heads, 2Wt-1, 2Wh-1, 2Ww-1), resized, and back
        grid = table.t().reshape(1, heads, *source_grid).float()
        grid = F.interpolate(grid, size=target_grid, mode="trilinear", align_corners=True)
        resized[key] = grid.reshape(heads, -1).t().contiguous().to(table.dtype)
    return resized


class R2Plus1DEncoder(VideoStageEncoder):
    """torchvision's R(2+1)D video ResNet (`r2plus1d_18` at the default sizes), returning its four residual
    stages. Built from torchvision's own blocks with the same parameter names, the widths configurable.

    Args:
        num_frames: frames per clip, a multiple of 8.
        image_size: [height, width], multiples of 16.
        widths: channels of the four stages (the stem's output is the first).
        depths: residual blocks per stage.
        stem_width: channels between the stem's spatial and temporal convolutions.
    """

    temporal_strides = (1, 2, 4, 8)
    spatial_strides = (2, 4, 8, 16)
    pretrained_url = KINETICS400_URLS["r2plus1d_18"]

    def __init__(
        self,
        num_frames: int,
        image_size: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        stem_width: int = 45,
    ):
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"widths and depths need one entry per stage (4), got {list(widths)} and {list(depths)}")
        self.out_channels = tuple(int(w) for w in widths)
        self.check_clip_size(num_frames, image_size)
        # torchvision's R2Plus1dStem, its widths configurable: (1, 7, 7) spatial then (3, 1, 1) temporal.
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_width, widths[0], (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        in_width = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            self.add_module(f"layer{stage + 1}", _residual_stage(in_width, width, depth, stride=1 if stage == 0 else 2))
            in_width = width

    def forward(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """`videos` (B, 3, T, H, W) -> four (B, C_i, T / 2^i, H / 2^(i+1), W / 2^(i+1))."""
        features = self.stem(videos)
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            features = layer(features)
            stages.append(features)
        return stages

    def load_pretrained(self, source: Source | None = None) -> None:
        """torchvision's Kinetics-400 R(2+1)D-18 (`r2plus1d_18-91a641e6.pth`); its classifier `fc` is dropped."""
        state = load_state_dict_source(self.pretrained_url if source is None else source)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        _load_checked(self, state, "R(2+1)D")


def _residual_stage(in_width: int, width: int, depth: int, stride: int) -> nn.Sequential:
    """`depth` torchvision `BasicBlock`s of (2+1)D convolutions; the first changes width and stride, as
    torchvision's `VideoResNet._make_layer` builds them."""
    downsample = None
    if stride != 1 or in_width != width:
        downsample = nn.Sequential(
            nn.Conv3d(in_width, width, 1, stride=Conv2Plus1D.get_downsample_stride(stride), bias=False),
            nn.BatchNorm3d(width),
        )
    blocks = [BasicBlock(in_width, width, Conv2Plus1D, stride, downsample)]
    blocks += [BasicBlock(width, width, Conv2Plus1D) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)
