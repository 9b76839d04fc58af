"""DTFSal's fusion layers: LTEB, DLTFB and AMFB, and the time alignment of audio to video.

Each layer takes plain arguments (channels, token counts, kernel sizes), works on features of shape
`(batch, channels, time, height, width)` with any T >= 1, H and W, and imports nothing from
transformers, so it can be dropped into another architecture.

Times are in seconds relative to the end of the clip's audio window (so they are mostly negative): an
audio token's time span comes from the log-mel layout (`audio_token_times`), a visual time step's span
from its frames' times.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import DeformConv2d, deform_conv2d

__all__ = [
    "AUDIO_ALIGNMENTS",
    "AMFB",
    "Conv3d",
    "ConvStream",
    "DLTFB",
    "DeformableStream",
    "Float32DeformConv2d",
    "LTEB",
    "LearnableTokens",
    "TimeAlignedAudio",
    "audio_token_times",
    "axial_shift",
    "cpu_has_amx",
    "frame_means",
    "sampled_deform_conv2d",
    "time_pooling_weights",
]

AUDIO_ALIGNMENTS = ("time", "stretch")


def _check_5d(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects features of shape (batch, {channels}, time, height, width), got {tuple(x.shape)}"
        )


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX matrix tiles (Intel Xeon from Sapphire Rapids on), PyTorch's probe. There oneDNN runs
    bf16 products and convolutions on the tiles: PyTorch's fused CPU attention is faster than the MViT's blocked
    kernel (`mvit_attention`), and oneDNN's bf16 3-D convolution gives wrong weight gradients (NaN) or crashes at
    some shapes (torch 2.14; `Conv3d`)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _cpu_bf16_autocast_training(input: torch.Tensor) -> bool:
    """Whether this call records gradients under bf16 autocast on a CPU with AMX (`cpu_has_amx`)."""
    return (input.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and cpu_has_amx())


def _plain_cpu_inference(input: torch.Tensor) -> bool:
    """Whether `input` is a plain CPU tensor in a call without autograd, outside tracing and compiling (fake
    tensors of torch.export and traces keep the operators they record)."""
    return (input.device.type == "cpu" and not torch.is_grad_enabled() and type(input) is torch.Tensor
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` that runs on oneDNN on a CPU at inference whatever its size.

    For one clip PyTorch's CPU conv3d takes its unfolding kernel (`slow_conv3d`) when batch x channels x time x
    height is below 20480 and the kernel is at most 3 x 3 (a heuristic for small 2-D inputs): 3-6x slower at the
    deeper levels' shapes than oneDNN (56 -> 56 channels, 1 x 3 x 3, over 8 x 28 x 48 frames: 7.0 ms against 1.6 ms
    on 2 cores), and it copies channels-last input to channels-first. Elsewhere (autograd, autocast, GPUs,
    tracing) it is `nn.Conv3d`. Same parameters, state-dict keys and values (within float rounding).

    With gradients under bf16 autocast on a CPU with AMX it computes in float32 (output in bf16, as autocast's):
    there oneDNN's bf16 3-D convolution returns NaN in the weight gradient, a different number of them each run, or
    crashes the process, at the decoder's shapes (96 -> 48 channels, (2, 3, 3) over 4 x 112 x 192; torch 2.14),
    where its AVX-512 kernels (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`) and float32 are right.
    """

    def _runs_on_onednn(self, input: torch.Tensor, weight: torch.Tensor) -> bool:
        return (self.padding_mode == "zeros" and not isinstance(self.padding, str) and input.ndim == 5
                and input.dtype == weight.dtype and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                # oneDNN's bf16 convolution needs AVX-512 (PyTorch refuses it on other CPUs)
                and (input.dtype == torch.float32 or input.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
                and not torch.is_autocast_enabled("cpu") and _plain_cpu_inference(input))

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._runs_on_onednn(input, weight):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        if _cpu_bf16_autocast_training(input) and (input.requires_grad or weight.requires_grad):
            with torch.autocast("cpu", enabled=False):
                output = super()._conv_forward(input.float(), weight.float(), None if bias is None else bias.float())
            return output.to(torch.bfloat16)
        return super()._conv_forward(input, weight, bias)


def frame_means(features: torch.Tensor) -> torch.Tensor:
    """The spatial mean of each frame's channels: (B, C, T, H, W) -> (B, T, C).

    For channels-last-3d features the mean is taken over the (B, T, H, W, C) view, whose reduced axes are the
    outer ones: PyTorch's reduction over (H, W) of the (B, C, T, H, W) view walks the memory with the channel
    stride and is 4-28x slower on a CPU (LTEB's 192 x 8 x 56 x 96 gate in bf16: 35 ms against 2.6 ms on 2 cores),
    for the same sums in another order."""
    channels_last = features.ndim == 5 and features.is_contiguous(memory_format=torch.channels_last_3d)
    if channels_last and not features.is_contiguous():
        return features.permute(0, 2, 3, 4, 1).mean(dim=(2, 3))
    return features.mean(dim=(3, 4)).transpose(1, 2)


def _spatial_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv3d:
    """A per-frame `kernel_size` x `kernel_size` convolution, as a Conv3d with temporal extent 1."""
    padding = kernel_size // 2
    return Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, padding, padding), bias=bias)


class LearnableTokens(nn.Module):
    """The adaptive token path shared by LTEB and DLTFB: a gated global embedding weights N learnable
    tokens, whose mixture is resized to the feature map and projected to its channels.

    Args:
        channels: C, channels of the features.
        num_tokens: N, learnable tokens.
        token_dim: C_p, channels of each token.
        token_size: S, each token is an S x S map.
    """

    # Project the N tokens and mix their maps (True), or mix the tokens and project each frame's mixture (the
    # paper's order): the same function, see `forward`.
    project_tokens_once = True

    def __init__(self, channels: int, num_tokens: int = 5, token_dim: int = 192, token_size: int = 7):
        super().__init__()
        self.channels = channels
        self.gate = _spatial_conv(channels, channels, 3)
        self.token_weights = nn.Linear(channels, num_tokens)
        self.tokens = nn.Parameter(torch.empty(num_tokens, token_dim, token_size, token_size))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.token_proj = _spatial_conv(token_dim, channels, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` (B, C, T, H, W) -> token map P'' (B, C, T, H, W).

        Resizing and the projection are linear and the weights sum to 1, so projecting the mixture equals mixing
        the projected tokens: with more time steps than tokens (T > N) the N tokens are resized and projected
        once a call, and their maps mixed per frame (the projection's cost divided by B * T / N; the same values
        within float32 rounding). `project_tokens_once = False` keeps the paper's order (the compute counts use it).
        """
        batch, _, time, height, width = features.shape
        gate = torch.sigmoid(self.gate(features))
        # Spatial mean of the gated features: (B, C, T, H, W) -> (B, T, C)
        embedding = frame_means(gate)
        weights = self.token_weights(embedding).softmax(dim=-1)  # (B, T, N)
        num_tokens = self.tokens.shape[0]
        # Decided by the clip's time steps only (static under export, where the batch size is symbolic)
        if self.project_tokens_once and time > num_tokens:
            tokens = F.interpolate(self.tokens, size=(height, width), mode="bilinear", align_corners=False)
            # (N, C_p, H, W) -> (1, C_p, N, H, W) -> projected (1, C, N, H, W) -> mixed per frame (B, C, T, H, W)
            projected = self.token_proj(tokens.transpose(0, 1)[None])[0]
            return torch.einsum("btn,cnhw->bcthw", weights, projected)
        mixture = torch.einsum("btn,nchw->btchw", weights, self.tokens)  # (B, T, C_p, S, S)
        mixture = F.interpolate(mixture.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False)
        # (B*T, C_p, H, W) -> (B, C_p, T, H, W)
        mixture = mixture.unflatten(0, (batch, time)).transpose(1, 2)
        return self.token_proj(mixture)


class LTEB(nn.Module):
    """Learnable Token Enhancement Block: re-weights features with a mixture of learnable tokens
    chosen by a gated global embedding, out = x * P'' + x.

    Args:
        channels: C, channels of the features (kept).
        num_tokens: N, learnable tokens.
        token_dim: C_p, channels of each token (default: C).
        token_size: S, spatial size of each token.

    Shapes: `(batch, channels, time, height, width)` in and out.
    """

    def __init__(self, channels: int, num_tokens: int = 5, token_dim: int | None = None, token_size: int = 7):
        super().__init__()
        self.channels = channels
        self.token_path = LearnableTokens(channels, num_tokens, token_dim or channels, token_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_5d(features, self.channels, "LTEB")
        return features * self.token_path(features) + features


def axial_shift(features: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """Split channels into `groups` groups and roll group j by (j - groups // 2) along `dim`."""
    chunks = torch.chunk(features, groups, dim=1)
    shifted = [torch.roll(chunk, shifts=j - groups // 2, dims=dim) for j, chunk in enumerate(chunks)]
    return torch.cat(shifted, dim=1)


class DLTFB(nn.Module):
    """Dynamic Learnable Token Fusion Block: an axially shifted token-mixing branch (shift along W,
    point-wise conv, GELU, depth-wise conv, shift along H, LayerNorm, point-wise conv) fused with a
    learnable-token path, out = x * P'' + (x + mix(x)).

    Args:
        channels: C, channels of the features (kept).
        num_tokens, token_dim, token_size: the learnable-token path, as in LTEB.
        shift_groups: channel groups of the axial shifts.
        hidden_dim: width of the token-mixing branch (default: C).
        kernel_size: kernel of its depth-wise convolution (cubic).

    Shapes: `(batch, channels, time, height, width)` in and out.
    """

    def __init__(
        self,
        channels: int,
        num_tokens: int = 5,
        token_dim: int | None = None,
        token_size: int = 7,
        shift_groups: int = 5,
        hidden_dim: int | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        hidden_dim = hidden_dim or channels
        self.channels = channels
        self.shift_groups = shift_groups
        self.token_path = LearnableTokens(channels, num_tokens, token_dim or channels, token_size)
        self.expand = Conv3d(channels, hidden_dim, 1)
        self.act = nn.GELU()
        self.mix = Conv3d(hidden_dim, hidden_dim, kernel_size, padding=kernel_size // 2, groups=hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.reduce = Conv3d(hidden_dim, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_5d(features, self.channels, "DLTFB")
        mixed = self.mix(self.act(self.expand(axial_shift(features, self.shift_groups, dim=4))))
        mixed = axial_shift(mixed, self.shift_groups, dim=3)
        # LayerNorm over channels: (B, C, T, H, W) -> (B, T, H, W, C) and back
        mixed = self.norm(mixed.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        shifted = features + self.reduce(mixed)
        return features * self.token_path(features) + shifted


def audio_token_times(
    num_examples: int,
    rows: int,
    example_frames: int = 64,
    example_hop: int = 11,
    hop_s: float = 0.010,
    frame_s: float = 0.025,
) -> torch.Tensor:
    """Time span of every audio token, `(num_examples * rows, 2)` (start, end) in seconds relative to the end
    of the audio window; tokens in the audio encoder's order (example-major, then row).

    The window holds `example_frames + (num_examples - 1) * example_hop` log-mel frames of `frame_s` every
    `hop_s` (VGGish: 64 frames of 25 ms every 10 ms, examples 11 frames apart); example k starts at frame
    k * example_hop, and its time axis is cut into `rows` equal token rows (the trunk's output height). Each
    log-mel frame stands for the `hop_s` around its centre, so one example's rows tile it without gaps.
    """
    if num_examples < 1 or rows < 1:
        raise ValueError(f"audio_token_times needs num_examples >= 1 and rows >= 1, got {num_examples} and {rows}")
    total_frames = example_frames + (num_examples - 1) * example_hop
    window_s = (total_frames - 1) * hop_s + frame_s
    frames_per_row = example_frames / rows
    example = torch.arange(num_examples, dtype=torch.float64)[:, None] * example_hop
    first = (example + torch.arange(rows, dtype=torch.float64)[None, :] * frames_per_row).flatten()
    # Frame f is centred at f * hop + frame / 2 and stands for [centre - hop / 2, centre + hop / 2).
    offset = frame_s / 2 - hop_s / 2 - window_s
    start = first * hop_s + offset
    return torch.stack([start, start + frames_per_row * hop_s], dim=1).float()


def _check_times(times: torch.Tensor, name: str, shape: tuple) -> None:
    """`shape` with None for any size; the last axis is (start, end)."""
    if not torch.is_tensor(times) or times.ndim != len(shape) or any(
        want is not None and have != want for have, want in zip(times.shape, shape)
    ):
        expected = ", ".join("?" if s is None else str(s) for s in shape)
        got = tuple(times.shape) if torch.is_tensor(times) else type(times).__name__
        raise ValueError(f"{name} must have shape ({expected}) of (start, end) seconds, got {got}")


def time_pooling_weights(token_times: torch.Tensor, step_times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How much each audio token counts for each visual time step: its present and its context.

    Args:
        token_times: `(tokens, 2)` or `(batch, tokens, 2)` token spans.
        step_times: `(batch, steps, 2)` spans of the visual time steps, on the same clock.

    Returns:
        `present` and `context`, each `(batch, steps, tokens)` with rows summing to 1 (or 0). `present`
        weights each token by the overlap of its span with the step's; a step that overlaps no token (its
        frames lie outside the audio window) takes the token nearest in time. `context` weights each token
        by how much of its span lies before the step starts (all zeros when nothing does).
    """
    if token_times.ndim == 2:
        token_times = token_times.unsqueeze(0)
    token_start, token_end = token_times[..., None, :, 0], token_times[..., None, :, 1]  # (B|1, 1, N)
    step_start, step_end = step_times[..., :, None, 0], step_times[..., :, None, 1]  # (B, T, 1)
    overlap = (torch.minimum(token_end, step_end) - torch.maximum(token_start, step_start)).clamp(min=0)
    distance = ((token_start + token_end) - (step_start + step_end)).abs()
    nearest = (distance == distance.amin(dim=-1, keepdim=True)).to(overlap.dtype)
    present = torch.where(overlap.sum(dim=-1, keepdim=True) > 0, overlap, nearest)
    earlier = (torch.minimum(token_end, step_start) - token_start).clamp(min=0)
    return _normalise_rows(present), _normalise_rows(earlier)


def _normalise_rows(weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


class TimeAlignedAudio(nn.Module):
    """The sound of each visual time step: audio tokens projected with their mel bands kept apart, then pooled
    over the step's own time span (present) and over what came before it (context).

    Args:
        audio_dim: C_a, channels of the audio features.
        audio_bands: w, mel-frequency columns of the audio features; the projection sees all of them, so
            which band a channel fires in (the pitch) survives.
        proj_dim: D, width of the projected tokens; the output has 2 D channels (present, context).

    Shapes: audio `(batch, audio_dim, examples, rows, audio_bands)`, token times `(examples * rows, 2)` (or
    batched), step times `(batch, steps, 2)` -> `(batch, steps, 2 * proj_dim)`.
    """

    def __init__(self, audio_dim: int, audio_bands: int, proj_dim: int):
        super().__init__()
        self.audio_dim = audio_dim
        self.audio_bands = audio_bands
        self.band_proj = nn.Linear(audio_dim * audio_bands, proj_dim)
        # Initialised for unit gain from its fan-in (see `ConvStream`), not at a fixed small scale.
        self.band_proj.fan_in_init = "linear"

    def forward(self, audio: torch.Tensor, token_times: torch.Tensor, step_times: torch.Tensor) -> torch.Tensor:
        batch, channels, examples, rows, bands = audio.shape
        if channels != self.audio_dim or bands != self.audio_bands:
            raise ValueError(
                f"TimeAlignedAudio expects audio of shape (batch, {self.audio_dim}, examples, rows, {self.audio_bands}), "
                f"got {tuple(audio.shape)}"
            )
        _check_times(token_times, "audio token times", (examples * rows, 2) if token_times.ndim == 2 else (batch, examples * rows, 2))
        _check_times(step_times, "visual step times", (batch, None, 2))
        # (B, C, A, h, w) -> (B, A*h, C*w): one token per example row, its bands side by side
        tokens = self.band_proj(audio.permute(0, 2, 3, 1, 4).reshape(batch, examples * rows, channels * bands))
        # The weights from float32 times whatever the features' dtype: bfloat16 resolves 1.5 s to 8 ms only.
        present, context = time_pooling_weights(token_times.float(), step_times.float())
        return torch.cat([present.to(tokens.dtype) @ tokens, context.to(tokens.dtype) @ tokens], dim=-1)


class ConvStream(nn.Module):
    """Reduce channels, a per-frame k x k convolution with BatchNorm and ReLU, expand back.

    With `step_dim`, a per-time-step vector (the time-aligned sound) joins the point-wise reduction: it is
    reduced once per time step and broadcast over H x W, which equals reducing its copy at every pixel. The
    visual and the sound's reductions are each normalised per channel (BatchNorm) before they are added.
    """

    def __init__(self, in_channels: int, stream_dim: int, out_channels: int, kernel_size: int, step_dim: int = 0):
        super().__init__()
        self.reduce = Conv3d(in_channels, stream_dim, 1)
        self.step_reduce = nn.Linear(step_dim, stream_dim, bias=False) if step_dim else None
        if self.step_reduce is not None:
            # The sound joins the picture at the picture's scale: He-initialised from its fan-in, as the
            # point-wise convolution it adds to is. At a fixed small scale (0.02) it would start at about 1% of
            # the visual part, and the product of two such layers has almost no gradient to grow from.
            self.step_reduce.fan_in_init = "relu"
            # Each part normalised per channel before the sum, so neither can drown the other by growing: the
            # stream's BatchNorm comes after the sum and is blind to how the two parts' scales compare.
            self.visual_norm = nn.BatchNorm3d(stream_dim)
            self.step_norm = nn.BatchNorm1d(stream_dim)
        self.conv = _spatial_conv(stream_dim, stream_dim, kernel_size, bias=False)
        self.norm = nn.BatchNorm3d(stream_dim)
        self.act = nn.ReLU(inplace=True)
        self.expand = Conv3d(stream_dim, out_channels, 1)

    def reduced(self, features: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        """`features` (B, C, T, H, W) and `steps` (B, T, step_dim) -> (B, stream_dim, T, H, W)."""
        reduced = self.reduce(features)
        if self.step_reduce is not None:
            # (B, T, S) -> (B, S, T), normalised per channel over batch and steps -> (B, S, T, 1, 1), broadcast
            # over H and W
            sound = self.step_reduce(steps).transpose(1, 2)
            if self.training and sound.shape[0] * sound.shape[2] == 1:
                # One value per channel (a batch of one clip of one step) has no batch statistics: the running ones.
                norm = self.step_norm
                sound = F.batch_norm(sound, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
            else:
                sound = self.step_norm(sound)
            reduced = self.visual_norm(reduced) + sound[..., None, None]
        return reduced

    def forward(self, features: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        return self.expand(self.act(self.norm(self.conv(self.reduced(features, steps)))))


# Columns the sampled deformable convolution holds at a time (`sampled_deform_conv2d`): 64 MiB in float32.
DEFORM_COLUMNS = 1 << 24


def sampled_deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's `deform_conv2d` as a bilinear `grid_sample` of every kernel tap followed by one matrix product.

    The same function (same offset and mask layouts, `(dy, dx)` per tap, taps row by row, offset groups over the
    input channels, zero outside the image): sampling is where torchvision's CPU kernel spends its time, on one
    core, and `grid_sample` samples all channels of a point at once on every thread. Images go through in chunks
    of at most `DEFORM_COLUMNS` sampled values, so memory is bounded whatever the batch.

    `input` (N, C_in, H, W), `offset` (N, 2 * offset_groups * kh * kw, H_out, W_out), `weight`
    (C_out, C_in / groups, kh, kw), `mask` (N, offset_groups * kh * kw, H_out, W_out) -> (N, C_out, H_out, W_out).
    """
    n, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    groups, taps = channels // group_channels, kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (stride, padding, dilation))
    out_h, out_w = offset.shape[2:]
    # Each tap's sampling position before its offset, (taps, out_h, 1) and (taps, 1, out_w), in pixels
    factory = dict(dtype=input.dtype, device=input.device)
    rows = torch.arange(kh, **factory).repeat_interleave(kw)[:, None, None] * dh + torch.arange(out_h, **factory)[:, None] * sh - ph
    cols = torch.arange(kw, **factory).repeat(kh)[:, None, None] * dw + torch.arange(out_w, **factory) * sw - pw
    kernel = weight.reshape(groups, out_channels // groups, group_channels * taps)
    if n == 0 or out_h * out_w == 0:
        return input.new_zeros(n, out_channels, out_h, out_w)
    chunk = max(1, DEFORM_COLUMNS // (channels * taps * out_h * out_w))
    pieces = []
    for start in range(0, n, chunk):
        images = slice(start, start + chunk)
        m = input[images].shape[0]
        # (m, G_off, taps, 2, out_h, out_w) -> positions in grid_sample's [-1, 1] (align_corners=False: pixel centres)
        shift = offset[images].reshape(m * offset_groups, taps, 2, out_h, out_w)
        y = (rows + shift[:, :, 0]) * (2.0 / height) + (1.0 / height - 1.0)
        x = (cols + shift[:, :, 1]) * (2.0 / width) + (1.0 / width - 1.0)
        grid = torch.stack([x, y], dim=-1).reshape(m * offset_groups, taps * out_h, out_w, 2)
        # (m * G_off, C_in / G_off, taps * out_h, out_w) -> (m, C_in, taps, out_h * out_w)
        sampled = F.grid_sample(input[images].reshape(m * offset_groups, channels // offset_groups, height, width), grid,
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(m, channels, taps, out_h * out_w)
        if mask is not None:
            # (m, G_off * taps, out_h, out_w) -> (m, G_off, 1, taps, out_h * out_w), over each group's channels
            weights = mask[images].reshape(m, offset_groups, 1, taps, out_h * out_w)
            sampled = (sampled.reshape(m, offset_groups, channels // offset_groups, taps, -1) * weights).reshape(m, channels, taps, -1)
        # (G, C_out / G, C_in / G * taps) @ (m, G, C_in / G * taps, out_h * out_w) -> (m, C_out, out_h, out_w)
        out = torch.matmul(kernel, sampled.reshape(m, groups, group_channels * taps, out_h * out_w))
        out = out.reshape(m, out_channels, out_h, out_w)
        pieces.append(out if bias is None else out + bias[:, None, None])
    return torch.cat(pieces)


class Float32DeformConv2d(DeformConv2d):
    """torchvision's `DeformConv2d` computed in float32 whatever the dtype of its weights and inputs (torchvision
    has no bfloat16 CPU kernel for it, and no CPU autocast rule); the output has the input's dtype.

    Same arguments, parameters and state-dict keys as `DeformConv2d`.
    """

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input` (N, C_in, H, W), `offset` (N, 2 * groups * kh * kw, H_out, W_out) -> (N, C_out, H_out, W_out).

        On the CPU without autograd (and outside tracing and export, which keep torchvision's operator) the same
        function runs as `sampled_deform_conv2d` (at level 1 of the full model on a 2-core AVX-512 CPU 0.035 s
        against torchvision's 0.238 s), the same values within float32 rounding (summation order and the sampling
        positions' scaling).
        """
        dtype = input.dtype
        weight, bias = self.weight.float(), None if self.bias is None else self.bias.float()
        input, offset, mask = input.float(), offset.float(), None if mask is None else mask.float()
        options = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, mask=mask)
        if _plain_cpu_inference(input):
            # Autocast would run the sampled form's matrix product in bf16; torchvision's operator has no autocast rule.
            with torch.autocast("cpu", enabled=False):
                return sampled_deform_conv2d(input, offset, weight, bias, **options).to(dtype)
        if (type(offset) is torch.Tensor and offset.device.type != "meta" and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and not bool(torch.isfinite(offset).all())):
            # torchvision's kernels index the input at floor(offset) unchecked: a NaN or infinite offset reads
            # outside it (a segmentation fault on the CPU).
            raise ValueError("the deformable convolution's sampling offsets are not finite (NaN or inf): the model's "
                             "weights or its input hold non-finite values")
        return deform_conv2d(input, offset, weight, bias, **options).to(dtype)


class DeformableStream(ConvStream):
    """Reduce channels, a per-frame 3 x 3 deformable convolution whose offsets are predicted from the
    audio-visual features (so the sound steers where the kernel samples), BatchNorm, ReLU, expand back.

    The deformable convolution runs in float32 whatever the model's dtype (`Float32DeformConv2d`), so the
    stream works in a model moved to bfloat16 / float16 and under `torch.autocast`.
    """

    def __init__(self, in_channels: int, stream_dim: int, out_channels: int, kernel_size: int = 3, step_dim: int = 0):
        super().__init__(in_channels, stream_dim, out_channels, kernel_size, step_dim)
        padding = kernel_size // 2
        self.offsets = nn.Conv2d(stream_dim, 2 * kernel_size * kernel_size, kernel_size, padding=padding)
        self.conv = Float32DeformConv2d(stream_dim, stream_dim, kernel_size, padding=padding, bias=False)
        # Zero offsets at start: the stream begins as a plain 3 x 3 convolution.
        self.offsets.zero_init = True
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)

    def forward(self, features: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        reduced = self.reduced(features, steps)
        batch, channels, time, height, width = reduced.shape
        # Deformable convolution runs per frame: (B, C, T, H, W) -> (B*T, C, H, W)
        frames = reduced.transpose(1, 2).reshape(batch * time, channels, height, width)
        frames = self.conv(frames, self.offsets(frames))
        # (B*T, C, H, W) -> (B, C, T, H, W)
        reduced = frames.reshape(batch, time, channels, height, width).transpose(1, 2)
        return self.expand(self.act(self.norm(reduced)))


class AMFB(nn.Module):
    """Adaptive Multimodal Fusion Block: local (3 x 3), global (5 x 5) and adaptive (deformable)
    streams over the audio-visual features, mixed by per-sample tri-stream scores
    W = sigmoid(Linear(GAP([F_local, F_global, F_adaptive]))).

    How the audio reaches each visual time step (`alignment`):
    - `"time"` (default): each step hears its own time span (present) and what came before it (context),
      from the tokens' and the steps' times (`TimeAlignedAudio`); that vector joins every stream's point-wise
      reduction once per time step, broadcast over H x W.
    - `"stretch"`: the audio is projected to `audio_proj_dim` channels at its own resolution and resized
      trilinearly to (T, H, W), so the audio window is stretched over the clip and the token grid over the
      image; then concatenated with the visual features.

    Args:
        visual_dim: C, channels of the visual features (kept).
        audio_dim: channels of the audio features.
        audio_proj_dim: width the audio tokens are projected to.
        stream_dim: the reduced width inside each stream.
        alignment: `"time"` or `"stretch"`.
        audio_bands: mel-frequency columns of the audio features (`"time"` only).

    Shapes: visual `(batch, visual_dim, T, H, W)`; audio `(batch, audio_dim, examples, rows, audio_bands)`
    (`"stretch"`: any last three sizes); `audio_times` `(examples * rows, 2)` and `visual_times`
    `(batch, T, 2)` seconds (`"time"` only) -> `(batch, visual_dim, T, H, W)`.
    """

    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        audio_proj_dim: int = 128,
        stream_dim: int = 96,
        alignment: str = "time",
        audio_bands: int = 1,
    ):
        super().__init__()
        if alignment not in AUDIO_ALIGNMENTS:
            raise ValueError(f"AMFB alignment must be one of {AUDIO_ALIGNMENTS}, got {alignment!r}")
        self.visual_dim = visual_dim
        self.audio_dim = audio_dim
        self.alignment = alignment
        # The model passes `audio_times` and `visual_times` to a fusion block that says it takes them.
        self.takes_times = alignment == "time"
        if alignment == "time":
            self.audio_steps = TimeAlignedAudio(audio_dim, audio_bands, audio_proj_dim)
            in_dim, step_dim = visual_dim, 2 * audio_proj_dim
        else:
            self.audio_proj = Conv3d(audio_dim, audio_proj_dim, 1)
            in_dim, step_dim = visual_dim + audio_proj_dim, 0
        self.local_stream = ConvStream(in_dim, stream_dim, visual_dim, kernel_size=3, step_dim=step_dim)
        self.global_stream = ConvStream(in_dim, stream_dim, visual_dim, kernel_size=5, step_dim=step_dim)
        self.adaptive_stream = DeformableStream(in_dim, stream_dim, visual_dim, step_dim=step_dim)
        self.stream_scores = nn.Linear(3 * visual_dim, 3)

    def _inputs(self, visual, audio, audio_times, visual_times) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the streams take: the features to reduce per pixel, and the per-step audio (or None)."""
        if self.alignment == "stretch":
            audio = F.interpolate(self.audio_proj(audio), size=visual.shape[2:], mode="trilinear", align_corners=False)
            return torch.cat([visual, audio], dim=1), None
        if audio_times is None or visual_times is None:
            raise ValueError("AMFB with alignment='time' needs audio_times and visual_times (seconds, see audio_token_times)")
        _check_times(visual_times, "visual_times", (visual.shape[0], visual.shape[2], 2))
        return visual, self.audio_steps(audio, audio_times, visual_times)

    def forward(
        self,
        visual: torch.Tensor,
        audio: torch.Tensor,
        audio_times: torch.Tensor | None = None,
        visual_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_5d(visual, self.visual_dim, "AMFB (visual)")
        _check_5d(audio, self.audio_dim, "AMFB (audio)")
        if audio.shape[0] != visual.shape[0]:
            raise ValueError(f"AMFB needs audio and visual batches of one size, got {audio.shape[0]} and {visual.shape[0]}")
        features, steps = self._inputs(visual, audio, audio_times, visual_times)
        streams = [stream(features, steps) for stream in (self.local_stream, self.global_stream, self.adaptive_stream)]
        # Global average pooling over (T, H, W) of the concatenated streams, (B, 3C): each stream's, concatenated
        pooled = torch.cat([stream.mean(dim=(2, 3, 4)) for stream in streams], dim=1)
        scores = torch.sigmoid(self.stream_scores(pooled))[:, :, None, None, None, None]  # (B, 3, 1, 1, 1, 1)
        fused = scores[:, 0] * streams[0]
        for index in (1, 2):
            fused = torch.addcmul(fused, scores[:, index], streams[index])  # fused + score * stream
        return fused
