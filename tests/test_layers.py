"""LTEB, DLTFB and AMFB as stand-alone layers: any sizes, exact properties, gradients."""

from __future__ import annotations

import pytest
import torch

from dtfsal_hf.layers import AMFB, DLTFB, LTEB, axial_shift


@pytest.mark.parametrize("shape", [(2, 8, 1, 5, 7), (1, 12, 3, 16, 9), (3, 4, 2, 1, 1)])
@pytest.mark.parametrize("layer", ["lteb", "dltfb"])
def test_token_blocks_keep_any_shape(layer, shape):
    channels = shape[1]
    block = LTEB(channels, num_tokens=3, token_dim=4, token_size=3) if layer == "lteb" else DLTFB(
        channels, num_tokens=3, token_dim=4, token_size=3, shift_groups=3, hidden_dim=6
    )
    x = torch.randn(shape, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_lteb_with_silent_token_projection_is_identity():
    block = LTEB(6, token_dim=4, token_size=3)
    torch.nn.init.zeros_(block.token_path.token_proj.weight)
    torch.nn.init.zeros_(block.token_path.token_proj.bias)
    x = torch.randn(2, 6, 3, 5, 5)
    assert torch.equal(block(x), x)


def test_lteb_is_x_times_token_map_plus_x():
    block = LTEB(6, token_dim=4, token_size=3)
    x = torch.randn(2, 6, 3, 5, 5)
    assert torch.allclose(block(x), x * block.token_path(x) + x)


def test_lteb_token_weights_are_a_softmax_mixture():
    block = LTEB(4, num_tokens=2, token_dim=1, token_size=1)
    with torch.no_grad():
        block.token_path.tokens.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
        block.token_path.token_weights.weight.zero_()
        block.token_path.token_weights.bias.copy_(torch.tensor([0.0, 0.0]))
        block.token_path.token_proj.weight.zero_()
        block.token_path.token_proj.weight[:, 0, 0, 1, 1] = 1.0  # centre tap: P'' = K
        block.token_path.token_proj.bias.zero_()
    x = torch.randn(1, 4, 2, 3, 3)
    # Equal weights mix the constant tokens 1 and 3 into 2 everywhere: out = 2x + x.
    assert torch.allclose(block(x), 3 * x, atol=1e-6)


def test_axial_shift_rolls_groups_by_offset():
    x = torch.arange(5 * 4, dtype=torch.float32).view(1, 5, 1, 1, 4).repeat(1, 1, 1, 2, 1)
    shifted = axial_shift(x, groups=5, dim=4)
    for group in range(5):
        assert torch.equal(shifted[0, group], torch.roll(x[0, group], group - 2, dims=-1))
    # Rolling by the opposite offsets undoes the shift.
    restored = torch.cat([torch.roll(c, -(j - 2), dims=4) for j, c in enumerate(torch.chunk(shifted, 5, dim=1))], dim=1)
    assert torch.equal(restored, x)


def test_dltfb_with_silent_branches_is_identity():
    block = DLTFB(10, token_dim=4, token_size=3)
    for conv in (block.token_path.token_proj, block.reduce):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(1, 10, 2, 6, 6)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("visual_shape,audio_shape", [((2, 8, 4, 6, 10), (2, 16, 9, 2, 3)), ((1, 8, 1, 3, 3), (1, 16, 1, 1, 1))])
def test_amfb_shapes_and_gradients(visual_shape, audio_shape):
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6).train()
    visual = torch.randn(visual_shape, requires_grad=True)
    audio = torch.randn(audio_shape, requires_grad=True)
    out = block(visual, audio)
    assert out.shape == visual.shape
    out.square().mean().backward()
    assert visual.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_amfb_is_score_weighted_sum_of_streams():
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6).eval()
    visual, audio = torch.randn(2, 8, 2, 5, 5), torch.randn(2, 16, 9, 2, 3)
    with torch.no_grad():
        projected = torch.nn.functional.interpolate(block.audio_proj(audio), size=(2, 5, 5), mode="trilinear")
        fused = torch.cat([visual, projected], dim=1)
        streams = [block.local_stream(fused), block.global_stream(fused), block.adaptive_stream(fused)]
        scores = torch.sigmoid(block.stream_scores(torch.cat(streams, 1).mean(dim=(2, 3, 4))))
        expected = sum(scores[:, i].view(2, 1, 1, 1, 1) * s for i, s in enumerate(streams))
        assert torch.allclose(block(visual, audio), expected, atol=1e-6)


def test_amfb_audio_steers_the_output():
    torch.manual_seed(0)
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6).eval()
    visual = torch.randn(1, 8, 2, 5, 5)
    with torch.no_grad():
        a = block(visual, torch.randn(1, 16, 9, 2, 3))
        b = block(visual, torch.randn(1, 16, 9, 2, 3))
    assert (a - b).abs().max() > 1e-3


def test_layers_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"LTEB expects features of shape \(batch, 6, time, height, width\), got \(2, 5, 3, 4\)"):
        LTEB(6)(torch.randn(2, 5, 3, 4))
    with pytest.raises(ValueError, match="DLTFB expects"):
        DLTFB(6)(torch.randn(1, 4, 2, 3, 3))
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6)
    with pytest.raises(ValueError, match="AMFB \\(audio\\) expects features of shape \\(batch, 16"):
        block(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 9, 16, 2, 3))
    with pytest.raises(ValueError, match="batches of one size"):
        block(torch.randn(2, 8, 2, 3, 3), torch.randn(1, 16, 9, 2, 3))


def test_layers_module_needs_no_transformers():
    import subprocess
    import sys
    from pathlib import Path

    layers_file = Path(__file__).resolve().parents[1] / "dtfsal_hf" / "layers.py"
    # `dtfsal_hf/__init__` imports transformers; the layers module on its own must not.
    code = (
        "import importlib.util, sys\n"
        "sys.modules['transformers'] = None\n"
        f"spec = importlib.util.spec_from_file_location('layers', {str(layers_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(module.LTEB(4)(__import__('torch').randn(1, 4, 1, 2, 2)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 4, 1, 2, 2])" in result.stdout


def test_float32_deform_conv_keeps_the_callers_dtype():
    """Float32DeformConv2d is torchvision's DeformConv2d (same keys) computed in float32: in bfloat16 it gives the
    float32 result of the bfloat16 values, rounded once; torchvision alone has no bfloat16 CPU kernel."""
    from torchvision.ops import DeformConv2d

    from dtfsal_hf.layers import Float32DeformConv2d

    torch.manual_seed(0)
    plain = DeformConv2d(6, 4, 3, padding=1)
    wrapped = Float32DeformConv2d(6, 4, 3, padding=1)
    wrapped.load_state_dict(plain.state_dict())
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    x, offset = torch.randn(2, 6, 5, 7), torch.randn(2, 18, 5, 7)
    torch.testing.assert_close(wrapped(x, offset), plain(x, offset), rtol=0, atol=0)
    wrapped.to(torch.bfloat16)
    half = wrapped(x.bfloat16(), offset.bfloat16())
    assert half.dtype == torch.bfloat16
    plain.weight.data = plain.weight.data.bfloat16().float()
    plain.bias.data = plain.bias.data.bfloat16().float()
    expected = plain(x.bfloat16().float(), offset.bfloat16().float()).bfloat16()
    torch.testing.assert_close(half, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="BFloat16"):
        plain.to(torch.bfloat16)(x.bfloat16(), offset.bfloat16())
