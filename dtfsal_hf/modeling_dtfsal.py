"""DTFSal: audio-visual dynamic token fusion for video saliency prediction (BMVC 2025)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from torchvision.models.video.mvit import MultiscaleAttention, PositionalEncoding
from torchvision.ops import DeformConv2d

from .configuration_dtfsal import LOG_MEL_FRAME_S, LOG_MEL_HOP_S, VGGISH_EXAMPLE_FRAMES, VGGISH_EXAMPLE_HOP, DTFSalConfig
from .audio_encoders import VGGishAudioEncoder
from .decoders import SaliencyDecoderHead, resize_frames
from .encoders import AudioTemporalEnhancement
from .layers import DLTFB, LTEB, Conv3d, LearnableTokens, audio_token_times
from .mvit_attention import set_mvit_attention
from .plugins import BUILTIN_DISTRIBUTION, build_part, get_part

# Sum-normalisation and log guard of the MIT saliency benchmark (MATLAB's eps).
_EPS = 2.2204e-16


@dataclass
class DTFSalOutput(ModelOutput):
    """Output of [`DTFSalModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): KL(labels || map) - CC(map, labels), batch mean,
            returned when `labels` are given.
        saliency_map (`torch.FloatTensor` of shape `(batch, height, width)`): the fused map, in [0, 1].
        level_maps (`torch.FloatTensor` of shape `(batch, 4, height, width)`): the four decoder heads' maps.
    """

    loss: torch.FloatTensor | None = None
    saliency_map: torch.FloatTensor | None = None
    level_maps: torch.FloatTensor | None = None


def _upsample_hw(features: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsampling by `factor` in height and width, time kept: trilinear, computed frame by frame (`resize_frames`)."""
    if factor == 1:
        return features
    return resize_frames(features, scale_factor=factor)


def kl_divergence(saliency_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || map) per sample on sum-normalised (B, H, W) maps, as the MIT benchmark computes it."""
    prediction = saliency_map.flatten(1)
    target = target.flatten(1)
    prediction = prediction / (prediction.sum(dim=1, keepdim=True) + _EPS)
    target = target / (target.sum(dim=1, keepdim=True) + _EPS)
    return (target * torch.log(_EPS + target / (prediction + _EPS))).sum(dim=1)


def correlation_coefficient(saliency_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation per sample between (B, H, W) maps."""
    prediction = saliency_map.flatten(1)
    target = target.flatten(1)
    prediction = prediction - prediction.mean(dim=1, keepdim=True)
    target = target - target.mean(dim=1, keepdim=True)
    return (prediction * target).sum(dim=1) / (prediction.norm(dim=1) * target.norm(dim=1) + _EPS)


def saliency_loss(saliency_map: torch.Tensor, target: torch.Tensor, kl_weight: float = 1.0, cc_weight: float = -1.0) -> torch.Tensor:
    """kl_weight KL + cc_weight CC averaged over the batch; the defaults give the paper's KL - CC. Maps are (B, H, W)."""
    return (kl_weight * kl_divergence(saliency_map, target) + cc_weight * correlation_coefficient(saliency_map, target)).mean()


class DTFSalFeatureEnhancement(nn.Module):
    """Temporal halving and channel alignment of each stage, top-down fusion with lateral connections,
    and 3 x 3 refinement of levels 1-3 (R4 = F4).

    Input: four (B, C_i, T_i, H_i, W_i) stage outputs, H_i = 2 H_(i+1). Output: four (B, C*, T_i / f_i, H_i, W_i),
    f_i the temporal factor of stage i's lateral convolution (kernel and stride f_i in time; 2 for MViTv2's stages).
    """

    def __init__(self, stage_dims: list[int], feature_dim: int, temporal_factors: list[int] | None = None):
        super().__init__()
        factors = temporal_factors or [2] * len(stage_dims)
        self.laterals = nn.ModuleList(
            Conv3d(dim, feature_dim, kernel_size=(f, 1, 1), stride=(f, 1, 1)) for dim, f in zip(stage_dims, factors)
        )
        self.refine = nn.ModuleList(
            Conv3d(feature_dim, feature_dim, (1, 3, 3), padding=(0, 1, 1), bias=False) for _ in range(3)
        )

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        y1, y2, y3, y4 = (lateral(stage) for lateral, stage in zip(self.laterals, stages))
        f4 = y4
        f3 = y3 + _upsample_hw(f4, 2)
        f2 = y2 + _upsample_hw(f3, 2) + _upsample_hw(f4, 4)
        f1 = y1 + _upsample_hw(f2, 2) + _upsample_hw(f4, 8)
        r1, r2, r3 = (refine(level) for refine, level in zip(self.refine, (f1, f2, f3)))
        return [r1, r2, r3, f4]


# The decoder head lives with the other decoders; the name stays for code that imports it from here.
DTFSalDecoderHead = SaliencyDecoderHead


class DTFSalAudioEncoder(VGGishAudioEncoder):
    """The paper's audio encoder (`audio_encoders.VGGishAudioEncoder`) sized by a `DTFSalConfig`: VGGish trunk per
    log-mel example, then temporal enhancement across examples. Input (B, A, 1, h, w) -> (B, C_a, A, h / 16, w / 16).
    """

    def __init__(self, config: DTFSalConfig):
        super().__init__(config.num_audio_examples, config.audio_input_size, config.audio_trunk_channels,
                         config.audio_num_heads, config.audio_head_dim, config.audio_mlp_dim)


class DTFSalPreTrainedModel(PreTrainedModel):
    config_class = DTFSalConfig
    base_model_prefix = "dtfsal"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video", "audio")
    supports_gradient_checkpointing = True

    @classmethod
    def from_pretrained(cls, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing (with `strict=True`) a checkpoint whose keys are missing,
        unexpected or of other shapes, where transformers would re-initialise them with a warning."""
        return_info = kwargs.pop("output_loading_info", False)
        if strict:
            kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if strict:
            _raise_on_loading_problems(info, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return (model, info) if return_info else model

    @staticmethod
    def build_dummy_inputs(config: DTFSalConfig, batch_size: int = 1, device="cpu", dtype=torch.float32) -> dict:
        """Random model inputs of `config`'s sizes: `pixel_values_videos` (B, T, 3, H, W) and, for the
        audio-visual model, `input_features` (B, A, 1, h, w); drawn from torch's global generator."""
        inputs = {"pixel_values_videos": torch.randn(batch_size, config.num_frames, 3, *config.image_size,
                                                     device=device, dtype=dtype)}
        if config.use_audio:
            inputs["input_features"] = torch.randn(
                batch_size, config.num_audio_examples, 1, *config.audio_input_size, device=device, dtype=dtype
            )
        return inputs

    @property
    def dummy_inputs(self) -> dict:
        """One random clip's inputs (`build_dummy_inputs`) on the model's device and in its dtype."""
        return self.build_dummy_inputs(self.config, 1, self.device, self.dtype)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if getattr(module, "zero_init", False):
            # Offset predictors start at zero: a deformable stream begins as a plain convolution.
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif getattr(module, "fan_in_init", None):
            # The time-aligned sound's projections (layers.TimeAlignedAudio, layers.ConvStream): unit gain from
            # their fan-in, so the sound enters AMFB's streams at the scale of the visual features.
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=module.fan_in_init)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif getattr(module, "logit_init", False):
            init.trunc_normal_(module.weight, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d, DeformConv2d)):
            # He initialisation keeps the signal alive through the convolutional decoder stacks.
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm3d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MultiscaleAttention) and module.rel_pos_h is not None:
            for table in (module.rel_pos_h, module.rel_pos_w, module.rel_pos_t):
                init.trunc_normal_(table, std=std)
        elif isinstance(module, PositionalEncoding):
            init.trunc_normal_(module.class_token, std=std)
        elif isinstance(module, LearnableTokens):
            init.trunc_normal_(module.tokens, std=std)
        elif isinstance(module, AudioTemporalEnhancement):
            init.trunc_normal_(module.position, std=std)


class DTFSalModel(DTFSalPreTrainedModel):
    """DTFSal: MViTv2 visual encoder and VGGish audio encoder, feature enhancement, LTEB on levels 1-3 and
    DLTFB on level 4, AMFB audio-visual fusion per level (audio-visual variant), four decoder heads and a
    fusing 3 x 3 convolution. `config.use_audio=False` gives DTFSal(V).

    Each part is named in the config (`visual_encoder`, `audio_encoder`, `fusion`, `decoder`, `lteb_levels`,
    `dltfb_levels`) and built from `dtfsal_hf.plugins`; the defaults are the paper's model."""

    def __init__(self, config: DTFSalConfig):
        super().__init__(config)
        _build_parts(self, config)
        # Names of the parts that get no gradient and stay in eval mode (`freeze_visual_encoder`, `freeze_audio_trunk`).
        self.frozen_parts: set[str] = set()
        self.post_init()
        if config.use_audio and config.freeze_audio_trunk and hasattr(self.audio_encoder, "trunk"):
            self.freeze_audio_trunk()

    def _freeze(self, name: str, frozen: bool) -> None:
        part = self.get_submodule(name)
        part.requires_grad_(not frozen)
        if frozen:
            self.frozen_parts.add(name)
            part.eval()
        else:
            self.frozen_parts.discard(name)
            part.train(self.training)

    def part_groups(self) -> dict[str, list[str]]:
        """The names `freeze_parts` takes: each top-level part of this model (`visual_encoder`,
        `feature_enhancement`, `token_blocks`, `audio_encoder`, `audio_encoder.trunk` when it has one,
        `fusion_blocks`, and the decoder's parts), and the groups `visual_branch` (the visual encoder, the
        feature enhancement, the token blocks and the decoder: everything but the audio encoder and the fusion),
        `audio_branch` (the audio encoder and the fusion) and `decoder`."""
        parts = [name for name, _ in self.named_children()]
        decoder = [name for name in ("decoder_heads", "fuse_maps", "decoder") if name in parts]
        groups = {name: [name] for name in parts}
        if hasattr(getattr(self, "audio_encoder", None), "trunk"):
            groups["audio_encoder.trunk"] = ["audio_encoder.trunk"]
        groups["decoder"] = decoder
        groups["visual_branch"] = [n for n in ("visual_encoder", "feature_enhancement", "token_blocks") if n in parts] + decoder
        groups["audio_branch"] = [n for n in ("audio_encoder", "fusion_blocks") if n in parts]
        return groups

    def freeze_parts(self, names, frozen: bool = True) -> "DTFSalModel":
        """Freeze (`frozen=False`: unfreeze) parts by name (`part_groups`): no gradient, and eval mode whatever
        `train()` says. E.g. `model.freeze_parts(["visual_branch"])` trains only the audio encoder and the fusion.
        An unknown name raises a `ValueError` naming the choices. Returns the model."""
        groups = self.part_groups()
        names = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in names if name not in groups or not groups[name]]
        if unknown:
            raise ValueError(f"unknown part(s) to freeze {unknown}; this model has {sorted(n for n in groups if groups[n])}")
        for name in names:
            for part in groups[name]:
                if part == "audio_encoder.trunk":
                    self.config.freeze_audio_trunk = frozen
                self._freeze(part, frozen)
        return self

    def freeze_visual_encoder(self, frozen: bool = True) -> "DTFSalModel":
        """Keep the MViT encoder as it is (`frozen=False` undoes it): no gradient, and eval mode (no drop-path)
        whatever `train()` says. Returns the model."""
        self._freeze("visual_encoder", frozen)
        return self

    def freeze_audio_trunk(self, frozen: bool = True) -> "DTFSalModel":
        """Keep the VGGish trunk's (AudioSet) weights: no gradient, eval mode whatever `train()` says; recorded in
        `config.freeze_audio_trunk`. Returns the model."""
        if not self.config.use_audio or not hasattr(self.audio_encoder, "trunk"):
            raise ValueError("this model has no audio trunk to freeze (DTFSal(V), or an audio encoder without `trunk`)")
        self._freeze("audio_encoder.trunk", frozen)
        self.config.freeze_audio_trunk = frozen
        return self

    def train(self, mode: bool = True) -> "DTFSalModel":
        """`nn.Module.train`, the frozen parts (`frozen_parts`) kept in eval mode, their norm layers and drop-paths
        included, as a frozen backbone should be."""
        super().train(mode)
        for name in getattr(self, "frozen_parts", ()):
            self.get_submodule(name).eval()
        return self

    def set_mvit_attention(self, kernel: str) -> "DTFSalModel":
        """Compute the MViT attentions with `kernel` (`mvit_attention.MVIT_ATTENTIONS`: "eager", "sdpa", "blocked",
        "auto"), the same function each way, and record it in `config.mvit_attention`, so the model saved and
        loaded again runs it too. Parameters and state-dict keys do not change. Returns the model."""
        set_mvit_attention(self.visual_encoder, kernel)
        self.config.mvit_attention = kernel
        return self

    def _decode(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Levels -> (saliency map (B, H, W), level maps (B, 4, H, W) or None)."""
        if not hasattr(self, "decoder_heads"):
            return self.decoder(levels)
        level_maps = torch.cat([head(level) for head, level in zip(self.decoder_heads, levels)], dim=1)  # (B, 4, 1, H, W)
        saliency_map = torch.sigmoid(self.fuse_maps(level_maps))[:, 0, 0]  # (B, H, W)
        return saliency_map, level_maps[:, :, 0]

    def load_pretrained_encoders(self, mvit_source=None, vggish_source=None) -> None:
        """Load the Kinetics-400 MViTv2-S and AudioSet VGGish weights: downloaded from their URLs by default, or
        from local files (`mvit_source="mvit_v2_s-ae3be167.pth"`, `vggish_source="vggish-10086976.pth"`), e.g.
        offline. A failed download raises `OSError` saying so."""
        with _download_hint("mvit_source", mvit_source):
            self.visual_encoder.load_pretrained(mvit_source)
        if self.config.use_audio:
            with _download_hint("vggish_source", vggish_source):
                self.audio_encoder.load_pretrained(vggish_source)

    def _check_inputs(self, pixel_values_videos: torch.Tensor, input_features: torch.Tensor | None, labels, frame_times=None) -> None:
        c = self.config
        expected = (c.num_frames, 3, *c.image_size)
        if not torch.is_tensor(pixel_values_videos) or not pixel_values_videos.is_floating_point():
            raise ValueError(f"`pixel_values_videos` must be a floating-point tensor, got {_describe(pixel_values_videos)}")
        if pixel_values_videos.ndim != 5 or tuple(pixel_values_videos.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values_videos` must have shape (batch, {', '.join(map(str, expected))}) = (batch, frames, "
                f"channels, height, width), got {tuple(pixel_values_videos.shape)}"
            )
        batch = pixel_values_videos.shape[0]
        if c.use_audio:
            expected_audio = (batch, c.num_audio_examples, 1, *c.audio_input_size)
            if input_features is None:
                raise ValueError(
                    f"This audio-visual model needs `input_features` of shape {expected_audio} (VGGish log-mel "
                    "examples); for a video without sound pass the processor's silent features, or use DTFSal(V)"
                )
            if not torch.is_tensor(input_features) or not input_features.is_floating_point():
                raise ValueError(f"`input_features` must be a floating-point tensor, got {_describe(input_features)}")
            if tuple(input_features.shape) != expected_audio:
                raise ValueError(
                    f"`input_features` must have shape {expected_audio} = (batch, examples, 1, height, width), "
                    f"got {tuple(input_features.shape)}"
                )
        if frame_times is not None:
            _check_frame_times(frame_times, (batch, c.num_frames, 2))
        if labels is not None:
            expected_labels = (batch, *c.image_size)
            if not torch.is_tensor(labels) or tuple(labels.shape) != expected_labels:
                raise ValueError(f"`labels` must have shape {expected_labels}, got {_describe(labels)}")
            if bool((labels.flatten(1).sum(dim=1) <= 0).any()) or bool((labels < 0).any()):
                raise ValueError("`labels` must be non-negative saliency maps with a positive sum for every sample")

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        input_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        frame_times: torch.Tensor | None = None,
        **kwargs,
    ) -> DTFSalOutput | tuple:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, 3, height, width)`): normalised
                RGB clips; the map is predicted for the clip's last frame (or its centre, as the processor aligns).
            input_features (`torch.FloatTensor` of shape `(batch, examples, 1, mel_height, mel_width)`): VGGish
                log-mel examples of the clip's audio. Required by the audio-visual model, ignored by DTFSal(V).
            labels (`torch.FloatTensor` of shape `(batch, height, width)`, *optional*): ground-truth saliency maps.
            frame_times (`torch.FloatTensor` of shape `(batch, frames, 2)`, *optional*): each frame's start and end
                time in seconds, relative to the end of the clip's audio window (the processor computes them).
                Without them the frames are taken as `config.frame_rate` frames per second, the last one ending
                where the audio does. Used by the audio-visual model's time-aligned fusion only.
        """
        if kwargs:
            raise ValueError(
                "DTFSalModel.forward takes pixel_values_videos, input_features, frame_times and labels; "
                f"got also {sorted(kwargs)}"
            )
        self._check_inputs(pixel_values_videos, input_features, labels, frame_times)
        # (B, T, 3, H, W) -> (B, 3, T, H, W)
        stages = self.visual_encoder(pixel_values_videos.transpose(1, 2))
        levels = self.feature_enhancement(stages)
        levels = [block(level) for block, level in zip(self.token_blocks, levels)]
        if self.config.use_audio:
            audio = self.audio_encoder(input_features.to(pixel_values_videos.dtype))
            times = {}
            if any(getattr(fusion, "takes_times", False) for fusion in self.fusion_blocks):
                token_times, step_times = self._audio_visual_times(frame_times, pixel_values_videos, audio)
                times = dict(audio_times=token_times, visual_times=step_times)
            levels = [fusion(level, audio, **times) if getattr(fusion, "takes_times", False) else fusion(level, audio)
                      for fusion, level in zip(self.fusion_blocks, levels)]
        saliency_map, level_maps = self._decode(levels)
        loss = None
        if labels is not None:
            loss = saliency_loss(saliency_map.float(), labels.float(), self.config.loss_kl_weight, self.config.loss_cc_weight)
        if return_dict is False:
            return tuple(v for v in (loss, saliency_map, level_maps) if v is not None)
        return DTFSalOutput(loss=loss, saliency_map=saliency_map, level_maps=level_maps)

    def _audio_visual_times(self, frame_times: torch.Tensor | None, videos: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time spans of the audio tokens `(A * rows, 2)` (the audio features' examples and rows, `audio` (B, C_a,
        A, rows, bands)) and of the fused visual time steps `(B, T', 2)`, in seconds relative to the end of the
        audio window."""
        c = self.config
        token_times = audio_token_times(
            audio.shape[2], audio.shape[3], VGGISH_EXAMPLE_FRAMES, VGGISH_EXAMPLE_HOP, LOG_MEL_HOP_S, LOG_MEL_FRAME_S
        ).to(videos.device)
        if frame_times is None:
            frame_times = nominal_frame_times(c.num_frames, c.frame_rate, device=videos.device).expand(videos.shape[0], -1, -1)
        return token_times, frame_step_times(frame_times.float(), self.fused_frames)


def nominal_frame_times(num_frames: int, frame_rate: float, device=None) -> torch.Tensor:
    """`(1, num_frames, 2)` start and end times of evenly spaced frames whose last one ends at 0."""
    starts = (torch.arange(num_frames, dtype=torch.float32, device=device) - num_frames) / frame_rate
    return torch.stack([starts, starts + 1.0 / frame_rate], dim=-1)[None]


def frame_step_times(frame_times: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Frames' spans `(B, F, 2)` -> spans of `num_steps` time steps of F / num_steps consecutive frames each
    (the patch embedding and the feature enhancement each fold two time steps into one), `(B, num_steps, 2)`:
    from the earliest start to the latest end of the step's frames."""
    # (B, F, 2) -> (B, steps, F / steps, 2)
    grouped = frame_times.unflatten(1, (num_steps, -1))
    return torch.stack([grouped[..., 0].amin(dim=2), grouped[..., 1].amax(dim=2)], dim=-1)


def _check_frame_times(frame_times, expected: tuple[int, int, int]) -> None:
    if not torch.is_tensor(frame_times) or not frame_times.is_floating_point() or tuple(frame_times.shape) != expected:
        raise ValueError(
            f"`frame_times` must be a floating-point tensor of shape {expected} = (batch, frames, (start, end)) in "
            f"seconds, got {_describe(frame_times)}"
        )
    if frame_times.is_meta:  # counting on the meta device: the shape is checked, there are no values
        return
    if not bool(torch.isfinite(frame_times).all()) or bool((frame_times[..., 1] < frame_times[..., 0]).any()):
        raise ValueError("`frame_times` must be finite, each frame ending no earlier than it starts")
def _part_options(config: DTFSalConfig) -> dict[str, dict]:
    """Keyword arguments of each part's factory: the built-in defaults' sizes from the config's own fields (the
    paper's model as it always was), updated by the config's `*_options`."""
    c = config
    sized = {
        ("visual_encoder", "mvit_v2_s"): dict(depths=c.backbone_depths, dims=c.backbone_dims, heads=c.backbone_heads,
                                              kv_stride=c.backbone_kv_stride, stochastic_depth=c.backbone_stochastic_depth),
        ("audio_encoder", "vggish"): dict(channel_groups=c.audio_trunk_channels, num_heads=c.audio_num_heads,
                                          head_dim=c.audio_head_dim, mlp_dim=c.audio_mlp_dim),
        ("fusion", "amfb"): dict(audio_proj_dim=c.amfb_audio_dim, stream_dim=c.amfb_stream_dim,
                                 alignment=c.audio_alignment, audio_bands=c.audio_grid[1]),
        ("decoder", "multi"): dict(dims=c.decoder_dims),
        ("decoder", "single"): dict(dims=c.decoder_dims),
    }
    kinds = ("visual_encoder", "audio_encoder", "fusion", "decoder")
    return {kind: {**sized.get((kind, getattr(c, kind)), {}), **getattr(c, f"{kind}_options")} for kind in kinds}


def _level_frames(encoder: nn.Module, num_frames: int, image_size) -> tuple[int, list[int]]:
    """(frames of every level, each stage's temporal factor to get there): the paper's num_frames / 4 (MViTv2: 16
    stage frames halved to 8), or fewer where an encoder's coarsest stage has fewer frames (S3D: 4 of 32)."""
    strides, spatial = list(encoder.temporal_strides), list(encoder.spatial_strides)
    if len(strides) != 4 or any(b != 2 * a for a, b in zip(spatial, spatial[1:])):
        raise ValueError(f"the feature enhancement needs four stages, each half the size of the one before: "
                         f"{type(encoder).__name__} states spatial strides {spatial}")
    if num_frames % max(strides) or any(size % spatial[-1] for size in image_size):
        raise ValueError(f"{type(encoder).__name__} needs frames divisible by {max(strides)} and a frame size divisible "
                         f"by {spatial[-1]}, got {num_frames} x {list(image_size)}")
    stage_frames = [num_frames // stride for stride in strides]
    level = max(1, min(num_frames // 4, *stage_frames))
    if any(frames % level for frames in stage_frames):
        raise ValueError(f"stage frames {stage_frames} of {type(encoder).__name__} are not multiples of {level}")
    return level, [frames // level for frames in stage_frames]


def _token_block(config: DTFSalConfig, level: int) -> nn.Module:
    c = config
    token_args = dict(num_tokens=c.lteb_num_tokens, token_dim=c.lteb_token_dim, token_size=c.lteb_token_size)
    if level in c.lteb_levels:
        return LTEB(c.feature_dim, **token_args)
    if level in c.dltfb_levels:
        return DLTFB(c.feature_dim, **token_args, shift_groups=c.dltfb_shift_groups, hidden_dim=c.dltfb_hidden_dim,
                     kernel_size=c.dltfb_kernel_size)
    return nn.Identity()


def _build(config: DTFSalConfig, kind: str, *args, options: dict) -> nn.Module:
    """The part of `kind` the config names, recording the distribution of a part another package provides."""
    name = getattr(config, kind)
    part = build_part(kind, name, *args, distribution=config.part_distributions.get(kind), **options)
    distribution = get_part(kind, name).distribution
    if distribution != BUILTIN_DISTRIBUTION and distribution is not None:
        config.part_distributions[kind] = distribution
    return part


def _build_parts(model: nn.Module, config: DTFSalConfig) -> None:
    """Every part of the model by the names the config gives (`dtfsal_hf.plugins`), wired by their contracts."""
    c, options = config, _part_options(config)
    model.visual_encoder = _build(c, "visual_encoder", c.num_frames, c.image_size, options=options["visual_encoder"])
    set_mvit_attention(model.visual_encoder, c.mvit_attention)  # no MViT attention inside: nothing to switch
    level_frames, temporal_factors = _level_frames(model.visual_encoder, c.num_frames, c.image_size)
    model.fused_frames = level_frames
    model.feature_enhancement = DTFSalFeatureEnhancement(list(model.visual_encoder.out_channels), c.feature_dim, temporal_factors)
    model.token_blocks = nn.ModuleList(_token_block(c, level) for level in (1, 2, 3, 4))
    if c.use_audio:
        model.audio_encoder = _build(c, "audio_encoder", c.num_audio_examples, c.audio_input_size, options=options["audio_encoder"])
        model.fusion_blocks = nn.ModuleList(
            _build(c, "fusion", c.feature_dim, model.audio_encoder.out_channels, options=options["fusion"]) for _ in range(4)
        )
    decoder = _build(c, "decoder", c.feature_dim, 4, level_frames, c.image_size, options=options["decoder"])
    if c.decoder == "multi":
        # The paper's decoder keeps the parameter names its checkpoints have always had.
        model.decoder_heads, model.fuse_maps = decoder.heads, decoder.fuse_maps
    else:
        model.decoder = decoder


@contextmanager
def _download_hint(argument: str, source):
    """Re-raise a failed download of the default weights with how to pass a local file instead."""
    try:
        yield
    except OSError as error:
        if source is not None:
            raise
        raise OSError(
            f"Could not download the pretrained encoder weights ({error}). Offline, download the files elsewhere "
            f"and pass them: model.load_pretrained_encoders({argument}=\"path/to/file.pth\") (URLs: each encoder's "
            "`pretrained_url`, dtfsal_hf.video_encoders.KINETICS400_URLS, dtfsal_hf.encoders.AUDIOSET_VGGISH_URL)"
        ) from error


def _raise_on_loading_problems(info: dict, source) -> None:
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key) for key in info.get(kind) or [])
        if keys:
            problems.append(f"{kind.replace('_', ' ')}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
    if problems:
        hint = ""
        mismatched = [str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or []]
        if mismatched and all(key.endswith((".rel_pos_h", ".rel_pos_w")) for key in mismatched):
            # Spatial tables at 2 * max(H, W) - 1 rows: saved before each table was sized to its own axis.
            hint = (f". Its relative-position tables have the older layout: convert it once with "
                    f"`python -m dtfsal_hf.convert_rel_pos_tables {source}`, which keeps its maps")
        raise ValueError(f"The checkpoint at {source} does not match the configuration: " + "; ".join(problems) + hint)


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


__all__ = [
    "DTFSalOutput",
    "DTFSalPreTrainedModel",
    "DTFSalModel",
    "correlation_coefficient",
    "frame_step_times",
    "kl_divergence",
    "nominal_frame_times",
    "saliency_loss",
]
