"""The fast MViT attention kernels compute torchvision's attention: outputs, gradients, keys."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video.mvit import MultiscaleAttention, Pool, _add_rel_pos
from torchvision.ops.misc import MLP

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.mvit_attention import (
    MViTAutoAttention,
    MViTBlockedAttention,
    MVIT_ATTENTIONS,
    MViTSDPAttention,
    blocked_attention,
    fold_rel_pos,
    mvit_attention_of,
    TokenMLP,
    TokenPool,
    fused_linear,
    pool_tokens,
    set_mvit_attention,
)

FAST = {"sdpa": MViTSDPAttention, "blocked": MViTBlockedAttention, "auto": MViTAutoAttention}


def tiny_model(use_audio: bool = True) -> DTFSalModel:
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny(use_audio=use_audio)).eval()


@pytest.mark.parametrize("q_thw, k_thw", [((4, 6, 10), (2, 3, 5)), ((2, 3, 5), (2, 3, 5)), ((1, 4, 2), (1, 2, 1))])
def test_folded_product_is_torchvisions_logits(q_thw, k_thw):
    torch.manual_seed(0)
    dim, scale = 8, 8**-0.5
    num_q, num_k = 1 + q_thw[0] * q_thw[1] * q_thw[2], 1 + k_thw[0] * k_thw[1] * k_thw[2]
    q, k = torch.randn(2, 3, num_q, dim), torch.randn(2, 3, num_k, dim)
    size = max(max(q_thw), max(k_thw))
    tables = [torch.randn(2 * size - 1, dim), torch.randn(2 * size - 1, dim), torch.randn(2 * size - 1, dim)]
    expected = _add_rel_pos(scale * q @ k.transpose(2, 3), q, q_thw, k_thw, *tables)
    q_aug, k_aug = fold_rel_pos(q, k, q_thw, k_thw, *tables, scale=scale)
    extra = sum(k_thw)
    assert q_aug.shape[-1] == k_aug.shape[-1] == -(-(dim + extra) // 8) * 8
    torch.testing.assert_close(q_aug @ k_aug.transpose(2, 3), expected, rtol=1e-5, atol=1e-5)
    # One key per one-hot block: each patch key codes its (t, h, w), the class token nothing.
    codes = k_aug[0, 0, :, dim:]
    assert not codes[0].any() and (codes[1:].sum(dim=1) == 3).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_attention_matches_sdpa(dtype):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 37, 16, dtype=dtype), torch.randn(2, 3, 11, 16, dtype=dtype), torch.randn(2, 3, 11, 8, dtype=dtype)
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0)
    # Blocks of 2 rows (66 logits / 66 per row): many blocks and a short last one
    actual = blocked_attention(q, k, v, max_logits=2 * 2 * 3 * 11)
    assert actual.dtype == dtype and actual.shape == (2, 3, 37, 8)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(actual.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("attention", ["sdpa", "blocked", "auto"])
@pytest.mark.parametrize("stride_q", [[1, 1, 1], [1, 2, 2]])
def test_attention_block_matches_on_a_non_square_grid(stride_q, attention):
    kernel = attention
    torch.manual_seed(0)
    attention = MultiscaleAttention([4, 8, 12], 16, 32, 2, [3, 3, 3], [3, 3, 3], stride_q, [1, 2, 2],
                                    residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True).eval()
    tokens = torch.randn(2, 1 + 4 * 8 * 12, 16)
    with torch.no_grad():
        expected, expected_thw = attention(tokens, (4, 8, 12))
        set_mvit_attention(attention, kernel)
        actual, actual_thw = attention(tokens, (4, 8, 12))
    assert type(attention) is FAST[kernel] and actual_thw == expected_thw
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "blocked", "auto"])
@pytest.mark.parametrize("use_audio", [True, False])
def test_model_maps_match(use_audio, attention):
    model = tiny_model(use_audio)
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        expected = model(**inputs).saliency_map
        actual = set_mvit_attention(model, attention)(**inputs).saliency_map
    assert (actual - expected).abs().max() < 1e-5


@pytest.mark.parametrize("amx", [False, True])
def test_blocked_kernel_runs_for_reduced_precision_inference_and_sdpa_otherwise(monkeypatch, amx):
    """`auto` on a CPU: the blocked kernel for bf16 inference (autocast or cast weights) on a CPU without AMX, the
    fused kernel in bf16 on one with AMX (its products on the matrix tiles), in fp32 (as fast or faster there) and
    for training."""
    import dtfsal_hf.mvit_attention as kernels

    calls = []
    monkeypatch.setattr(kernels, "blocked_attention", lambda *a: calls.append("blocked") or blocked_attention(*a))
    monkeypatch.setattr(kernels, "cpu_has_amx", lambda: amx)
    model = set_mvit_attention(tiny_model(), "auto")
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    blocks = [] if amx else ["blocked"] * len(model.visual_encoder.blocks)
    with torch.no_grad():
        model(**inputs)
        assert calls == []
        with torch.autocast("cpu", torch.bfloat16):
            model(**inputs)
        assert calls == blocks
        calls.clear()
        model.to(torch.bfloat16)(**{name: value.to(torch.bfloat16) for name, value in inputs.items()})
        assert calls == blocks
    model.float()
    calls.clear()
    model.train()(**inputs, labels=torch.rand(1, *model.config.image_size)).loss.backward()
    assert calls == []


def test_cpu_has_amx_reads_the_cpu():
    """`cpu_has_amx` is PyTorch's AMX probe, and agrees with the CPU's flags where Linux lists them."""
    from dtfsal_hf.layers import cpu_has_amx

    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_amx() == ("amx_tile" in flags)


def test_cpu_training_takes_the_explicit_attention_form(monkeypatch):
    """With gradients on a CPU the MViT attention's `scaled_dot_product_attention` runs with the fused kernels
    off (the math form); under `no_grad` the fused kernel stays allowed."""
    import dtfsal_hf.mvit_attention as kernels

    fused_allowed = []

    class Functional:
        """torch.nn.functional, with scaled_dot_product_attention recording whether fused kernels are allowed."""

        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def scaled_dot_product_attention(*args, **kwargs):
            fused_allowed.append(torch.backends.cuda.flash_sdp_enabled())
            return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)

    monkeypatch.setattr(kernels, "F", Functional())
    model = set_mvit_attention(tiny_model(), "sdpa")
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    blocks = len(model.visual_encoder.blocks)
    with torch.no_grad():
        model(**inputs)
    assert fused_allowed == [True] * blocks
    fused_allowed.clear()
    model.train()(**inputs, labels=torch.rand(1, *model.config.image_size)).loss.backward()
    assert fused_allowed == [False] * blocks


def test_gradients_match():
    """Every kernel's fp32 gradients against the eager form's and against float64's: the whole model's gradient
    within 1e-4 of float64's in norm (the correct kernels give about 5e-6; PyTorch's fused CPU attention run
    forward and backward on AVX-512 gave 1e-3, and training on a CPU now takes the explicit form)."""
    import copy
    import math

    model = tiny_model().train()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    labels = torch.rand(2, *model.config.image_size)

    def gradients_of(attention, dtype):
        copied = set_mvit_attention(copy.deepcopy(model).to(dtype), attention)
        typed = {k: v.to(dtype) for k, v in inputs.items()}
        copied(**typed, labels=labels.to(dtype)).loss.backward()
        return {n: p.grad.double() for n, p in copied.named_parameters() if p.grad is not None}

    reference = gradients_of("eager", torch.float64)
    gradients = {attention: gradients_of(attention, torch.float32) for attention in ("eager", "sdpa", "auto")}
    for attention, found in gradients.items():
        assert found.keys() == reference.keys()
        error = math.sqrt(sum(((found[n] - g) ** 2).sum().item() for n, g in reference.items())
                          / sum((g ** 2).sum().item() for g in reference.values()))
        assert error < 1e-4, (attention, error)
    for attention in ("sdpa", "auto"):
        for name, expected in gradients["eager"].items():
            torch.testing.assert_close(gradients[attention][name], expected, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("batch", [1, 2])
def test_pool_tokens_is_torchvisions_pool(batch):
    """`pool_tokens` (channels kept innermost) gives torchvision's `Pool.forward` bit for bit, for queries, keys and
    values taken from a fused qkv projection as the attention takes them (not contiguous), in fp32 and under bf16
    autocast with channels-last weights, and the same gradients; the same for the skip connection's max pooling
    of (B, tokens, C) (`TokenPool`), values and gradients."""
    import copy

    from torchvision.models.video import mvit_v2_s

    torch.manual_seed(0)
    attention = mvit_v2_s().blocks[1].attn
    thw = (4, 8, 6)
    for pool in (attention.pool_q, attention.pool_k, attention.pool_v):
        heads, dim = attention.num_heads, attention.head_dim
        fused = torch.randn(batch, 1 + 4 * 8 * 6, 3, heads, dim, requires_grad=True)
        x = fused.transpose(1, 3)[:, :, 0]  # (B, heads, tokens, dim), strided as in the attention
        expected, expected_thw = pool(x, thw)
        got, got_thw = pool_tokens(pool, x, thw)
        assert got_thw == expected_thw and torch.equal(got, expected)
        grads = torch.autograd.grad(expected.square().sum(), [fused, *pool.parameters()])
        for mine, theirs in zip(torch.autograd.grad(got.square().sum(), [fused, *pool.parameters()]), grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        channels_last = copy.deepcopy(pool).to(memory_format=torch.channels_last_3d)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            assert torch.equal(pool_tokens(channels_last, x, thw)[0], channels_last(x, thw)[0])
        flat = x[0].detach()
        assert torch.equal(pool_tokens(pool, flat, thw)[0], pool(flat, thw)[0])
    skip = mvit_v2_s().blocks[1].pool_skip
    assert type(skip) is Pool and isinstance(skip.pool, torch.nn.MaxPool3d)
    tokens = torch.randn(batch, 1 + 4 * 8 * 6, 96, requires_grad=True)
    expected, expected_thw = skip(tokens, thw)
    fast = TokenPool(skip.pool, None)
    got, got_thw = fast(tokens, thw)
    assert got_thw == expected_thw == (4, 4, 3) and torch.equal(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), tokens)[0],
                               torch.autograd.grad(expected.square().sum(), tokens)[0], rtol=0, atol=0)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(fast(tokens.to(dtype), thw)[0], skip(tokens.to(dtype), thw)[0])


@pytest.mark.parametrize("attention", ["sdpa", "blocked", "auto"])
def test_fast_kernels_pool_through_pool_tokens(attention, monkeypatch):
    """The fast kernels pool q, k and v and the skip connection with `pool_tokens`, the eager form with
    torchvision's own `Pool`."""
    from torchvision.models.video import mvit_v2_s

    from dtfsal_hf import mvit_attention

    calls = []
    real = mvit_attention.pool_tokens
    monkeypatch.setattr(mvit_attention, "pool_tokens", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    block = mvit_v2_s().blocks[1]
    x = torch.randn(1, 1 + 4 * 8 * 6, block.attn.qkv.in_features)
    with torch.no_grad():
        expected = block(x, (4, 8, 6))[0]
        assert calls == []
        set_mvit_attention(block, attention)
        assert type(block.pool_skip) is TokenPool
        got = block(x, (4, 8, 6))[0]
    assert len(calls) == 4
    set_mvit_attention(block, "eager")
    assert type(block.pool_skip) is Pool
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


NATIVE_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not NATIVE_BF16, reason="oneDNN's bf16 linear needs a CPU with AVX-512")
@pytest.mark.parametrize("shape", [(1, 97, 48), (2, 33, 48)])
def test_fused_linear_is_autocasts_linear_and_gelu(shape):
    """At CPU bf16-autocast inference `fused_linear` is oneDNN's fused kernel: the product and bias bit-equal to
    autocast's linear, its GELU applied before the rounding to bf16."""
    from dtfsal_hf import mvit_attention

    torch.manual_seed(0)
    linear, x = torch.nn.Linear(48, 160), torch.randn(shape)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert mvit_attention._fused_linear_applies(x)
        plain, fused = linear(x), fused_linear(linear, x)
        assert fused.dtype == torch.bfloat16 and torch.equal(fused, plain)
        got = {a: fused_linear(linear, x, gelu=a).float() for a in ("none", "tanh")}
    # GELU of the product before its rounding to bf16, then rounded once: within one bf16 rounding (2^-8 relative)
    # of the exact value from the same bf16 operands, and within two of autocast's linear then `F.gelu`.
    exact = torch.nn.functional.linear(x.bfloat16().double(), linear.weight.bfloat16().double(), linear.bias.bfloat16().double())
    for approximate, value in got.items():
        torch.testing.assert_close(value.double(), torch.nn.functional.gelu(exact, approximate=approximate), rtol=2**-8, atol=1e-5)
        torch.testing.assert_close(value, torch.nn.functional.gelu(plain, approximate=approximate).float(), rtol=2**-7, atol=1e-2)
    assert not torch.equal(got["none"], got["tanh"])  # the approximation asked for is the one applied


def test_fused_linear_is_the_module_elsewhere():
    """Outside bf16 autocast, with gradients or on fp32 alone, `fused_linear` is the module (and `F.gelu`)."""
    from dtfsal_hf import mvit_attention

    torch.manual_seed(0)
    linear, x = torch.nn.Linear(48, 160), torch.randn(1, 97, 48)
    with torch.no_grad():
        assert not mvit_attention._fused_linear_applies(x)
        assert torch.equal(fused_linear(linear, x, gelu="none"), torch.nn.functional.gelu(linear(x)))
    with torch.autocast("cpu", torch.bfloat16):
        assert not mvit_attention._fused_linear_applies(x)  # gradients flow
        y = fused_linear(linear, x)
        assert torch.equal(y, linear(x))
        y.float().sum().backward()
    assert linear.weight.grad is not None


@pytest.mark.parametrize("attention", ["sdpa", "blocked", "auto"])
def test_fast_kernels_run_the_blocks_mlps_fused(attention, monkeypatch):
    """The fast kernels give the blocks `TokenMLP` (eager puts back torchvision's `MLP`), which calls
    `fused_linear` for both of its linear layers at CPU bf16 inference and is `MLP` in fp32."""
    from torchvision.models.video import mvit_v2_s

    from dtfsal_hf import mvit_attention

    torch.manual_seed(0)
    block = mvit_v2_s().blocks[1].eval()
    x = torch.randn(1, 1 + 4 * 8 * 6, block.attn.qkv.in_features)
    tokens = torch.randn(1, 1 + 4 * 8 * 6, block.mlp[0].in_features)  # the MLP's input: the block's output width
    with torch.no_grad():
        expected = block.mlp(tokens)
        set_mvit_attention(block, attention)
        assert type(block.mlp) is TokenMLP
        assert torch.equal(block.mlp(tokens), expected)
        if NATIVE_BF16:
            calls = []
            real = mvit_attention.fused_linear
            monkeypatch.setattr(mvit_attention, "fused_linear", lambda *a, **k: calls.append(k.get("gelu")) or real(*a, **k))
            with torch.autocast("cpu", torch.bfloat16):
                with_autocast = MLP.forward(block.mlp, tokens)
                got = block.mlp(tokens)
                block(x, (4, 8, 6))
            assert calls[:2] == ["none", None] and len(calls) == 2 + 4  # the MLP's two, then qkv, project, MLP's two
            torch.testing.assert_close(got.float(), with_autocast.float(), rtol=0.02, atol=0.02)
    set_mvit_attention(block, "eager")
    assert type(block.mlp) is MLP


def test_switching_keeps_keys_and_round_trips():
    model = tiny_model()
    keys = list(model.state_dict())
    for attention, kind in FAST.items():
        set_mvit_attention(model, attention)
        assert list(model.state_dict()) == keys
        assert all(type(m) is kind for m in model.modules() if isinstance(m, MultiscaleAttention))
    set_mvit_attention(model, "eager")
    assert all(type(m) is MultiscaleAttention for m in model.modules() if isinstance(m, MultiscaleAttention))


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        set_mvit_attention(tiny_model(), "flash")


def test_the_kernel_travels_with_the_model(tmp_path):
    model = tiny_model()
    assert model.config.mvit_attention == "eager" and mvit_attention_of(model) == "eager"
    assert model.set_mvit_attention("blocked") is model
    assert model.config.mvit_attention == "blocked" and mvit_attention_of(model) == "blocked"
    model.save_pretrained(tmp_path)
    loaded = DTFSalModel.from_pretrained(tmp_path)
    assert loaded.config.mvit_attention == "blocked" and mvit_attention_of(loaded) == "blocked"
    built = DTFSalModel(DTFSalConfig.tiny(mvit_attention="sdpa"))
    assert mvit_attention_of(built) == "sdpa"


def test_the_configuration_names_the_same_kernels_and_refuses_others():
    from dtfsal_hf.configuration_dtfsal import _MVIT_ATTENTIONS

    assert _MVIT_ATTENTIONS == MVIT_ATTENTIONS
    with pytest.raises(ValueError, match="`mvit_attention` must be one of"):
        DTFSalConfig.tiny(mvit_attention="flash")
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_model().set_mvit_attention("flash")
