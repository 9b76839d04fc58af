"""Weight loaders on checkpoints written here in the original key layouts (torchvision MViT, torchvggish)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.video import mvit_v2_s

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.encoders import (
    AUDIOSET_VGGISH_URL,
    KINETICS400_MVIT_V2_S_URL,
    MViTStageEncoder,
    VGGishTrunk,
    load_audioset_vggish_weights,
    load_kinetics_mvit_weights,
)

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


def test_mvit_loader_resizes_position_tables_for_the_paper_size(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    encoder = MViTStageEncoder(32, [224, 384], **MVIT_V2_S)
    load_kinetics_mvit_weights(encoder, path)
    source = reference.blocks[0].attn.rel_pos_h.detach().numpy()  # (2*56-1, 96) at 16x224x224
    target = encoder.blocks[0].attn.rel_pos_h.detach().numpy()  # (2*96-1, 96) at 32x224x384
    assert source.shape == (111, 96) and target.shape == (191, 96)
    # Linear interpolation, half-pixel centres: output sample j sits at source position (j + .5) * 111 / 191 - .5
    positions = np.clip((np.arange(191) + 0.5) * 111 / 191 - 0.5, 0, 110)
    expected = np.stack([np.interp(positions, np.arange(111), source[:, c]) for c in range(96)], axis=1)
    np.testing.assert_allclose(target, expected, atol=1e-6)
    assert encoder.blocks[0].attn.rel_pos_t.shape == (31, 96)  # 2 * 16 - 1 time steps after patching
    # Everything that is not a position table is copied as it is.
    assert torch.equal(encoder.blocks[5].mlp[0].weight, reference.blocks[5].mlp[0].weight)
    assert torch.equal(encoder.conv_proj.weight, reference.conv_proj.weight)


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
    inputs = dict(pixel_values_videos=torch.randn(1, 8, 3, 64, 96), input_features=torch.randn(1, 9, 1, 32, 48))
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
    with pytest.raises(ValueError, match=r"Could not download the checkpoint .*vggish-00000000\.pth.*invalid hash value"):
        load_state_dict_source(f"{url}/vggish-00000000.pth")
    assert not (cache / "vggish-00000000.pth").exists()
    with pytest.raises(ValueError, match=r"Could not download the checkpoint .*absent-12345678\.pth.*404"):
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
