"""The scaled-dot-product MViT attention computes torchvision's attention: outputs, gradients, keys."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video.mvit import MultiscaleAttention, _add_rel_pos

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.complexity import dummy_inputs
from dtfsal_hf.encoders import MViTSDPAttention, mvit_rel_pos_bias, set_mvit_attention


def tiny_model(use_audio: bool = True) -> DTFSalModel:
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny(use_audio=use_audio)).eval()


def test_rel_pos_bias_is_torchvisions_logit_term():
    torch.manual_seed(0)
    q_thw, k_thw, dim = (4, 6, 10), (2, 3, 5), 8
    q = torch.randn(2, 3, 1 + 4 * 6 * 10, dim)
    tables = [torch.randn(2 * 10 - 1, dim), torch.randn(2 * 10 - 1, dim), torch.randn(2 * 4 - 1, dim)]
    expected = _add_rel_pos(torch.zeros(2, 3, q.shape[2], 1 + 2 * 3 * 5), q, q_thw, k_thw, *tables)
    bias = mvit_rel_pos_bias(q, q_thw, k_thw, *tables)
    assert bias.shape == (2, 3, 241, 31)
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-5)
    assert not bias[:, :, 0].any() and not bias[:, :, :, 0].any()


@pytest.mark.parametrize("stride_q", [[1, 1, 1], [1, 2, 2]])
def test_attention_block_matches_on_a_non_square_grid(stride_q):
    torch.manual_seed(0)
    attention = MultiscaleAttention([4, 8, 12], 16, 32, 2, [3, 3, 3], [3, 3, 3], stride_q, [1, 2, 2],
                                    residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True).eval()
    tokens = torch.randn(2, 1 + 4 * 8 * 12, 16)
    with torch.no_grad():
        expected, expected_thw = attention(tokens, (4, 8, 12))
        set_mvit_attention(attention, "sdpa")
        actual, actual_thw = attention(tokens, (4, 8, 12))
    assert type(attention) is MViTSDPAttention and actual_thw == expected_thw
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_audio", [True, False])
def test_model_maps_match(use_audio):
    model = tiny_model(use_audio)
    inputs = dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        expected = model(**inputs).saliency_map
        actual = set_mvit_attention(model, "sdpa")(**inputs).saliency_map
    assert (actual - expected).abs().max() < 1e-5


def test_gradients_match():
    model = tiny_model().train()
    inputs = dummy_inputs(model.config, batch_size=2)
    labels = torch.rand(2, *model.config.image_size)
    gradients = {}
    for attention in ("eager", "sdpa"):
        set_mvit_attention(model, attention).zero_grad()
        model(**inputs, labels=labels).loss.backward()
        gradients[attention] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert gradients["eager"].keys() == gradients["sdpa"].keys()
    for name, expected in gradients["eager"].items():
        torch.testing.assert_close(gradients["sdpa"][name], expected, rtol=1e-3, atol=1e-6, msg=name)


def test_switching_keeps_keys_and_round_trips():
    model = tiny_model()
    keys = list(model.state_dict())
    set_mvit_attention(model, "sdpa")
    assert list(model.state_dict()) == keys
    assert all(type(m) is MViTSDPAttention for m in model.modules() if isinstance(m, MultiscaleAttention))
    set_mvit_attention(model, "eager")
    assert all(type(m) is MultiscaleAttention for m in model.modules() if isinstance(m, MultiscaleAttention))


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        set_mvit_attention(tiny_model(), "flash")
