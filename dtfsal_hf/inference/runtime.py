"""How a model runs: one `Runtime` object that `dtfsal predict`, the Space, evaluation, export and the benchmark apply.

A `Runtime` names the attention kernel (`DTFSalModel.set_mvit_attention`), the precision policy (`"cast"`: weights
and activations in `dtype`, what `dtfsal predict --dtype` does; `"autocast"`: float32 weights under
`torch.autocast`), the float32 islands kept under autocast (`FLOAT32_ENDS`), channels-last-3d convolutions,
`torch.compile`, and on a CPU whether the process keeps the memory it frees (`keep_freed_memory`).
`runtime.prepare(model, device)` readies a model once; `runtime.saliency_maps(runner, inputs, device)` runs it.
`PRESETS` are the named runtimes the benchmark times; the predictor runs any of them, so the benchmark times
exactly what `predict` runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..mvit_attention import MVIT_ATTENTIONS, set_mvit_attention

PRECISIONS = ("cast", "autocast")
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
_SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# What a `float32_ends` runtime keeps in fp32 under autocast: the patch embedding, which reads the pixels (in bf16
# they would be rounded to 3 significant digits), and the layers that write the map: each level's decoder head (its
# logits, upsampled to the frame and through a sigmoid) and the 3 x 3 fusion of the four level maps. Together 2% of
# the FLOPs; in bf16 they set most of the maps' average rounding error (full model fitted by
# scripts/precision_check.py: mean absolute difference from fp32 15-50x smaller with them in fp32; the largest
# difference, set by the backbone, stays).
FLOAT32_ENDS = ("visual_encoder.conv_proj", "decoder_heads", "fuse_maps")

_FLOAT32_CLASSES: dict[type, type] = {}


def resolve_dtype(dtype) -> torch.dtype:
    """`torch.float32`, `torch.bfloat16` or `torch.float16` from a dtype, its name (`"bfloat16"`, `"bf16"`...) or
    None (float32); anything else is refused."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, _DTYPE_NAMES.get(dtype, dtype), None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16 (or None for float32), got {dtype!r}")
    return dtype


def _float32_class(cls: type) -> type:
    """A subclass of `cls` whose forward runs with autocast off and its floating-point inputs in fp32."""
    if cls not in _FLOAT32_CLASSES:

        def forward(self, *args, **kwargs):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            with torch.autocast(args[0].device.type, enabled=False):
                return cls.forward(self, *args, **kwargs)

        _FLOAT32_CLASSES[cls] = type(f"Float32{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FLOAT32_CLASSES[cls]


def keep_float32(model: nn.Module, names: Sequence[str] = FLOAT32_ENDS) -> nn.Module:
    """Run the named submodules of `model` (each module of a named `ModuleList`) in fp32 under autocast: their
    inputs are cast to fp32 and autocast is off inside them; their outputs stay fp32. The class of each is
    swapped for a subclass, so parameters, state-dict keys and deep copies are unchanged. Returns `model`."""
    for name in names:
        module = model.get_submodule(name)
        for target in module if isinstance(module, nn.ModuleList) else [module]:
            if type(target) not in _FLOAT32_CLASSES.values():
                target.__class__ = _float32_class(type(target))
    return model


# glibc's mallopt parameters and the values it starts with (trim threshold 128 KiB, up to 65536 mmap'd blocks).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
# Whether `keep_freed_memory(True)` is in force in this process.
_keeping = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory(keep: bool = True) -> bool:
    """Have this process keep the memory it frees for its next allocations (`keep=True`) or hand it back to the
    operating system (`keep=False`, glibc's behaviour with its starting thresholds). Returns whether it applied
    (glibc on Linux only; elsewhere nothing changes).

    By default glibc serves every block of 128 KiB or more with a fresh `mmap` and unmaps it when freed, so each
    forward pass of the full model faults its activations in again, page by page, and the kernel zeroes each
    page: on a 2-core virtual machine the eager fp32 call spent as much time in the kernel as in PyTorch (3.6
    million page faults a call; docs/benchmarks.md). Kept, the calls fault next to nothing once the heap has
    settled (from the third). The resident memory then stays at the largest call's peak instead of falling
    back between calls. A CPU `Runtime` applies this when it prepares a model (`Runtime.keep_freed_memory`)."""
    global _keeping
    libc = _glibc()
    if libc is None:
        return False
    if keep:
        # mallopt takes an int; glibc reads the trim threshold as a size_t, so -1 means "never trim".
        _keeping = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
        return _keeping
    if _keeping:
        # Back to glibc's starting thresholds (fixed from now on: glibc's own raising of them is not restored).
        _keeping = not all(libc.mallopt(option, value) for option, value in _GLIBC_DEFAULTS.items())
    return not _keeping


# CPU flags (/proc/cpuinfo) of native reduced-precision matrix arithmetic. Without them oneDNN converts to fp32 and
# back around fp32 arithmetic: a bf16 product runs at a sixth to a tenth of the fp32 rate (docs/benchmarks.md,
# 2-core AVX2 machine), and every bf16 path is slower than its fp32 twin.
NATIVE_CPU_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}


def cpu_native_flags(dtype: torch.dtype | str = torch.bfloat16, cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The flags of `NATIVE_CPU_FLAGS[dtype]` this CPU lists: empty when it has none, None where `cpuinfo` cannot
    be read (then nothing is known)."""
    try:
        with open(cpuinfo) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return None
    return [flag for flag in NATIVE_CPU_FLAGS[resolve_dtype(dtype)] if flag in flags]


def release_freed_memory() -> bool:
    """Hand the memory this process has freed back to the operating system now (glibc's `malloc_trim`), e.g.
    before measuring how much a call needs. Returns whether it applied (glibc on Linux only)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@dataclass(frozen=True)
class Runtime:
    """One way of running the model.

    Attributes:
        name: short name, e.g. `"sdpa-bf16"` (`PRESETS`); empty for a runtime built from options.
        attention: MViT attention kernel (`mvit_attention.MVIT_ATTENTIONS`): `"eager"` (torchvision's matmul +
            softmax), `"sdpa"` (`scaled_dot_product_attention`), `"blocked"` (matrix products by blocks of queries)
            or `"auto"` (blocked for bf16 / fp16 inference on a CPU without AMX, sdpa otherwise).
        dtype: `torch.float32`, `torch.bfloat16` or `torch.float16` (or a name: `"bfloat16"`, `"bf16"`...).
        precision: `"cast"` (weights and activations in `dtype`) or `"autocast"` (float32 weights, `torch.autocast`
            to `dtype`). Either way the model runs its deformable convolutions in fp32 (`layers.DeformableStream`).
        float32_ends: under autocast, keep the patch embedding and the layers that write the map in fp32
            (`FLOAT32_ENDS`, `keep_float32`).
        channels_last: convolution weights and the input video in `torch.channels_last_3d`.
        compile: wrap the model in `torch.compile` (the first call compiles).
        keep_freed_memory: on a CPU, have the process keep freed memory for reuse instead of returning it to the
            operating system between calls (`keep_freed_memory`; process-wide, glibc only).
        devices: the device types where the runtime applies (`"cpu"`, `"cuda"`).
    """

    name: str = ""
    attention: str = "auto"
    dtype: torch.dtype | str | None = torch.float32
    precision: str = "cast"
    float32_ends: bool = False
    channels_last: bool = False
    compile: bool = False
    keep_freed_memory: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")

    def __post_init__(self) -> None:
        if self.attention not in MVIT_ATTENTIONS:
            raise ValueError(f"attention must be one of {MVIT_ATTENTIONS}, got {self.attention!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
        if self.float32_ends and self.precision != "autocast":
            raise ValueError("float32_ends keeps layers in fp32 under autocast: it needs precision='autocast'")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype `torch.autocast` runs at, None when autocast is off."""
        return self.dtype if self.precision == "autocast" and self.dtype != torch.float32 else None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the inputs handed to the model: the weights' dtype."""
        return self.dtype if self.precision == "cast" else torch.float32

    def describe(self) -> str:
        short = _SHORT_NAMES[self.dtype]
        parts = [f"{self.attention} attention", short + (f" {self.precision}" if self.dtype != torch.float32 else "")]
        if self.float32_ends:
            parts.append("fp32 ends")
        if self.channels_last:
            parts.append("channels-last-3d")
        if self.compile:
            parts.append("torch.compile")
        if not self.keep_freed_memory:
            parts.append("freed memory returned")
        return ", ".join(parts)

    def check_device(self, device: torch.device | str) -> None:
        if torch.device(device).type not in self.devices:
            raise ValueError(f"the runtime {self.name or self.describe()!r} runs on {', '.join(self.devices)}, not on {device}")

    def slow_reason(self, device: torch.device | str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> str | None:
        """One line saying why this runtime is slower than float32 on `device`: bf16 or fp16 on a CPU that lists
        none of its native flags (`NATIVE_CPU_FLAGS`). None otherwise, and where the CPU's flags cannot be read."""
        if torch.device(device).type != "cpu" or self.dtype == torch.float32:
            return None
        if cpu_native_flags(self.dtype, cpuinfo) != []:
            return None
        flags = " or ".join(flag.upper() for flag in NATIVE_CPU_FLAGS[self.dtype])
        return (f"this CPU has no native {_SHORT_NAMES[self.dtype]} matrix arithmetic ({flags}): "
                f"{self.name or _SHORT_NAMES[self.dtype]} runs slower here than float32")

    def prepare(self, module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
        """Ready `module` (a `DTFSalModel`; or torchvision's MViT, which the benchmark times as the floor) in place:
        its attention kernel, device, dtype, float32 islands and memory format, in eval mode. Returns what to call:
        the module, or its `torch.compile` wrapper."""
        self.check_device(device)
        if torch.device(device).type == "cpu":
            keep_freed_memory(self.keep_freed_memory)
        if hasattr(module, "set_mvit_attention"):
            module.set_mvit_attention(self.attention)  # recorded in the model's configuration
        else:
            set_mvit_attention(module, self.attention)
        module = module.to(device=torch.device(device), dtype=self.input_dtype).eval()
        if self.float32_ends:
            # torchvision's MViT alone (the benchmark's floor) has only the patch embedding of the float32 ends
            keep_float32(module, FLOAT32_ENDS if hasattr(module, "set_mvit_attention") else ("conv_proj",))
        if self.channels_last:
            for child in module.modules():
                if isinstance(child, nn.Conv3d):
                    child.to(memory_format=torch.channels_last_3d)
        return torch.compile(module, dynamic=False) if self.compile else module

    def context(self, device: torch.device | str):
        """No autograd, and autocast where the runtime says, for the calls of a prepared model."""
        device = torch.device(device)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(device.type, self.autocast_dtype or torch.float32,
                                           enabled=self.autocast_dtype is not None))
        return stack

    def video_layout(self, video: torch.Tensor, time_axis: int = 1) -> torch.Tensor:
        """`video` (B, T, 3, H, W) with `time_axis=1`, or (B, 3, T, H, W) with `time_axis=2`, in the memory format
        the runtime's convolutions read."""
        if not self.channels_last:
            return video
        if time_axis == 1:
            # (B, T, 3, H, W) -> channels-last-3d strides of its (B, 3, T, H, W) view, where the model reads it
            return video.transpose(1, 2).contiguous(memory_format=torch.channels_last_3d).transpose(1, 2)
        return video.contiguous(memory_format=torch.channels_last_3d)

    def saliency_maps(self, runner: nn.Module, inputs: dict, device: torch.device | str) -> torch.Tensor:
        """`runner` (from `prepare`) on model inputs (`pixel_values_videos` (B, T, 3, H, W), `input_features`
        (B, A, 1, h, w) or None, `frame_times` (B, T, 2) when given): the saliency maps (B, H, W), float32, on `device`."""
        device = torch.device(device)
        video = self.video_layout(inputs["pixel_values_videos"].to(device, self.input_dtype))
        features, times = inputs.get("input_features"), inputs.get("frame_times")
        features = None if features is None else features.to(device, self.input_dtype)
        timed = {} if times is None else {"frame_times": times.to(device)}
        with self.context(device):
            return runner(pixel_values_videos=video, input_features=features, **timed).saliency_map.float()


PRESETS = {
    runtime.name: runtime
    for runtime in (
        Runtime("eager-fp32", attention="eager"),
        Runtime("sdpa-fp32", attention="sdpa"),
        Runtime("blocked-fp32", attention="blocked"),
        Runtime("auto-fp32", attention="auto"),
        Runtime("eager-bf16", attention="eager", dtype="bf16", precision="autocast"),
        Runtime("sdpa-bf16", attention="sdpa", dtype="bf16", precision="autocast"),
        Runtime("sdpa-bf16-cl", attention="sdpa", dtype="bf16", precision="autocast", channels_last=True),
        Runtime("blocked-bf16", attention="blocked", dtype="bf16", precision="autocast"),
        Runtime("blocked-bf16-cl", attention="blocked", dtype="bf16", precision="autocast", channels_last=True),
        Runtime("blocked-mixed", attention="blocked", dtype="bf16", precision="autocast", float32_ends=True),
        Runtime("blocked-mixed-cl", attention="blocked", dtype="bf16", precision="autocast", float32_ends=True,
                channels_last=True),
        Runtime("sdpa-mixed", attention="sdpa", dtype="bf16", precision="autocast", float32_ends=True),
        Runtime("auto-bf16-cast", attention="auto", dtype="bf16"),
        Runtime("compiled-sdpa-bf16", attention="sdpa", dtype="bf16", precision="autocast", compile=True),
        Runtime("sdpa-fp16", attention="sdpa", dtype="fp16", precision="autocast", devices=("cuda",)),
        Runtime("compiled-sdpa-fp16", attention="sdpa", dtype="fp16", precision="autocast", compile=True,
                devices=("cuda",)),
    )
}
"""The named runtimes: `<attention>-<dtype>` runs under autocast (`-cast`: weights cast, as `dtfsal predict --dtype`),
`-mixed` keeps `FLOAT32_ENDS` in fp32, `-cl` is channels-last-3d, `compiled-` uses `torch.compile`; `auto-fp32` is
what `dtfsal predict` runs by default."""


def preset(name: str) -> Runtime:
    """The runtime `PRESETS[name]`; an unknown name is refused with the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["FLOAT32_ENDS", "NATIVE_CPU_FLAGS", "PRECISIONS", "PRESETS", "Runtime", "cpu_native_flags", "keep_float32",
           "keep_freed_memory", "preset", "release_freed_memory", "resolve_dtype"]
