"""Saliency decoders: from the enhanced (and fused) levels to one map per clip.

A decoder is built as `Decoder(feature_dim, num_levels, level_frames, output_size, ...)` and called on the list
of levels, finest first, each `(batch, feature_dim, level_frames, H_i, W_i)` with H_i = 2 H_(i+1); it returns
`(saliency_map, level_maps)`: the map `(batch, height, width)` in [0, 1] at `output_size`, and the per-level
maps `(batch, num_levels, height, width)` where the decoder has them, else `None`.

- `MultiLevelDecoder` (`"multi"`, the paper's): one `SaliencyDecoderHead` per level, a 3 x 3 convolution fusing
  the four maps. 1.74M parameters at the paper's sizes.
- `SingleDecoder` (`"single"`): the levels resized to the finest one, concatenated, projected, one head. 0.42M.
- `UNetDecoder` (`"unet"`): a U-Net's expanding path from the coarsest level up, skip connections from each
  level, a last convolution that also folds time. 2.79M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv3d

__all__ = ["resize_frames", "FrameUpsample", "TimeSpanConv3d", "SaliencyDecoderHead", "MultiLevelDecoder", "SingleDecoder", "UNetDecoder"]


def resize_frames(features: torch.Tensor, size: Sequence[int] | None = None, scale_factor: float | None = None) -> torch.Tensor:
    """Bilinear resize of every frame of (B, C, T, h, w) to (B, C, T, *size) (or h, w times `scale_factor`).

    The same as `F.interpolate(features, size=(T, *size), mode="trilinear")`, whose time weights are 0 and 1
    when T is kept (within float rounding, ~1e-7), at about half its cost: 2-D bilinear on the frames.
    """
    batch, channels, frames = features.shape[:3]
    resize = dict(size=None if size is None else tuple(size), scale_factor=scale_factor, mode="bilinear",
                  align_corners=False)
    if features.is_contiguous():
        # (B, C, T, h, w) -> (B, C * T, h, w), a view: each channel of each frame is resized on its own
        return F.interpolate(features.flatten(1, 2), **resize).unflatten(1, (channels, frames))
    # Channels last ((B, T, h, w, C) in memory): (B, C, T, h, w) -> (B * T, C, h, w), a view, and back
    resized = F.interpolate(_layout_strides(features.transpose(1, 2).flatten(0, 1), torch.channels_last), **resize)
    return _layout_strides(resized.unflatten(0, (batch, frames)).transpose(1, 2), torch.channels_last_3d)


def _layout_strides(view: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`view`, laid out in `memory_format`, with that layout's own strides on its size-1 axes. A view of a single
    frame carries whatever stride its size-1 axes had, and PyTorch then reads it as channels-first (resized through
    two full-size copies, copied again before a convolution)."""
    if (1 not in view.shape or not view.is_contiguous(memory_format=memory_format) or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return view
    batch, channels, *spatial = view.shape
    inner = [channels]  # channels innermost, then the last spatial axis, ..., the first, the batch
    for size in reversed(spatial):
        inner.insert(0, inner[0] * size)
    strides = (inner[0], 1, *inner[1:])
    return view if view.stride() == strides else view.as_strided(view.shape, strides)


class FrameUpsample(nn.Module):
    """`nn.Upsample(scale_factor=(1, s, s), mode="trilinear")` computed per frame (`resize_frames`)."""

    def __init__(self, scale_factor: float = 2.0):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, C, T, s h, s w)."""
        return resize_frames(features, scale_factor=self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


class TimeSpanConv3d(Conv3d):
    """`nn.Conv3d` computed as a 2-D convolution when its kernel spans all the time steps of its input.

    A (kT, kh, kw) kernel over an input of exactly kT frames (the map layers: kT = T = 1; a head's last (2, 3, 3)
    layer on its last two frames) sums over channels and frames alike, so it is `F.conv2d` on the frames stacked
    as channels, (B, C kT, h, w), with the weight flattened the same way: a view of both, the same sums. PyTorch's
    CPU conv3d takes its slow unfolding kernel at these shapes (few channels, one output frame): 60 ms against
    7 ms for a map layer at 224 x 384 on 2 cores. Other inputs, and CPU inference, take `layers.Conv3d`'s path
    (oneDNN's 3-D convolution at inference: as fast on channels-first input and without the copy that stacking
    channels-last frames needs, 11 ms against 37 ms for a head's last layer). Same parameters and state-dict keys
    as `nn.Conv3d`.
    """

    def _spans_time(self, input: torch.Tensor) -> bool:
        return (input.ndim == 5 and input.shape[2] == self.kernel_size[0] and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and self.padding[0] == 0 and self.dilation[0] == 1)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._runs_on_onednn(input, weight) or not self._spans_time(input):
            return super()._conv_forward(input, weight, bias)
        # (B, C, kT, h, w) -> (B, C kT, h, w); (O, C / groups, kT, kh, kw) -> (O, C kT / groups, kh, kw): channel
        # c's frame t is channel c kT + t of both, and a group's channels stay together.
        output = F.conv2d(input.flatten(1, 2), weight.flatten(1, 2), bias, self.stride[1:], self.padding[1:],
                          self.dilation[1:], self.groups)
        return output.unsqueeze(2)


def _check_levels(levels: Sequence[torch.Tensor], num_levels: int, feature_dim: int, name: str) -> None:
    if len(levels) != num_levels:
        raise ValueError(f"{name} expects {num_levels} levels, got {len(levels)}")
    for index, level in enumerate(levels):
        if level.ndim != 5 or level.shape[1] != feature_dim:
            raise ValueError(
                f"{name} expects level {index + 1} of shape (batch, {feature_dim}, time, height, width), got {tuple(level.shape)}"
            )


class SaliencyDecoderHead(nn.Module):
    """One decoder head: three (2, 3, 3) convolutions that halve time (while T > 1) with ReLU, two x2 upsamplings
    between them, upsampling to the frame size, a 3 x 3 convolution and a sigmoid; frames left are averaged.

    Args:
        in_dim: channels of the input features.
        dims: widths of the convolutions.
        num_frames: T of the input features.
        output_size: [height, width] of the map.

    Input (B, in_dim, T, h, w) -> map (B, 1, 1, H, W) in [0, 1].
    """

    def __init__(self, in_dim: int, dims: Sequence[int], num_frames: int, output_size: Sequence[int]):
        super().__init__()
        self.output_size = tuple(output_size)
        layers: list[nn.Module] = []
        frames = num_frames
        for index, dim in enumerate(dims):
            # Kernel 2 with stride 2 halves time; once a single frame is left the kernel is 1.
            temporal = 2 if frames > 1 else 1
            layers += [
                TimeSpanConv3d(in_dim, dim, (temporal, 3, 3), stride=(temporal, 1, 1), padding=(0, 1, 1), bias=False),
                nn.ReLU(inplace=True),
            ]
            if index < len(dims) - 1:
                layers.append(FrameUpsample(2.0))
            in_dim, frames = dim, (frames - temporal) // temporal + 1
        self.frames_left = frames
        self.blocks = nn.Sequential(*layers)
        self.to_map = TimeSpanConv3d(in_dim, 1, (1, 3, 3), padding=(0, 1, 1))
        # Small logits at start (`DTFSalPreTrainedModel._init_weights`): a He-initialised last layer saturates the
        # sigmoid (logits of tens) on most pixels, where no gradient passes.
        self.to_map.logit_init = True

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        decoded = self.blocks(features)
        decoded = _resize_hw(decoded, self.output_size)  # no copy when the blocks end at the map's size
        return torch.sigmoid(self.to_map(decoded)).mean(dim=2, keepdim=True)


class MultiLevelDecoder(nn.Module):
    """The paper's hierarchical multi-decoder: a head per level and sigmoid(Conv3d(L -> 1, (1, 3, 3))) over the
    L level maps.

    Args:
        feature_dim: C*, channels of every level.
        num_levels: L.
        level_frames: T of the levels.
        output_size: [height, width] of the maps.
        dims: widths of each head's three convolutions.
    """

    def __init__(self, feature_dim: int, num_levels: int, level_frames: int, output_size: Sequence[int],
                 dims: Sequence[int] = (96, 48, 24)):
        super().__init__()
        self.feature_dim, self.num_levels = feature_dim, num_levels
        self.heads = nn.ModuleList(SaliencyDecoderHead(feature_dim, dims, level_frames, output_size) for _ in range(num_levels))
        self.fuse_maps = TimeSpanConv3d(num_levels, 1, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`levels`: L tensors (B, C*, T, H_i, W_i) -> (map (B, H, W), level maps (B, L, H, W))."""
        _check_levels(levels, self.num_levels, self.feature_dim, "MultiLevelDecoder")
        level_maps = torch.cat([head(level) for head, level in zip(self.heads, levels)], dim=1)  # (B, L, 1, H, W)
        saliency_map = torch.sigmoid(self.fuse_maps(level_maps))[:, 0, 0]
        return saliency_map, level_maps[:, :, 0]


def _resize_hw(features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize of (B, C, T, h, w) to (B, C, T, *size), time kept (`resize_frames`)."""
    if tuple(features.shape[3:]) == tuple(size):
        return features
    return resize_frames(features, size)


class SingleDecoder(nn.Module):
    """One decoder on the concatenated levels: every level resized to the finest level's grid, concatenated
    (L C* channels), projected point-wise to `fuse_dim` with ReLU, then one `SaliencyDecoderHead`.

    Args:
        feature_dim, num_levels, level_frames, output_size, dims: as `MultiLevelDecoder`.
        fuse_dim: width after the projection (128 puts the decoder at the paper's 0.43M).
    """

    def __init__(self, feature_dim: int, num_levels: int, level_frames: int, output_size: Sequence[int],
                 dims: Sequence[int] = (96, 48, 24), fuse_dim: int = 128):
        super().__init__()
        self.feature_dim, self.num_levels = feature_dim, num_levels
        self.project = nn.Sequential(Conv3d(num_levels * feature_dim, fuse_dim, 1), nn.ReLU(inplace=True))
        self.head = SaliencyDecoderHead(fuse_dim, dims, level_frames, output_size)

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """`levels`: L tensors (B, C*, T, H_i, W_i) -> (map (B, H, W), None)."""
        _check_levels(levels, self.num_levels, self.feature_dim, "SingleDecoder")
        size = levels[0].shape[3:]
        stacked = torch.cat([_resize_hw(level, size) for level in levels], dim=1)  # (B, L C*, T, H_1, W_1)
        return self.head(self.project(stacked))[:, 0, 0], None


class _UNetBlock(nn.Sequential):
    """Two per-frame 3 x 3 convolutions, each with BatchNorm and ReLU."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(
            Conv3d(in_dim, out_dim, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(out_dim),
            nn.ReLU(inplace=True),
            Conv3d(out_dim, out_dim, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(out_dim),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """A U-Net decoder: from the coarsest level, L - 1 steps each upsampling to the next finer level,
    concatenating it (skip connection) and applying a `_UNetBlock`; a (T, 3, 3) convolution turns the T frames
    at the finest grid into one map, resized to `output_size`, sigmoid.

    Args:
        feature_dim, num_levels, level_frames, output_size: as `MultiLevelDecoder`.
        dims: widths of the L - 1 up-steps, coarsest first ((192, 192, 160) puts the decoder at 2.79M, the
            paper's 2.84M).
    """

    def __init__(self, feature_dim: int, num_levels: int, level_frames: int, output_size: Sequence[int],
                 dims: Sequence[int] = (192, 192, 160)):
        super().__init__()
        if len(dims) != num_levels - 1:
            raise ValueError(f"UNetDecoder needs one width per up-step ({num_levels - 1}), got {list(dims)}")
        self.feature_dim, self.num_levels = feature_dim, num_levels
        self.output_size = tuple(output_size)
        in_dims = [feature_dim] + list(dims[:-1])
        self.up_blocks = nn.ModuleList(_UNetBlock(in_dim + feature_dim, dim) for in_dim, dim in zip(in_dims, dims))
        last = dims[-1] if dims else feature_dim
        self.to_map = TimeSpanConv3d(last, 1, (level_frames, 3, 3), padding=(0, 1, 1))
        self.to_map.logit_init = True  # small logits at start, as `SaliencyDecoderHead`'s

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """`levels`: L tensors (B, C*, T, H_i, W_i) -> (map (B, H, W), None)."""
        _check_levels(levels, self.num_levels, self.feature_dim, "UNetDecoder")
        features = levels[-1]
        for block, skip in zip(self.up_blocks, reversed(levels[:-1])):
            features = block(torch.cat([_resize_hw(features, skip.shape[3:]), skip], dim=1))
        logits = self.to_map(features)  # (B, 1, 1, H_1, W_1)
        logits = F.interpolate(logits[:, :, 0], size=self.output_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[:, 0], None
