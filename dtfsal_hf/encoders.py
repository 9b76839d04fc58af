"""DTFSal's two encoders and the loaders of their published weights.

- Visual: torchvision's MViTv2 (`mvit_v2_s` at the paper's size), returning the four stage outputs. Its
  attention runs as torchvision writes it (explicit matmul and softmax) or, after `set_mvit_attention`, with
  the decomposed relative-position terms folded into the query-key product and a faster kernel: fused
  `scaled_dot_product_attention`, or plain matrix products by blocks of queries (CPU inference).
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
from torchvision.models.video.mvit import MSBlockConfig, MultiscaleAttention, MViT

__all__ = [
    "KINETICS400_MVIT_V2_S_URL",
    "AUDIOSET_VGGISH_URL",
    "MViTStageEncoder",
    "MViTSDPAttention",
    "MViTBlockedAttention",
    "MViTAutoAttention",
    "fold_rel_pos",
    "blocked_attention",
    "MVIT_ATTENTIONS",
    "set_mvit_attention",
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


MVIT_ATTENTIONS = ("eager", "sdpa", "blocked", "auto")


def _rel_pos_index(q_size: int, k_size: int, device) -> torch.Tensor:
    """Table row of each (query, key) position pair along one axis, as torchvision's `_add_rel_pos` computes it:
    distances are scaled up to the finer of the two grids and shifted to be non-negative."""
    q_ratio, k_ratio = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    distance = torch.arange(q_size, device=device)[:, None] * q_ratio
    distance = distance - (torch.arange(k_size, device=device)[None, :] + (1.0 - k_size)) * k_ratio
    return distance.long()


def _rel_pos_table(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """(q_size, k_size, head_dim) embeddings of one axis; the table is first resized (linearly) to
    2 * max(q, k) - 1 rows where it has another length, as torchvision does."""
    length = int(2 * max(q_size, k_size) - 1)
    if table.shape[0] != length:
        # (L, d) -> (1, d, L) for 1-D interpolation along L, then back
        table = F.interpolate(table.t()[None], size=length, mode="linear")[0].t()
    return table[_rel_pos_index(q_size, k_size, table.device)]


def _rel_pos_logits(
    q: torch.Tensor,
    q_thw: tuple[int, int, int],
    k_thw: tuple[int, int, int],
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    rel_pos_t: torch.Tensor,
) -> torch.Tensor:
    """Each patch query's relative-position logits per key coordinate: (B, heads, Nq, Tk + Hk + Wk), the
    columns being q . R_t[t_q, t_k] for every key time t_k, then q . R_h[h_q, h_k], then q . R_w[w_q, w_k]."""
    (q_t, q_h, q_w), (k_t, k_h, k_w) = q_thw, k_thw
    batch, heads, _, dim = q.shape
    grid_q = q[:, :, 1:].reshape(batch, heads, q_t, q_h, q_w, dim)
    rel_t = torch.einsum("bythwc,tkc->bythwk", grid_q, _rel_pos_table(rel_pos_t, q_t, k_t).to(q.dtype))
    rel_h = torch.einsum("bythwc,hkc->bythwk", grid_q, _rel_pos_table(rel_pos_h, q_h, k_h).to(q.dtype))
    rel_w = torch.einsum("bythwc,wkc->bythwk", grid_q, _rel_pos_table(rel_pos_w, q_w, k_w).to(q.dtype))
    return torch.cat([rel_t, rel_h, rel_w], dim=-1).flatten(2, 4)


def _key_coordinates(k_thw: tuple[int, int, int], width: int, device, dtype) -> torch.Tensor:
    """(1 + Nk, width) one-hot rows: key (t, h, w) has ones in columns t, Tk + h and Tk + Hk + w; the class
    token's row and the columns past Tk + Hk + Wk are zero."""
    k_t, k_h, k_w = k_thw
    eye_t, eye_h, eye_w = (torch.eye(n, device=device, dtype=dtype) for n in k_thw)
    grid = (k_t, k_h, k_w)
    coordinates = torch.cat(
        [
            eye_t[:, None, None].expand(*grid, k_t),
            eye_h[None, :, None].expand(*grid, k_h),
            eye_w[None, None, :].expand(*grid, k_w),
        ],
        dim=-1,
    ).reshape(k_t * k_h * k_w, k_t + k_h + k_w)
    return F.pad(coordinates, (0, width - coordinates.shape[1], 1, 0))


def fold_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    q_thw: tuple[int, int, int],
    k_thw: tuple[int, int, int],
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    rel_pos_t: torch.Tensor,
    scale: float,
    multiple: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MViTv2's attention logits as one product: returns `q_aug`, `k_aug` with
    q_aug . k_aug = scale * q . k + (decomposed relative-position term).

    `q` (B, heads, 1 + Nq, d) and `k` (B, heads, 1 + Nk, d), class token first, unscaled. Each query is
    extended by its Tk + Hk + Wk relative-position logits (`_rel_pos_logits`) and each key by the one-hot code of
    its (t, h, w) (`_key_coordinates`), so the product picks, for query i and key j, exactly
    q_i . (R_t[t_i, t_j] + R_h[h_i, h_j] + R_w[w_i, w_j]); the class token's extensions are zero, as its row
    and column of torchvision's term are. Both are zero-padded to a width that is a multiple of `multiple`
    (d = 96 in MViTv2-S: 96 + 16 + 7 + 12 = 131 -> 136 at 32 x 224 x 384). Attention kernels then need no
    additive mask, whose (1 + Nq) x (1 + Nk) entries per head would be written and read once more.
    """
    batch, heads, _, dim = q.shape
    rel = _rel_pos_logits(q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t)
    extra = rel.shape[-1]
    width = -(-(dim + extra) // multiple) * multiple
    q_aug = torch.cat([q * scale, F.pad(rel, (0, width - dim - extra, 1, 0))], dim=-1)
    coordinates = _key_coordinates(k_thw, width - dim, k.device, k.dtype)
    k_aug = torch.cat([k, coordinates.expand(batch, heads, -1, -1)], dim=-1)
    return q_aug, k_aug


# Logits held at once by the blocked kernel: 4M entries (8 MiB in bf16), a block of queries that stays in the
# last-level cache.
BLOCKED_LOGITS = 1 << 22


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_logits: int = BLOCKED_LOGITS) -> torch.Tensor:
    """softmax(q k^T) v (no scale, no mask) by blocks of queries with plain batched matrix products.

    For inference on CPUs: in bf16 the matrix products run at the CPU's bf16 matrix rate (oneDNN), where
    PyTorch's fused CPU attention kernel runs no faster than in fp32; each block's logits stay in cache.
    Logits are rounded to the inputs' dtype before the softmax (which accumulates in fp32). No autograd.
    """
    batch, heads, num_q, width = q.shape
    num_k = k.shape[2]
    q, k_t, v = q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), v.flatten(0, 1)
    out = v.new_empty(batch * heads, num_q, v.shape[-1])
    rows = max(1, max_logits // (batch * heads * num_k))
    for start in range(0, num_q, rows):
        logits = torch.bmm(q[:, start : start + rows], k_t)
        torch.bmm(torch.softmax(logits, dim=-1), v, out=out[:, start : start + rows])
    return out.view(batch, heads, num_q, -1)


def _pooled_residual(x: torch.Tensor, q: torch.Tensor, with_class_token: bool) -> torch.Tensor:
    """x + q, the class token included only when `with_class_token`; out of place, since the attention kernel
    keeps `x` for its backward pass."""
    if with_class_token:
        return x + q
    return torch.cat([x[:, :, :1], x[:, :, 1:] + q[:, :, 1:]], dim=2)


class MViTSDPAttention(MultiscaleAttention):
    """torchvision's `MultiscaleAttention` computed with `scaled_dot_product_attention`.

    Same parameters and the same function: softmax(scale * q k^T + rel_pos) v, then the pooled-query residual
    (patch tokens only when `residual_with_cls_embed` is False, as in MViTv2-S) and the output projection. The
    relative-position term is folded into the product (`fold_rel_pos`), so no mask is built and the fused
    kernels that take none (flash attention on CUDA) apply. The explicit form holds the logits and their
    softmax at once, which is where its time goes at 32 x 224 x 384 (the first stage attends 86,017 queries to
    1,345 keys).
    """

    kernel = "sdpa"

    def _use_blocked(self, q: torch.Tensor) -> bool:
        if torch.is_grad_enabled() and (q.requires_grad or self.rel_pos_h.requires_grad):
            return False  # the blocked kernel has no backward pass: training runs the fused kernel
        return self.kernel == "blocked" or (self.kernel == "auto" and q.device.type == "cpu")

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        batch, tokens, _ = x.shape
        # (B, N, 3 * C) -> three (B, heads, N, head_dim)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        k_thw = thw
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
        if self.pool_v is not None:
            v = self.pool_v(v, thw)[0]
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)
        if self.rel_pos_h is None:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scaler)
        else:
            q_aug, k_aug = fold_rel_pos(q, k, thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t, self.scaler)
            if self._use_blocked(q):
                x = blocked_attention(q_aug, k_aug, v)
            else:
                # Fused kernels want one head width for q, k and v: v is zero-padded, its extra columns dropped.
                v_aug = F.pad(v, (0, q_aug.shape[-1] - v.shape[-1]))
                x = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., : v.shape[-1]]
        if self.residual_pool:
            x = _pooled_residual(x, q, self.residual_with_cls_embed)
        # (B, heads, N, head_dim) -> (B, N, C)
        x = x.transpose(1, 2).reshape(batch, -1, self.output_dim)
        return self.project(x), thw


class MViTBlockedAttention(MViTSDPAttention):
    """`MViTSDPAttention` whose inference runs `blocked_attention` (plain matrix products by blocks of queries)
    on any device; with autograd it runs the fused kernel."""

    kernel = "blocked"


class MViTAutoAttention(MViTSDPAttention):
    """`MViTSDPAttention` choosing per call: `blocked_attention` for inference on a CPU (fastest there, in bf16
    more than 2x), `scaled_dot_product_attention` elsewhere and for training."""

    kernel = "auto"


_ATTENTION_CLASSES = {
    "eager": MultiscaleAttention,
    "sdpa": MViTSDPAttention,
    "blocked": MViTBlockedAttention,
    "auto": MViTAutoAttention,
}


def set_mvit_attention(module: nn.Module, attention: str) -> nn.Module:
    """Switch every MViT attention inside `module` (a `DTFSalModel`, an `MViTStageEncoder`, torchvision's
    `mvit_v2_s`) to another kernel for the same function:

    - `"eager"`: torchvision's explicit form (matmul, + relative-position logits, softmax, matmul);
    - `"sdpa"`: `scaled_dot_product_attention` on queries and keys extended by the relative-position terms;
    - `"blocked"`: the same extension, then plain matrix products by blocks of queries (inference);
    - `"auto"`: `"blocked"` for inference on a CPU, `"sdpa"` otherwise.

    Parameters and state-dict keys do not change. Returns `module`.
    """
    if attention not in MVIT_ATTENTIONS:
        raise ValueError(f"attention must be one of {MVIT_ATTENTIONS}, got {attention!r}")
    target = _ATTENTION_CLASSES[attention]
    for child in module.modules():
        if isinstance(child, MultiscaleAttention):
            # Subclasses without state of their own: swapping the class swaps only `forward`.
            child.__class__ = target
    return module


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


class MViTStageEncoder(nn.Module):
    """MViTv2 returning the output of each stage (class token dropped) as (B, C_i, T/2, H_i, W_i).

    Parameter names follow torchvision's `MViT` (`conv_proj`, `pos_encoding`, `blocks`), so its
    checkpoints load key for key; the classifier (`norm`, `head`) is not part of the encoder. Each
    relative-position table has the length of its own axis (`fit_rel_pos_tables`): at 224 x 384 the H
    tables are the Kinetics checkpoint's length (2 * 56 - 1 in stage 1) and load unchanged.
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
        self.gradient_checkpointing = False

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
                # Drop the class token: (B, 1 + THW, C) -> (B, C, T, H, W)
                stage = tokens[:, 1:].transpose(1, 2).unflatten(2, thw)
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
        return self.features(spectrograms)


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
