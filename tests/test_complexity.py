"""`dtfsal info`'s counts are made on the meta device: the same parameters, multiply-accumulates and FLOPs as a
run on real tensors, at any size in seconds."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.complexity import count_macs_and_flops, count_parameters, describe_model, in_papers_token_order, meta_model
from dtfsal_hf.layers import LearnableTokens

pytestmark = pytest.mark.usefixtures("one_thread")


def _cpu_counts(config: DTFSalConfig) -> tuple[int, dict, int]:
    torch.manual_seed(0)
    model = in_papers_token_order(DTFSalModel(config).eval())
    return count_parameters(model), *count_macs_and_flops(model, DTFSalModel.build_dummy_inputs(config))


def _meta_counts(config: DTFSalConfig) -> tuple[int, dict, int]:
    model = meta_model(config)
    return count_parameters(model), *count_macs_and_flops(model, DTFSalModel.build_dummy_inputs(config, device="meta"))


def test_meta_counts_are_a_cpu_runs_for_the_visual_model():
    config = DTFSalConfig.tiny(use_audio=False)
    meta, cpu = _meta_counts(config), _cpu_counts(config)
    assert meta == cpu and meta[2] > 2 * sum(meta[1].values()) > 0


def test_meta_counts_the_audio_attention_a_cpu_run_does_not():
    """On a CPU `scaled_dot_product_attention` (the audio tokens' attention) runs a fused kernel that
    FlopCounterMode has no formula for; with the explicit (math) kernel forced, the CPU count is meta's."""
    config = DTFSalConfig.tiny()
    meta, cpu = _meta_counts(config), _cpu_counts(config)
    assert meta[:2] == cpu[:2] and meta[2] > cpu[2]
    with sdpa_kernel(SDPBackend.MATH):
        assert _cpu_counts(config) == meta


def test_the_mvit_attention_is_counted_in_its_explicit_form_whatever_the_kernel():
    explicit = _meta_counts(DTFSalConfig.tiny(use_audio=False))
    for kernel in ("sdpa", "blocked"):
        config = DTFSalConfig.tiny(use_audio=False, mvit_attention=kernel)
        assert _meta_counts(config) == explicit
        assert config.mvit_attention == kernel


def test_full_size_figures():
    """The paper's configurations, counted on meta in seconds: the figures counted before on real tensors, but
    for the audio tokens' attention (0.30 GFLOPs) that a CPU run left out."""
    assert describe_model().splitlines() == [
        "DTFSal: 32 x 224 x 384 frames",
        "parameters: 49.08 M (49,076,337); fp32 size 187.21 MiB = 196.31 MB",
        "conv + linear multiply-accumulates: 283.72 G (the paper's 'GFLOPs')",
        "  visual_encoder: 169.63 G",
        "  feature_enhancement: 21.70 G",
        "  token_blocks: 38.01 G",
        "  audio_encoder: 25.68 G",
        "  fusion_blocks: 12.04 G",
        "  decoder_heads: 16.66 G",
        "  fuse_maps: 0.00 G",
        "FlopCounterMode total: 909.61 GFLOPs (2 per MAC, attention included)",
        "paper: 49.08 M parameters, 297.91 GFLOPs, 187.26 MB",
    ]
    visual = describe_model(visual_only=True).splitlines()
    assert visual[1] == "parameters: 40.65 M (40,649,245); fp32 size 155.06 MiB = 162.60 MB"
    assert visual[2] == "conv + linear multiply-accumulates: 246.00 G (the paper's 'GFLOPs')"
    assert visual[-2] == "FlopCounterMode total: 833.88 GFLOPs (2 per MAC, attention included)"


def test_a_clip_with_its_frame_times_is_counted_on_meta_as_on_the_cpu():
    """A real video's clip carries `frame_times` (the benchmark's `--video` input); their values cannot be checked
    on the meta device, their shape is, and the counts are those of the same inputs on real tensors."""
    config = DTFSalConfig.tiny()
    times = torch.arange(2 * config.num_frames, dtype=torch.float32).view(1, config.num_frames, 2) / 100 - 1
    inputs = {**DTFSalModel.build_dummy_inputs(config), "frame_times": times}
    torch.manual_seed(0)
    with sdpa_kernel(SDPBackend.MATH):
        cpu = count_macs_and_flops(in_papers_token_order(DTFSalModel(config).eval()), inputs)
    on_meta = {name: torch.empty_like(value, device="meta") for name, value in inputs.items()}
    assert count_macs_and_flops(meta_model(config), on_meta) == cpu
    with pytest.raises(ValueError, match="frame_times"):
        count_macs_and_flops(meta_model(config), {**on_meta, "frame_times": on_meta["frame_times"][:, :1]})


def test_token_paths_are_counted_in_the_papers_order():
    """The counts project each frame's token mixture, as the paper does; the model projects its five tokens once a
    call (`LearnableTokens.project_tokens_once`): at full size 9 x 192 x 192 multiply-accumulates a pixel for each of
    the 8 - 5 frames it saves at the four levels (56 x 96 down to 7 x 12)."""
    config = DTFSalConfig()
    inputs = DTFSalModel.build_dummy_inputs(config, device="meta")
    model = meta_model(config)
    assert all(not m.project_tokens_once for m in model.modules() if isinstance(m, LearnableTokens))
    paper = count_macs_and_flops(model, inputs)[0]
    once = count_macs_and_flops(in_papers_token_order(model, paper=False), inputs)[0]
    saved = 9 * 192 * 192 * (8 - 5) * (56 * 96 + 28 * 48 + 14 * 24 + 7 * 12)
    assert sum(paper.values()) - sum(once.values()) == saved == 7_106_641_920
