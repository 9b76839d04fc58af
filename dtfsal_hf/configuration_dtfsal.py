"""Configuration of DTFSal, the audio-visual dynamic token fusion saliency model."""

from __future__ import annotations

from dataclasses import field

from transformers import PretrainedConfig

# torchvision's mvit_v2_s, written per stage: blocks 0 | 1-2 | 3-13 | 14-15.
_MVIT_V2_S_DEPTHS = [1, 2, 11, 2]
_MVIT_V2_S_DIMS = [96, 192, 384, 768]
_MVIT_V2_S_HEADS = [1, 2, 4, 8]
# VGGish convolutional trunk: each inner list is convolutions followed by one 2x2 max-pool.
_VGGISH_CHANNELS = [[64], [128], [256, 256], [512, 512]]
# VGGish framing (SPEC §2): examples of 64 log-mel frames, 11 frames apart; frames of 25 ms every 10 ms.
VGGISH_EXAMPLE_FRAMES = 64
VGGISH_EXAMPLE_HOP = 11
LOG_MEL_HOP_S = 0.010
LOG_MEL_FRAME_S = 0.025
AUDIO_ALIGNMENTS = ("time", "stretch")
# The kernels of `mvit_attention.MVIT_ATTENTIONS` (the configuration imports no torch).
_MVIT_ATTENTIONS = ("eager", "sdpa", "blocked", "auto")


_POSITIVE_INTS = ("num_frames", "num_audio_examples", "audio_num_heads", "audio_head_dim", "audio_mlp_dim",
                  "feature_dim", "lteb_num_tokens", "lteb_token_dim", "lteb_token_size", "dltfb_shift_groups",
                  "dltfb_hidden_dim", "dltfb_kernel_size", "amfb_audio_dim", "amfb_stream_dim")
_POSITIVE_INT_LISTS = ("image_size", "backbone_depths", "backbone_dims", "backbone_heads", "backbone_kv_stride",
                       "audio_input_size", "decoder_dims")


def _is_positive_int(value) -> bool:
    """An integer >= 1 (a bool is not one; numpy integers are)."""
    return not isinstance(value, bool) and hasattr(value, "__index__") and int(value) >= 1


class DTFSalConfig(PretrainedConfig):
    r"""Configuration of [`DTFSalModel`]. Defaults give the paper's audio-visual model (49.08M parameters; the paper's 49.08M).

    Args:
        num_frames (`int`, defaults to 32): frames per input clip.
        image_size (`list[int]`, defaults to `[224, 384]`): input frame height and width.
        use_audio (`bool`, defaults to `True`): `False` gives DTFSal(V): no audio branch, no AMFB.
        backbone_depths / backbone_dims / backbone_heads (`list[int]`): MViTv2 blocks, channels and
            attention heads of each of the four stages (the first block of stages 2-4 halves H and W).
        backbone_kv_stride (`list[int]`): key/value pooling stride of the first block (T, H, W); it halves
            in H and W at each stage, as in MViTv2-S.
        backbone_stochastic_depth (`float`): drop-path rate of the last block (linear ramp from 0).
        num_audio_examples (`int`, defaults to 9): log-mel examples per clip.
        audio_input_size (`list[int]`, defaults to `[112, 192]`): size each 64x64 log-mel example is resized to.
        audio_trunk_channels (`list[list[int]]`): VGGish convolutions, each group followed by a max-pool.
        audio_num_heads / audio_head_dim / audio_mlp_dim (`int`): the audio temporal Transformer layer.
        freeze_audio_trunk (`bool`, defaults to `True`): keep the VGGish trunk frozen (AudioSet weights).
        feature_dim (`int`, defaults to 192): C*, the width of every enhanced level.
        lteb_num_tokens / lteb_token_dim / lteb_token_size (`int`): LTEB and DLTFB learnable tokens: count N,
            channels C_p and spatial size S.
        dltfb_shift_groups / dltfb_hidden_dim / dltfb_kernel_size (`int`): DLTFB token-mixing branch.
        amfb_audio_dim / amfb_stream_dim (`int`): AMFB audio projection width and the reduced stream width.
        audio_alignment (`str`, defaults to `"time"`): how AMFB gives the sound to each visual time step: `"time"`,
            the sound of the step's own time span and what came before it (from the frames' times); `"stretch"`,
            the audio features resized trilinearly to the level's (T, H, W).
        frame_rate (`float`, defaults to 30.0): frames per second assumed for the clip when the model is called
            without `frame_times` (the clip's last frame ending where the audio window ends).
        decoder_dims (`list[int]`, defaults to `[96, 48, 24]`): channels of the three decoder convolutions.
        mvit_attention (`str`, defaults to `"eager"`): the kernel computing the MViT attentions, the same function
            each way (`mvit_attention.py`): `"eager"` (torchvision's explicit form), `"sdpa"`
            (`scaled_dot_product_attention`), `"blocked"` (blocked matrix products, inference) or `"auto"`
            (blocked for bf16 / fp16 inference on a CPU, sdpa otherwise). `DTFSalModel.set_mvit_attention` changes it.
        visual_encoder (`str`, defaults to `"mvit_v2_s"`): the visual encoder by name (`dtfsal_hf.plugins`):
            `"mvit_v2_s"` (sized by the `backbone_*` fields), `"s3d"`, `"swin3d_t"`, `"swin3d_s"`, `"swin3d_b"`,
            `"r2plus1d_18"`, or a plugin's.
        audio_encoder (`str`, defaults to `"vggish"`): the audio encoder by name; `None` is `use_audio=False`.
        fusion (`str`, defaults to `"amfb"`): the fusion block of each level: `"amfb"` (sized by `amfb_*`),
            `"concat"`, `"cross_attention"`, or a plugin's.
        decoder (`str`, defaults to `"multi"`): `"multi"` (a head per level), `"single"` (one head on the
            concatenated levels), `"unet"`, or a plugin's.
        visual_encoder_options / audio_encoder_options / fusion_options / decoder_options (`dict`): keyword
            arguments of the part's factory (e.g. a small Swin: `{"embed_dim": 16, "depths": [1, 1, 1, 1]}`).
        part_distributions (`dict`): for parts that other distributions provide, kind -> distribution; filled in
            when the model is built, so that loading it where a plugin is missing names what to install.
        lteb_levels / dltfb_levels (`list[int]`, defaults to `[1, 2, 3]` / `[4]`): levels (1 = finest) that get an
            LTEB / a DLTFB; disjoint, either may be empty (the level passes unchanged).
        loss_kl_weight / loss_cc_weight (`float`, defaults to 1.0 / -1.0): loss = w_kl KL + w_cc CC.
    """

    model_type = "dtfsal"

    num_frames: int = 32
    image_size: list[int] = field(default_factory=lambda: [224, 384])
    use_audio: bool = True
    backbone_depths: list[int] = field(default_factory=lambda: list(_MVIT_V2_S_DEPTHS))
    backbone_dims: list[int] = field(default_factory=lambda: list(_MVIT_V2_S_DIMS))
    backbone_heads: list[int] = field(default_factory=lambda: list(_MVIT_V2_S_HEADS))
    backbone_kv_stride: list[int] = field(default_factory=lambda: [1, 8, 8])
    backbone_stochastic_depth: float = 0.2
    num_audio_examples: int = 9
    audio_input_size: list[int] = field(default_factory=lambda: [112, 192])
    audio_trunk_channels: list[list[int]] = field(default_factory=lambda: [list(g) for g in _VGGISH_CHANNELS])
    audio_num_heads: int = 2
    audio_head_dim: int = 64
    audio_mlp_dim: int = 256
    freeze_audio_trunk: bool = True
    feature_dim: int = 192
    lteb_num_tokens: int = 5
    lteb_token_dim: int = 192
    lteb_token_size: int = 8
    dltfb_shift_groups: int = 5
    dltfb_hidden_dim: int = 384
    dltfb_kernel_size: int = 3
    amfb_audio_dim: int = 88
    amfb_stream_dim: int = 56
    audio_alignment: str = "time"
    frame_rate: float = 30.0
    decoder_dims: list[int] = field(default_factory=lambda: [96, 48, 24])
    visual_encoder: str = "mvit_v2_s"
    audio_encoder: str | None = "vggish"
    fusion: str = "amfb"
    decoder: str = "multi"
    visual_encoder_options: dict = field(default_factory=dict)
    audio_encoder_options: dict = field(default_factory=dict)
    fusion_options: dict = field(default_factory=dict)
    decoder_options: dict = field(default_factory=dict)
    part_distributions: dict = field(default_factory=dict)
    lteb_levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    dltfb_levels: list[int] = field(default_factory=lambda: [4])
    loss_kl_weight: float = 1.0
    loss_cc_weight: float = -1.0
    initializer_range: float = 0.02
    mvit_attention: str = "eager"

    def __post_init__(self, **kwargs):
        if self.audio_encoder is None:  # no audio encoder is DTFSal(V)
            self.use_audio, self.audio_encoder = False, "vggish"
        self._check_parts()
        self._check_types()
        # JSON gives lists; tuples passed by users are normalised so saved configs compare equal.
        for name in _POSITIVE_INT_LISTS:
            setattr(self, name, [int(v) for v in getattr(self, name)])
        self.audio_trunk_channels = [[int(c) for c in group] for group in self.audio_trunk_channels]
        super().__post_init__(**kwargs)
        self._validate()

    def _check_parts(self) -> None:
        """Part names are strings, options dicts, levels disjoint subsets of 1-4, loss weights finite numbers."""
        for name in ("visual_encoder", "audio_encoder", "fusion", "decoder"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"`{name}` must name a part (see dtfsal_hf.plugins), got {getattr(self, name)!r}")
            if not isinstance(getattr(self, f"{name}_options"), dict):
                raise ValueError(f"`{name}_options` must be a dict of the part's arguments, got {getattr(self, f'{name}_options')!r}")
        if not isinstance(self.part_distributions, dict):
            raise ValueError(f"`part_distributions` must be a dict, got {self.part_distributions!r}")
        for name in ("lteb_levels", "dltfb_levels"):
            levels = getattr(self, name)
            if not isinstance(levels, (list, tuple)) or not all(_is_positive_int(v) and int(v) <= 4 for v in levels):
                raise ValueError(f"`{name}` must list levels among 1, 2, 3, 4, got {levels!r}")
            setattr(self, name, sorted({int(v) for v in levels}))
        both = sorted(set(self.lteb_levels) & set(self.dltfb_levels))
        if both:
            raise ValueError(f"a level gets an LTEB or a DLTFB, not both: level {both[0]} is in `lteb_levels` and `dltfb_levels`")
        for name in ("loss_kl_weight", "loss_cc_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < float("inf"):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}")
        if self.loss_kl_weight == 0 and self.loss_cc_weight == 0:
            raise ValueError("`loss_kl_weight` and `loss_cc_weight` are both 0: the loss would be constant")

    def _check_types(self) -> None:
        """Every size a positive integer, every switch a bool, the rates in range; errors name the field."""
        for name in _POSITIVE_INTS:
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}")
        for name in _POSITIVE_INT_LISTS:
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values or not all(_is_positive_int(v) for v in values):
                raise ValueError(f"`{name}` must be a list of positive integers, got {values!r}")
        groups = self.audio_trunk_channels
        if not isinstance(groups, (list, tuple)) or not groups or not all(
            isinstance(group, (list, tuple)) and group and all(_is_positive_int(c) for c in group) for group in groups
        ):
            raise ValueError(f"`audio_trunk_channels` must be non-empty lists of positive integers, got {groups!r}")
        for name in ("use_audio", "freeze_audio_trunk"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.backbone_stochastic_depth, (int, float)) and 0 <= self.backbone_stochastic_depth < 1):
            raise ValueError(f"`backbone_stochastic_depth` must lie in [0, 1), got {self.backbone_stochastic_depth!r}")
        if self.mvit_attention not in _MVIT_ATTENTIONS:
            raise ValueError(f"`mvit_attention` must be one of {_MVIT_ATTENTIONS}, got {self.mvit_attention!r}")
        if not (isinstance(self.initializer_range, (int, float)) and 0 < self.initializer_range < float("inf")):
            raise ValueError(f"`initializer_range` must be a positive number, got {self.initializer_range!r}")

    def _validate(self) -> None:
        for name in ("backbone_depths", "backbone_dims", "backbone_heads"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"`{name}` needs one entry per stage (4), got {getattr(self, name)}")
        if len(self.image_size) != 2 or any(s % 32 for s in self.image_size):
            raise ValueError(f"`image_size` must be [height, width], each a multiple of 32, got {self.image_size}")
        if self.num_frames < 4 or self.num_frames % 4:
            raise ValueError(f"`num_frames` must be a multiple of 4 (at least 4), got {self.num_frames}")
        downsampling = 2 ** len(self.audio_trunk_channels)
        if len(self.audio_input_size) != 2 or any(s % downsampling for s in self.audio_input_size):
            raise ValueError(
                f"`audio_input_size` must be [height, width], each a multiple of {downsampling} "
                f"(one 2x2 pool per trunk group), got {self.audio_input_size}"
            )
        if self.audio_alignment not in AUDIO_ALIGNMENTS:
            raise ValueError(f"`audio_alignment` must be one of {list(AUDIO_ALIGNMENTS)}, got {self.audio_alignment!r}")
        rate = self.frame_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise ValueError(f"`frame_rate` must be a positive number of frames per second, got {self.frame_rate}")
        if len(self.decoder_dims) != 3:
            raise ValueError(f"`decoder_dims` needs three widths, got {self.decoder_dims}")
        if len(self.backbone_kv_stride) != 3:
            raise ValueError(f"`backbone_kv_stride` needs (T, H, W) strides, got {self.backbone_kv_stride}")
        uneven = [(d, h) for d, h in zip(self.backbone_dims, self.backbone_heads) if d % h]
        if uneven:
            raise ValueError(f"each of `backbone_dims` must be a multiple of its `backbone_heads`, got {uneven[0][0]} "
                             f"channels for {uneven[0][1]} heads")

    @property
    def audio_dim(self) -> int:
        """Channels of the audio features: the last VGGish convolution's width."""
        return self.audio_trunk_channels[-1][-1]

    @property
    def audio_grid(self) -> tuple[int, int]:
        """Height and width of the VGGish trunk's output per example."""
        downsampling = 2 ** len(self.audio_trunk_channels)
        return self.audio_input_size[0] // downsampling, self.audio_input_size[1] // downsampling

    @property
    def audio_window_s(self) -> float:
        """Seconds of sound one clip's log-mel examples cover (1.535 s for 9 examples)."""
        frames = VGGISH_EXAMPLE_FRAMES + (self.num_audio_examples - 1) * VGGISH_EXAMPLE_HOP
        return (frames - 1) * LOG_MEL_HOP_S + LOG_MEL_FRAME_S

    @classmethod
    def tiny(cls, use_audio: bool = True, **kwargs) -> "DTFSalConfig":
        """A configuration of about 0.6M parameters for tests and CPU training: 8 frames of 64x96 at 25 fps
        (0.32 s), one audio example of 0.64 s (the clip and as much before it) kept at its 64 x 64 log-mel
        resolution, so the trunk gives 4 token rows of 0.16 s, one per visual time step of 4 frames, and
        4 mel-band columns; every block present. Keyword arguments override its fields."""
        sizes = dict(
            num_frames=8,
            image_size=[64, 96],
            use_audio=use_audio,
            backbone_depths=[1, 1, 2, 1],
            backbone_dims=[16, 32, 64, 128],
            backbone_heads=[1, 1, 2, 2],
            backbone_kv_stride=[1, 4, 4],
            backbone_stochastic_depth=0.0,
            num_audio_examples=1,
            audio_input_size=[64, 64],
            frame_rate=25.0,
            audio_trunk_channels=[[8], [16], [32], [64]],
            audio_num_heads=2,
            audio_head_dim=16,
            audio_mlp_dim=64,
            freeze_audio_trunk=False,
            feature_dim=32,
            lteb_token_dim=16,
            lteb_token_size=4,
            dltfb_hidden_dim=32,
            amfb_audio_dim=16,
            amfb_stream_dim=16,
            decoder_dims=[16, 8, 8],
        )
        sizes.update(kwargs)
        return cls(**sizes)


__all__ = ["DTFSalConfig"]
