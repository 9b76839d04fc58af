"""Parameter and compute counts of DTFSal, as the paper reports them and in full.

- `count_conv_linear_macs`: multiply-accumulates of convolutions (deformable ones included) and linear
  layers only, the thop-style count behind the paper's "GFLOPs" (attention matmuls not counted).
- `count_flops`: `torch.utils.flop_counter.FlopCounterMode`'s total, 2 FLOPs per MAC, attention included.

Both run the model once; `describe_model` and `describe_config` run it on the meta device (`meta_model`), where
no weights are made and nothing is computed, so the full-size model counts in seconds. The counts are those of
a CPU run (a convolution's or product's FLOPs depend on shapes only), with one difference that favours meta: on
a CPU, `scaled_dot_product_attention` runs a fused kernel `FlopCounterMode` has no formula for and so does not
count, where on meta it is counted as its matrix products. The MViT attentions are counted in torchvision's
explicit form whichever kernel the model runs (`mvit_attention.py`: the same function each way), and the LTEB /
DLTFB token paths in the paper's order, each frame's token mixture projected (`LearnableTokens.project_tokens_once`
off), where the model itself projects the five tokens once a call: 7.1 G multiply-accumulates fewer at full size.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import DeformConv2d

from .configuration_dtfsal import DTFSalConfig
from .layers import LearnableTokens
from .modeling_dtfsal import DTFSalModel
from .mvit_attention import set_mvit_attention

__all__ = ["count_parameters", "count_conv_linear_macs", "count_flops", "count_macs_and_flops", "meta_model", "describe_model",
           "describe_config", "in_papers_token_order", "PAPER_TOTALS"]

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


@contextlib.contextmanager
def _conv_linear_macs(model: nn.Module):
    """Within it, every forward call of a convolution or linear layer of `model` adds its multiply-accumulates
    to the yielded dict, under the name of the top-level child of `model` holding it."""
    totals: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, DeformConv2d)):
            top = name.split(".")[0]

            def hook(mod, args, output, top=top):
                totals[top] = totals.get(top, 0) + _layer_macs(mod, args, output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def count_conv_linear_macs(model: nn.Module, inputs: dict, per_module: bool = False):
    """Multiply-accumulates of every convolution and linear layer in one forward pass of `inputs`.

    Returns the total, or with `per_module=True` a dict of totals per top-level child of `model`.
    """
    with _conv_linear_macs(model) as totals:
        model(**inputs)
    return totals if per_module else sum(totals.values())


@torch.no_grad()
def count_flops(model: nn.Module, inputs: dict) -> int:
    """Total FLOPs of one forward pass by `FlopCounterMode` (2 per multiply-accumulate)."""
    return count_macs_and_flops(model, inputs)[1]


def _deform_conv_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """torchvision's `deform_conv2d` as FlopCounterMode counts a convolution: 2 per multiply-accumulate of its
    matrix product (the bilinear sampling, like `grid_sample`, is not counted)."""
    return 2 * math.prod(out_shape) * math.prod(weight_shape[1:])


def _onednn_conv_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """`aten.mkldnn_convolution` (`layers.Conv3d` at CPU inference) as FlopCounterMode counts `aten.convolution`:
    2 per multiply-accumulate (weight (O, C / groups, k...): each output value takes C / groups x k... of them)."""
    return 2 * math.prod(out_shape) * math.prod(weight_shape[1:])


@torch.no_grad()
def count_macs_and_flops(model: nn.Module, inputs: dict) -> tuple[dict[str, int], int]:
    """`count_conv_linear_macs(..., per_module=True)` and `count_flops` of the same single forward pass."""
    # FlopCounterMode has no formula for torchvision's deformable convolution (the CPU inference path computes it
    # as a grid_sample and a matrix product, whose product it counts) nor for oneDNN's convolution operator.
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.torchvision.deform_conv2d: _deform_conv_flops,
                                                             torch.ops.aten.mkldnn_convolution: _onednn_conv_flops})
    with _conv_linear_macs(model) as totals, counter:
        model(**inputs)
    return totals, counter.get_total_flops()


def meta_model(config: DTFSalConfig, model_class: type[DTFSalModel] = DTFSalModel) -> DTFSalModel:
    """`model_class(config)` on the meta device, in eval mode, its MViT attentions in the explicit form and its
    token paths in the paper's order (the configuration is left as it is): the model to count, with
    `DTFSalModel.build_dummy_inputs(config, device="meta")` as its inputs."""
    with torch.device("meta"):
        model = model_class(config).eval()
    set_mvit_attention(model.visual_encoder, "eager")
    return in_papers_token_order(model)


def in_papers_token_order(model: nn.Module, paper: bool = True) -> nn.Module:
    """Every LTEB / DLTFB token path in `model` projects each frame's token mixture, the paper's order (`paper=False`:
    projects the tokens once a call, the default). The same function; the counts differ. Returns `model`."""
    for module in model.modules():
        if isinstance(module, LearnableTokens):
            module.project_tokens_once = not paper
    return model


def describe_model(model_id: str | None = None, visual_only: bool = False, tiny: bool = False, with_flops: bool = True) -> str:
    """A text table of parameters, fp32 size and compute of a model folder, Hub id or configuration,
    next to the paper's totals. A configuration is counted on the meta device only; a model folder or id is
    loaded (its parameters counted as loaded), its compute counted on a meta copy of its class and configuration."""
    if model_id is not None:
        from .inference import load_model_and_processor

        loaded = load_model_and_processor(model_id)[0]
        config, model_class, parameters = loaded.config, type(loaded), count_parameters(loaded)
        del loaded
    else:
        config = DTFSalConfig.tiny(use_audio=not visual_only) if tiny else DTFSalConfig(use_audio=not visual_only)
        model_class, parameters = DTFSalModel, None
    model = meta_model(config, model_class)
    parameters = count_parameters(model) if parameters is None else parameters
    name = "DTFSal" if config.use_audio else "DTFSal(V)"
    lines = [
        f"{name}: {config.num_frames} x {config.image_size[0]} x {config.image_size[1]} frames",
        f"parameters: {parameters / 1e6:.2f} M ({parameters:,}); fp32 size {parameters * 4 / 2**20:.2f} MiB"
        f" = {parameters * 4 / 1e6:.2f} MB",
    ]
    if with_flops:
        inputs = DTFSalModel.build_dummy_inputs(config, device="meta")
        macs, flops = count_macs_and_flops(model, inputs)
        total_macs = sum(macs.values())
        lines.append(f"conv + linear multiply-accumulates: {total_macs / 1e9:.2f} G (the paper's 'GFLOPs')")
        lines += [f"  {part}: {value / 1e9:.2f} G" for part, value in macs.items()]
        lines.append(f"FlopCounterMode total: {flops / 1e9:.2f} GFLOPs (2 per MAC, attention included)")
    if not tiny and model_id is None:
        paper = PAPER_TOTALS[name]
        lines.append(f"paper: {paper[0]} M parameters, {paper[1]} GFLOPs, {paper[2]} MB")
    return "\n".join(lines)


def describe_config(config: DTFSalConfig, title: str = "configuration") -> str:
    """Parameters and conv + linear multiply-accumulates of the model `config` describes, counted on the meta device
    (no weights are made and nothing is computed, so any size counts in seconds), per top-level part."""
    model = meta_model(config)
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
