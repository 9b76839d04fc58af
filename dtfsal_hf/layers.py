"""DTFSal's fusion layers: LTEB, DLTFB and AMFB.

Each layer takes plain arguments (channels, token counts, kernel sizes), works on features of shape
`(batch, channels, time, height, width)` with any T >= 1, H and W, and imports nothing from
transformers, so it can be dropped into another architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

__all__ = [
    "LearnableTokens", "LTEB", "DLTFB", "AMFB", "ConvStream", "DeformableStream", "Float32DeformConv2d", "axial_shift",
]


def _check_5d(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects features of shape (batch, {channels}, time, height, width), got {tuple(x.shape)}"
        )


def _spatial_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv3d:
    """A per-frame `kernel_size` x `kernel_size` convolution, as a Conv3d with temporal extent 1."""
    padding = kernel_size // 2
    return nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, padding, padding), bias=bias)


class LearnableTokens(nn.Module):
    """The adaptive token path shared by LTEB and DLTFB: a gated global embedding weights N learnable
    tokens, whose mixture is resized to the feature map and projected to its channels.

    Args:
        channels: C, channels of the features.
        num_tokens: N, learnable tokens.
        token_dim: C_p, channels of each token.
        token_size: S, each token is an S x S map.
    """

    def __init__(self, channels: int, num_tokens: int = 5, token_dim: int = 192, token_size: int = 7):
        super().__init__()
        self.channels = channels
        self.gate = _spatial_conv(channels, channels, 3)
        self.token_weights = nn.Linear(channels, num_tokens)
        self.tokens = nn.Parameter(torch.empty(num_tokens, token_dim, token_size, token_size))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.token_proj = _spatial_conv(token_dim, channels, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` (B, C, T, H, W) -> token map P'' (B, C, T, H, W)."""
        batch, _, time, height, width = features.shape
        gate = torch.sigmoid(self.gate(features))
        # Spatial mean of the gated features: (B, C, T, H, W) -> (B, T, C)
        embedding = gate.mean(dim=(3, 4)).transpose(1, 2)
        weights = self.token_weights(embedding).softmax(dim=-1)  # (B, T, N)
        mixture = torch.einsum("btn,nchw->btchw", weights, self.tokens)  # (B, T, C_p, S, S)
        mixture = F.interpolate(mixture.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False)
        # (B*T, C_p, H, W) -> (B, C_p, T, H, W)
        mixture = mixture.unflatten(0, (batch, time)).transpose(1, 2)
        return self.token_proj(mixture)


class LTEB(nn.Module):
    """Learnable Token Enhancement Block: re-weights features with a mixture of learnable tokens
    chosen by a gated global embedding, out = x * P'' + x.

    Args:
        channels: C, channels of the features (kept).
        num_tokens: N, learnable tokens.
        token_dim: C_p, channels of each token (default: C).
        token_size: S, spatial size of each token.

    Shapes: `(batch, channels, time, height, width)` in and out.
    """

    def __init__(self, channels: int, num_tokens: int = 5, token_dim: int | None = None, token_size: int = 7):
        super().__init__()
        self.channels = channels
        self.token_path = LearnableTokens(channels, num_tokens, token_dim or channels, token_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_5d(features, self.channels, "LTEB")
        return features * self.token_path(features) + features


def axial_shift(features: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """Split channels into `groups` groups and roll group j by (j - groups // 2) along `dim`."""
    chunks = torch.chunk(features, groups, dim=1)
    shifted = [torch.roll(chunk, shifts=j - groups // 2, dims=dim) for j, chunk in enumerate(chunks)]
    return torch.cat(shifted, dim=1)


class DLTFB(nn.Module):
    """Dynamic Learnable Token Fusion Block: an axially shifted token-mixing branch (shift along W,
    point-wise conv, GELU, depth-wise conv, shift along H, LayerNorm, point-wise conv) fused with a
    learnable-token path, out = x * P'' + (x + mix(x)).

    Args:
        channels: C, channels of the features (kept).
        num_tokens, token_dim, token_size: the learnable-token path, as in LTEB.
        shift_groups: channel groups of the axial shifts.
        hidden_dim: width of the token-mixing branch (default: C).
        kernel_size: kernel of its depth-wise convolution (cubic).

    Shapes: `(batch, channels, time, height, width)` in and out.
    """

    def __init__(
        self,
        channels: int,
        num_tokens: int = 5,
        token_dim: int | None = None,
        token_size: int = 7,
        shift_groups: int = 5,
        hidden_dim: int | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        hidden_dim = hidden_dim or channels
        self.channels = channels
        self.shift_groups = shift_groups
        self.token_path = LearnableTokens(channels, num_tokens, token_dim or channels, token_size)
        self.expand = nn.Conv3d(channels, hidden_dim, 1)
        self.act = nn.GELU()
        self.mix = nn.Conv3d(hidden_dim, hidden_dim, kernel_size, padding=kernel_size // 2, groups=hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.reduce = nn.Conv3d(hidden_dim, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_5d(features, self.channels, "DLTFB")
        mixed = self.mix(self.act(self.expand(axial_shift(features, self.shift_groups, dim=4))))
        mixed = axial_shift(mixed, self.shift_groups, dim=3)
        # LayerNorm over channels: (B, C, T, H, W) -> (B, T, H, W, C) and back
        mixed = self.norm(mixed.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        shifted = features + self.reduce(mixed)
        return features * self.token_path(features) + shifted


class ConvStream(nn.Module):
    """Reduce channels, a per-frame k x k convolution with BatchNorm and ReLU, expand back."""

    def __init__(self, in_channels: int, stream_dim: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, stream_dim, 1)
        self.conv = _spatial_conv(stream_dim, stream_dim, kernel_size, bias=False)
        self.norm = nn.BatchNorm3d(stream_dim)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv3d(stream_dim, out_channels, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.expand(self.act(self.norm(self.conv(self.reduce(fused)))))


class Float32DeformConv2d(DeformConv2d):
    """torchvision's `DeformConv2d` computed in float32 whatever the dtype of its weights and inputs (torchvision
    has no bfloat16 CPU kernel for it, and no CPU autocast rule); the output has the input's dtype.

    Same arguments, parameters and state-dict keys as `DeformConv2d`.
    """

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input` (N, C_in, H, W), `offset` (N, 2 * groups * kh * kw, H_out, W_out) -> (N, C_out, H_out, W_out)."""
        output = deform_conv2d(
            input.float(),
            offset.float(),
            self.weight.float(),
            None if self.bias is None else self.bias.float(),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=None if mask is None else mask.float(),
        )
        return output.to(input.dtype)


class DeformableStream(nn.Module):
    """Reduce channels, a per-frame 3 x 3 deformable convolution whose offsets are predicted from the
    audio-visual features (so the sound steers where the kernel samples), BatchNorm, ReLU, expand back.

    The deformable convolution runs in float32 whatever the model's dtype (`Float32DeformConv2d`), so the
    stream works in a model moved to bfloat16 / float16 and under `torch.autocast`.
    """

    def __init__(self, in_channels: int, stream_dim: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.reduce = nn.Conv3d(in_channels, stream_dim, 1)
        self.offsets = nn.Conv2d(stream_dim, 2 * kernel_size * kernel_size, kernel_size, padding=padding)
        self.conv = Float32DeformConv2d(stream_dim, stream_dim, kernel_size, padding=padding, bias=False)
        self.norm = nn.BatchNorm3d(stream_dim)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv3d(stream_dim, out_channels, 1)
        # Zero offsets at start: the stream begins as a plain 3 x 3 convolution.
        self.offsets.zero_init = True
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(fused)
        batch, channels, time, height, width = reduced.shape
        # Deformable convolution runs per frame: (B, C, T, H, W) -> (B*T, C, H, W)
        frames = reduced.transpose(1, 2).reshape(batch * time, channels, height, width)
        frames = self.conv(frames, self.offsets(frames))
        # (B*T, C, H, W) -> (B, C, T, H, W)
        reduced = frames.reshape(batch, time, channels, height, width).transpose(1, 2)
        return self.expand(self.act(self.norm(reduced)))


class AMFB(nn.Module):
    """Adaptive Multimodal Fusion Block: local (3 x 3), global (5 x 5) and adaptive (deformable)
    streams over the concatenated audio-visual features, mixed by per-sample tri-stream scores
    W = sigmoid(Linear(GAP([F_local, F_global, F_adaptive]))).

    Args:
        visual_dim: C, channels of the visual features (kept).
        audio_dim: channels of the audio features.
        audio_proj_dim: the audio is projected to this width at its own resolution, then resampled.
        stream_dim: the reduced width inside each stream.

    Shapes: visual `(batch, visual_dim, T, H, W)`, audio `(batch, audio_dim, Ta, Ha, Wa)` (any Ta, Ha,
    Wa; trilinearly resampled to T, H, W) -> `(batch, visual_dim, T, H, W)`.
    """

    def __init__(self, visual_dim: int, audio_dim: int, audio_proj_dim: int = 128, stream_dim: int = 96):
        super().__init__()
        self.visual_dim = visual_dim
        self.audio_dim = audio_dim
        fused_dim = visual_dim + audio_proj_dim
        self.audio_proj = nn.Conv3d(audio_dim, audio_proj_dim, 1)
        self.local_stream = ConvStream(fused_dim, stream_dim, visual_dim, kernel_size=3)
        self.global_stream = ConvStream(fused_dim, stream_dim, visual_dim, kernel_size=5)
        self.adaptive_stream = DeformableStream(fused_dim, stream_dim, visual_dim)
        self.stream_scores = nn.Linear(3 * visual_dim, 3)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        _check_5d(visual, self.visual_dim, "AMFB (visual)")
        _check_5d(audio, self.audio_dim, "AMFB (audio)")
        if audio.shape[0] != visual.shape[0]:
            raise ValueError(f"AMFB needs audio and visual batches of one size, got {audio.shape[0]} and {visual.shape[0]}")
        audio = F.interpolate(self.audio_proj(audio), size=visual.shape[2:], mode="trilinear", align_corners=False)
        fused = torch.cat([visual, audio], dim=1)
        streams = [self.local_stream(fused), self.global_stream(fused), self.adaptive_stream(fused)]
        # Global average pooling over (T, H, W) of the concatenated streams: (B, 3C)
        pooled = torch.cat(streams, dim=1).mean(dim=(2, 3, 4))
        scores = torch.sigmoid(self.stream_scores(pooled))  # (B, 3)
        return sum(scores[:, i, None, None, None, None] * stream for i, stream in enumerate(streams))
