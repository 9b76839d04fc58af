"""Fusion blocks, decoders and the audio encoder as stand-alone parts: exact shapes and computations, gradients,
the built-in defaults equal to the model's own path, and full-size counts next to the paper's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.audio_encoders import VGGishAudioEncoder
from dtfsal_hf.decoders import FrameUpsample, MultiLevelDecoder, SingleDecoder, UNetDecoder, resize_frames
from dtfsal_hf.fusion import ConcatFusion, CrossAttentionFusion
from dtfsal_hf.layers import AMFB, audio_token_times
from dtfsal_hf.modeling_dtfsal import frame_step_times, nominal_frame_times

VISUAL, AUDIO = (2, 16, 4, 6, 10), (2, 24, 9, 2, 3)
SMALL_FUSIONS = {
    "amfb": lambda: AMFB(16, 24, audio_proj_dim=8, stream_dim=8, audio_bands=3),
    "amfb_stretch": lambda: AMFB(16, 24, audio_proj_dim=8, stream_dim=8, alignment="stretch"),
    "concat": lambda: ConcatFusion(16, 24, audio_proj_dim=8),
    "cross_attention": lambda: CrossAttentionFusion(16, 24, attention_dim=8, num_heads=2),
}
# Four levels of 16 channels and 4 frames, 16 x 24 at the finest; maps of 64 x 96.
LEVELS = [(2, 16, 4, 16 // 2**i, 24 // 2**i) for i in range(4)]
SMALL_DECODERS = {
    "multi": lambda: MultiLevelDecoder(16, 4, 4, [64, 96], dims=(8, 8, 4)),
    "single": lambda: SingleDecoder(16, 4, 4, [64, 96], dims=(8, 8, 4), fuse_dim=8),
    "unet": lambda: UNetDecoder(16, 4, 4, [64, 96], dims=(12, 8, 8)),
}


def _fuse(block, visual, audio):
    """`block(visual, audio)`, with the tokens' and the steps' times for a block that takes them (8 frames at
    25 fps ending where the sound does, two frames per visual time step)."""
    if not getattr(block, "takes_times", False):
        return block(visual, audio)
    steps = frame_step_times(nominal_frame_times(8, 25.0).expand(visual.shape[0], -1, -1), visual.shape[2])
    return block(visual, audio, audio_times=audio_token_times(audio.shape[2], audio.shape[3]), visual_times=steps)


def _silent_parameters(module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("name", sorted(SMALL_FUSIONS))
def test_fusion_keeps_the_visual_shape_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    block = SMALL_FUSIONS[name]().train()
    visual, audio = torch.randn(VISUAL, requires_grad=True), torch.randn(AUDIO, requires_grad=True)
    out = _fuse(block, visual, audio)
    assert out.shape == VISUAL
    out.square().mean().backward()
    assert visual.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0
    assert not _silent_parameters(block)


@pytest.mark.parametrize("name", sorted(SMALL_FUSIONS))
def test_fusion_refuses_features_of_other_widths(name):
    block = SMALL_FUSIONS[name]()
    with pytest.raises(ValueError, match=r"visual features of shape \(batch, 16, time, height, width\), got \(2, 8, 4, 6, 10\)"
                       if not name.startswith("amfb") else r"AMFB \(visual\) expects"):
        _fuse(block, torch.randn(2, 8, 4, 6, 10), torch.randn(AUDIO))
    with pytest.raises(ValueError, match="batches of one size"):
        _fuse(block, torch.randn(VISUAL), torch.randn(1, *AUDIO[1:]))


def test_concat_fusion_is_a_pointwise_map_of_the_concatenation():
    torch.manual_seed(0)
    block = SMALL_FUSIONS["concat"]().eval()
    visual, audio = torch.randn(VISUAL), torch.randn(AUDIO)
    with torch.no_grad():
        audio_at_level = F.interpolate(block.audio_proj(audio), size=VISUAL[2:], mode="trilinear", align_corners=False)
        expected = block.fuse(torch.cat([visual, audio_at_level], dim=1))
        assert torch.equal(block(visual, audio), expected)


def _reference_cross_attention(block: CrossAttentionFusion, visual, audio):
    """Written out: softmax(Q K^T / sqrt(d)) V per head, Q from visual tokens, K from audio tokens, V from the visual
    features resampled to the audio grid."""
    tokens = lambda x: x.flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, THW, C)
    values_at_audio = F.interpolate(visual, size=audio.shape[2:], mode="trilinear", align_corners=False)
    q = block.query(block.visual_norm(tokens(visual)))
    k = block.key(block.audio_norm(tokens(audio)))
    v = block.value(block.visual_norm(tokens(values_at_audio)))
    heads, dim = block.num_heads, q.shape[-1] // block.num_heads
    outputs = []
    for h in range(heads):
        part = slice(h * dim, (h + 1) * dim)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(dim), dim=-1)
        outputs.append(weights @ v[..., part])
    update = block.out(torch.cat(outputs, dim=-1)).transpose(1, 2).reshape(visual.shape)
    return visual + update


def test_cross_attention_takes_visual_query_and_value_and_audio_key():
    torch.manual_seed(0)
    block = CrossAttentionFusion(16, 24, attention_dim=8, num_heads=2, query_chunk=7).eval()
    visual, audio = torch.randn(VISUAL), torch.randn(AUDIO)
    with torch.no_grad():
        torch.testing.assert_close(block(visual, audio), _reference_cross_attention(block, visual, audio), rtol=1e-5, atol=1e-5)
        # Chunking the queries changes nothing; another sound changes the result (it is the key).
        block.query_chunk = 10_000
        torch.testing.assert_close(block(visual, audio), _reference_cross_attention(block, visual, audio), rtol=1e-5, atol=1e-5)
        assert (block(visual, audio) - block(visual, torch.randn(AUDIO))).abs().max() > 1e-3
        # A silent output projection leaves the visual features as they are.
        torch.nn.init.zeros_(block.out.weight)
        torch.nn.init.zeros_(block.out.bias)
        assert torch.equal(block(visual, audio), visual)


def test_cross_attention_heads_must_divide_its_width():
    with pytest.raises(ValueError, match="multiple of num_heads, got 10 and 4"):
        CrossAttentionFusion(16, 24, attention_dim=10, num_heads=4)


@pytest.mark.parametrize("name", sorted(SMALL_DECODERS))
def test_decoder_shapes_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    decoder = SMALL_DECODERS[name]().train()
    levels = [torch.randn(shape, requires_grad=True) for shape in LEVELS]
    saliency_map, level_maps = decoder(levels)
    assert saliency_map.shape == (2, 64, 96)
    assert bool(((saliency_map >= 0) & (saliency_map <= 1)).all())
    assert (level_maps is None) == (name != "multi")
    if level_maps is not None:
        assert level_maps.shape == (2, 4, 64, 96)
    saliency_map.square().mean().backward()
    assert all(level.grad is not None and level.grad.abs().sum() > 0 for level in levels), "a level is not used"
    assert not _silent_parameters(decoder)


@pytest.mark.parametrize("name", sorted(SMALL_DECODERS))
def test_decoder_refuses_other_levels(name):
    decoder = SMALL_DECODERS[name]()
    levels = [torch.randn(shape) for shape in LEVELS]
    with pytest.raises(ValueError, match="expects 4 levels, got 3"):
        decoder(levels[:3])
    with pytest.raises(ValueError, match=r"level 2 of shape \(batch, 16, time, height, width\), got \(2, 8, 4, 8, 12\)"):
        decoder([levels[0], torch.randn(2, 8, 4, 8, 12), *levels[2:]])


def test_unet_needs_a_width_per_up_step():
    with pytest.raises(ValueError, match=r"one width per up-step \(3\), got \[8, 8\]"):
        UNetDecoder(16, 4, 4, [64, 96], dims=(8, 8))


@pytest.mark.parametrize("shape", [(2, 6, 3, 7, 9), (1, 6, 1, 7, 9)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_resizing_frames_is_trilinear_interpolation_with_time_kept(memory_format, shape):
    """The decoders resize frame by frame (2-D bilinear): trilinear interpolation's time weights are 0 and 1 when
    time is kept, so the two agree to float rounding (values in [0, 1), as after a ReLU: 3e-7 is a few of their
    last bits), in either memory layout, which is kept (a single channels-last frame too, the decoders' last)."""
    torch.manual_seed(0)
    features = torch.rand(shape).to(memory_format=memory_format)
    frames = shape[2]
    for size in [(16, 24), (5, 4), (28, 36)]:
        trilinear = F.interpolate(features, size=(frames, *size), mode="trilinear", align_corners=False)
        resized = resize_frames(features, size)
        assert resized.shape == trilinear.shape and resized.is_contiguous(memory_format=memory_format)
        assert (resized - trilinear).abs().max() <= 3e-7
        # Not any resize agrees: another interpolation of the same frames differs.
        assert (F.interpolate(features, size=(frames, *size), mode="nearest") - trilinear).abs().max() > 0.05
    upsampled = F.interpolate(features, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    assert (FrameUpsample(2.0)(features) - upsampled).abs().max() <= 3e-7


def test_single_decoder_is_one_head_on_the_concatenated_levels():
    torch.manual_seed(0)
    decoder = SMALL_DECODERS["single"]().eval()
    levels = [torch.randn(shape) for shape in LEVELS]
    with torch.no_grad():
        resized = [resize_frames(level, (16, 24)) for level in levels]
        expected = decoder.head(decoder.project(torch.cat(resized, dim=1)))[:, 0, 0]
        assert torch.equal(decoder(levels)[0], expected)


def test_multi_level_decoder_is_the_models_decoder():
    """The model's four heads and fusing convolution, loaded into `MultiLevelDecoder`, give the model's maps."""
    torch.manual_seed(0)
    config = DTFSalConfig.tiny(use_audio=False)
    model = DTFSalModel(config).eval()
    decoder = MultiLevelDecoder(config.feature_dim, 4, config.num_frames // 4, config.image_size, config.decoder_dims)
    state = {key.replace("decoder_heads.", "heads."): value for key, value in model.state_dict().items()
             if key.startswith(("decoder_heads.", "fuse_maps."))}
    decoder.load_state_dict(state)
    videos = torch.randn(1, config.num_frames, 3, *config.image_size)
    captured = []
    hooks = [head.register_forward_pre_hook(lambda m, args: captured.append(args[0])) for head in model.decoder_heads]
    with torch.no_grad():
        output = model(videos)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        saliency_map, level_maps = decoder(captured)
    assert torch.equal(saliency_map, output.saliency_map) and torch.equal(level_maps, output.level_maps)


def test_vggish_audio_encoder_is_the_models_audio_encoder():
    torch.manual_seed(0)
    config = DTFSalConfig.tiny()
    model = DTFSalModel(config).eval()
    encoder = VGGishAudioEncoder(config.num_audio_examples, config.audio_input_size, config.audio_trunk_channels,
                                 config.audio_num_heads, config.audio_head_dim, config.audio_mlp_dim).eval()
    encoder.load_state_dict(model.audio_encoder.state_dict())
    features = torch.randn(2, config.num_audio_examples, 1, *config.audio_input_size)
    with torch.no_grad():
        assert torch.equal(encoder(features), model.audio_encoder(features))
    assert encoder.out_channels == config.audio_dim
    with pytest.raises(ValueError, match=r"divisible by 16 \(one 2 x 2 pool per group\), got \[30, 48\]"):
        VGGishAudioEncoder(9, [30, 48], config.audio_trunk_channels)


def test_full_size_counts_next_to_the_papers():
    """Decoders: single 0.43M, U-Net 2.84M, multi-decoder 1.74M in the paper (within 10%). Fusion blocks per
    level at C* = 192 and VGGish's 512 audio channels."""
    count = lambda module: sum(p.numel() for p in module.parameters())
    with torch.device("meta"):
        decoders = {name: count(build(192, 4, 8, [224, 384])) for name, build in
                    {"single": SingleDecoder, "unet": UNetDecoder, "multi": MultiLevelDecoder}.items()}
        fusions = {"amfb": count(AMFB(192, 512, 88, 56, audio_bands=12)),
                   "amfb_stretch": count(AMFB(192, 512, 128, 112, alignment="stretch")), "concat": count(ConcatFusion(192, 512)),
                   "cross_attention": count(CrossAttentionFusion(192, 512))}
        vggish = VGGishAudioEncoder()
        audio = (count(vggish.trunk), count(vggish.temporal))
    assert decoders == {"single": 423_513, "unet": 2_787_713, "multi": 1_742_729}
    for name, paper in {"single": 0.43e6, "unet": 2.84e6, "multi": 1.74e6}.items():
        assert abs(decoders[name] / paper - 1) < 0.10, name
    assert fusions == {"amfb": 782_261, "amfb_stretch": 798_565, "concat": 127_296, "cross_attention": 141_248}
    assert audio == (4_499_712, 798_336)  # the VGGish trunk's 4.50M and the temporal layer's ~0.8M (SPEC)


@pytest.mark.parametrize("frames, kernel, groups", [(1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 2, 1), (3, 1, 1)])
def test_a_conv3d_spanning_its_input_time_is_the_2d_convolution_of_the_stacked_frames(frames, kernel, groups):
    """TimeSpanConv3d (the decoders' map layers and their last time-halving layer) gives nn.Conv3d's output and
    gradients, as a 2-D convolution when the kernel covers all the input's frames and as nn.Conv3d otherwise,
    with nn.Conv3d's state-dict keys; in either memory layout."""
    from dtfsal_hf.decoders import TimeSpanConv3d

    torch.manual_seed(0)
    reference = torch.nn.Conv3d(4, 6, (kernel, 3, 3), stride=(kernel, 1, 1), padding=(0, 1, 1), groups=groups)
    conv = TimeSpanConv3d(4, 6, (kernel, 3, 3), stride=(kernel, 1, 1), padding=(0, 1, 1), groups=groups)
    conv.load_state_dict(reference.state_dict())
    assert list(conv.state_dict()) == list(reference.state_dict())
    for memory_format in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randn(2, 4, frames, 10, 12).to(memory_format=memory_format).requires_grad_()
        expected, got = reference(x), conv(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
        (expected_grads, got_grads) = (torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
                                       for out, module in ((expected, reference), (got, conv)))
        for a, b in zip(expected_grads, got_grads):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)
    # The 2-D path is taken exactly when the kernel spans the input's frames.
    assert conv._spans_time(x) == (frames == kernel)
    calls = []
    conv2d = F.conv2d
    try:
        F.conv2d = lambda *args, **kwargs: calls.append(args[0].shape) or conv2d(*args, **kwargs)
        conv(x)
    finally:
        F.conv2d = conv2d
    assert calls == ([(2, 4 * frames, 10, 12)] if frames == kernel else [])
