"""Saliency metrics as the MIT saliency benchmark's MATLAB code defines them, batched in torch.

Every function takes maps of shape `(height, width)` or `(batch, height, width)` on any device and
returns a float64 tensor of shape `()` or `(batch,)`, one score per frame. Computation runs in
float64. The definitions follow `CC.m`, `NSS.m`, `similarity.m`, `KLdiv.m`, `AUC_Judd.m`,
`AUC_shuffled.m` and `AUC_Borji.m` of the MIT/Tuebingen benchmark code:

- NSS standardises the prediction with the n−1 standard deviation and averages it over the fixated
  pixels (each fixated pixel once).
- SIM min-max normalises, then sum-normalises, both maps and sums their pixel-wise minimum.
- KLD sum-normalises both maps only (a map with no non-zero value is left as is) and computes
  Σ g·log(ε + g / (p + ε)) with ε = 2.2204e-16.
- AUC-Judd uses the prediction's values at the fixated pixels as thresholds against all pixels, with
  an optional uniform jitter of at most 1e-7; tied fixated values are counted together.
- Shuffled AUC and AUC-Borji use the thresholds 0, 0.1, … up to the largest value involved on the
  min-max normalised prediction; negatives are the prediction at the fixations of `other_map`
  (shuffled AUC, sampled without replacement) or at uniformly drawn pixels (Borji, with
  replacement), averaged over `num_splits` random draws.

Rules where the MATLAB code returns NaN or is silent:
- A frame whose fixation map has no fixation, or whose continuous target map is all zero, gets NaN:
  it has no score and `nanmean` skips it in averages.
- A constant prediction scores chance: CC 0, NSS 0, AUC-Judd, shuffled AUC and AUC-Borji 0.5; SIM
  treats it as the uniform distribution; KLD follows `KLdiv.m` (a constant non-zero map is uniform, an
  all-zero map stays zero).
- A constant non-zero target map gives CC 0 and is the uniform distribution for SIM and KLD.
- A frame where every pixel is fixated (no negatives for AUC-Judd) or whose `other_map` holds no
  fixation gets NaN for the AUC concerned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

EPSILON = 2.2204e-16
"""MATLAB's `eps`, the ε of `KLdiv.m` and of the training loss."""

METRIC_NAMES = ("cc", "nss", "auc_judd", "sim", "kld", "sauc", "auc_borji")
"""Every metric `compute_metrics` knows, in the order tables print them: the one vocabulary of metric names
(evaluation, training, the model card)."""

METRIC_TITLES = {"cc": "CC", "nss": "NSS", "auc_judd": "AUC-J", "sim": "SIM", "kld": "KLD", "sauc": "sAUC",
                 "auc_borji": "AUC-B"}
"""How tables and model cards print each metric."""

METRIC_HUB_IDS = {**{name: name for name in METRIC_NAMES}, "sauc": "shuffled_auc"}
"""Each metric's id in a model card's `model-index`."""

LOWER_IS_BETTER = ("kld",)
"""Metrics where a lower value is better (every other one: higher)."""

_ALIASES = {
    "cc": "cc", "nss": "nss", "aucj": "auc_judd", "aucjudd": "auc_judd", "sim": "sim", "similarity": "sim",
    "kld": "kld", "kl": "kld", "kldiv": "kld", "sauc": "sauc", "shuffledauc": "sauc", "aucb": "auc_borji",
    "aucborji": "auc_borji",
}


def metric_name(name: str) -> str:
    """The `METRIC_NAMES` name of a metric however it is spelled ("CC", "AUC-J", "AUC_J", "sAUC", "shuffled_auc",
    "KLdiv", ...); a name that is no known metric comes back unchanged."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", str(name).lower()), name)


def _as_batch(name: str, value: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return `value` as a float64 `(batch, height * width)` tensor and whether it had a batch axis."""
    value = torch.as_tensor(value)
    if value.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape (height, width) or (batch, height, width), got {tuple(value.shape)}")
    batched = value.dim() == 3
    if not batched:
        value = value.unsqueeze(0)
    value = value.to(torch.float64)
    # One reduction instead of an elementwise check: NaN and ±inf both make the sum non-finite.
    if not torch.isfinite(value.sum()):
        raise ValueError(f"{name} holds NaN or infinite values")
    # (B, H, W) -> (B, H*W)
    return value.flatten(1), batched


def _pair(first_name: str, first, second_name: str, second) -> tuple[torch.Tensor, torch.Tensor, bool]:
    first_flat, batched = _as_batch(first_name, first)
    second_flat, second_batched = _as_batch(second_name, second)
    if torch.as_tensor(first).shape[-2:] != torch.as_tensor(second).shape[-2:]:
        raise ValueError(
            f"{first_name} and {second_name} must have the same height and width; resize the prediction to the "
            f"ground truth first: got {tuple(torch.as_tensor(first).shape[-2:])} and "
            f"{tuple(torch.as_tensor(second).shape[-2:])}"
        )
    if first_flat.shape[0] != second_flat.shape[0]:
        if first_flat.shape[0] == 1:
            first_flat = first_flat.expand(second_flat.shape[0], -1)
        elif second_flat.shape[0] == 1:
            second_flat = second_flat.expand(first_flat.shape[0], -1)
        else:
            raise ValueError(f"batch sizes differ: {first_name} has {first_flat.shape[0]}, {second_name} has {second_flat.shape[0]}")
    return first_flat, second_flat.to(first_flat.device), batched or second_batched


def _finish(scores: torch.Tensor, batched: bool) -> torch.Tensor:
    return scores if batched else scores[0]


def _is_constant(values: torch.Tensor) -> torch.Tensor:
    """`(B, N)` -> `(B,)` bool: every value of the row is equal."""
    return values.amax(dim=1) == values.amin(dim=1)


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row to [0, 1]; a constant row becomes all ones."""
    low = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, 1.0), torch.ones_like(values))


def _sum_normalise(values: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum where any value is non-zero (`KLdiv.m`: `if any(map(:))`)."""
    total = values.sum(dim=1, keepdim=True)
    nonzero = (values != 0).any(dim=1, keepdim=True)
    return torch.where(nonzero, values / torch.where(nonzero, total, 1.0), values)


def cc(saliency_map: torch.Tensor, target_map: torch.Tensor) -> torch.Tensor:
    """Pearson's linear correlation coefficient between the prediction and the continuous map."""
    prediction, target, batched = _pair("saliency_map", saliency_map, "target_map", target_map)
    prediction = prediction - prediction.mean(dim=1, keepdim=True)
    target_centred = target - target.mean(dim=1, keepdim=True)
    denominator = torch.sqrt((prediction**2).sum(dim=1) * (target_centred**2).sum(dim=1))
    scores = (prediction * target_centred).sum(dim=1) / torch.where(denominator > 0, denominator, 1.0)
    scores = torch.where(denominator > 0, scores, torch.zeros_like(scores))
    scores = torch.where((target != 0).any(dim=1), scores, torch.full_like(scores, math.nan))
    return _finish(scores, batched)


def nss(saliency_map: torch.Tensor, fixation_map: torch.Tensor) -> torch.Tensor:
    """Normalised scanpath saliency: the standardised prediction (n−1 std) averaged over fixated pixels."""
    prediction, fixations, batched = _pair("saliency_map", saliency_map, "fixation_map", fixation_map)
    fixated = (fixations > 0).to(torch.float64)
    std = prediction.std(dim=1, keepdim=True, unbiased=True)
    standardised = (prediction - prediction.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, 1.0)
    standardised = torch.where(std > 0, standardised, torch.zeros_like(standardised))
    count = fixated.sum(dim=1)
    scores = (standardised * fixated).sum(dim=1) / count.clamp(min=1)
    scores = torch.where(count > 0, scores, torch.full_like(scores, math.nan))
    return _finish(scores, batched)


def sim(saliency_map: torch.Tensor, target_map: torch.Tensor) -> torch.Tensor:
    """Similarity (histogram intersection) of the min-max then sum normalised maps."""
    prediction, target, batched = _pair("saliency_map", saliency_map, "target_map", target_map)
    empty = ~(target != 0).any(dim=1)
    prediction = _sum_normalise(_min_max(prediction))
    target = _sum_normalise(_min_max(target))
    scores = torch.minimum(prediction, target).sum(dim=1)
    scores = torch.where(empty, torch.full_like(scores, math.nan), scores)
    return _finish(scores, batched)


def kld(saliency_map: torch.Tensor, target_map: torch.Tensor, epsilon: float = EPSILON) -> torch.Tensor:
    """Kullback-Leibler divergence KL(target ‖ prediction) of the sum-normalised maps (lower is better)."""
    prediction, target, batched = _pair("saliency_map", saliency_map, "target_map", target_map)
    empty = ~(target != 0).any(dim=1)
    prediction = _sum_normalise(prediction)
    target = _sum_normalise(target)
    scores = (target * torch.log(epsilon + target / (prediction + epsilon))).sum(dim=1)
    scores = torch.where(empty, torch.full_like(scores, math.nan), scores)
    return _finish(scores, batched)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _count_at_least(sorted_values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many of the ascending `sorted_values` are >= each threshold."""
    return sorted_values.numel() - torch.searchsorted(sorted_values, thresholds, right=False)


def _judd_single(prediction: torch.Tensor, fixated: torch.Tensor, jitter: bool, generator: torch.Generator) -> float:
    num_fixations = int(fixated.sum())
    num_pixels = prediction.numel()
    if num_fixations == 0 or num_fixations == num_pixels:
        return math.nan
    if prediction.max() == prediction.min():
        return 0.5
    if jitter:
        prediction = prediction + torch.rand(prediction.shape, generator=generator, device=prediction.device, dtype=torch.float64) / 1e7
    prediction = (prediction - prediction.min()) / (prediction.max() - prediction.min())
    at_fixations = torch.sort(prediction[fixated]).values
    thresholds = at_fixations.flip(0)  # descending, as `AUC_Judd.m` sweeps them
    above_fixated = _count_at_least(at_fixations, thresholds).to(torch.float64)
    above_all = _count_at_least(torch.sort(prediction).values, thresholds).to(torch.float64)
    zero, one = prediction.new_zeros(1), prediction.new_ones(1)
    true_positive = torch.cat([zero, above_fixated / num_fixations, one])
    false_positive = torch.cat([zero, (above_all - above_fixated) / (num_pixels - num_fixations), one])
    return float(torch.trapezoid(true_positive, false_positive))


def auc_judd(
    saliency_map: torch.Tensor, fixation_map: torch.Tensor, jitter: bool = True, seed: int = 0
) -> torch.Tensor:
    """AUC-Judd: ROC area with the prediction's values at the fixated pixels as thresholds.

    `jitter` adds uniform noise in [0, 1e-7) before sweeping (as `AUC_Judd.m` does by default), which
    breaks ties of flat predictions; `seed` makes it reproducible. Without jitter, tied fixated values
    share one threshold.
    """
    prediction, fixations, batched = _pair("saliency_map", saliency_map, "fixation_map", fixation_map)
    generator = _generator(prediction.device, seed)
    scores = [_judd_single(prediction[i], fixations[i] > 0, jitter, generator) for i in range(prediction.shape[0])]
    return _finish(torch.tensor(scores, dtype=torch.float64, device=prediction.device), batched)


def _threshold_grid_auc(positives: torch.Tensor, negatives: torch.Tensor, step: float) -> float:
    """Mean over splits of the ROC area on the thresholds 0, step, 2·step, … (descending).

    `positives`: `(P,)` prediction values at the fixations; `negatives`: `(splits, Q)` values at the
    sampled negative locations. A split's thresholds above its own largest value only repeat the
    point (0, 0), so one grid up to the overall largest value serves every split.
    """
    largest = float(torch.maximum(positives.max(), negatives.max()))
    num_thresholds = math.floor(largest / step + 1e-10) + 1
    thresholds = step * torch.arange(num_thresholds - 1, -1, -1, dtype=torch.float64, device=positives.device)
    true_positive = (positives[None, :] >= thresholds[:, None]).to(torch.float64).mean(dim=1)
    # (splits, Q) against (T,) -> (splits, T)
    false_positive = (negatives[:, None, :] >= thresholds[None, :, None]).to(torch.float64).mean(dim=2)
    splits = negatives.shape[0]
    zeros, ones = positives.new_zeros(splits, 1), positives.new_ones(splits, 1)
    true_positive = torch.cat([zeros, true_positive.expand(splits, -1), ones], dim=1)
    false_positive = torch.cat([zeros, false_positive, ones], dim=1)
    return float(torch.trapezoid(true_positive, false_positive, dim=1).mean())


def _shuffled_single(
    prediction: torch.Tensor, fixated: torch.Tensor, other: torch.Tensor, num_splits: int, step: float, generator
) -> float:
    if not fixated.any() or not other.any():
        return math.nan
    if prediction.max() == prediction.min():
        return 0.5
    prediction = (prediction - prediction.min()) / (prediction.max() - prediction.min())
    positives = prediction[fixated]
    other_locations = torch.nonzero(other).flatten()
    num_negatives = min(positives.numel(), other_locations.numel())
    # A random permutation per split, truncated: sampling without replacement as `randperm` does.
    order = torch.rand((num_splits, other_locations.numel()), generator=generator, device=prediction.device).argsort(dim=1)
    negatives = prediction[other_locations[order[:, :num_negatives]]]
    return _threshold_grid_auc(positives, negatives, step)


def auc_shuffled(
    saliency_map: torch.Tensor,
    fixation_map: torch.Tensor,
    other_map: torch.Tensor,
    num_splits: int = 100,
    step: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Shuffled AUC: negatives are the prediction at the fixations of `other_map` (other frames/videos).

    `other_map` is a binary map of fixations from other stimuli, `(height, width)` or one per frame.
    """
    prediction, fixations, batched = _pair("saliency_map", saliency_map, "fixation_map", fixation_map)
    _, other, _ = _pair("saliency_map", saliency_map, "other_map", other_map)
    if other.shape[0] != prediction.shape[0]:
        other = other.expand(prediction.shape[0], -1)
    if num_splits < 1 or step <= 0:
        raise ValueError(f"num_splits must be >= 1 and step > 0, got num_splits={num_splits}, step={step}")
    generator = _generator(prediction.device, seed)
    scores = [
        _shuffled_single(prediction[i], fixations[i] > 0, other[i] > 0, num_splits, step, generator)
        for i in range(prediction.shape[0])
    ]
    return _finish(torch.tensor(scores, dtype=torch.float64, device=prediction.device), batched)


def _borji_single(prediction: torch.Tensor, fixated: torch.Tensor, num_splits: int, step: float, generator) -> float:
    if not fixated.any():
        return math.nan
    if prediction.max() == prediction.min():
        return 0.5
    prediction = (prediction - prediction.min()) / (prediction.max() - prediction.min())
    positives = prediction[fixated]
    picks = torch.randint(0, prediction.numel(), (num_splits, positives.numel()), generator=generator, device=prediction.device)
    return _threshold_grid_auc(positives, prediction[picks], step)


def auc_borji(
    saliency_map: torch.Tensor, fixation_map: torch.Tensor, num_splits: int = 100, step: float = 0.1, seed: int = 0
) -> torch.Tensor:
    """AUC-Borji: negatives are the prediction at pixels drawn uniformly (with replacement)."""
    prediction, fixations, batched = _pair("saliency_map", saliency_map, "fixation_map", fixation_map)
    if num_splits < 1 or step <= 0:
        raise ValueError(f"num_splits must be >= 1 and step > 0, got num_splits={num_splits}, step={step}")
    generator = _generator(prediction.device, seed)
    scores = [_borji_single(prediction[i], fixations[i] > 0, num_splits, step, generator) for i in range(prediction.shape[0])]
    return _finish(torch.tensor(scores, dtype=torch.float64, device=prediction.device), batched)


def compute_metrics(
    saliency_map: torch.Tensor,
    target_map: torch.Tensor,
    fixation_map: torch.Tensor,
    other_map: torch.Tensor | None = None,
    metrics: Sequence[str] = ("cc", "nss", "auc_judd", "sim", "kld", "sauc"),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Several metrics at once, `{name: (batch,) float64}`.

    Frames whose fixation map is empty get NaN for every metric, so all metrics skip the same
    frames. `"sauc"` needs `other_map`; without one it is left out.
    """
    unknown = [name for name in metrics if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names among {list(METRIC_NAMES)}")
    saliency_map, target_map, fixation_map = (torch.as_tensor(m).to(torch.float64) for m in (saliency_map, target_map, fixation_map))
    functions = {
        "cc": lambda: cc(saliency_map, target_map),
        "nss": lambda: nss(saliency_map, fixation_map),
        "auc_judd": lambda: auc_judd(saliency_map, fixation_map, seed=seed),
        "sim": lambda: sim(saliency_map, target_map),
        "kld": lambda: kld(saliency_map, target_map),
        "sauc": lambda: auc_shuffled(saliency_map, fixation_map, other_map, seed=seed),
        "auc_borji": lambda: auc_borji(saliency_map, fixation_map, seed=seed),
    }
    has_fixations = torch.as_tensor(fixation_map).flatten(-2).gt(0).any(dim=-1)
    results = {}
    for name in metrics:
        if name == "sauc" and other_map is None:
            continue
        scores = functions[name]()
        results[name] = torch.where(has_fixations.to(scores.device), scores, torch.full_like(scores, math.nan))
    return results


def nanmean(values: Sequence[float] | torch.Tensor) -> float:
    """Mean over the values that are not NaN; NaN when none is left."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else math.nan


__all__ = [
    "EPSILON",
    "LOWER_IS_BETTER",
    "METRIC_HUB_IDS",
    "METRIC_NAMES",
    "METRIC_TITLES",
    "metric_name",
    "auc_borji",
    "auc_judd",
    "auc_shuffled",
    "cc",
    "compute_metrics",
    "kld",
    "nanmean",
    "nss",
    "sim",
]
