"""DTFSal's swappable parts by name: the built-in ones, ones registered in code, and plugins from other packages.

Four kinds of part, each built by a factory called with plain arguments (what the part is fed) and its own
options:

| kind | factory call | returns |
|---|---|---|
| `visual_encoder` | `factory(num_frames, image_size, **options)` | module with `out_channels`, `temporal_strides`, `spatial_strides` (4 each); `forward(videos (B, 3, T, H, W))` -> 4 stage tensors (`video_encoders.VideoStageEncoder`) |
| `audio_encoder` | `factory(num_examples, input_size, **options)` | module with `out_channels`; `forward((B, A, 1, h, w))` -> `(B, out_channels, Ta, Ha, Wa)` |
| `fusion` | `factory(visual_dim, audio_dim, **options)` | module; `forward(visual (B, C, T, H, W), audio)` -> `(B, C, T, H, W)` |
| `decoder` | `factory(feature_dim, num_levels, level_frames, output_size, **options)` | module; `forward(levels)` -> `(saliency_map (B, H, W), level_maps (B, L, H, W) or None)` |

Parts are registered with `register_visual_encoder(name, factory)` (and `register_audio_encoder`,
`register_fusion`, `register_decoder`), usable as decorators, or published by another distribution under the
entry-point groups `dtfsal_hf.visual_encoders`, `dtfsal_hf.audio_encoders`, `dtfsal_hf.fusion` and
`dtfsal_hf.decoders` (`name = "package.module:factory"`), found when first asked for. Each part records the
distribution that provides it (`part_record`), so a configuration naming a part that is not installed fails
with the part's name and the distribution to install.

This file imports no transformers: it is part of the model's code and is copied with it as remote code, with the
built-in parts it registers.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .audio_encoders import VGGishAudioEncoder
from .decoders import MultiLevelDecoder, SingleDecoder, UNetDecoder
from .fusion import ConcatFusion, CrossAttentionFusion
from .layers import AMFB
from .video_encoders import MViTVisualEncoder, R2Plus1DEncoder, S3DEncoder, Swin3DEncoder

__all__ = [
    "PART_KINDS",
    "ENTRY_POINT_GROUPS",
    "BUILTIN_DISTRIBUTION",
    "PartSpec",
    "PluginNotFoundError",
    "register_part",
    "register_visual_encoder",
    "register_audio_encoder",
    "register_fusion",
    "register_decoder",
    "available_parts",
    "get_part",
    "build_part",
    "part_record",
]

PART_KINDS = ("visual_encoder", "audio_encoder", "fusion", "decoder")
ENTRY_POINT_GROUPS = {
    "visual_encoder": "dtfsal_hf.visual_encoders",
    "audio_encoder": "dtfsal_hf.audio_encoders",
    "fusion": "dtfsal_hf.fusion",
    "decoder": "dtfsal_hf.decoders",
}
BUILTIN_DISTRIBUTION = "dtfsal_hf"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# The attributes each kind of built part must state, and how many entries each holds (None: one integer).
_CONTRACTS = {
    "visual_encoder": {"out_channels": 4, "temporal_strides": 4, "spatial_strides": 4},
    "audio_encoder": {"out_channels": None},
    "fusion": {},
    "decoder": {},
}


@dataclass(frozen=True)
class PartSpec:
    """A registered part: its kind, name, factory and the distribution that provides it."""

    kind: str
    name: str
    factory: Callable[..., nn.Module]
    distribution: str | None


class PluginNotFoundError(ValueError):
    """A part name that no registered part and no installed plugin provides."""


_REGISTRY: dict[str, dict[str, PartSpec]] = {kind: {} for kind in PART_KINDS}


def _check_kind(kind: str) -> None:
    if kind not in PART_KINDS:
        raise ValueError(f"part kind must be one of {', '.join(PART_KINDS)}, got {kind!r}")


def _distribution_of(factory: Callable) -> str | None:
    """The installed distribution whose top-level package defines `factory`, if any."""
    top = (getattr(factory, "__module__", None) or "").split(".")[0]
    names = importlib.metadata.packages_distributions().get(top) or []
    return names[0] if names else None


def register_part(kind: str, name: str, factory: Callable[..., nn.Module] | None = None, *,
                  distribution: str | None = None, replace: bool = False):
    """Register `factory` as the part `name` of `kind`; without `factory`, return a decorator that does.

    `distribution` (default: the installed distribution whose package defines `factory`) is recorded in saved
    configurations, so that loading one where the part is missing names what to install. A name already taken
    raises `ValueError` unless `replace=True`.
    """
    _check_kind(kind)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a part name must be letters, digits, '_', '.' or '-', got {name!r}")
    if factory is None:
        return functools.partial(_register_returning, kind, name, distribution=distribution, replace=replace)
    if not callable(factory):
        raise ValueError(f"the factory of {kind} {name!r} must be callable, got {type(factory).__name__}")
    existing = _REGISTRY[kind].get(name)
    if existing is not None and not replace:
        raise ValueError(
            f"a {kind} named {name!r} is already registered (by {existing.distribution or 'code outside a distribution'}); "
            "pass replace=True to replace it"
        )
    spec = PartSpec(kind, name, factory, distribution if distribution is not None else _distribution_of(factory))
    _REGISTRY[kind][name] = spec
    return spec


def _register_returning(kind, name, factory, *, distribution, replace):
    register_part(kind, name, factory, distribution=distribution, replace=replace)
    return factory


def register_visual_encoder(name: str, factory=None, *, distribution: str | None = None, replace: bool = False):
    """Register a visual encoder: `factory(num_frames, image_size, **options)` -> a module stating
    `out_channels`, `temporal_strides` and `spatial_strides` and returning four stage features."""
    return register_part("visual_encoder", name, factory, distribution=distribution, replace=replace)


def register_audio_encoder(name: str, factory=None, *, distribution: str | None = None, replace: bool = False):
    """Register an audio encoder: `factory(num_examples, input_size, **options)` -> a module stating
    `out_channels` and mapping (B, A, 1, h, w) log-mel examples to (B, out_channels, Ta, Ha, Wa)."""
    return register_part("audio_encoder", name, factory, distribution=distribution, replace=replace)


def register_fusion(name: str, factory=None, *, distribution: str | None = None, replace: bool = False):
    """Register a fusion block: `factory(visual_dim, audio_dim, **options)` -> a module mapping
    (visual (B, C, T, H, W), audio (B, C_a, Ta, Ha, Wa)) to (B, C, T, H, W)."""
    return register_part("fusion", name, factory, distribution=distribution, replace=replace)


def register_decoder(name: str, factory=None, *, distribution: str | None = None, replace: bool = False):
    """Register a decoder: `factory(feature_dim, num_levels, level_frames, output_size, **options)` -> a module
    mapping the levels (finest first) to (saliency_map (B, H, W), level_maps (B, L, H, W) or None)."""
    return register_part("decoder", name, factory, distribution=distribution, replace=replace)


def _entry_points(kind: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
    """Installed entry points of `kind`'s group by name, one per distribution (a distribution found twice on the
    path counts once)."""
    found: dict[str, dict[tuple, importlib.metadata.EntryPoint]] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUPS[kind]):
        dist = entry.dist.name if entry.dist is not None else None
        found.setdefault(entry.name, {}).setdefault((dist, entry.value), entry)
    return {name: list(entries.values()) for name, entries in found.items()}


def available_parts(kind: str) -> list[str]:
    """Names of the parts of `kind`: registered ones and those installed plugins publish."""
    _check_kind(kind)
    return sorted(set(_REGISTRY[kind]) | set(_entry_points(kind)))


def _not_found(kind: str, name: str, distribution: str | None) -> PluginNotFoundError:
    choices = ", ".join(available_parts(kind)) or "none"
    if distribution and distribution != BUILTIN_DISTRIBUTION:
        try:
            importlib.metadata.distribution(distribution)
            why = (f"the distribution {distribution!r} that provided it is installed but publishes no {kind} of that "
                   f"name (entry-point group {ENTRY_POINT_GROUPS[kind]!r})")
        except importlib.metadata.PackageNotFoundError:
            why = f"it is provided by the distribution {distribution!r}, which is not installed: pip install {distribution}"
        return PluginNotFoundError(f"The {kind} {name!r} is not available: {why}. Available {kind} parts: {choices}")
    return PluginNotFoundError(f"Unknown {kind} {name!r}; choose one of: {choices}")


def _load_entry_point(kind: str, name: str, entries: list[importlib.metadata.EntryPoint]) -> PartSpec:
    distributions = [entry.dist.name if entry.dist is not None else None for entry in entries]
    if len(entries) > 1:
        raise ValueError(f"the {kind} {name!r} is published by several distributions ({', '.join(map(str, distributions))}): "
                         "uninstall all but one")
    entry, distribution = entries[0], distributions[0]
    try:
        factory = entry.load()
    except Exception as error:  # a plugin's import may fail in any way; name it instead of a bare traceback
        raise ValueError(f"The {kind} plugin {name!r} ({entry.value}) of the distribution {distribution!r} failed to "
                         f"import: {type(error).__name__}: {error}") from error
    return register_part(kind, name, factory, distribution=distribution)


def get_part(kind: str, name: str, distribution: str | None = None) -> PartSpec:
    """The part `name` of `kind`: registered, or loaded from the installed plugin that publishes it.

    `distribution`, where known (a saved configuration records it), makes the error for a missing part name the
    distribution to install. Raises `PluginNotFoundError` (a `ValueError`) naming the choices.
    """
    _check_kind(kind)
    if not isinstance(name, str):
        raise PluginNotFoundError(f"a {kind} is named by a string, got {name!r}; choose one of: {', '.join(available_parts(kind))}")
    spec = _REGISTRY[kind].get(name)
    if spec is not None:
        return spec
    entries = _entry_points(kind).get(name)
    if not entries:
        raise _not_found(kind, name, distribution)
    return _load_entry_point(kind, name, entries)


def _check_contract(kind: str, name: str, part) -> None:
    if not isinstance(part, nn.Module):
        raise ValueError(f"the {kind} {name!r} must build a torch.nn.Module, its factory returned a {type(part).__name__}")
    for attribute, length in _CONTRACTS[kind].items():
        value = getattr(part, attribute, None)
        values = [value] if length is None else list(value) if isinstance(value, (list, tuple)) else None
        if values is None or (length is not None and len(values) != length) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
        ):
            expected = "a positive integer" if length is None else f"{length} positive integers"
            raise ValueError(f"the {kind} {name!r} must state `{attribute}` as {expected}, got {value!r}")


def build_part(kind: str, name: str, *args, distribution: str | None = None, **kwargs) -> nn.Module:
    """Build the part `name` of `kind` with its factory's arguments, checking the contract of the result."""
    spec = get_part(kind, name, distribution)
    part = spec.factory(*args, **kwargs)
    _check_contract(kind, name, part)
    return part


def part_record(kind: str, name: str) -> dict[str, str | None]:
    """What a configuration saves about a part: `{"name": ..., "distribution": ...}`."""
    spec = get_part(kind, name)
    return {"name": spec.name, "distribution": spec.distribution}


def _register_builtins() -> None:
    builtins = {
        "visual_encoder": {
            "mvit_v2_s": MViTVisualEncoder,
            "s3d": S3DEncoder,
            "swin3d_t": functools.partial(Swin3DEncoder, variant="swin3d_t"),
            "swin3d_s": functools.partial(Swin3DEncoder, variant="swin3d_s"),
            "swin3d_b": functools.partial(Swin3DEncoder, variant="swin3d_b"),
            "r2plus1d_18": R2Plus1DEncoder,
        },
        "audio_encoder": {"vggish": VGGishAudioEncoder},
        "fusion": {"amfb": AMFB, "concat": ConcatFusion, "cross_attention": CrossAttentionFusion},
        "decoder": {"multi": MultiLevelDecoder, "single": SingleDecoder, "unet": UNetDecoder},
    }
    for kind, parts in builtins.items():
        for name, factory in parts.items():
            register_part(kind, name, factory, distribution=BUILTIN_DISTRIBUTION)


_register_builtins()
