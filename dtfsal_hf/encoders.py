"""DTFSal's two encoders and the loaders of their published weights.

- Visual: torchvision's MViTv2 (`mvit_v2_s` at the paper's size), returning the four stage outputs. Its
  attention kernels (torchvision's explicit form, fused `scaled_dot_product_attention`, blocked matrix
  products) are in `mvit_attention.py`.
- Audio: the VGGish convolutional trunk followed by a temporal-enhancement Transformer layer.

The loaders read the original checkpoints (URL or local file) in their original key layout.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.video.mvit import MSBlockConfig, MViT

from .mvit_attention import set_mvit_attention

__all__ = [
    "KINETICS400_MVIT_V2_S_URL",
    "AUDIOSET_VGGISH_URL",
    "MViTStageEncoder",
    "VGGishTrunk",
    "AudioTemporalEnhancement",
    "mvit_block_settings",
    "load_state_dict_source",
    "load_kinetics_mvit_weights",
    "load_audioset_vggish_weights",
    "resize_rel_pos_tables",
    "fit_rel_pos_tables",
]

KINETICS400_MVIT_V2_S_URL = "https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth"
AUDIOSET_VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"


def mvit_block_settings(
    depths: Sequence[int], dims: Sequence[int], heads: Sequence[int], kv_stride: Sequence[int]
) -> list[MSBlockConfig]:
    """MViTv2 block list per stage, as torchvision's `mvit_v2_s` writes it block by block: the first block
    of stages 2-4 changes the width and halves H and W; key/value pooling halves with each stage."""
    settings = []
    for stage, depth in enumerate(depths):
        stage_kv = [kv_stride[0]] + [max(s // 2**stage, 1) for s in kv_stride[1:]]
        for index in range(depth):
            downsample = stage > 0 and index == 0
            settings.append(
                MSBlockConfig(
                    num_heads=heads[stage],
                    input_channels=dims[stage - 1] if downsample else dims[stage],
                    output_channels=dims[stage],
                    kernel_q=[3, 3, 3],
                    kernel_kv=[3, 3, 3],
                    stride_q=[1, 2, 2] if downsample else [1, 1, 1],
                    stride_kv=stage_kv,
                )
            )
    return settings


def _pooled_thw(pool: nn.Module | None, thw: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (T, H, W) grid a torchvision MViT `Pool` gives for an input grid `thw`: its convolution's output."""
    if pool is None:
        return thw
    conv = pool.pool
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(thw, conv.kernel_size, conv.stride, conv.padding))


def fit_rel_pos_tables(blocks: Sequence[nn.Module], thw: Sequence[int], std: float = 0.02) -> None:
    """Give each attention's `rel_pos_t/h/w` the length its own axis needs, 2 * max(q, k) - 1 for the query and
    key sizes along that axis, re-initialised (truncated normal, `std`) where the length changes.

    torchvision builds both spatial tables at 2 * max(H, W) - 1 and resizes them to each axis' length at every
    forward; with tables of that length already, no forward resizes them and the state dict holds what is used.
    `thw`: the token grid entering the first block.
    """
    thw = tuple(thw)
    for block in blocks:
        attention = block.attn
        q_thw, k_thw = _pooled_thw(attention.pool_q, thw), _pooled_thw(attention.pool_k, thw)
        if attention.rel_pos_h is not None:
            for name, q_size, k_size in zip(("rel_pos_t", "rel_pos_h", "rel_pos_w"), q_thw, k_thw):
                table = getattr(attention, name)
                length = 2 * max(q_size, k_size) - 1
                if table.shape[0] != length:
                    fitted = nn.Parameter(table.new_empty(length, table.shape[1]))
                    nn.init.trunc_normal_(fitted, std=std)
                    setattr(attention, name, fitted)
        thw = q_thw


def _block_out_channels(block: nn.Module) -> int:
    """Channels a torchvision MViT block writes: the width of its MLP's last linear layer."""
    return [layer for layer in block.mlp.modules() if isinstance(layer, nn.Linear)][-1].out_features


class MViTStageEncoder(nn.Module):
    """MViTv2 returning the output of each stage (class token dropped) as (B, C_i, T/2, H_i, W_i).

    Parameter names follow torchvision's `MViT` (`conv_proj`, `pos_encoding`, `blocks`), so its
    checkpoints load key for key; the classifier (`norm`, `head`) is not part of the encoder. Each
    relative-position table has the length of its own axis (`fit_rel_pos_tables`): at 224 x 384 the H
    tables are the Kinetics checkpoint's length (2 * 56 - 1 in stage 1) and load unchanged. `attention` is the
    kernel of its attentions (`mvit_attention.MVIT_ATTENTIONS`); `out_channels` the channels of each stage output.
    """

    def __init__(
        self,
        num_frames: int,
        image_size: Sequence[int],
        depths: Sequence[int],
        dims: Sequence[int],
        heads: Sequence[int],
        kv_stride: Sequence[int],
        stochastic_depth: float = 0.0,
        attention: str = "eager",
    ):
        super().__init__()
        mvit = MViT(
            spatial_size=tuple(image_size),
            temporal_size=num_frames,
            block_setting=mvit_block_settings(depths, dims, heads, kv_stride),
            residual_pool=True,
            residual_with_cls_embed=False,
            rel_pos_embed=True,
            proj_after_attn=True,
            stochastic_depth_prob=stochastic_depth,
        )
        self.conv_proj = mvit.conv_proj
        self.pos_encoding = mvit.pos_encoding
        self.blocks = mvit.blocks
        fit_rel_pos_tables(self.blocks, (self.pos_encoding.temporal_size, *self.pos_encoding.spatial_size))
        self.stage_ends = [sum(depths[: i + 1]) - 1 for i in range(len(depths))]
        # Channels of the four stage outputs, what a module built on the encoder reads.
        self.out_channels = [_block_out_channels(self.blocks[end]) for end in self.stage_ends]
        self.gradient_checkpointing = False
        set_mvit_attention(self, attention)

    def forward(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """`videos` (B, 3, T, H, W) -> four tensors (B, C_i, T/2, H/2^(i+2), W/2^(i+2))."""
        tokens = self.conv_proj(videos)
        # (B, C, T', H', W') -> (B, T'H'W', C), then the class token is prepended
        tokens = self.pos_encoding(tokens.flatten(2).transpose(1, 2))
        thw = (self.pos_encoding.temporal_size,) + tuple(self.pos_encoding.spatial_size)
        stages = []
        for index, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training:
                tokens, thw = checkpoint(block, tokens, thw, use_reentrant=False)
            else:
                tokens, thw = block(tokens, thw)
            if index in self.stage_ends:
                # Drop the class token: (B, 1 + THW, C) -> (B, C, T, H, W), a view with channels innermost
                # (channels-last-3d strides, at batch 1 too, so the convolutions after it read it without a copy)
                stage = tokens[:, 1:].unflatten(1, thw).permute(0, 4, 1, 2, 3)
                stages.append(stage)
        return stages


class VGGishTrunk(nn.Module):
    """VGGish's convolutional trunk: 3 x 3 convolutions with ReLU, a 2 x 2 max-pool after each group.

    `features` is laid out as torchvggish's, so `features.*` keys of its AudioSet checkpoint load as they are.
    Input (N, 1, h, w) -> (N, C_last, h / 2^groups, w / 2^groups).
    """

    def __init__(self, channel_groups: Sequence[Sequence[int]]):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for group in channel_groups:
            for channels in group:
                layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = channels
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        # Channels innermost (for a one-channel input, a copy of the same values with other strides): every
        # convolution and pool then runs channels-last, about 1.5x faster on a CPU than channels-first (oneDNN).
        return self.features(spectrograms.to(memory_format=torch.channels_last))


class AudioTemporalEnhancement(nn.Module):
    """Patch embedding (LayerNorm, Linear, LayerNorm), a learnable position embedding per audio example,
    one pre-norm Transformer layer over all example x grid tokens, and a final LayerNorm.

    Input and output (B, C, A, h, w): C channels, A examples, an h x w grid per example.
    """

    def __init__(self, dim: int, num_examples: int, num_heads: int = 2, head_dim: int = 64, mlp_dim: int = 256):
        super().__init__()
        inner_dim = num_heads * head_dim
        self.num_heads = num_heads
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.position = nn.Parameter(torch.zeros(num_examples, dim))
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner_dim)
        self.attn_out = nn.Linear(inner_dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.final_norm = nn.LayerNorm(dim)

    def _attention(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, L, 3 * heads * d) -> three (B, heads, L, d)
        query, key, value = self.qkv(tokens).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value)
        # (B, heads, L, d) -> (B, L, heads * d)
        return self.attn_out(attended.transpose(1, 2).flatten(2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, examples, height, width = features.shape
        # (B, C, A, h, w) -> (B, A, h*w, C)
        tokens = self.embed(features.flatten(3).permute(0, 2, 3, 1))
        tokens = (tokens + self.position[:examples, None, :]).flatten(1, 2)  # (B, A*h*w, C)
        tokens = tokens + self._attention(self.attn_norm(tokens))
        tokens = tokens + self.mlp(self.mlp_norm(tokens))
        tokens = self.final_norm(tokens)
        # (B, A*h*w, C) -> (B, C, A, h, w)
        return tokens.transpose(1, 2).unflatten(2, (examples, height, width))


# The sha256 prefix torch hub file names carry: `mvit_v2_s-ae3be167.pth` -> "ae3be167".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _downloaded(url: str) -> str:
    """The file at `url`, in the torch hub cache (`<hub dir>/checkpoints/<name>`), as torch hub keeps it.

    Where the file name carries a sha256 prefix (`name-<8+ hex digits>.pth`), the download is checked against it
    (torch hub's `download_url_to_file` removes a file that does not match), and so is a file already in the cache:
    a file planted there under the expected name is refused, never read.
    """
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f"The checkpoint URL {url!r} names no file")
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    match = _HASH_IN_NAME.search(name)
    prefix = match.group(1) if match else None
    if os.path.isfile(path):
        if prefix is not None and not _file_sha256(path).startswith(prefix):
            raise ValueError(
                f"The cached checkpoint {path!r} does not match the sha256 prefix its name carries ({prefix}): "
                "delete it to download it again"
            )
        return path
    os.makedirs(folder, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=True)
    except RuntimeError as error:  # torch hub's error for a download that does not match the hash
        raise ValueError(f"The checkpoint downloaded from {url!r} is not the published file: {error}") from error
    except OSError as error:  # no network, HTTP errors (URLError and HTTPError are OSErrors)
        raise OSError(f"Could not download the checkpoint {url!r}: {error}") from error
    return path


def load_state_dict_source(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a mapping, a local file (`.pth`/`.pt` or `.safetensors`) or an http(s) URL.

    Files are read as weights only (`torch.load(weights_only=True)` or safetensors), so reading one runs no code.
    A URL is downloaded once to the torch hub cache, checked against the sha256 prefix its file name carries.
    """
    if isinstance(source, Mapping):
        return dict(source)
    source = str(source)
    if source.startswith(("http://", "https://")):
        source = _downloaded(source)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"No checkpoint file at {source!r}")
    try:
        if source.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(source)
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file, or one that is not weights only
        raise ValueError(f"Could not read the checkpoint {source!r} (weights only): {error}") from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"The checkpoint {source!r} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def resize_rel_pos_tables(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Linearly interpolate MViTv2's decomposed relative-position tables (`rel_pos_h/w/t`, shape
    (2 * size - 1, head_dim)) along their length to the lengths `target` holds."""
    resized = dict(state)
    for key, table in state.items():
        if key.rsplit(".", 1)[-1] not in ("rel_pos_h", "rel_pos_w", "rel_pos_t") or key not in target:
            continue
        length = target[key].shape[0]
        if table.shape[0] != length:
            # (L, d) -> (1, d, L) for 1-D interpolation along L, then back
            table = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
            resized[key] = table[0].t().contiguous().to(target[key].dtype)
    return resized


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load `state` into `module`, raising on missing, unexpected or mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The {name} checkpoint does not fit the model: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}, mismatched shapes {mismatched[:8]}"
        )
    module.load_state_dict(state)


def load_kinetics_mvit_weights(
    encoder: MViTStageEncoder, source: str | os.PathLike | Mapping[str, torch.Tensor] = KINETICS400_MVIT_V2_S_URL
) -> None:
    """Load torchvision's Kinetics-400 MViTv2-S weights (trained at 16 x 224 x 224) into `encoder` at
    its own size: the classifier is dropped and the relative-position tables are resized."""
    state = load_state_dict_source(source)
    state = {key: value for key, value in state.items() if not key.startswith(("head.", "norm."))}
    state = resize_rel_pos_tables(state, encoder.state_dict())
    _load_checked(encoder, state, "MViT")


def load_audioset_vggish_weights(
    trunk: VGGishTrunk, source: str | os.PathLike | Mapping[str, torch.Tensor] = AUDIOSET_VGGISH_URL
) -> None:
    """Load torchvggish's AudioSet VGGish weights (`features.*`; the `embeddings.*` layers are unused)."""
    state = load_state_dict_source(source)
    state = {key: value for key, value in state.items() if key.startswith("features.")}
    _load_checked(trunk, state, "VGGish")
