"""DTFSal's fusion layers in another architecture: an image saliency model on a timm backbone.

A timm ResNet gives multi-scale features of a single frame (T = 1). LTEB refines the finest level,
DLTFB the coarsest, and AMFB fuses each with audio: either the output of DTFSal's own audio encoder
on log-mel examples, or any plain tensor. A small top-down decoder predicts the map, and the script
trains a few steps on a toy task whose target is a blob at a position the audio encodes.

    python examples/timm_fusion.py --steps 30
    python examples/timm_fusion.py --plain-audio   # audio as a plain (B, 32, 4, 1, 1) tensor
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dtfsal_hf import DTFSalConfig
from dtfsal_hf.layers import AMFB, DLTFB, LTEB
from dtfsal_hf.modeling_dtfsal import DTFSalAudioEncoder, saliency_loss


class TimmAudioVisualSaliency(nn.Module):
    """timm backbone -> per-level 1x1 projection -> LTEB/DLTFB -> AMFB with audio -> top-down decoder."""

    def __init__(self, audio_dim: int, width: int = 32, backbone: str = "resnet18"):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in self.backbone.feature_info.channels())
        self.refine = nn.ModuleList([LTEB(width, token_dim=16, token_size=4) for _ in range(3)] + [DLTFB(width, token_dim=16, token_size=4)])
        # Any audio features without known time spans: stretched over the clip ("time" needs VGGish-layout times).
        self.fuse = nn.ModuleList(AMFB(width, audio_dim, audio_proj_dim=16, stream_dim=16, alignment="stretch") for _ in range(4))
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """`images` (B, 3, H, W), `audio` (B, C_a, Ta, Ha, Wa) -> saliency (B, H, W) in [0, 1]."""
        levels = []
        for feature, project, refine, fuse in zip(self.backbone(images), self.project, self.refine, self.fuse):
            # The layers work on (B, C, T, H, W): a single image is T = 1.
            level = refine(project(feature).unsqueeze(2))
            levels.append(fuse(level, audio).squeeze(2))
        decoded = levels[-1]
        for level in reversed(levels[:-1]):
            decoded = level + F.interpolate(decoded, size=level.shape[-2:], mode="bilinear", align_corners=False)
        logits = F.interpolate(self.head(decoded), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[:, 0]


def toy_batch(batch_size: int, size: int, plain_audio: bool, config: DTFSalConfig, generator: torch.Generator):
    """Grey images; the target blob's column is chosen at random and only the audio says which."""
    columns = torch.randint(0, 4, (batch_size,), generator=generator)
    images = torch.rand(batch_size, 3, size, size, generator=generator) * 0.1
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = (columns.float() + 0.5) * size / 4
    targets = torch.exp(-((x[None] - centres[:, None, None]) ** 2 + (y[None] - size / 2) ** 2) / (2 * (size / 10) ** 2))
    if plain_audio:
        audio = F.one_hot(columns, 4).float()[:, None, :, None, None].repeat(1, 32, 1, 1, 1)  # (B, 32, 4, 1, 1)
    else:
        # A log-mel-like pattern whose bright band encodes the column.
        audio = torch.zeros(batch_size, config.num_audio_examples, 1, *config.audio_input_size)
        band = config.audio_input_size[0] // 4
        for i, column in enumerate(columns.tolist()):
            audio[i, :, :, column * band : (column + 1) * band] = 1.0
    return images, audio, targets


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--plain-audio", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = DTFSalConfig.tiny()
    audio_encoder = None if args.plain_audio else DTFSalAudioEncoder(config)
    model = TimmAudioVisualSaliency(audio_dim=32 if args.plain_audio else config.audio_dim)
    parameters = list(model.parameters()) + (list(audio_encoder.parameters()) if audio_encoder else [])
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(args.steps):
        images, audio, targets = toy_batch(args.batch_size, args.size, args.plain_audio, config, generator)
        if audio_encoder is not None:
            audio = audio_encoder(audio)  # (B, 9, 1, h, w) log-mel examples -> (B, C_a, 9, h/16, w/16)
        loss = saliency_loss(model(images, audio), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"mean loss of the first 5 steps {first:.4f}, of the last 5 {last:.4f}")
    return last - first


if __name__ == "__main__":
    main()
