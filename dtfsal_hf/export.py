"""ONNX export of DTFSal, checked against PyTorch with onnxruntime.

The model goes through `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript) with a dynamic batch
dimension. Two parts need care:

- AMFB's deformable convolution (`torchvision.ops.DeformConv2d`, the op `torchvision::deform_conv2d`) has no
  ONNX translation in torch or torchvision. It maps one to one onto ONNX's `DeformConv` (opset 19: same offset
  layout, (dy, dx) per kernel tap, and the same bilinear sampling with zeros outside the image), which
  onnxruntime implements on the CPU; `_deform_conv2d_to_onnx` is that translation. A runtime without
  `DeformConv` (older onnxruntime, some accelerators) can run DTFSal(V), which has no AMFB.
- MViT attention is exported in torchvision's explicit form (matmul, softmax, matmul), which every runtime
  runs; runtimes fuse it themselves.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .inference.runtime import PRESETS
from .modeling_dtfsal import DTFSalModel

__all__ = ["ONNX_OPSET", "export_onnx", "check_onnx", "onnx_input_names"]

# The first opset with DeformConv.
ONNX_OPSET = 19


def onnx_input_names(model: DTFSalModel) -> list[str]:
    """The exported graph's inputs: `pixel_values_videos`, and `input_features` for the audio-visual model."""
    return ["pixel_values_videos", "input_features"] if model.config.use_audio else ["pixel_values_videos"]


class _SaliencyMapOutput(nn.Module):
    """The model with positional inputs and one output, `saliency_map` (B, H, W)."""

    def __init__(self, model: DTFSalModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values_videos: torch.Tensor, input_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(pixel_values_videos=pixel_values_videos, input_features=input_features).saliency_map


def _deform_conv2d_to_onnx():
    """An onnxscript translation of `torchvision::deform_conv2d` to ONNX `DeformConv` (opset 19)."""
    from onnxscript import opset19 as op

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dilation_h: int, dilation_w: int, groups: int, offset_groups: int, use_mask: bool):
        attributes = dict(dilations=[dilation_h, dilation_w], group=groups, offset_group=offset_groups,
                          pads=[pad_h, pad_w, pad_h, pad_w], strides=[stride_h, stride_w])
        if use_mask:
            return op.DeformConv(input, weight, offset, bias, mask, **attributes)
        return op.DeformConv(input, weight, offset, bias, **attributes)

    return deform_conv2d


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'dtfsal_hf[export]'")


def export_onnx(
    model: DTFSalModel,
    path: str | os.PathLike,
    example_batch_size: int = 2,
    max_batch_size: int = 1024,
    opset: int = ONNX_OPSET,
) -> str:
    """Write `model` as ONNX to `path` (inputs as `onnx_input_names`, output `saliency_map` (B, H, W)), with a
    dynamic batch dimension of 1 to `max_batch_size`. Weights are stored in the file. Returns `path`."""
    _require_onnx()
    if opset < ONNX_OPSET:
        raise ValueError(f"opset must be at least {ONNX_OPSET} (DeformConv), got {opset}")
    # torchvision's explicit attention in fp32, which every runtime runs (and fuses itself)
    module = _SaliencyMapOutput(PRESETS["eager-fp32"].prepare(copy.deepcopy(model).float(), "cpu"))
    inputs = DTFSalModel.build_dummy_inputs(model.config, example_batch_size)
    names = onnx_input_names(model)
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    translations = {torch.ops.torchvision.deform_conv2d.default: _deform_conv2d_to_onnx()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, tuple(inputs[name] for name in names), dynamo=True, opset_version=opset,
            input_names=names, output_names=["saliency_map"], dynamic_shapes=tuple({0: batch} for _ in names),
            custom_translation_table=translations, verbose=False,
        )
    program.save(str(path), external_data=False)
    return str(path)


def check_onnx(
    path: str | os.PathLike,
    model: DTFSalModel,
    batch_sizes: Sequence[int] = (1, 3),
    inputs: dict | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """Run the exported file with onnxruntime (CPU) and the PyTorch model (eager, fp32) on the same inputs.

    Returns the largest |ONNX map - PyTorch map| per batch size. `inputs` (batch 1) defaults to random inputs;
    they are repeated to each batch size, with a different random clip in each row after the first.
    """
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = onnx_input_names(model)
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    differences = {}
    for batch_size in batch_sizes:
        batch = DTFSalModel.build_dummy_inputs(model.config, batch_size)
        batch = {name: torch.randn(value.shape, generator=generator) for name, value in batch.items()}
        if inputs is not None:
            for name in names:
                batch[name][:1] = inputs[name]
        with torch.inference_mode():
            expected = model(**{name: batch[name] for name in names}).saliency_map.numpy()
        (actual,) = session.run(["saliency_map"], {name: batch[name].numpy() for name in names})
        if actual.shape != expected.shape:
            raise ValueError(f"the ONNX model gave maps of shape {actual.shape}, PyTorch {expected.shape}")
        differences[int(batch_size)] = float(np.abs(actual - expected).max())
    return differences
