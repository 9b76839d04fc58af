"""CUDA checks on the tiny model: the GPU computes the CPU's maps, and a training step works. Skipped
without a GPU. Runs under pytest or as `python tests/test_gpu.py` (for machines without pytest)."""

from __future__ import annotations

import copy
import sys

import torch

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.mvit_attention import set_mvit_attention

try:
    import pytest

    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
except ImportError:  # run as a script
    pytest = None


def _tiny(use_audio: bool = True) -> DTFSalModel:
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny(use_audio=use_audio)).eval()


def test_cuda_maps_equal_cpu_maps():
    for use_audio in (True, False):
        model = _tiny(use_audio)
        inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
        # Full fp32 on the GPU: cuDNN convolutions use TF32 by default, which is not what this compares.
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                expected = model(**inputs).saliency_map
                for attention in ("eager", "sdpa", "blocked", "auto"):
                    gpu = set_mvit_attention(copy.deepcopy(model), attention).cuda()
                    actual = gpu(**{k: v.cuda() for k, v in inputs.items()}).saliency_map.cpu()
                    difference = (actual - expected).abs().max().item()
                    assert difference < 1e-4, (use_audio, attention, difference)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def test_cuda_bf16_autocast_stays_close():
    model = _tiny()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        expected = model(**inputs).saliency_map
        for attention in ("sdpa", "blocked"):
            gpu = set_mvit_attention(copy.deepcopy(model), attention).cuda()
            with torch.autocast("cuda", torch.bfloat16):
                actual = gpu(**{k: v.cuda() for k, v in inputs.items()}).saliency_map.float().cpu()
            assert (actual - expected).abs().max() < 0.05, attention


def test_cuda_bfloat16_weights_run_and_return_bfloat16():
    """`model.to("cuda", torch.bfloat16)`: the deformable convolutions run in float32 inside, the maps come back
    in bfloat16 close to the float32 ones."""
    model = _tiny()
    inputs = DTFSalModel.build_dummy_inputs(model.config, batch_size=2)
    with torch.no_grad():
        expected = model(**inputs).saliency_map
        half = copy.deepcopy(model).to("cuda", torch.bfloat16)
        actual = half(**{k: v.to("cuda", torch.bfloat16) for k, v in inputs.items()}).saliency_map
    assert actual.dtype == torch.bfloat16
    assert (actual.float().cpu() - expected).abs().mean() < 0.01


def test_cuda_training_step_lowers_the_loss():
    model = set_mvit_attention(_tiny(), "sdpa").cuda().train()
    inputs = {k: v.cuda() for k, v in DTFSalModel.build_dummy_inputs(model.config, batch_size=2).items()}
    labels = torch.rand(2, *model.config.image_size, device="cuda")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU")
        sys.exit(0)
    failed = 0
    for name, test in sorted((n, f) for n, f in globals().items() if n.startswith("test_")):
        try:
            test()
            print(f"PASS {name}")
        except Exception as error:  # report every test, then fail
            failed += 1
            print(f"FAIL {name}: {type(error).__name__}: {error}")
    sys.exit(1 if failed else 0)
