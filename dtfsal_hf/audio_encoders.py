"""Audio encoders behind one contract, the counterpart of `video_encoders` for the sound.

An audio encoder takes the processor's log-mel examples `(batch, examples, 1, mel_height, mel_width)` and
returns one feature volume `(batch, out_channels, time, height, width)` that the fusion blocks resample to each
visual level; it states `out_channels`. `load_pretrained(source)` loads published weights where it has them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoders import AUDIOSET_VGGISH_URL, AudioTemporalEnhancement, VGGishTrunk, load_audioset_vggish_weights

__all__ = ["VGGishAudioEncoder"]


class VGGishAudioEncoder(nn.Module):
    """The paper's audio encoder: VGGish's convolutional trunk per log-mel example (AudioSet weights), then one
    temporal-enhancement Transformer layer across the examples.

    Args:
        num_examples: A, log-mel examples per clip (9).
        input_size: [height, width] of each example (the processor's 112 x 192), multiples of 2^groups.
        channel_groups: VGGish convolutions, each group followed by a 2 x 2 max-pool.
        num_heads, head_dim, mlp_dim: the temporal Transformer layer.

    Input (B, A, 1, h, w) -> (B, C_a, A, h / 2^groups, w / 2^groups), C_a = `out_channels`.
    """

    pretrained_url = AUDIOSET_VGGISH_URL

    def __init__(
        self,
        num_examples: int = 9,
        input_size: Sequence[int] = (112, 192),
        channel_groups: Sequence[Sequence[int]] = ((64,), (128,), (256, 256), (512, 512)),
        num_heads: int = 2,
        head_dim: int = 64,
        mlp_dim: int = 256,
    ):
        super().__init__()
        downsampling = 2 ** len(channel_groups)
        if len(input_size) != 2 or any(size % downsampling for size in input_size):
            raise ValueError(f"VGGishAudioEncoder needs an input height and width divisible by {downsampling} (one 2 x 2 "
                             f"pool per group), got {list(input_size)}")
        self.out_channels = int(channel_groups[-1][-1])
        self.trunk = VGGishTrunk(channel_groups)
        self.temporal = AudioTemporalEnhancement(self.out_channels, num_examples, num_heads, head_dim, mlp_dim)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        batch, examples = input_features.shape[:2]
        features = self.trunk(input_features.flatten(0, 1))  # (B*A, C_a, h, w)
        # (B*A, C_a, h, w) -> (B, C_a, A, h, w)
        features = features.unflatten(0, (batch, examples)).transpose(1, 2)
        return self.temporal(features)

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> None:
        """torchvggish's AudioSet VGGish trunk (`vggish-10086976.pth`), URL or local file."""
        load_audioset_vggish_weights(self.trunk, self.pretrained_url if source is None else source)
