"""The MViT attention kernels alone, at the first and third stage's shapes of DTFSal (32 x 224 x 384).

Times the additive-mask SDPA (the decomposed relative-position logits written out as a mask), the folded
SDPA (`dtfsal_hf.mvit_attention.fold_rel_pos`: no mask, so flash attention applies) and the folded blocked matrix
products (`blocked_attention`), and prints their largest difference from the masked form.

    python scripts/attention_kernels.py --device cuda --batch-size 32
    python scripts/attention_kernels.py --device cpu --batch-size 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtfsal_hf.mvit_attention import _rel_pos_logits, blocked_attention, fold_rel_pos  # noqa: E402


def rel_pos_mask(q, q_thw, k_thw, tables) -> torch.Tensor:
    """The relative-position logits as an additive (B, heads, 1 + Nq, 1 + Nk) mask, written in one pass (zero
    in the class token's row and column)."""
    (q_t, q_h, q_w), (k_t, k_h, k_w) = q_thw, k_thw
    batch, heads = q.shape[:2]
    rel = _rel_pos_logits(q, q_thw, k_thw, *tables).unflatten(2, q_thw)  # (B, heads, Tq, Hq, Wq, Tk + Hk + Wk)
    rel_t, rel_h, rel_w = rel.split([k_t, k_h, k_w], dim=-1)
    mask = q.new_zeros(batch, heads, 1 + q_t * q_h * q_w, 1 + k_t * k_h * k_w)
    patch = mask[:, :, 1:, 1:].unflatten(3, k_thw).unflatten(2, q_thw)
    torch.add(rel_t[..., :, None, None], rel_h[..., None, :, None] + rel_w[..., None, None, :], out=patch)
    return mask


def milliseconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 3], choices=[1, 2, 3, 4])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    # MViTv2-S at 32 x 224 x 384: query grid and heads per stage; keys pooled to 16 x 7 x 12, head width 96
    shapes = {1: (1, (16, 56, 96)), 2: (2, (16, 28, 48)), 3: (4, (16, 14, 24)), 4: (8, (16, 7, 12))}
    print(f"| stage | batch x heads | queries x keys | kernel ({args.dtype}, {device.type}) | ms | GFLOP/s (q k, p v) "
          "| max abs d vs mask |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    batch, dim, k_thw = args.batch_size, 96, (16, 7, 12)
    for stage in args.stages:
        heads, q_thw = shapes[stage]
        n_q, n_k = 1 + q_thw[0] * q_thw[1] * q_thw[2], 1 + k_thw[0] * k_thw[1] * k_thw[2]
        q, k, v = (torch.randn(batch, heads, n, dim, device=device, dtype=dtype) for n in (n_q, n_k, n_k))
        size = max(max(q_thw), max(k_thw))
        # (rel_pos_h, rel_pos_w, rel_pos_t), as MultiscaleAttention orders them
        tables = [torch.randn(2 * size - 1, dim, device=device) * 0.02 for _ in range(3)]

        def masked():
            bias = rel_pos_mask(q, q_thw, k_thw, tables)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=dim**-0.5)

        def folded():
            qa, ka = fold_rel_pos(q, k, q_thw, k_thw, *tables, scale=dim**-0.5)
            return F.scaled_dot_product_attention(qa, ka, F.pad(v, (0, qa.shape[-1] - dim)), scale=1.0)[..., :dim]

        def blocked():
            qa, ka = fold_rel_pos(q, k, q_thw, k_thw, *tables, scale=dim**-0.5)
            return blocked_attention(qa, ka, v)

        with torch.no_grad():
            reference = masked().float()
            for name, fn in (("mask + SDPA", masked), ("folded + SDPA", folded), ("folded + blocked", blocked)):
                ms = milliseconds(fn, device, args.repeats)
                flops = 4 * batch * heads * n_q * n_k * dim
                difference = (fn().float() - reference).abs().max().item()
                print(f"| {stage} | {batch} x {heads} | {n_q} x {n_k} | {name} | {ms:.2f} | {flops / ms / 1e6:,.0f} "
                      f"| {difference:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
