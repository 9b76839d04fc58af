"""Parameter and compute counts of DTFSal, as the paper reports them and in full.

- `count_conv_linear_macs`: multiply-accumulates of convolutions (deformable ones included) and linear
  layers only, the thop-style count behind the paper's "GFLOPs" (attention matmuls not counted).
- `count_flops`: `torch.utils.flop_counter.FlopCounterMode`'s total, 2 FLOPs per MAC, attention included.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import DeformConv2d

from .configuration_dtfsal import DTFSalConfig
from .modeling_dtfsal import DTFSalModel

__all__ = ["count_parameters", "count_conv_linear_macs", "count_flops", "describe_model", "describe_config",
           "PAPER_TOTALS"]

# The paper's figures: parameters (M), "GFLOPs" (conv + linear GMACs at 32 x 224 x 384), fp32 size (MB).
PAPER_TOTALS = {"DTFSal": (49.08, 297.91, 187.26), "DTFSal(V)": (40.73, 259.57, 155.37)}


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _layer_macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, DeformConv2d):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    # nn.Conv1d/2d/3d
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


@torch.no_grad()
def count_conv_linear_macs(model: nn.Module, inputs: dict, per_module: bool = False):
    """Multiply-accumulates of every convolution and linear layer in one forward pass of `inputs`.

    Returns the total, or with `per_module=True` a dict of totals per top-level child of `model`.
    """
    totals: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, DeformConv2d)):
            top = name.split(".")[0]

            def hook(mod, args, output, top=top):
                totals[top] = totals.get(top, 0) + _layer_macs(mod, args, output)

            handles.append(module.register_forward_hook(hook))
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return totals if per_module else sum(totals.values())


@torch.no_grad()
def count_flops(model: nn.Module, inputs: dict) -> int:
    """Total FLOPs of one forward pass by `FlopCounterMode` (2 per multiply-accumulate)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs)
    return counter.get_total_flops()


def describe_model(model_id: str | None = None, visual_only: bool = False, tiny: bool = False, with_flops: bool = True) -> str:
    """A text table of parameters, fp32 size and compute of a model folder, Hub id or configuration,
    next to the paper's totals."""
    if model_id is not None:
        from .inference import load_model_and_processor

        model = load_model_and_processor(model_id)[0]
    else:
        config = DTFSalConfig.tiny(use_audio=not visual_only) if tiny else DTFSalConfig(use_audio=not visual_only)
        model = DTFSalModel(config)
    model.eval()
    config = model.config
    name = "DTFSal" if config.use_audio else "DTFSal(V)"
    parameters = count_parameters(model)
    lines = [
        f"{name}: {config.num_frames} x {config.image_size[0]} x {config.image_size[1]} frames",
        f"parameters: {parameters / 1e6:.2f} M ({parameters:,}); fp32 size {parameters * 4 / 2**20:.2f} MiB"
        f" = {parameters * 4 / 1e6:.2f} MB",
    ]
    if with_flops:
        inputs = DTFSalModel.build_dummy_inputs(config)
        macs = count_conv_linear_macs(model, inputs, per_module=True)
        total_macs = sum(macs.values())
        lines.append(f"conv + linear multiply-accumulates: {total_macs / 1e9:.2f} G (the paper's 'GFLOPs')")
        lines += [f"  {part}: {value / 1e9:.2f} G" for part, value in macs.items()]
        lines.append(f"FlopCounterMode total: {count_flops(model, inputs) / 1e9:.2f} GFLOPs (2 per MAC, attention included)")
    if not tiny and model_id is None:
        paper = PAPER_TOTALS[name]
        lines.append(f"paper: {paper[0]} M parameters, {paper[1]} GFLOPs, {paper[2]} MB")
    return "\n".join(lines)


def describe_config(config: DTFSalConfig, title: str = "configuration") -> str:
    """Parameters and conv + linear multiply-accumulates of the model `config` describes, counted on the meta device
    (no weights are made and nothing is computed, so any size counts in seconds), per top-level part."""
    with torch.device("meta"):
        model = DTFSalModel(config).eval()
        macs = count_conv_linear_macs(model, DTFSalModel.build_dummy_inputs(config, device="meta"), per_module=True)
    parameters = count_parameters(model)
    parts = ", ".join(f"{kind} {getattr(config, kind)}" for kind in ("visual_encoder", "fusion", "decoder")
                      if kind != "fusion" or config.use_audio)
    lines = [
        f"{title}: {config.num_frames} x {config.image_size[0]} x {config.image_size[1]} frames, "
        f"{'audio-visual' if config.use_audio else 'visual only'}; {parts}; LTEB on levels {config.lteb_levels or 'none'}, "
        f"DLTFB on levels {config.dltfb_levels or 'none'}",
        f"parameters: {parameters / 1e6:.2f} M ({parameters:,}); fp32 size {parameters * 4 / 2**20:.2f} MiB",
        f"conv + linear multiply-accumulates: {sum(macs.values()) / 1e9:.2f} G (the paper's 'GFLOPs')",
    ]
    lines += [f"  {part}: {value / 1e9:.2f} G" for part, value in macs.items()]
    return "\n".join(lines)
