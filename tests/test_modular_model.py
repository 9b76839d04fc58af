"""DTFSalModel assembled from parts named in its config: each built-in swap at a tiny size trains, saves and loads
(also as remote code without the package), a plugin from another distribution trains, saves and reloads, and
impossible configurations are refused naming the choices."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf import plugins

from dtfsal_hf.layers import DLTFB, LTEB
from dtfsal_hf.modeling_dtfsal import correlation_coefficient, kl_divergence

from isolation import check_remote_model_equals
from plugin_packages import PLUGIN_SOURCE, write_distribution

SMALL_OPTIONS = {
    "s3d": {},
    "swin3d_t": dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=[2, 3, 3], stochastic_depth=0.0),
    "r2plus1d_18": dict(widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], stem_width=6),
    "concat": dict(audio_proj_dim=8),
    "cross_attention": dict(attention_dim=8, num_heads=2),
    "single": dict(fuse_dim=8),
    "unet": dict(dims=[16, 16, 8]),
}
# Every built-in swap once (S3D, of one size only, is built at full size on the meta device below and run in
# tests/test_video_encoders.py).
SWAPS = [
    dict(visual_encoder="swin3d_t", fusion="cross_attention", decoder="single"),
    dict(visual_encoder="r2plus1d_18", fusion="concat", decoder="unet"),
]


def tiny_config(**parts) -> DTFSalConfig:
    options = {f"{kind}_options": SMALL_OPTIONS[name] for kind, name in parts.items() if name in SMALL_OPTIONS}
    return DTFSalConfig.tiny(**parts, **options)


def _loss_and_grads(model, inputs):
    model.zero_grad()
    labels = torch.rand(inputs["pixel_values_videos"].shape[0], *model.config.image_size)
    output = model(**inputs, labels=labels)
    output.loss.backward()
    return output


@pytest.mark.parametrize("parts", SWAPS, ids=lambda p: "+".join(p.values()))
def test_a_swapped_part_trains_and_round_trips(parts, tmp_path):
    torch.manual_seed(0)
    model = DTFSalModel(tiny_config(**parts)).train()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    output = _loss_and_grads(model, inputs)
    assert output.saliency_map.shape == (2, 64, 96)
    assert (output.level_maps is None) == (model.config.decoder != "multi")
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not silent
    model.eval().save_pretrained(tmp_path)
    loaded = DTFSalModel.from_pretrained(tmp_path).eval()
    assert {k: getattr(loaded.config, k) for k in parts} == parts
    with torch.no_grad():
        assert torch.equal(model(**inputs).saliency_map, loaded(**inputs).saliency_map)


def test_swapped_parts_load_as_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = DTFSalModel(tiny_config(visual_encoder="swin3d_t", fusion="cross_attention", decoder="unet")).eval()
    folder = tmp_path / "model"
    check_remote_model_equals(model, folder, tmp_path, loaded_class="model.decoder")
    for name in ("plugins.py", "video_encoders.py", "fusion.py", "decoders.py", "audio_encoders.py"):
        assert (folder / name).is_file(), name


@pytest.fixture()
def restored_registry():
    saved = {kind: dict(parts) for kind, parts in plugins._REGISTRY.items()}
    yield
    for kind, parts in saved.items():
        plugins._REGISTRY[kind] = parts


def test_a_plugin_fusion_trains_a_step_saves_and_reloads_and_its_absence_names_it(tmp_path, monkeypatch, restored_registry):
    root = write_distribution(tmp_path / "site", "dtfsal-film", "dtfsal_film", PLUGIN_SOURCE,
                              {"dtfsal_hf.fusion": {"film": "dtfsal_film:FiLMFusion"}})
    monkeypatch.syspath_prepend(str(root))
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny(fusion="film", fusion_options={"hidden_dim": 8})).train()
    assert model.config.part_distributions == {"fusion": "dtfsal-film"}
    assert type(model.fusion_blocks[0]).__name__ == "FiLMFusion"
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    labels = torch.rand(2, 64, 96)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.fusion_blocks[0].film[0].weight.detach().clone()
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.fusion_blocks[0].film[0].weight)
    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = DTFSalModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).saliency_map, reloaded(**inputs).saliency_map)
    # Without the distribution: the saved config names the part and what to install.
    monkeypatch.syspath_prepend(str(tmp_path))  # a path entry without the plugin, first
    sys.path.remove(str(root))
    plugins._REGISTRY["fusion"].pop("film")
    monkeypatch.delitem(sys.modules, "dtfsal_film")
    with pytest.raises(ValueError, match=r"The fusion 'film' is not available: it is provided by the distribution "
                                         r"'dtfsal-film', which is not installed: pip install dtfsal-film"):
        DTFSalModel.from_pretrained(tmp_path / "saved")


def test_token_block_placement_follows_the_config():
    model = DTFSalModel(DTFSalConfig.tiny(use_audio=False, lteb_levels=[2], dltfb_levels=[1, 3]))
    assert [type(block) for block in model.token_blocks] == [DLTFB, LTEB, DLTFB, nn.Identity]
    default = DTFSalModel(DTFSalConfig.tiny(use_audio=False))
    none = DTFSalModel(DTFSalConfig.tiny(use_audio=False, lteb_levels=[], dltfb_levels=[]))
    token_params = sum(p.numel() for p in default.token_blocks.parameters())
    assert sum(p.numel() for p in default.parameters()) - sum(p.numel() for p in none.parameters()) == token_params
    inputs = DTFSalModel.build_dummy_inputs(none.config)
    assert none(**inputs).saliency_map.shape == (1, 64, 96)


def test_loss_weights_follow_the_config():
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny(use_audio=False, loss_kl_weight=0.5, loss_cc_weight=-2.0)).eval()
    inputs, labels = DTFSalModel.build_dummy_inputs(model.config, batch_size=2), torch.rand(2, 64, 96)
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    expected = (0.5 * kl_divergence(output.saliency_map, labels) - 2.0 * correlation_coefficient(output.saliency_map, labels)).mean()
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("fields, message", [
    (dict(visual_encoder="mvit"), r"Unknown visual_encoder 'mvit'; choose one of: mvit_v2_s, r2plus1d_18, s3d, swin3d_b"),
    (dict(fusion="attention"), r"Unknown fusion 'attention'; choose one of: amfb, concat, cross_attention"),
    (dict(decoder="fpn"), r"Unknown decoder 'fpn'; choose one of: multi, single, unet"),
    (dict(visual_encoder="s3d", num_frames=12), r"S3DEncoder needs a number of frames divisible by 8, got 12"),
])
def test_impossible_models_are_refused_naming_the_choices(fields, message):
    with pytest.raises(ValueError, match=message):
        DTFSalModel(DTFSalConfig.tiny(**fields))


@pytest.mark.parametrize("fields, message", [
    (dict(lteb_levels=[1, 4]), r"level 4 is in `lteb_levels` and `dltfb_levels`"),
    (dict(dltfb_levels=[0]), r"`dltfb_levels` must list levels among 1, 2, 3, 4, got \[0\]"),
    (dict(decoder=None), r"`decoder` must name a part"),
    (dict(fusion_options=["x"]), r"`fusion_options` must be a dict"),
    (dict(loss_kl_weight=0.0, loss_cc_weight=0.0), "both 0"),
])
def test_impossible_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DTFSalConfig.tiny(**fields)


def test_no_audio_encoder_is_the_visual_only_model():
    config = DTFSalConfig.tiny(audio_encoder=None)
    assert config.use_audio is False
    assert not hasattr(DTFSalModel(config), "fusion_blocks")


def test_full_size_swapped_models_count_on_the_meta_device():
    """The visual-only paper model with S3D, Video Swin-S, the single and the U-Net decoder: backbone and decoder
    counts add up with the enhancement's laterals sized by the encoder's channels and temporal factors."""
    count = lambda module: sum(p.numel() for p in module.parameters())
    with torch.device("meta"):
        paper = DTFSalModel(DTFSalConfig(use_audio=False))
        s3d = DTFSalModel(DTFSalConfig(use_audio=False, visual_encoder="s3d"))
        unet = DTFSalModel(DTFSalConfig(use_audio=False, decoder="unet"))
    assert count(paper) == 40_649_245
    # S3D's laterals: time 16, 16, 8, 4 -> 4 frames per level (factors 4, 4, 2, 1).
    assert [conv.kernel_size[0] for conv in s3d.feature_enhancement.laterals] == [4, 4, 2, 1]
    assert count(s3d.visual_encoder) == 7_910_048
    assert count(unet) - count(paper) == 2_787_713 - 1_742_729


def test_the_ablation_configurations_load():
    from pathlib import Path

    from dtfsal_hf.training.config import TrainingConfig

    folder = Path(__file__).resolve().parents[1] / "examples" / "configs" / "ablations"
    paths = sorted(folder.glob("*.yaml"))
    assert len(paths) == 28
    overrides = {path.stem: TrainingConfig.from_yaml(path).model.config_overrides for path in paths}
    assert overrides["encoder_s3d"] == {"visual_encoder": "s3d"} and overrides["decoder_unet"] == {"decoder": "unet"}
    assert overrides["dltfb_stage_2"] == {"lteb_levels": [1, 3, 4], "dltfb_levels": [2]}


def test_info_counts_a_training_configurations_model(tmp_path, capsys):
    from dtfsal_hf import cli

    path = tmp_path / "unet.yaml"
    path.write_text("model:\n  size: tiny\n  use_audio: false\n  init_from: runs/not-made-yet\n"
                    "  config_overrides: {decoder: unet, decoder_options: {dims: [16, 16, 8]}}\n")
    assert cli.main(["info", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    expected = DTFSalModel(DTFSalConfig.tiny(use_audio=False, decoder="unet", decoder_options={"dims": [16, 16, 8]}))
    assert "model.init_from runs/not-made-yet is not there yet" in out
    assert "visual only; visual_encoder mvit_v2_s, decoder unet" in out
    assert f"({sum(p.numel() for p in expected.parameters()):,})" in out
    assert "decoder: " in out and "conv + linear multiply-accumulates" in out
