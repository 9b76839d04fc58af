"""DTFSalModel: shapes, loss, gradients, save/load, Auto classes, remote code, fidelity counts, bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModel

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.complexity import PAPER_TOTALS, count_conv_linear_macs, count_parameters
from dtfsal_hf.modeling_dtfsal import (
    correlation_coefficient,
    frame_step_times,
    kl_divergence,
    nominal_frame_times,
    saliency_loss,
)

from isolation import check_remote_model_equals


def tiny_model(use_audio: bool = True, **overrides) -> DTFSalModel:
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny(use_audio=use_audio, **overrides)).eval()


@pytest.mark.parametrize("use_audio", [True, False])
def test_output_shapes_and_range(use_audio):
    model = tiny_model(use_audio)
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        output = model(**inputs)
    assert output.saliency_map.shape == (2, 64, 96)
    assert output.level_maps.shape == (2, 4, 64, 96)
    assert output.loss is None
    assert 0.0 <= output.saliency_map.min() and output.saliency_map.max() <= 1.0


def test_loss_is_kl_minus_cc():
    model = tiny_model()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    labels = torch.rand(2, 64, 96)
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    expected = saliency_loss(output.saliency_map, labels)
    assert torch.allclose(output.loss, expected)


def test_loss_terms_by_hand():
    prediction = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # Sum-normalised: p = (.25, .75, 0, 0), g = (.5, .5, 0, 0): KL = .5 log 2 + .5 log(2/3)
    assert kl_divergence(prediction, target).item() == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item() + 0.5 * torch.log(torch.tensor(2 / 3)).item(), abs=1e-6)
    # Pearson: x = (1, 3, 0, 0), y = (1, 1, 0, 0)
    x, y = torch.tensor([1.0, 3, 0, 0]), torch.tensor([1.0, 1, 0, 0])
    pearson = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()).norm() * (y - y.mean()).norm())
    assert correlation_coefficient(prediction, target).item() == pytest.approx(pearson.item(), abs=1e-6)
    assert correlation_coefficient(target, target).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("use_audio", [True, False])
def test_gradients_reach_every_trainable_parameter(use_audio):
    model = tiny_model(use_audio).train()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    model(**inputs, labels=torch.rand(2, 64, 96)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert missing == []


def test_audio_trunk_frozen_by_default():
    config = DTFSalConfig.tiny(freeze_audio_trunk=True)
    model = DTFSalModel(config)
    assert not any(p.requires_grad for p in model.audio_encoder.trunk.parameters())
    assert all(p.requires_grad for p in model.audio_encoder.temporal.parameters())


def test_audio_changes_the_map(tiny_model, tiny_inputs):
    model, inputs = tiny_model, tiny_inputs
    with torch.no_grad():
        first = model(**inputs).saliency_map
        inputs["input_features"] = torch.randn_like(inputs["input_features"]) * 3
        second = model(**inputs).saliency_map
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("use_audio", [True, False])
def test_save_load_round_trip(tmp_path, use_audio):
    model = tiny_model(use_audio)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = DTFSalModel.from_pretrained(tmp_path).eval()
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(**inputs).saliency_map, loaded(**inputs).saliency_map)
    ignore = {"_name_or_path"}
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in ignore} == {
        k: v for k, v in model.config.to_dict().items() if k not in ignore
    }


def test_auto_classes_resolve_model_type(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "dtfsal"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DTFSalConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), DTFSalModel)
    assert isinstance(AutoModel.from_config(DTFSalConfig.tiny()), DTFSalModel)


def test_remote_code_loads_without_the_package(tmp_path):
    model = tiny_model()
    folder = tmp_path / "model"
    check_remote_model_equals(model, folder, tmp_path)
    for name in ("configuration_dtfsal.py", "modeling_dtfsal.py", "layers.py", "encoders.py"):
        assert (folder / name).is_file(), name


@pytest.mark.parametrize("name,use_audio", [("DTFSal", True), ("DTFSal(V)", False)])
def test_full_size_counts_match_the_paper(name, use_audio):
    config = DTFSalConfig(use_audio=use_audio)
    with torch.device("meta"):
        model = DTFSalModel(config).eval()
    paper_params, paper_gmacs, _ = PAPER_TOTALS[name]
    params = count_parameters(model) / 1e6
    assert abs(params - paper_params) / paper_params <= 0.015, params
    gmacs = count_conv_linear_macs(model, DTFSalModel.build_dummy_inputs(config, device="meta")) / 1e9
    assert abs(gmacs - paper_gmacs) / paper_gmacs <= 0.10, gmacs


def test_full_size_audio_compute_is_the_papers_split():
    """The paper's two totals differ by 38.3 G MACs: the audio encoder (VGGish on 9 examples and the temporal
    enhancement, 25.68 G) and four AMFBs."""
    totals = {}
    for use_audio in (True, False):
        config = DTFSalConfig(use_audio=use_audio)
        with torch.device("meta"):
            model = DTFSalModel(config).eval()
        totals[use_audio] = count_conv_linear_macs(model, DTFSalModel.build_dummy_inputs(config, device="meta"), per_module=True)
    paper_split = PAPER_TOTALS["DTFSal"][1] - PAPER_TOTALS["DTFSal(V)"][1]
    split = (sum(totals[True].values()) - sum(totals[False].values())) / 1e9
    assert abs(split - paper_split) / paper_split <= 0.10, split
    assert totals[True]["fusion_blocks"] / 1e9 < 15.0, totals[True]["fusion_blocks"]


@pytest.mark.parametrize("config", [DTFSalConfig(), DTFSalConfig.tiny()], ids=["paper", "tiny"])
def test_audio_window_covers_the_clip_and_as_much_context(config):
    clip_s = config.num_frames / config.frame_rate
    assert clip_s <= config.audio_window_s <= 2.5 * clip_s, (clip_s, config.audio_window_s)
    # One token row per visual time step or finer: the present of a step is not blurred by its neighbours.
    token_s = 0.64 / config.audio_grid[0]
    assert token_s <= 4 / config.frame_rate


def test_without_frame_times_the_frames_are_at_the_nominal_rate():
    model = tiny_model()
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    nominal = nominal_frame_times(8, model.config.frame_rate)
    assert nominal[0, -1, 1] == 0.0 and torch.allclose(nominal[0, 1:, 0] - nominal[0, :-1, 0], torch.tensor(1 / 25))
    with torch.no_grad():
        assert torch.equal(model(**inputs).saliency_map, model(**inputs, frame_times=nominal).saliency_map)
        # The same pictures shown 0.16 s earlier hear other sound; the visual-only model ignores times.
        earlier = model(**inputs, frame_times=nominal - 0.16).saliency_map
    assert (earlier - model(**inputs).saliency_map).abs().max() > 1e-4
    visual = tiny_model(use_audio=False)
    with torch.no_grad():
        pixels = {"pixel_values_videos": inputs["pixel_values_videos"]}
        assert torch.equal(visual(**pixels).saliency_map, visual(**pixels, frame_times=nominal - 0.16).saliency_map)


def test_stretch_alignment_is_the_trilinear_resampling_and_ignores_times():
    model = tiny_model(audio_alignment="stretch")
    assert not hasattr(model.fusion_blocks[0], "audio_steps") and model.fusion_blocks[0].audio_proj.in_channels == 64
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    nominal = nominal_frame_times(8, model.config.frame_rate)
    with torch.no_grad():
        assert torch.equal(model(**inputs).saliency_map, model(**inputs, frame_times=nominal - 0.16).saliency_map)


def test_frame_step_times_span_each_steps_frames():
    frames = torch.tensor([[[0.0, 0.1], [0.1, 0.2], [0.2, 0.25], [0.25, 0.4]]]) - 0.4
    torch.testing.assert_close(frame_step_times(frames, 2), torch.tensor([[[-0.4, -0.2], [-0.2, 0.0]]]))


def test_full_size_level_shapes():
    config = DTFSalConfig()
    with torch.device("meta"):
        model = DTFSalModel(config).eval()
        stages = model.visual_encoder(torch.empty(1, 3, 32, 224, 384))
        levels = model.feature_enhancement(stages)
        audio = model.audio_encoder(torch.empty(1, 9, 1, 112, 192))
    assert [tuple(s.shape[1:]) for s in stages] == [(96, 16, 56, 96), (192, 16, 28, 48), (384, 16, 14, 24), (768, 16, 7, 12)]
    assert [tuple(level.shape[1:]) for level in levels] == [(192, 8, 56, 96), (192, 8, 28, 48), (192, 8, 14, 24), (192, 8, 7, 12)]
    assert tuple(audio.shape) == (1, 512, 9, 7, 12)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda i: i.update(pixel_values_videos=i["pixel_values_videos"][0]), "pixel_values_videos"),
        (lambda i: i.update(pixel_values_videos=i["pixel_values_videos"][:, :4]), "8, 3, 64, 96"),
        (lambda i: i.update(pixel_values_videos=i["pixel_values_videos"][..., :32]), "got (1, 8, 3, 64, 32)"),
        (lambda i: i.update(pixel_values_videos=(i["pixel_values_videos"] * 255).to(torch.uint8)), "floating-point"),
        (lambda i: i.pop("input_features"), "needs `input_features`"),
        (lambda i: i.update(input_features=i["input_features"][:, :, :, :32]), "(1, 1, 1, 64, 64)"),
        (lambda i: i.update(frame_times=torch.zeros(1, 4, 2)), "`frame_times` must be a floating-point tensor of shape (1, 8, 2)"),
        (lambda i: i.update(frame_times=torch.tensor([[[0.0, -1.0]] * 8])), "each frame ending no earlier than it starts"),
        (lambda i: i.update(frame_times=torch.full((1, 8, 2), float("nan"))), "must be finite"),
        (lambda i: i.update(labels=torch.rand(1, 32, 48)), "`labels` must have shape (1, 64, 96)"),
        (lambda i: i.update(labels=torch.zeros(1, 64, 96)), "positive sum"),
        (lambda i: i.update(input_feature=i["input_features"]), "takes pixel_values_videos, input_features, frame_times and labels; got also"),
    ],
)
def test_bad_inputs_name_the_problem(change, message):
    model = tiny_model()
    inputs = DTFSalModel.build_dummy_inputs(model.config)
    change(inputs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        model(**inputs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_frames=6), "num_frames"),
        (dict(image_size=[64, 100]), "image_size"),
        (dict(audio_input_size=[30, 48]), "audio_input_size"),
        (dict(backbone_depths=[1, 1, 1]), "backbone_depths"),
        (dict(audio_alignment="trilinear"), "audio_alignment"),
        (dict(frame_rate=0), "frame_rate"),
    ],
)
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DTFSalConfig.tiny(**kwargs)


@pytest.mark.parametrize("corrupt", ["missing", "mismatched"])
def test_checkpoint_with_wrong_keys_is_refused(tmp_path, corrupt):
    from safetensors.torch import load_file, save_file

    tiny_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    if corrupt == "missing":
        weights.pop("fuse_maps.weight")
        expected = "missing keys: fuse_maps.weight"
    else:
        weights["decoder_heads.0.to_map.weight"] = torch.zeros(1, 3, 1, 3, 3)
        expected = "mismatched keys: .*decoder_heads.0.to_map.weight"
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=expected):
        DTFSalModel.from_pretrained(tmp_path)


def test_unreadable_checkpoint_is_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(Exception):
        DTFSalModel.from_pretrained(tmp_path)


# --- transformers idioms: reduced precision and activation checkpointing ------------------------------------


def _reference_and_inputs():
    model = tiny_model()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        return model, inputs, model(**inputs).saliency_map


def test_bfloat16_model_runs_on_cpu(tmp_path):
    """`model.to(torch.bfloat16)` and `from_pretrained(..., dtype=torch.bfloat16)`: torchvision's deformable
    convolution has no bfloat16 CPU kernel, so the model runs it in float32 and returns bfloat16 maps."""
    import copy

    model, inputs, expected = _reference_and_inputs()
    model.save_pretrained(tmp_path)
    loaded = DTFSalModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    for half in (copy.deepcopy(model).to(torch.bfloat16), loaded):
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        with torch.no_grad():
            output = half(**{name: value.to(torch.bfloat16) for name, value in inputs.items()})
        assert output.saliency_map.dtype == output.level_maps.dtype == torch.bfloat16
        difference = (output.saliency_map.float() - expected).abs()
        assert difference.max() < 0.15 and difference.mean() < 0.01  # measured: 0.059 and 0.002


def test_autocast_on_cpu_runs_and_trains():
    model, inputs, expected = _reference_and_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model(**inputs).saliency_map
    difference = (maps.float() - expected).abs()
    assert maps.dtype == torch.bfloat16 and difference.max() < 0.15 and difference.mean() < 0.01  # 0.037, 0.002
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=torch.rand(2, 64, 96)).loss
    loss.backward()
    deform = model.fusion_blocks[0].adaptive_stream.conv.weight
    assert deform.dtype == torch.float32 and deform.grad is not None and torch.isfinite(deform.grad).all()


def test_activation_checkpointing_gives_no_warning_of_ours():
    """Both names transformers offers work; the deprecated `gradient_checkpointing_enable` warns about its own name
    only (transformers' FutureWarning), nothing comes from this package's code."""
    model, inputs, _ = _reference_and_inputs()
    model.train()
    labels = torch.rand(2, 64, 96)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.gradient_checkpointing_enable()
        model(**inputs, labels=labels).loss.backward()
    assert [str(w.message).split(" ")[0] for w in seen] == ["`gradient_checkpointing_enable`"], [str(w.message) for w in seen]
    assert seen[0].category is FutureWarning and "/transformers/" in seen[0].filename
    model.activation_checkpointing_disable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.activation_checkpointing_enable()
        assert model.visual_encoder.gradient_checkpointing
        model(**inputs, labels=labels).loss.backward()


def test_offline_encoder_download_says_local_files_can_be_passed(monkeypatch, tmp_path):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the weights must be downloaded
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(OSError, match=r"Could not download .*pass them: model\.load_pretrained_encoders\(mvit_source="):
        tiny_model().load_pretrained_encoders()


def test_dummy_inputs_fit_the_model_on_its_device_and_dtype():
    model = tiny_model().to(torch.bfloat16)
    inputs = model.dummy_inputs
    assert inputs["pixel_values_videos"].shape == (1, 8, 3, 64, 96) and inputs["input_features"].shape == (1, 1, 1, 64, 64)
    assert all(value.dtype == torch.bfloat16 for value in inputs.values())
    with torch.no_grad():
        assert model(**inputs).saliency_map.shape == (1, 64, 96)
    assert set(tiny_model(use_audio=False).dummy_inputs) == {"pixel_values_videos"}


def test_a_frozen_visual_encoder_gets_no_gradient_and_stays_in_eval_mode():
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny(backbone_stochastic_depth=0.5))
    videos = torch.randn(2, 3, 8, 64, 96)

    def two_training_passes():
        model.train()
        with torch.no_grad():
            return [model.visual_encoder(videos)[-1] for _ in range(2)]

    first, second = two_training_passes()
    assert not torch.equal(first, second)  # control: drop-path is on in training mode
    assert model.freeze_visual_encoder() is model
    first, second = two_training_passes()
    assert torch.equal(first, second)
    assert not any(m.training for m in model.visual_encoder.modules())
    assert all(m.training for m in model.token_blocks.modules())
    assert not any(p.requires_grad for p in model.visual_encoder.parameters())
    model.freeze_visual_encoder(False).train()
    assert all(p.requires_grad for p in model.visual_encoder.parameters()) and model.visual_encoder.training


def test_the_frozen_audio_trunk_is_recorded_in_the_configuration():
    model = tiny_model().train()
    assert model.audio_encoder.trunk.training and not model.config.freeze_audio_trunk
    model.freeze_audio_trunk().train()
    assert not model.audio_encoder.trunk.training and model.config.freeze_audio_trunk
    assert not any(p.requires_grad for p in model.audio_encoder.trunk.parameters())
    with pytest.raises(ValueError, match="no audio trunk"):
        tiny_model(use_audio=False).freeze_audio_trunk()


def test_the_feature_enhancement_reads_the_encoders_channels():
    model = tiny_model()
    assert model.visual_encoder.out_channels == [16, 32, 64, 128]
    assert [lateral.in_channels for lateral in model.feature_enhancement.laterals] == model.visual_encoder.out_channels
    stages = model.visual_encoder(torch.randn(1, 3, 8, 64, 96))
    assert [stage.shape[1] for stage in stages] == model.visual_encoder.out_channels


def test_parts_freeze_by_name_and_the_visual_branch_leaves_only_audio_and_fusion_training():
    model = tiny_model().freeze_parts(["visual_branch"]).train()
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"audio_encoder", "fusion_blocks"}
    assert not model.visual_encoder.training and not model.decoder_heads.training and model.fusion_blocks.training
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    model(**inputs, labels=torch.rand(2, *model.config.image_size)).loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    model.freeze_parts("visual_branch", frozen=False).freeze_parts(["audio_encoder.trunk"]).train()
    assert model.config.freeze_audio_trunk and not model.audio_encoder.trunk.training and model.visual_encoder.training
    assert {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad} == {"audio_encoder"}
    with pytest.raises(ValueError, match=r"unknown part\(s\) to freeze \['decoders'\]; this model has \[.*'visual_branch'"):
        model.freeze_parts(["decoders"])
    with pytest.raises(ValueError, match="unknown part"):
        tiny_model(use_audio=False).freeze_parts(["audio_branch"])
