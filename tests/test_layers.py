"""LTEB, DLTFB and AMFB as stand-alone layers: any sizes, exact properties, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dtfsal_hf.layers import AMFB, DLTFB, LTEB, ConvStream, TimeAlignedAudio, audio_token_times, axial_shift, frame_means, time_pooling_weights


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


@pytest.mark.parametrize("batch, time", [(1, 2), (2, 3), (1, 8), (2, 6)])
def test_token_path_projects_the_tokens_or_the_mixture_alike(batch, time):
    """With more time steps than tokens the token path projects the N resized tokens and mixes their maps; with
    fewer it projects each frame's mixture (the paper's order). Both are the same function: values and gradients within
    float32 rounding of the paper's order, written out here."""
    torch.manual_seed(0)
    path = LTEB(6, num_tokens=5, token_dim=4, token_size=3).token_path
    x = torch.randn(batch, 6, time, 7, 9, requires_grad=True)

    def paper_order(features):
        gate = torch.sigmoid(path.gate(features))
        weights = path.token_weights(gate.mean(dim=(3, 4)).transpose(1, 2)).softmax(dim=-1)
        mixture = torch.einsum("btn,nchw->btchw", weights, path.tokens).flatten(0, 1)
        mixture = torch.nn.functional.interpolate(mixture, size=(7, 9), mode="bilinear", align_corners=False)
        return path.token_proj(mixture.unflatten(0, (batch, time)).transpose(1, 2))

    expected = paper_order(x)
    got = path(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    grads = torch.autograd.grad(expected.square().sum(), [x, *path.parameters()])
    for mine, theirs in zip(torch.autograd.grad(got.square().sum(), [x, *path.parameters()]), grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frame_means_are_the_spatial_means_in_either_layout(dtype):
    """`frame_means` is `mean(dim=(3, 4))` with the channels last, in channels-first and channels-last-3d memory
    (the latter reduced over the outer axes of its (B, T, H, W, C) view: the same sums in another order); LTEB
    gives the same output in both layouts."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5, 7).to(dtype)
    expected = x.float().mean(dim=(3, 4)).transpose(1, 2)
    tolerance = {"rtol": 0, "atol": 1e-6 if dtype == torch.float32 else 1e-2}
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        got = frame_means(x.contiguous(memory_format=layout))
        assert got.shape == (2, 3, 6) and got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, **tolerance)
    block = LTEB(6, num_tokens=2, token_dim=4, token_size=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x.float().contiguous(memory_format=torch.channels_last_3d)), block(x.float()),
                                   rtol=1e-5, atol=1e-6)


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


def times_for(batch: int, steps: int, examples: int, rows: int, step_s: float = 0.16):
    """Token times of the VGGish layout and `steps` visual steps of `step_s` ending where the audio ends."""
    step_starts = (torch.arange(steps) - steps) * step_s
    visual_times = torch.stack([step_starts, step_starts + step_s], dim=-1).expand(batch, -1, -1)
    return audio_token_times(examples, rows), visual_times


@pytest.mark.parametrize("visual_shape,audio_shape", [((2, 8, 4, 6, 10), (2, 16, 9, 2, 3)), ((1, 8, 1, 3, 3), (1, 16, 1, 1, 1))])
@pytest.mark.parametrize("alignment", ["time", "stretch"])
def test_amfb_shapes_and_gradients(visual_shape, audio_shape, alignment):
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, alignment=alignment, audio_bands=audio_shape[-1]).train()
    visual = torch.randn(visual_shape, requires_grad=True)
    audio = torch.randn(audio_shape, requires_grad=True)
    out = block(visual, audio, *times_for(visual_shape[0], visual_shape[2], audio_shape[2], audio_shape[3]))
    assert out.shape == visual.shape
    out.square().mean().backward()
    assert visual.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_audio_token_times_follow_the_vggish_layout():
    times = audio_token_times(9, 7)  # the paper's size: 9 examples, 7 rows of 64 / 7 log-mel frames
    assert times.shape == (63, 2)
    # 152 frames of 25 ms every 10 ms: 1.535 s; frame f stands for the 10 ms around its centre f * 10 + 12.5 ms.
    torch.testing.assert_close(times[0, 0], torch.tensor(0.0075 - 1.535))
    torch.testing.assert_close(times[-1, 1], torch.tensor(-0.0075))
    # One example's rows tile its 0.64 s; consecutive examples start 0.11 s apart.
    example = times[:7]
    torch.testing.assert_close(example[1:, 0], example[:-1, 1])
    torch.testing.assert_close(example[-1, 1] - example[0, 0], torch.tensor(0.64))
    torch.testing.assert_close(times[7:14] - times[:7], torch.full((7, 2), 0.11))


def test_time_pooling_takes_the_step_span_and_what_came_before():
    tokens = torch.tensor([[-0.4, -0.3], [-0.3, -0.2], [-0.2, -0.1], [-0.1, 0.0]])
    steps = torch.tensor([[[-0.2, 0.0], [-0.35, -0.3], [0.5, 0.6]]])
    present, context = time_pooling_weights(tokens, steps)
    torch.testing.assert_close(present[0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(present[0, 1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # A step after the audio window hears the token nearest in time.
    torch.testing.assert_close(present[0, 2], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(context[0, 0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(context[0, 1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # Nothing comes before the window's first token: no context.
    _, first = time_pooling_weights(tokens, torch.tensor([[[-0.5, -0.35]]]))
    assert torch.equal(first, torch.zeros(1, 1, 4))


def test_amfb_time_step_hears_its_present_and_past_not_its_future():
    torch.manual_seed(0)
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, audio_bands=4).eval()
    with torch.no_grad():
        block.stream_scores.weight.zero_()  # scores from the global pooling would mix every step into each
    # One 0.64 s example, 4 rows of 0.16 s; 2 visual steps spanning the last two rows.
    audio_times = audio_token_times(1, 4)
    visual_times = audio_times[None, 2:]
    visual, audio = torch.randn(1, 8, 2, 5, 5), torch.randn(1, 16, 1, 4, 4)
    changed_last = audio.clone()
    changed_last[:, :, :, 3] = torch.randn(1, 16, 1, 4)  # the last 0.16 s: the second step's present only
    changed_first = audio.clone()
    changed_first[:, :, :, 0] = torch.randn(1, 16, 1, 4)  # the oldest 0.16 s: context of both steps
    with torch.no_grad():
        reference, last, first = (block(visual, a, audio_times, visual_times) for a in (audio, changed_last, changed_first))
    assert torch.equal(last[:, :, 0], reference[:, :, 0])
    assert (last[:, :, 1] - reference[:, :, 1]).abs().max() > 1e-3
    assert (first[:, :, 0] - reference[:, :, 0]).abs().max() > 1e-3


def test_time_aligned_projection_keeps_the_mel_bands_apart():
    block = TimeAlignedAudio(audio_dim=2, audio_bands=3, proj_dim=1)
    with torch.no_grad():
        block.band_proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))  # channel 0, band 0 only
        block.band_proj.bias.zero_()
    low, high = torch.zeros(1, 2, 1, 1, 3), torch.zeros(1, 2, 1, 1, 3)
    low[0, 0, 0, 0, 0], high[0, 0, 0, 0, 2] = 1.0, 1.0  # the same energy in the lowest and in the highest band
    token_times, step_times = torch.tensor([[-1.0, 0.0]]), torch.tensor([[[-1.0, 0.0]]])
    assert block(low, token_times, step_times)[0, 0, 0] == 1.0 and block(high, token_times, step_times)[0, 0, 0] == 0.0


def test_step_audio_joins_the_reduction_normalised_and_broadcast_over_every_pixel():
    stream = ConvStream(8, 6, 8, kernel_size=3, step_dim=5).train()
    visual, steps = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 3, 5)
    # Each part normalised per channel over the batch (visual: and every pixel and step; sound: every step), the
    # sound then the same at every pixel of its step.
    def normalised(x, dims):
        return (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + 1e-5)

    picture = normalised(stream.reduce(visual), (0, 2, 3, 4))
    sound = normalised(stream.step_reduce(steps), (0, 1)).transpose(1, 2)[..., None, None]
    torch.testing.assert_close(stream.reduced(visual, steps), picture + sound.expand(-1, -1, -1, 4, 4))
    # The sound's share no longer depends on how large the visual features are.
    torch.testing.assert_close(stream.reduced(100 * visual, steps), stream.reduced(visual, steps), rtol=1e-4, atol=1e-4)
    # One clip of one step in training: no batch statistics, the running ones are used (no error).
    assert stream.reduced(visual[:1, :, :1], steps[:1, :1]).shape == (1, 6, 1, 4, 4)


def test_amfb_stretch_is_score_weighted_sum_of_streams():
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, alignment="stretch").eval()
    visual, audio = torch.randn(2, 8, 2, 5, 5), torch.randn(2, 16, 9, 2, 3)
    with torch.no_grad():
        projected = torch.nn.functional.interpolate(block.audio_proj(audio), size=(2, 5, 5), mode="trilinear")
        fused = torch.cat([visual, projected], dim=1)
        streams = [block.local_stream(fused), block.global_stream(fused), block.adaptive_stream(fused)]
        scores = torch.sigmoid(block.stream_scores(torch.cat(streams, 1).mean(dim=(2, 3, 4))))
        expected = sum(scores[:, i].view(2, 1, 1, 1, 1) * s for i, s in enumerate(streams))
        assert torch.allclose(block(visual, audio), expected, atol=1e-6)


def test_amfb_time_is_score_weighted_sum_of_streams():
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, audio_bands=3).eval()
    visual, audio = torch.randn(2, 8, 2, 5, 5), torch.randn(2, 16, 9, 2, 3)
    audio_times, visual_times = times_for(2, 2, 9, 2)
    with torch.no_grad():
        steps = block.audio_steps(audio, audio_times, visual_times)  # (B, T, 2 D)
        streams = [block.local_stream(visual, steps), block.global_stream(visual, steps), block.adaptive_stream(visual, steps)]
        scores = torch.sigmoid(block.stream_scores(torch.cat(streams, 1).mean(dim=(2, 3, 4))))
        expected = sum(scores[:, i].view(2, 1, 1, 1, 1) * s for i, s in enumerate(streams))
        assert torch.allclose(block(visual, audio, audio_times, visual_times), expected, atol=1e-6)
    assert steps.shape == (2, 2, 8)


@pytest.mark.parametrize("alignment", ["time", "stretch"])
def test_amfb_audio_steers_the_output(alignment):
    torch.manual_seed(0)
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, alignment=alignment, audio_bands=3).eval()
    visual = torch.randn(1, 8, 2, 5, 5)
    times = times_for(1, 2, 9, 2)
    with torch.no_grad():
        a = block(visual, torch.randn(1, 16, 9, 2, 3), *times)
        b = block(visual, torch.randn(1, 16, 9, 2, 3), *times)
    assert (a - b).abs().max() > 1e-3


def test_layers_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"LTEB expects features of shape \(batch, 6, time, height, width\), got \(2, 5, 3, 4\)"):
        LTEB(6)(torch.randn(2, 5, 3, 4))
    with pytest.raises(ValueError, match="DLTFB expects"):
        DLTFB(6)(torch.randn(1, 4, 2, 3, 3))
    block = AMFB(8, 16, audio_proj_dim=4, stream_dim=6, audio_bands=3)
    times = times_for(1, 2, 9, 2)
    with pytest.raises(ValueError, match="AMFB \\(audio\\) expects features of shape \\(batch, 16"):
        block(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 9, 16, 2, 3), *times)
    with pytest.raises(ValueError, match="batches of one size"):
        block(torch.randn(2, 8, 2, 3, 3), torch.randn(1, 16, 9, 2, 3), *times)
    with pytest.raises(ValueError, match="needs audio_times and visual_times"):
        block(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 16, 9, 2, 3))
    with pytest.raises(ValueError, match=r"visual_times must have shape \(1, 2, 2\)"):
        block(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 16, 9, 2, 3), times[0], times[1][:, :1])
    with pytest.raises(ValueError, match=r"expects audio of shape \(batch, 16, examples, rows, 3\)"):
        block(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 16, 9, 2, 4), *times)
    with pytest.raises(ValueError, match="alignment must be one of"):
        AMFB(8, 16, alignment="trilinear")


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


@pytest.mark.parametrize("groups, offset_groups, stride, padding, dilation", [
    (1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1, 2, 1, 0, 1), (2, 2, 2, 2, 1), (1, 1, 2, 0, 2), (1, 2, 1, 2, 2),
])
def test_sampled_deform_conv_is_torchvisions_function(groups, offset_groups, stride, padding, dilation, monkeypatch):
    """`sampled_deform_conv2d` (grid_sample of the taps, one matrix product) gives torchvision's `deform_conv2d`
    within float32 rounding: offsets that reach past the image, integer and zero offsets, a mask, groups, offset
    groups, stride, padding and dilation, images in chunks (a column budget of one image) or all at once, images
    of one row or one column."""
    from torchvision.ops import deform_conv2d

    from dtfsal_hf import layers

    torch.manual_seed(0)
    checked = 0
    for images, height, width in [(3, 9, 7), (2, 1, 6), (1, 6, 1), (4, 5, 5)]:
        weight, bias = torch.randn(6, 4 // groups, 3, 3), torch.randn(6)
        x = torch.randn(images, 4, height, width)
        out_h = (height + 2 * padding - 2 * dilation - 1) // stride + 1
        out_w = (width + 2 * padding - 2 * dilation - 1) // stride + 1
        if out_h < 1 or out_w < 1:
            continue
        shape = (images, 2 * offset_groups * 9, out_h, out_w)
        for offset in (3 * torch.randn(shape), torch.randint(-4, 5, shape).float(), torch.zeros(shape)):
            mask = torch.rand(images, offset_groups * 9, out_h, out_w)
            for use_mask, budget in ((None, 1 << 24), (mask, 1 << 24), (mask, 1)):
                monkeypatch.setattr(layers, "DEFORM_COLUMNS", budget)
                kwargs = dict(stride=(stride, stride), padding=(padding, padding), dilation=(dilation, dilation), mask=use_mask)
                expected = deform_conv2d(x, offset, weight, bias, **kwargs)
                got = layers.sampled_deform_conv2d(x, offset, weight, bias, **kwargs)
                torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * max(1.0, expected.abs().max().item()))
                checked += 1
    assert checked >= 9
    empty = layers.sampled_deform_conv2d(torch.randn(0, 4, 5, 5), torch.randn(0, 18, 5, 5), torch.randn(6, 4, 3, 3),
                                         padding=(1, 1))
    assert empty.shape == (0, 6, 5, 5)


def test_float32_deform_conv_samples_with_grid_sample_only_without_autograd(monkeypatch):
    """Float32DeformConv2d runs `sampled_deform_conv2d` on the CPU in no-grad and inference mode (torchvision's values
    within float32 rounding, in float32 under bf16 autocast as well), and torchvision's operator whenever autograd
    records (training keeps its backward)."""
    from dtfsal_hf import layers

    torch.manual_seed(0)
    conv = layers.Float32DeformConv2d(6, 4, 3, padding=1)
    x, offset, mask = torch.randn(3, 6, 9, 11), 2 * torch.randn(3, 18, 9, 11), torch.rand(3, 9, 9, 11)
    calls = []
    sampled = layers.sampled_deform_conv2d
    monkeypatch.setattr(layers, "sampled_deform_conv2d", lambda *args, **kwargs: calls.append(1) or sampled(*args, **kwargs))
    for use_mask in (None, mask):
        reference = conv(x, offset, use_mask)
        assert reference.requires_grad and calls == []
        for context in (torch.no_grad, torch.inference_mode):
            with context():
                fast = conv(x, offset, use_mask)
            assert not fast.requires_grad and calls == [1]
            torch.testing.assert_close(fast, reference.detach(), rtol=0, atol=1e-5)
            calls.clear()
        # Under bf16 autocast too the sampled form computes in float32, as torchvision's operator does.
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            autocast = conv(x, offset, use_mask)
        assert calls == [1] and autocast.dtype == torch.float32
        torch.testing.assert_close(autocast, reference.detach(), rtol=0, atol=1e-5)
        calls.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv3d_runs_on_onednn_at_cpu_inference_with_nn_conv3ds_values(dtype, monkeypatch):
    """`layers.Conv3d` (and the decoders' `TimeSpanConv3d` built on it) computes nn.Conv3d's function; at CPU
    inference it calls oneDNN's convolution (at a batch-1 size where PyTorch would take its unfolding kernel),
    and with autograd or under autocast it is nn.Conv3d's own call."""
    from dtfsal_hf.decoders import TimeSpanConv3d
    from dtfsal_hf.layers import Conv3d

    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 convolution on this CPU (Conv3d keeps nn.Conv3d's call there)")
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *args: calls.append(args[0].shape) or onednn(*args))
    torch.manual_seed(0)
    cases = [(Conv3d, dict(kernel_size=(1, 3, 3), padding=(0, 1, 1)), 1),
             (Conv3d, dict(kernel_size=3, stride=(2, 1, 2), padding=1, dilation=(1, 2, 1), groups=2), 4),
             (Conv3d, dict(kernel_size=1, bias=False), 3),
             (TimeSpanConv3d, dict(kernel_size=(2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1)), 2)]
    for cls, options, frames in cases:
        reference = nn.Conv3d(4, 6, **options).to(dtype)
        conv = cls(4, 6, **options).to(dtype)
        conv.load_state_dict(reference.state_dict())
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            x = torch.randn(1, 4, frames, 9, 11, dtype=dtype).to(memory_format=memory_format)
            calls.clear()
            with torch.no_grad():
                expected, got = reference(x), conv(x)
            assert calls == [x.shape], (cls, options)
            assert got.dtype == dtype and got.shape == expected.shape
            tolerance = 2e-6 if dtype == torch.float32 else 0.02
            torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=tolerance)
            calls.clear()
            got = conv(x.requires_grad_())  # autograd: nn.Conv3d's call
            assert calls == [] and got.requires_grad
            torch.testing.assert_close(got.detach().float(), expected.float(), rtol=0, atol=tolerance)
    conv = Conv3d(4, 6, 3, padding=1)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # autocast: nn.Conv3d's call, which it casts
        calls.clear()
        assert conv(torch.randn(1, 4, 2, 9, 11)).dtype == torch.bfloat16 and calls == []


@pytest.mark.parametrize("amx", [False, True])
def test_conv3d_trains_in_float32_under_bf16_autocast_on_amx_cpus(amx, monkeypatch):
    """With gradients under bf16 autocast on a CPU with AMX, `layers.Conv3d` computes in float32 (its output in
    bf16, as autocast's), where oneDNN's bf16 kernel gives NaN weight gradients: the weight gradient is then the
    float32 convolution's; elsewhere it is autocast's bf16 one."""
    import dtfsal_hf.layers as layers

    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    torch.manual_seed(0)
    conv = layers.Conv3d(8, 6, kernel_size=(2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1))
    reference = nn.Conv3d(8, 6, kernel_size=(2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1))
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, 4, 12, 14)
    grad = torch.randn(1, 6, 2, 12, 14).bfloat16().float()  # the same upstream gradient in bf16 and float32
    with torch.autocast("cpu", torch.bfloat16):
        output = conv(x)
    output.backward(grad.to(output.dtype))
    reference(x).backward(grad)
    assert output.dtype == torch.bfloat16
    difference = (conv.weight.grad - reference.weight.grad).abs().max().item()
    if amx:
        assert difference < 1e-4
    else:
        assert difference > 1e-3  # bf16 operands


def test_decoder_conv3d_weight_gradient_is_finite_under_bf16_autocast():
    """The decoder head's second layer at the full model's shape (96 -> 48 channels, (2, 3, 3) over 4 x 112 x 192),
    trained under bf16 autocast: oneDNN's AMX kernel gives NaN in its weight gradient (torch 2.14); `Conv3d`'s
    gradient is finite and within bf16 rounding of the float32 one on every CPU."""
    from dtfsal_hf.decoders import TimeSpanConv3d

    torch.manual_seed(0)
    conv = TimeSpanConv3d(96, 48, kernel_size=(2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1), bias=False)
    x = torch.randn(1, 96, 4, 112, 192)
    with torch.autocast("cpu", torch.bfloat16):
        output = conv(x)
    grad = torch.randn(output.shape).bfloat16().float()
    output.backward(grad.to(output.dtype))
    weight_grad = conv.weight.grad.clone()
    assert torch.isfinite(weight_grad).all()
    conv.weight.grad = None
    conv(x).backward(grad)
    assert (weight_grad - conv.weight.grad).abs().max() <= 0.02 * conv.weight.grad.abs().max()


def test_deformable_convolution_refuses_non_finite_offsets_with_autograd():
    """torchvision's deformable convolution reads outside its input at a NaN or infinite offset (a segmentation
    fault on the CPU): with autograd `Float32DeformConv2d` refuses them in one line; without, the sampled form
    gives NaN where they are and does not crash."""
    from dtfsal_hf.layers import Float32DeformConv2d

    conv = Float32DeformConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 7, requires_grad=True)
    for bad in (float("nan"), float("inf")):
        offset = torch.zeros(1, 18, 6, 7)
        offset[0, 3, 2, 2] = bad
        with pytest.raises(ValueError, match="offsets are not finite"):
            conv(x, offset)
        with torch.no_grad():
            output = conv(x, offset)
        nan = torch.isnan(output)
        assert nan[0, :, 2, 2].all() and nan.sum() == output.shape[1]  # NaN where the bad offset is, finite elsewhere
