"""Weight loaders on checkpoints written here in the original key layouts (torchvision MViT, torchvggish)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.video import mvit_v2_s
from torchvision.models.video.mvit import _add_rel_pos

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.modeling_dtfsal import DTFSalPreTrainedModel
from dtfsal_hf.encoders import (
    AUDIOSET_VGGISH_URL,
    KINETICS400_MVIT_V2_S_URL,
    MViTStageEncoder,
    VGGishTrunk,
    load_audioset_vggish_weights,
    load_kinetics_mvit_weights,
    resize_rel_pos_tables,
)
from dtfsal_hf.mvit_attention import fold_rel_pos, set_mvit_attention

MVIT_V2_S = dict(depths=[1, 2, 11, 2], dims=[96, 192, 384, 768], heads=[1, 2, 4, 8], kv_stride=[1, 8, 8])


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """torchvision's own mvit_v2_s with random weights, saved as its published checkpoint is laid out."""
    torch.manual_seed(0)
    model = mvit_v2_s().eval()
    path = tmp_path_factory.mktemp("mvit") / "mvit_v2_s.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_published_urls():
    assert KINETICS400_MVIT_V2_S_URL.endswith("mvit_v2_s-ae3be167.pth")
    assert AUDIOSET_VGGISH_URL.endswith("vggish-10086976.pth")


def _torchvision_stage_outputs(model, videos):
    outputs = {}
    ends = {0: "1", 2: "2", 13: "3", 15: "4"}
    hooks = [
        model.blocks[index].register_forward_hook(lambda m, a, out, k=key: outputs.__setitem__(k, out))
        for index, key in ends.items()
    ]
    with torch.no_grad():
        model(videos)
    for hook in hooks:
        hook.remove()
    stages = []
    for key in "1234":
        tokens, thw = outputs[key]
        stages.append(tokens[:, 1:].transpose(1, 2).unflatten(2, thw))
    return stages


def test_mvit_loader_reproduces_torchvision_at_training_size(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    encoder = MViTStageEncoder(16, [224, 224], **MVIT_V2_S).eval()
    load_kinetics_mvit_weights(encoder, path)
    videos = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        ours = encoder(videos)
    theirs = _torchvision_stage_outputs(reference, videos)
    assert [tuple(s.shape[1:]) for s in ours] == [(96, 8, 56, 56), (192, 8, 28, 28), (384, 8, 14, 14), (768, 8, 7, 7)]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_mvit_loader_keeps_the_checkpoints_h_tables_at_the_paper_size(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    encoder = MViTStageEncoder(32, [224, 384], **MVIT_V2_S)
    load_kinetics_mvit_weights(encoder, path)
    # At 224 rows the H axis needs what the 224x224 checkpoint holds (2*56-1 in stage 1): used as it is.
    for ours, theirs in zip(encoder.blocks, reference.blocks):
        assert torch.equal(ours.attn.rel_pos_h, theirs.attn.rel_pos_h)
    assert [b.attn.rel_pos_h.shape[0] for b in encoder.blocks] == [111] + [55] * 2 + [27] * 12 + [13]
    assert [b.attn.rel_pos_w.shape[0] for b in encoder.blocks] == [191] + [95] * 2 + [47] * 12 + [23]
    # W (96 columns in stage 1) needs more: linear interpolation, half-pixel centres, as torchvision's forward
    # would do; output sample j sits at source position (j + .5) * 111 / 191 - .5.
    source = reference.blocks[0].attn.rel_pos_w.detach().numpy()
    target = encoder.blocks[0].attn.rel_pos_w.detach().numpy()
    positions = np.clip((np.arange(191) + 0.5) * 111 / 191 - 0.5, 0, 110)
    expected = np.stack([np.interp(positions, np.arange(111), source[:, c]) for c in range(96)], axis=1)
    np.testing.assert_allclose(target, expected, atol=1e-6)
    assert encoder.blocks[0].attn.rel_pos_t.shape == (31, 96)  # 2 * 16 - 1 time steps after patching
    # Everything that is not a position table is copied as it is.
    assert torch.equal(encoder.blocks[5].mlp[0].weight, reference.blocks[5].mlp[0].weight)
    assert torch.equal(encoder.conv_proj.weight, reference.conv_proj.weight)


@pytest.mark.parametrize("block, q_hw, k_hw", [(0, (56, 96), (7, 12)), (1, (28, 48), (14, 24))])
def test_position_logits_at_the_paper_size_are_torchvisions_on_the_checkpoint(torchvision_checkpoint, block, q_hw, k_hw):
    """The term the model adds at 224x384 is what torchvision computes from the checkpoint's own tables:
    unresampled along H (its length is already right), resampled by torchvision along W."""
    reference, path = torchvision_checkpoint
    encoder = MViTStageEncoder(32, [224, 384], **MVIT_V2_S)
    load_kinetics_mvit_weights(encoder, path)
    ours, theirs = encoder.blocks[block].attn, reference.blocks[block].attn
    torch.manual_seed(0)
    # One time step keeps the logits small; the time tables are set to zero on both sides.
    q_thw, k_thw = (1, *q_hw), (1, *k_hw)
    q, k = torch.randn(1, 1, 1 + q_hw[0] * q_hw[1], 96), torch.randn(1, 1, 1 + k_hw[0] * k_hw[1], 96)
    with torch.no_grad():
        q_aug, k_aug = fold_rel_pos(q, k, q_thw, k_thw, ours.rel_pos_h, ours.rel_pos_w, torch.zeros(31, 96), scale=1.0)
        expected = _add_rel_pos(q @ k.transpose(2, 3), q, q_thw, k_thw, theirs.rel_pos_h, theirs.rel_pos_w, torch.zeros(15, 96))
        torch.testing.assert_close(q_aug @ k_aug.transpose(2, 3), expected, rtol=1e-5, atol=1e-5)
        # The control: the table resized to 2 * max(H, W) - 1 and back, as torchvision's layout did, is another one.
        key = "attn.rel_pos_h"
        round_trip = resize_rel_pos_tables({key: theirs.rel_pos_h}, {key: ours.rel_pos_w})[key]
        assert round_trip.shape == ours.rel_pos_w.shape
        before = _add_rel_pos(q @ k.transpose(2, 3), q, q_thw, k_thw, round_trip, theirs.rel_pos_w, torch.zeros(15, 96))
        assert (before - expected).abs().max() > 1e-3


def test_tables_have_their_axis_length_so_no_forward_resizes_them(monkeypatch):
    import torchvision.models.video.mvit as tv_mvit

    resized = []
    original = tv_mvit._interpolate
    monkeypatch.setattr(tv_mvit, "_interpolate", lambda table, d: resized.append((table.shape[0], d)) if table.shape[0] != d else None or original(table, d))
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny()).eval()
    with torch.no_grad():
        model(**DTFSalPreTrainedModel.build_dummy_inputs(model.config))
    assert resized == []
    # 16x24 tokens, keys and values pooled to 4x6 in every stage: H tables 2*16-1, 2*8-1, then 2*4-1 (the
    # keys outnumber the 2x3 queries of stage 4); W tables 2*24-1, 2*12-1, 2*6-1; T 2*4-1.
    attentions = [block.attn for block in model.visual_encoder.blocks]
    assert [(a.rel_pos_t.shape[0], a.rel_pos_h.shape[0], a.rel_pos_w.shape[0]) for a in attentions] == [
        (7, 31, 47), (7, 15, 23), (7, 15, 23), (7, 7, 11), (7, 7, 11)]
    with torch.device("meta"):
        big = DTFSalModel(DTFSalConfig())
    assert sum(p.numel() for p in big.visual_encoder.parameters()) == 34_292_544


def tiny_encoder(image_size):
    return MViTStageEncoder(8, image_size, [1, 1, 2, 1], [16, 32, 64, 128], [1, 1, 2, 2], [1, 4, 4]).eval()


@pytest.mark.parametrize("batch", [1, 2])
def test_stages_are_channels_last_views_of_the_tokens(batch):
    """Each stage is the blocks' tokens without the class token, (B, THW, C) read as (B, C, T, H, W): a view with
    channels innermost, laid out as channels-last-3d at batch 1 as well (the convolutions after it read it as it
    is, without a copy), holding the values of the tokens."""
    torch.manual_seed(0)
    encoder = tiny_encoder([64, 96])
    tokens = []
    for index in encoder.stage_ends:
        encoder.blocks[index].register_forward_hook(lambda module, args, output: tokens.append(output[0]))
    with torch.no_grad():
        stages = encoder(torch.randn(batch, 3, 8, 64, 96))
    for stage, block_tokens in zip(stages, tokens):
        channels, frames, height, width = stage.shape[1:]
        # channels-last-3d strides (a batch item's tokens follow its class token: the batch stride is at least T H W C)
        assert stage.stride()[1:] == (1, height * width * channels, width * channels, channels)
        assert stage.stride(0) >= frames * height * width * channels
        assert stage.data_ptr() == block_tokens[:, 1:].data_ptr()
        channels_first = block_tokens[:, 1:].transpose(1, 2).reshape(stage.shape)
        assert torch.equal(stage, channels_first)
        with torch.no_grad():  # a (oneDNN) convolution reading it keeps it channels-last: no copy to channels-first
            conv = nn.Conv3d(stage.shape[1], stage.shape[1], 1, groups=stage.shape[1])
            assert conv(stage).is_contiguous(memory_format=torch.channels_last_3d)


def test_model_maps_do_not_depend_on_the_stages_memory_layout(tiny_model, tiny_inputs):
    """The layers after the encoder compute the same maps from channels-last stages (the encoder's) and from the
    same values laid out channels-first."""
    encoder = tiny_model.visual_encoder
    forward = encoder.forward
    with torch.no_grad():
        expected = tiny_model(**tiny_inputs).saliency_map
        encoder.forward = lambda videos: [stage.contiguous() for stage in forward(videos)]
        try:
            contiguous = tiny_model(**tiny_inputs).saliency_map
        finally:
            del encoder.forward
    torch.testing.assert_close(contiguous, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa", "blocked", "auto"])
def test_loaded_encoder_computes_torchvisions_forward_on_the_checkpoint(attention):
    """A square "checkpoint" loaded at a wider size: every kernel gives what torchvision's attention computes
    with the checkpoint's own tables, which it resizes itself at each forward where lengths differ."""
    torch.manual_seed(0)
    source = tiny_encoder([64, 64])
    with torch.no_grad():
        for name, table in source.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "rel_pos_t")):
                table.normal_()  # tables of size 1 make a difference visible
    encoder = tiny_encoder([64, 96])
    load_kinetics_mvit_weights(encoder, source.state_dict())
    # torchvision's attention (eager) holding the checkpoint's tables as they are.
    reference = set_mvit_attention(copy.deepcopy(encoder), "eager")
    for name, table in source.named_parameters():
        if "rel_pos" in name:
            reference.get_submodule(name.rsplit(".", 1)[0]).register_parameter(name.rsplit(".", 1)[1], nn.Parameter(table.clone()))
    assert reference.blocks[0].attn.rel_pos_w.shape[0] == 31 and encoder.blocks[0].attn.rel_pos_w.shape[0] == 47
    videos = torch.randn(2, 3, 8, 64, 96)
    with torch.no_grad():
        expected = reference(videos)
        actual = set_mvit_attention(encoder, attention)(videos)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_model_loads_both_encoders(torchvision_checkpoint, tmp_path):
    _, mvit_path = torchvision_checkpoint
    vggish_path = tmp_path / "vggish.pth"
    torch.save(_torchvggish_state(), vggish_path)
    model = DTFSalModel(DTFSalConfig(num_frames=8, image_size=[64, 96]))
    model.load_pretrained_encoders(mvit_path, vggish_path)
    assert torch.equal(model.audio_encoder.trunk.features[13].weight, torch.load(vggish_path)["features.13.weight"])


def _torchvggish_state() -> dict:
    """torchvggish's VGG layout: `features` (convs at 0, 3, 6, 8, 11, 13) and `embeddings` (three linears)."""
    torch.manual_seed(1)
    trunk = VGGishTrunk([[64], [128], [256, 256], [512, 512]])
    state = {key: value.clone() for key, value in trunk.state_dict().items()}
    # The embedding layers are unused here; small stand-ins keep the test light but the keys real.
    for index, (rows, cols) in zip((0, 2, 4), ((8, 12), (8, 8), (4, 8))):
        state[f"embeddings.{index}.weight"] = torch.zeros(rows, cols)
        state[f"embeddings.{index}.bias"] = torch.zeros(rows)
    return state


def test_vggish_loader_uses_features_and_drops_embeddings():
    state = _torchvggish_state()
    assert sorted(k for k in state if k.startswith("features"))[:4] == [
        "features.0.bias", "features.0.weight", "features.11.bias", "features.11.weight"
    ]
    trunk = VGGishTrunk([[64], [128], [256, 256], [512, 512]])
    load_audioset_vggish_weights(trunk, state)
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, state[key])
    assert sum(p.numel() for p in trunk.parameters()) == pytest.approx(4.50e6, rel=0.01)
    assert trunk(torch.randn(2, 1, 112, 192)).shape == (2, 512, 7, 12)


def test_vggish_trunk_runs_channels_last_with_the_channels_first_values():
    """The trunk lays its one-channel input out channels-last, so its convolutions and pools run channels-last: the
    values are those of the same layers on the channels-first input, gradients included."""
    torch.manual_seed(0)
    trunk = VGGishTrunk([[8], [16], [16, 16], [32, 32]])
    spectrograms = torch.randn(3, 1, 32, 48, requires_grad=True)
    outputs = trunk(spectrograms)
    assert outputs.is_contiguous(memory_format=torch.channels_last) and not outputs.is_contiguous()
    expected_input = spectrograms.detach().clone().requires_grad_()
    expected = trunk.features(expected_input)  # the layers on the channels-first input
    assert expected.is_contiguous()
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(outputs.shape)
    outputs.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(spectrograms.grad, expected_input.grad, rtol=1e-5, atol=1e-6)


def test_loaders_refuse_wrong_checkpoints(torchvision_checkpoint, tmp_path):
    _, path = torchvision_checkpoint
    state = torch.load(path)
    state.pop("blocks.3.attn.qkv.weight")
    encoder = MViTStageEncoder(16, [224, 224], **MVIT_V2_S)
    with pytest.raises(ValueError, match="missing keys \\['blocks.3.attn.qkv.weight'\\]"):
        load_kinetics_mvit_weights(encoder, state)
    small = MViTStageEncoder(8, [64, 96], [1, 1, 2, 1], [16, 32, 64, 128], [1, 1, 2, 2], [1, 4, 4])
    with pytest.raises(ValueError, match="mismatched shapes"):
        load_kinetics_mvit_weights(small, path)
    text = tmp_path / "not_a_checkpoint.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="Could not read the checkpoint"):
        load_kinetics_mvit_weights(encoder, text)
    with pytest.raises(FileNotFoundError):
        load_audioset_vggish_weights(VGGishTrunk([[8]]), tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="VGGish checkpoint does not fit"):
        load_audioset_vggish_weights(VGGishTrunk([[8], [16]]), _torchvggish_state())


def test_encoder_gradient_checkpointing_matches():
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny()).train()
    inputs = dict(pixel_values_videos=torch.randn(1, 8, 3, 64, 96), input_features=torch.randn(1, 1, 1, 64, 64))
    labels = torch.rand(1, 64, 96)
    torch.manual_seed(1)
    model(**inputs, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.visual_encoder.gradient_checkpointing
    torch.manual_seed(1)
    model(**inputs, labels=labels).loss.backward()
    for name, grad in plain.items():
        assert torch.allclose(grad, dict(model.named_parameters())[name].grad, atol=1e-6), name


# --- published weights by URL: downloaded to the torch hub cache, checked, read as weights only -------------


class CodeOnLoad:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _hash_name(path, stem: str) -> str:
    import hashlib

    return f"{stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A folder served over http on 127.0.0.1 for the test only, and an empty torch hub cache (TORCH_HOME)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "torch-home" / "hub" / "checkpoints"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_url_weights_are_checked_against_the_hash_in_their_name_and_cached(served):
    from dtfsal_hf.encoders import load_state_dict_source

    folder, url, cache = served
    source = folder / "weights.pth"
    state = {"features.0.weight": torch.randn(8, 1, 3, 3), "features.0.bias": torch.randn(8)}
    torch.save(state, source)
    name = _hash_name(source, "vggish")
    source.rename(folder / name)
    loaded = load_state_dict_source(f"{url}/{name}")
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert (cache / name).is_file()
    (folder / name).unlink()  # the cached copy is read from now on
    assert torch.equal(load_state_dict_source(f"{url}/{name}")["features.0.bias"], state["features.0.bias"])
    # Served content that does not match its name's hash is refused and not kept.
    torch.save({"features.0.bias": torch.zeros(8)}, folder / "vggish-00000000.pth")
    with pytest.raises(ValueError, match=r"The checkpoint downloaded from .*vggish-00000000\.pth.* is not the published file.*invalid hash value"):
        load_state_dict_source(f"{url}/vggish-00000000.pth")
    assert not (cache / "vggish-00000000.pth").exists()
    with pytest.raises(OSError, match=r"Could not download the checkpoint .*absent-12345678\.pth.*404"):
        load_state_dict_source(f"{url}/absent-12345678.pth")


def test_a_served_pickle_that_runs_code_is_not_run(served, tmp_path):
    """torch.hub.load_state_dict_from_url unpickled with weights_only=False: a file at the URL ran code."""
    from dtfsal_hf.encoders import load_state_dict_source

    folder, url, _ = served
    marker = tmp_path / "ran"
    evil = folder / "evil.pth"
    torch.save(CodeOnLoad(f"open({str(marker)!r}, 'w').write('ran')"), evil)
    name = _hash_name(evil, "mvit")  # the right hash: only reading it as weights protects
    evil.rename(folder / name)
    with pytest.raises(ValueError, match=r"Could not read the checkpoint .* \(weights only\)"):
        load_state_dict_source(f"{url}/{name}")
    assert not marker.exists()


def test_a_file_planted_in_the_hub_cache_under_the_published_name_is_refused(tmp_path, monkeypatch):
    """The default path of load_pretrained_encoders(): a pickle planted as mvit_v2_s-ae3be167.pth in the hub
    cache was loaded without a hash check and ran code."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    marker = tmp_path / "ran"
    for name in ("mvit_v2_s-ae3be167.pth", "vggish-10086976.pth"):
        torch.save(CodeOnLoad(f"open({str(marker)!r}, 'w').write('ran')"), cache / name)
    with pytest.raises(ValueError, match=r"cached checkpoint .*mvit_v2_s-ae3be167\.pth.* does not match the sha256 prefix"):
        load_kinetics_mvit_weights(MViTStageEncoder(8, [64, 96], [1, 1, 2, 1], [16, 32, 64, 128], [1, 1, 2, 2], [1, 4, 4]))
    with pytest.raises(ValueError, match=r"cached checkpoint .*vggish-10086976\.pth.* does not match"):
        load_audioset_vggish_weights(VGGishTrunk([[8]]))
    assert not marker.exists()


def test_models_saved_with_torchvisions_table_layout_convert_to_the_same_maps(tmp_path, monkeypatch):
    import shutil

    from dtfsal_hf import encoders
    from dtfsal_hf.convert_rel_pos_tables import convert_rel_pos_tables, main

    # A model as the encoder built it before: every spatial table at 2 * max(H, W) - 1 rows.
    with monkeypatch.context() as patch:
        patch.setattr(encoders, "fit_rel_pos_tables", lambda *args, **kwargs: None)
        torch.manual_seed(0)
        old = DTFSalModel(DTFSalConfig.tiny()).eval()
    assert old.visual_encoder.blocks[0].attn.rel_pos_h.shape == (47, 16)
    with torch.no_grad():
        for name, table in old.named_parameters():
            if "rel_pos" in name:
                table.normal_()
    inputs = DTFSalPreTrainedModel.build_dummy_inputs(old.config)
    with torch.no_grad():
        expected = old(**inputs).saliency_map
    old.save_pretrained(tmp_path / "old")
    with pytest.raises(ValueError, match="older layout: convert it once with `python -m dtfsal_hf.convert_rel_pos_tables"):
        DTFSalModel.from_pretrained(tmp_path / "old")
    converted = convert_rel_pos_tables(tmp_path / "old", tmp_path / "new")
    assert converted == sorted(f"visual_encoder.blocks.{i}.attn.rel_pos_h" for i in range(5))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(p.name for p in (tmp_path / "old").iterdir())
    new = DTFSalModel.from_pretrained(tmp_path / "new").eval()
    # The same operations as before in torchvision's kernel; the folded kernels sum in another order.
    for attention, tolerance in (("eager", 1e-6), ("sdpa", 1e-4), ("blocked", 1e-4)):
        with torch.no_grad():
            actual = set_mvit_attention(new, attention)(**inputs).saliency_map
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
    # Converting again, or in place, is a no-op once converted; the bundled demo checkpoint is converted.
    assert main([str(tmp_path / "new")]) == 0 and convert_rel_pos_tables(tmp_path / "new") == []
    demo = tmp_path / "demo"
    shutil.copytree(Path(encoders.__file__).parent / "assets" / "demo-checkpoint", demo)
    assert convert_rel_pos_tables(demo) == []
    assert main([str(tmp_path / "absent")]) == 2
