"""The audio-visual fusion blocks the paper compares AMFB with, under AMFB's interface.

A fusion block is built as `Block(visual_dim, audio_dim, ...)` and called as `block(visual, audio)`: visual
features `(batch, visual_dim, T, H, W)` of one level and audio features `(batch, audio_dim, Ta, Ha, Wa)` (any
grid) -> `(batch, visual_dim, T, H, W)`. One block per level. AMFB itself lives in `layers`.

- `ConcatFusion`: plain concatenation, the audio projected and resampled to the level, then a point-wise
  convolution back to the visual width.
- `CrossAttentionFusion`: DiffSal-style cross-attention with the visual features as query and value and the
  audio as key: every visual position gathers visual content from the places the sound points to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv3d

__all__ = ["ConcatFusion", "CrossAttentionFusion"]


def _check_pair(visual: torch.Tensor, audio: torch.Tensor, visual_dim: int, audio_dim: int, name: str) -> None:
    for tensor, channels, role in ((visual, visual_dim, "visual"), (audio, audio_dim, "audio")):
        if tensor.ndim != 5 or tensor.shape[1] != channels:
            raise ValueError(
                f"{name} expects {role} features of shape (batch, {channels}, time, height, width), got {tuple(tensor.shape)}"
            )
    if audio.shape[0] != visual.shape[0]:
        raise ValueError(f"{name} needs audio and visual batches of one size, got {audio.shape[0]} and {visual.shape[0]}")


class ConcatFusion(nn.Module):
    """Concatenation fusion: out = Conv1x1x1([visual, resample(Conv1x1x1(audio))]).

    Args:
        visual_dim: C, channels of the visual features (kept).
        audio_dim: channels of the audio features.
        audio_proj_dim: the audio is projected to this width at its own resolution, then resampled (trilinear).

    Shapes: visual `(batch, visual_dim, T, H, W)`, audio `(batch, audio_dim, Ta, Ha, Wa)` -> `(batch, visual_dim, T, H, W)`.
    """

    def __init__(self, visual_dim: int, audio_dim: int, audio_proj_dim: int = 128):
        super().__init__()
        self.visual_dim = visual_dim
        self.audio_dim = audio_dim
        self.audio_proj = Conv3d(audio_dim, audio_proj_dim, 1)
        self.fuse = Conv3d(visual_dim + audio_proj_dim, visual_dim, 1)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        _check_pair(visual, audio, self.visual_dim, self.audio_dim, "ConcatFusion")
        audio = F.interpolate(self.audio_proj(audio), size=visual.shape[2:], mode="trilinear", align_corners=False)
        return self.fuse(torch.cat([visual, audio], dim=1))


class CrossAttentionFusion(nn.Module):
    """Cross-attention fusion, visual as query and value, audio as key (the paper's ablation, after DiffSal).

    Queries come from every visual position; keys from the audio tokens; values from the visual features
    resampled (trilinear) to the audio grid, so each value sits where its key does. Each visual position thus
    collects the visual content at the places whose sound matches it. Pre-norm, multi-head, residual:
    out = visual + Linear(attention(Q(visual), K(audio), V(visual at the audio grid))).

    Args:
        visual_dim: C, channels of the visual features (kept).
        audio_dim: channels of the audio features.
        attention_dim: width of queries, keys and values (all heads).
        num_heads: attention heads.
        query_chunk: queries per attention call: memory stays bounded at fine levels (attention is independent
            per query, so chunking changes nothing else).

    Shapes: visual `(batch, visual_dim, T, H, W)`, audio `(batch, audio_dim, Ta, Ha, Wa)` -> `(batch, visual_dim, T, H, W)`.
    """

    def __init__(self, visual_dim: int, audio_dim: int, attention_dim: int = 128, num_heads: int = 4, query_chunk: int = 8192):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim must be a multiple of num_heads, got {attention_dim} and {num_heads}")
        self.visual_dim = visual_dim
        self.audio_dim = audio_dim
        self.num_heads = num_heads
        self.query_chunk = query_chunk
        self.visual_norm = nn.LayerNorm(visual_dim)
        self.audio_norm = nn.LayerNorm(audio_dim)
        self.query = nn.Linear(visual_dim, attention_dim)
        self.key = nn.Linear(audio_dim, attention_dim)
        self.value = nn.Linear(visual_dim, attention_dim)
        self.out = nn.Linear(attention_dim, visual_dim)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, L, heads * d) -> (B, heads, L, d)
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        _check_pair(visual, audio, self.visual_dim, self.audio_dim, "CrossAttentionFusion")
        visual_at_audio = F.interpolate(visual, size=audio.shape[2:], mode="trilinear", align_corners=False)
        # (B, C, T, H, W) -> (B, THW, C) for each of the three token sets
        visual_tokens = self.visual_norm(visual.flatten(2).transpose(1, 2))
        audio_tokens = self.audio_norm(audio.flatten(2).transpose(1, 2))
        value_tokens = self.visual_norm(visual_at_audio.flatten(2).transpose(1, 2))
        query = self._heads(self.query(visual_tokens))
        key, value = self._heads(self.key(audio_tokens)), self._heads(self.value(value_tokens))
        attended = torch.cat(
            [F.scaled_dot_product_attention(chunk, key, value) for chunk in query.split(self.query_chunk, dim=2)], dim=2
        )
        # (B, heads, THW, d) -> (B, THW, heads * d) -> (B, C, T, H, W)
        update = self.out(attended.transpose(1, 2).flatten(2)).transpose(1, 2).unflatten(2, visual.shape[2:])
        return visual + update
