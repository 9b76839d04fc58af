"""MViTv2 attention kernels: one function, four ways to compute it.

torchvision's `MultiscaleAttention` computes softmax(scale * q k^T + rel_pos) v explicitly (matmul, the
decomposed relative-position logits added, softmax, matmul). Here the relative-position term is folded into the
query-key product (`fold_rel_pos`), so a kernel that takes no mask applies:

- `"eager"`: torchvision's explicit form;
- `"sdpa"`: `scaled_dot_product_attention` on the extended queries and keys (flash attention on CUDA);
- `"blocked"`: plain matrix products by blocks of queries (`blocked_attention`; inference);
- `"auto"`: `"blocked"` for bf16 / fp16 inference on a CPU without AMX, `"sdpa"` otherwise (fp32, and bf16 on a
  CPU with AMX, included).

The fast kernels pool queries, keys and values with `pool_tokens`: torchvision's pooling with the channels kept
innermost, so no layout copy is made around its convolution (same values). With them the blocks' skip
connections pool the same way (`TokenPool`, the max pooling of the blocks that halve the frame size), and at bf16
inference on a CPU the blocks' linear layers run as oneDNN's fused linear (`fused_linear`: bias and GELU applied
in the product's epilogue; `TokenMLP`).

`set_mvit_attention(module, kernel)` switches every attention inside a module; `DTFSalModel.set_mvit_attention`
does it for a model and records the choice in its configuration (`DTFSalConfig.mvit_attention`), so a saved and
reloaded model runs the same kernel. Parameters and state-dict keys are the same for every kernel.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.models.video.mvit import MultiscaleAttention, MultiscaleBlock, Pool
from torchvision.ops.misc import MLP

from .layers import cpu_has_amx

__all__ = [
    "MVIT_ATTENTIONS",
    "MViTSDPAttention",
    "MViTBlockedAttention",
    "MViTAutoAttention",
    "fold_rel_pos",
    "blocked_attention",
    "fused_linear",
    "mvit_attention_of",
    "pool_tokens",
    "set_mvit_attention",
    "TokenMLP",
    "TokenPool",
]

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


def pool_tokens(pool: Pool, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """torchvision's `Pool.forward` (class token split off, the rest pooled as a (T, H, W) volume, the class token
    put back, then the norm) for `x` (B, heads, 1 + T * H * W, C) or (B, 1 + T * H * W, C), with the channels kept
    innermost: the volume is handed to the pooling layer as (B * heads, C, T, H, W) in channels-last strides and
    its output read back as tokens without a copy, where torchvision's form copies the volume to channels-first and
    back (17% of a bf16 channels-last call went to copies; the skip connections' max pooling took 14x as long).
    Anything else goes to torchvision's form."""
    if x.ndim not in (3, 4) or pool.norm_before_pool:
        return Pool.forward(pool, x, thw)
    tokens_only = x.ndim == 3
    if tokens_only:
        x = x.unsqueeze(1)
    class_token, volume = x[:, :, :1], x[:, :, 1:]
    batch, heads, _, channels = volume.shape
    # (B, heads, T*H*W, C) -> (B * heads, T, H, W, C) -> (B * heads, C, T, H, W), channels innermost
    volume = pool.pool(volume.reshape((batch * heads, *thw, channels)).permute(0, 4, 1, 2, 3))
    pooled_thw = tuple(volume.shape[2:])
    # (B * heads, C, T', H', W') -> (B, heads, T'*H'*W', C)
    volume = volume.permute(0, 2, 3, 4, 1).reshape(batch, heads, -1, channels)
    x = torch.cat((class_token, volume), dim=2)
    if pool.norm_act is not None:
        x = pool.norm_act(x)
    return (x.squeeze(1) if tokens_only else x), pooled_thw


class TokenPool(Pool):
    """torchvision's `Pool` computed by `pool_tokens` (channels innermost, no layout copy; same values). The fast
    attention kernels give it to the blocks' skip connections (`set_mvit_attention`); no state of its own."""

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        return pool_tokens(self, x, thw)


def _fused_linear_applies(x: torch.Tensor) -> bool:
    """Whether this call is bf16-autocast inference on a CPU with native bf16, which `fused_linear` computes."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and type(x) is torch.Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fused_linear(linear: nn.Linear, x: torch.Tensor, gelu: str | None = None) -> torch.Tensor:
    """`linear(x)` (then `F.gelu(..., approximate=gelu)` when `gelu` is given) as autocast computes it.

    At bf16-autocast inference on a CPU with native bf16 this is one oneDNN call (`mkldnn::_linear_pointwise`, the
    kernel PyTorch's compiler emits for linear + pointwise on CPUs): bias and GELU applied in the product's
    epilogue, where autocast's `addmm` first copies the bias to every row of the output and the GELU reads and
    writes it again (stage 2's 21,505 x 768 MLP input: 38 ms -> 11 ms on 2 cores). The product and bias are the
    same values as autocast's; the GELU within one bf16 rounding of `F.gelu`'s. Elsewhere: the module and `F.gelu`.
    """
    if not _fused_linear_applies(x):
        y = linear(x)
        return y if gelu is None else F.gelu(y, approximate=gelu)
    bias = None if linear.bias is None else linear.bias.to(torch.bfloat16)
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), linear.weight.to(torch.bfloat16), bias,
                                              "none" if gelu is None else "gelu", [], "none" if gelu is None else gelu)


def _is_mvit_mlp(mlp: nn.Module) -> bool:
    """torchvision's MViT MLP: Linear, GELU, Dropout, Linear, Dropout."""
    kinds = [type(layer) for layer in mlp]
    return kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.Dropout]


class TokenMLP(MLP):
    """torchvision's MViT block MLP (Linear, GELU, Dropout, Linear, Dropout) whose linear layers run as
    `fused_linear` at bf16 inference on a CPU (the first with its GELU); elsewhere `MLP.forward`. The fast
    attention kernels give it to the blocks (`set_mvit_attention`); no state of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not _fused_linear_applies(x):
            return super().forward(x)
        return fused_linear(self[3], fused_linear(self[0], x, gelu=self[1].approximate))


def _projected(project: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention's output projection (torchvision's Sequential of a Linear, then a Dropout where the dropout
    rate is not 0), as `fused_linear` at inference."""
    if (not project.training and isinstance(project, nn.Sequential) and len(project) and type(project[0]) is nn.Linear
            and all(type(layer) is nn.Dropout for layer in project[1:])):
        return fused_linear(project[0], x)
    return project(x)


def _cpu_training_kernel(q: torch.Tensor):
    """Where gradients flow on a CPU, the explicit (math) form of `scaled_dot_product_attention`; elsewhere no
    constraint. PyTorch's fused CPU attention, run forward and backward on AVX-512 (torch 2.14), left the
    gradients of the whole model 1e-3 away from float64's (the explicit form and AVX2: 5e-6), through layers
    whose backward runs after its own; `tests/test_sdpa_attention.py` compares every kernel's gradients with
    float64 ones."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


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
        if self.kernel == "blocked":
            return True
        # auto: reduced-precision inference on a CPU without AMX. In fp32 PyTorch's fused CPU kernel is as fast on
        # AVX-512 and 12-20% faster on AVX2, and in bf16 on a CPU with AMX 1.1-1.6x faster (docs/benchmarks.md),
        # with the same bounded memory.
        if self.kernel != "auto" or q.device.type != "cpu" or q.dtype == torch.float32:
            return False
        return not (q.dtype == torch.bfloat16 and cpu_has_amx())

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        batch, tokens, _ = x.shape
        # (B, N, 3 * C) -> three (B, heads, N, head_dim)
        q, k, v = fused_linear(self.qkv, x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        k_thw = thw
        if self.pool_k is not None:
            k, k_thw = pool_tokens(self.pool_k, k, thw)
        if self.pool_v is not None:
            v = pool_tokens(self.pool_v, v, thw)[0]
        if self.pool_q is not None:
            q, thw = pool_tokens(self.pool_q, q, thw)
        if self.rel_pos_h is None:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scaler)
        else:
            q_aug, k_aug = fold_rel_pos(q, k, thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t, self.scaler)
            if self._use_blocked(q):
                x = blocked_attention(q_aug, k_aug, v)
            else:
                # Fused kernels want one head width for q, k and v: v is zero-padded, its extra columns dropped.
                v_aug = F.pad(v, (0, q_aug.shape[-1] - v.shape[-1]))
                with _cpu_training_kernel(q_aug):
                    x = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., : v.shape[-1]]
        if self.residual_pool:
            x = _pooled_residual(x, q, self.residual_with_cls_embed)
        # (B, heads, N, head_dim) -> (B, N, C)
        x = x.transpose(1, 2).reshape(batch, -1, self.output_dim)
        return _projected(self.project, x), thw


class MViTBlockedAttention(MViTSDPAttention):
    """`MViTSDPAttention` whose inference runs `blocked_attention` (plain matrix products by blocks of queries)
    on any device; with autograd it runs the fused kernel."""

    kernel = "blocked"


class MViTAutoAttention(MViTSDPAttention):
    """`MViTSDPAttention` choosing per call: `blocked_attention` for bf16 / fp16 inference on a CPU without AMX (in
    bf16 more than 2x faster there than the fused kernel), `scaled_dot_product_attention` in fp32, in bf16 on a CPU
    with AMX (`cpu_has_amx`), elsewhere and for training."""

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
    - `"auto"`: `"blocked"` for bf16 / fp16 inference on a CPU without AMX, `"sdpa"` otherwise (fp32, and bf16 on
      a CPU with AMX, included).

    The fast kernels also pool the blocks' skip connections with `TokenPool` (the same max pooling, channels
    innermost) and run the blocks' MLPs as `TokenMLP` (oneDNN's fused linear + GELU at CPU bf16 inference);
    `"eager"` puts back torchvision's `Pool` and `MLP`. Parameters and state-dict keys do not change. Returns
    `module`.
    """
    if attention not in MVIT_ATTENTIONS:
        raise ValueError(f"attention must be one of {MVIT_ATTENTIONS}, got {attention!r}")
    target = _ATTENTION_CLASSES[attention]
    for child in module.modules():
        if isinstance(child, MultiscaleAttention):
            # Subclasses without state of their own: swapping the class swaps only `forward`.
            child.__class__ = target
        elif isinstance(child, MultiscaleBlock):
            if type(child.pool_skip) in (Pool, TokenPool):
                child.pool_skip.__class__ = Pool if attention == "eager" else TokenPool
            if type(child.mlp) in (MLP, TokenMLP) and _is_mvit_mlp(child.mlp):
                child.mlp.__class__ = MLP if attention == "eager" else TokenMLP
    return module


_KERNEL_OF_CLASS = {cls: name for name, cls in _ATTENTION_CLASSES.items()}


def mvit_attention_of(module: nn.Module) -> str | None:
    """The kernel the MViT attentions inside `module` run (`MVIT_ATTENTIONS`), None when it holds none; a
    `ValueError` when they run different kernels."""
    kernels = {_KERNEL_OF_CLASS.get(type(child), "eager") for child in module.modules() if isinstance(child, MultiscaleAttention)}
    if len(kernels) > 1:
        raise ValueError(f"the MViT attentions of this module run different kernels: {sorted(kernels)}")
    return kernels.pop() if kernels else None
