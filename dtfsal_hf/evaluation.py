"""Evaluation of predicted saliency maps under the DHF1K and STAViS protocols (SPEC §11).

Predictions come from a `predict_video(record) -> (N, h, w)` callable: a folder of saved maps
(`PredictionFolder`), a model (`model_predictor`, a `ModelPredictor`), or a baseline
(`center_bias_predictor`, `uniform_predictor`). A model can be made to hear another sound, the
hearing test (`AUDIO_MODES`): each video's own, another evaluated video's (`sound_partners`), or
silence; `evaluate_audio_controls` scores all three side by side.

- `"dhf1k"` protocol (DHF1K, UCF-Sports, Hollywood-2): the prediction is resized (bilinear) to the
  ground truth's size; metrics per frame, mean per video, mean over videos.
- `"stavis"` protocol (the audio-visual databases): the prediction is blurred (Gaussian σ = 2 px) on
  its blur grid, then resized to the ground truth's size; CC, SIM and KLD against the continuous map,
  NSS, AUC-Judd and sAUC against the binary fixations; per frame, per video, then the mean over all
  test videos of the folds evaluated.

The blur grid is the model's output grid, so a model's maps score the same however they reach the
evaluation (`blur_grid_of`): a model's maps (`ModelPredictor`) and a baseline's are blurred where they are
made; saved maps (`PredictionFolder`, which `dtfsal predict` writes at the video's resolution) are first
brought back to the grid recorded with them (`map_size` in the video's `done.json`), or to an explicit
`blur_grid`, or to the paper model's `DEFAULT_BLUR_GRID` (224×384) when nothing is recorded.

One scoring path: `score_frame` scores one frame's map against its ground truth under a protocol (what
`evaluate_video` does for every frame, and the trainer's validation for every clip), and `summarise` takes
per-frame or per-video rows to per-video means and the overall and per-dataset means (what `evaluate` and
the trainer report).

Frames without fixations are skipped; a video with none counts in no mean. The other map of sAUC
comes in two variants (`SAUC_OTHER_MAPS`), each the default of one protocol:

- `"videos"` (Borji's, the `"dhf1k"` protocol's): the fixations of `other_frames` frames drawn at
  random from *other* videos of the evaluation (`ShufflePool`; seeded by the video and frame, so it
  does not depend on the order or on resuming);
- `"same-video"` (STAViS's, the `"stavis"` protocol's): the union of the fixations of every frame of
  the same video, less the pixels fixated in the frame scored (`SameVideoOtherMaps`; no draw).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics as saliency_metrics
from .metrics import METRIC_TITLES
from .data.io import SAMPLING_RATE, read_saliency_map
from .data.readers import VideoRecord
from .media import AudioTrack
from .video_processing_dtfsal import gaussian_blur

PROTOCOLS = ("dhf1k", "stavis")
SAUC_OTHER_MAPS = ("videos", "same-video")
"""sAUC's other map: fixations of other videos' frames (Borji), or of the same video's other frames (STAViS)."""
PROTOCOL_SAUC_OTHER = {"dhf1k": "videos", "stavis": "same-video"}
DEFAULT_METRICS = ("cc", "nss", "auc_judd", "sim", "kld", "sauc")
STAVIS_BLUR_SIGMA = 2.0
DEFAULT_BLUR_GRID = (224, 384)
"""The blur grid of saved maps that record none: the paper model's output grid (`DTFSalConfig().image_size`)."""
MARKER_GRID_FIELD = "map_size"
"""The field of a saved video's `done.json` giving the `[height, width]` of the model's maps before they were
resized to the video."""
_LARGEST_GRID = 4096  # a float64 map of 4096×4096 is 134 MB: the bound on what a recorded grid can ask for
CSV_NAME, SUMMARY_NAME, STATE_NAME = "per_video.csv", "summary.json", "evaluation.json"
# The values a per-video mean can take; a row outside them is not one this module wrote.
METRIC_RANGES = {"cc": (-1.0, 1.0), "nss": (-math.inf, math.inf), "auc_judd": (0.0, 1.0), "sim": (0.0, 1.0),
                 "kld": (0.0, math.inf), "sauc": (0.0, 1.0), "auc_borji": (0.0, 1.0)}


def protocol_for(dataset: str) -> str:
    """The dataset registry's protocol (`data.readers.dataset_info`): `"dhf1k"` for DHF1K, UCF-Sports and
    Hollywood-2, `"stavis"` for the audio-visual databases."""
    from .data.readers import dataset_info

    return dataset_info(dataset).protocol


def _resized(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(N, h, w)` maps resized to `size`: bilinear, half-pixel centres, as `dtfsal predict` resizes its maps."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def check_grid(grid, name: str = "blur_grid") -> tuple[int, int]:
    """`grid` as `(height, width)`, positive integers up to 4096; a `ValueError` naming `name` otherwise. Takes a
    pair of integers or a string `"HxW"` (`--blur-grid 224x384`)."""
    if isinstance(grid, str):
        values = [int(part) if part.strip().isdigit() else None for part in grid.lower().replace("×", "x").split("x")]
    elif isinstance(grid, (list, tuple)):
        values = [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else None for v in grid]
    else:
        values = []
    if len(values) != 2 or any(value is None or not 0 < value <= _LARGEST_GRID for value in values):
        raise ValueError(f"{name} must be a height and a width in pixels, each 1 to {_LARGEST_GRID} (e.g. 224x384), "
                         f"got {grid!r}")
    return values[0], values[1]


def prepare_prediction(
    prediction, size: tuple[int, int], protocol: str, blur_sigma: float = STAVIS_BLUR_SIGMA,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Bring predictions `(N, h, w)` to the ground truth's `size` (height, width) as the protocol says, float64.

    `"stavis"`: the maps are brought to `grid` (the blur grid; None: their own), blurred there (σ = `blur_sigma`
    px), then resized to `size`. `"dhf1k"`: resized to `size`; `grid` is not used. Every resize is bilinear.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    maps = torch.from_numpy(np.array(prediction, dtype=np.float64))
    if maps.dim() != 3:
        raise ValueError(f"predictions must have shape (frames, height, width), got {tuple(maps.shape)}")
    if protocol == "stavis":
        if grid is not None:
            maps = _resized(maps, check_grid(grid))
        if blur_sigma > 0:
            maps = gaussian_blur(maps, blur_sigma)
    return _resized(maps, tuple(size))


def score_frame(
    prediction,
    saliency_map,
    fixation_map,
    protocol: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    other_map=None,
    seed: int = 0,
    grid: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """The scores of one frame's predicted map `(h, w)` against its ground truth, `{metric: float}` (NaN for a frame
    without fixations): the map is prepared as the protocol says (`prepare_prediction`, on the blur `grid`) at the
    ground truth's size, then scored by `metrics.compute_metrics` against the continuous `saliency_map` and the
    binary `fixation_map` (and sAUC's `other_map`; without one sAUC is left out). The one scoring of a frame, for
    `evaluate_video` and the trainer's validation and test."""
    fixations = torch.as_tensor(np.asarray(fixation_map))
    predicted = prepare_prediction(np.asarray(prediction)[None], tuple(fixations.shape), protocol, grid=grid)[0]
    scores = saliency_metrics.compute_metrics(
        predicted.to(device), torch.as_tensor(np.asarray(saliency_map), dtype=torch.float64).to(device), fixations.to(device),
        other_map=None if other_map is None else torch.as_tensor(np.asarray(other_map)).to(device),
        metrics=metrics, seed=seed,
    )
    return {name: float(value) for name, value in scores.items()}


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def frame_seed(seed: int, key: str, frame: int) -> int:
    """The seed of frame `frame` (0-based) of the video `key` in an evaluation seeded `seed`: what `evaluate_video`
    gives `score_frame` (AUC-J's jitter, sAUC's draws), so a frame's scores depend neither on the order nor on
    resuming."""
    return _stable_seed(seed, key, frame) % (2**63)


class ShufflePool:
    """Fixations sampled from every video of an evaluation, to build sAUC's other maps.

    Holds, per video, the fixations of `frames_per_video` random frames as coordinates relative to
    the frame size, so other maps can be drawn at any ground-truth size.
    """

    def __init__(self, records: Sequence[VideoRecord], frames_per_video: int = 10, seed: int = 0, progress: bool = False):
        self.samples: dict[str, list[np.ndarray]] = {}
        self.seed = seed
        for record in tqdm(records, desc="sAUC fixation pool", disable=not progress):
            rng = np.random.default_rng(_stable_seed(seed, "pool", record.key))
            frames = rng.choice(record.num_frames, size=min(frames_per_video, record.num_frames), replace=False)
            points = []
            for frame in sorted(frames):
                fixated = record.fixation_map(int(frame))
                rows, columns = np.nonzero(fixated)
                if rows.size:
                    points.append(np.stack([(rows + 0.5) / fixated.shape[0], (columns + 0.5) / fixated.shape[1]], axis=1))
            self.samples.setdefault(record.name, []).extend(points)

    def other_map(
        self, record: VideoRecord, frame: int, size: tuple[int, int], other_frames: int = 10, fixations: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Union of the fixations of `other_frames` random sampled frames of other videos, bool `size`; `None` if none.

        `fixations` (the frame's own) is not used: other videos' fixations are never the frame's."""
        candidates = [points for name, frames in self.samples.items() if name != record.name for points in frames]
        if not candidates:
            return None
        rng = np.random.default_rng(_stable_seed(self.seed, "other", record.key, frame))
        chosen = rng.choice(len(candidates), size=min(other_frames, len(candidates)), replace=False)
        points = np.concatenate([candidates[i] for i in chosen])
        other = np.zeros(size, dtype=bool)
        other[np.minimum((points[:, 0] * size[0]).astype(int), size[0] - 1), np.minimum((points[:, 1] * size[1]).astype(int), size[1] - 1)] = True
        return other


class SameVideoOtherMaps:
    """sAUC's other maps as STAViS's evaluation builds them: for frame `i` of a video, the union of the
    binary fixations of all its frames, less the pixels fixated in frame `i`.

    Nothing is drawn at random. The union is built once per video (one pass over its fixation maps)
    and only the last video's is kept, so memory is one map whatever the number or length of videos.
    """

    def __init__(self):
        self._key: str | None = None
        self._union: np.ndarray | None = None

    def union(self, record: VideoRecord) -> np.ndarray:
        """Every pixel fixated in at least one frame of `record`, bool `(height, width)`."""
        if self._key != record.key:
            union = None
            for frame in range(record.num_frames):
                fixated = record.fixation_map(frame)
                if union is not None and fixated.shape != union.shape:
                    raise ValueError(
                        f"{record.key}: fixation map of frame {frame} is {fixated.shape}, frame 0's is {union.shape}; "
                        "the same-video other map of sAUC needs one size per video"
                    )
                union = fixated.copy() if union is None else union | fixated
            self._key, self._union = record.key, union
        return self._union

    def other_map(
        self, record: VideoRecord, frame: int, size: tuple[int, int], other_frames: int | None = None,
        fixations: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The video's fixations less frame `frame`'s, bool `size`; `None` if nothing is left.

        `fixations`: frame `frame`'s own map, if already read. `other_frames` is not used (every frame counts).
        """
        fixations = record.fixation_map(frame) if fixations is None else fixations
        union = self.union(record)
        if union.shape != tuple(size) or fixations.shape != union.shape:
            raise ValueError(f"{record.key}: frame {frame}'s fixation map is {fixations.shape}, expected {tuple(size)}")
        other = union & ~fixations
        return other if other.any() else None


def sauc_other_maps(
    records: Sequence[VideoRecord], variant: str, frames_per_video: int = 10, seed: int = 0, progress: bool = False
) -> ShufflePool | SameVideoOtherMaps:
    """The source of sAUC's other maps for `variant` (one of `SAUC_OTHER_MAPS`)."""
    if variant not in SAUC_OTHER_MAPS:
        raise ValueError(f"the sAUC other map must be one of {list(SAUC_OTHER_MAPS)}, got {variant!r}")
    if variant == "same-video":
        return SameVideoOtherMaps()
    return ShufflePool(records, frames_per_video, seed, progress)


class PredictionFolder:
    """Saved predictions of each video, looked up first under `fold_<k>/` (per-fold models), then at the top:

    - `<video>.npz` with key `maps`, `(N, H, W)`;
    - `<video>/maps.npz` and `<video>/maps/*.png`, as `dtfsal predict` writes them;
    - `<video>/*.png|jpg`, one image per frame, in sorted order.

    `<video>` is the record's name or its video file's stem (DHF1K's `001` for `0001`). 8-bit maps are
    scaled to [0, 1]. `blur_grid(record)` is the grid the maps were made on, when `<video>/done.json` records it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"expected a folder of predictions at {self.path}, which does not exist")

    def _candidates(self, record: VideoRecord) -> list[Path]:
        folders = ([self.path / f"fold_{record.fold}"] if record.fold is not None else []) + [self.path]
        names = [record.name] + ([Path(record.video_path).stem] if record.video_path else [])
        layouts = ("{}.npz", "{}/maps.npz", "{}/maps", "{}")
        return [folder / layout.format(name) for folder in folders for name in names for layout in layouts]

    def _found(self, record: VideoRecord) -> tuple[Path, list[Path] | None]:
        """The record's maps: an `.npz` file (and None), or a folder and its images, sorted."""
        for candidate in self._candidates(record):
            if candidate.suffix == ".npz" and candidate.is_file():
                return candidate, None
            images = sorted(p for p in candidate.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if candidate.is_dir() else []
            if images:
                return candidate, images
        raise ValueError(f"no prediction for {record.key}: looked for {[str(c) for c in self._candidates(record)]}")

    def __call__(self, record: VideoRecord) -> np.ndarray:
        candidate, images = self._found(record)
        if images is None:
            with np.load(candidate) as content:
                if "maps" not in content:
                    raise ValueError(f"{candidate}: expected the key 'maps', found {list(content.keys())}")
                maps = content["maps"]
            return self._checked(maps, record, candidate)
        return self._checked(np.stack([read_saliency_map(p) for p in images]), record, candidate)

    def blur_grid(self, record: VideoRecord) -> tuple[int, int] | None:
        """The `(height, width)` of the model's maps before `dtfsal predict` resized them to the video, from the
        `map_size` of the `done.json` beside the record's maps; None when there is no marker or it records none.
        A marker that is not JSON is ignored; a `map_size` that is no size raises a `ValueError` naming the file."""
        from .inference.outputs import MARKER_NAME

        candidate, _ = self._found(record)
        folder = candidate.parent if candidate.name in ("maps.npz", "maps") else candidate
        marker = folder / MARKER_NAME
        if candidate.suffix == ".npz" and candidate.name != "maps.npz" or not marker.is_file():
            return None
        try:
            content = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(content, dict) or content.get(MARKER_GRID_FIELD) is None:
            return None
        return check_grid(content[MARKER_GRID_FIELD], f"{marker}: {MARKER_GRID_FIELD}")

    @staticmethod
    def _checked(maps: np.ndarray, record: VideoRecord, source: Path) -> np.ndarray:
        if maps.ndim != 3 or maps.shape[0] != record.num_frames:
            raise ValueError(f"{source}: expected {record.num_frames} maps (frames, height, width), got shape {maps.shape}")
        return maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)


def blur_grid_of(predict_video, record: VideoRecord, blur_grid: tuple[int, int] | str | None = None) -> tuple[int, int] | None:
    """The grid `record`'s predicted maps are blurred on under the STAViS protocol: `blur_grid` when given; for saved
    maps (a predictor with a `blur_grid(record)` method, such as `PredictionFolder`), the grid recorded with them, or
    `DEFAULT_BLUR_GRID` when none is; None for maps made here (a model's, at its output grid, or a baseline's): they
    are blurred as they come."""
    return _blur_grid(predict_video, record, blur_grid)[0]


def _blur_grid(predict_video, record: VideoRecord, blur_grid) -> tuple[tuple[int, int] | None, str]:
    """`blur_grid_of` and where the grid comes from: "given", "recorded", "default" or "own"."""
    if blur_grid is not None:
        return check_grid(blur_grid), "given"
    recorded = getattr(predict_video, "blur_grid", None)
    if recorded is None:
        return None, "own"
    grid = recorded(record)
    return (grid, "recorded") if grid is not None else (DEFAULT_BLUR_GRID, "default")


def center_bias_map(height: int, width: int, sigma_fraction: float = 0.25) -> np.ndarray:
    """A centred Gaussian with σ = `sigma_fraction` of the height (vertically) and width (horizontally), max 1."""
    rows = (np.arange(height) + 0.5 - height / 2) / (sigma_fraction * height)
    columns = (np.arange(width) + 0.5 - width / 2) / (sigma_fraction * width)
    return np.exp(-0.5 * (rows[:, None] ** 2 + columns[None, :] ** 2)).astype(np.float32)


def _ground_truth_size(record: VideoRecord) -> tuple[int, int]:
    return record.fixation_map(0).shape


def center_bias_predictor(sigma_fraction: float = 0.25) -> Callable[[VideoRecord], np.ndarray]:
    """The same centre-bias map for every frame, at the ground truth's size."""

    def predict(record: VideoRecord) -> np.ndarray:
        size = _ground_truth_size(record)
        return np.broadcast_to(center_bias_map(*size, sigma_fraction), (record.num_frames, *size))

    return predict


def uniform_predictor(record: VideoRecord) -> np.ndarray:
    """A constant map for every frame (chance level: CC 0, NSS 0, AUCs 0.5)."""
    return np.ones((record.num_frames, *_ground_truth_size(record)), dtype=np.float32)


def _record_frames(record: VideoRecord):
    """The record's frames as a stream of `media.Frame`s (decoded, or read one file at a time), timed as the clip
    datasets time them (`VideoRecord.frame_times`)."""
    from .media import Frame, iter_frames
    from .data.io import read_frame

    if not record.frame_paths:
        return iter_frames(record.video_path)
    times = record.frame_times()
    return (
        Frame(index=i, time=float(times[i, 0]), end_time=float(times[i, 1]), image=read_frame(path))
        for i, path in enumerate(record.frame_paths)
    )


AUDIO_MODES = ("own", "shuffled", "silent")
"""The sound a model's clips hear in `evaluate`: each video's own, another evaluated video's, or silence."""


def sound_partners(records: Sequence[VideoRecord], seed: int = 0) -> dict[str, VideoRecord]:
    """Whose sound each video hears under `audio="shuffled"`: `{record.key: partner record}`.

    A derangement of the distinct sounds of `records` (a sound is an audio file; a video without one
    is a sound of its own), drawn uniformly among derangements with a seed from `seed` and the videos'
    keys: it depends neither on the order of `records`, nor on which of them are already scored, nor
    on where the data lie. No video gets its own sound, not even one listed twice (an AVAD video in
    two test folds).
    """
    sources = {record.key: record.audio_path or record.key for record in records}
    # Each distinct sound goes by the first key that has it (keys do not depend on where the data lie).
    donors: dict[str, VideoRecord] = {}
    for record in sorted(records, key=lambda r: r.key):
        donors.setdefault(sources[record.key], record)
    sounds = list(donors)  # in key order
    if len(sounds) < 2:
        raise ValueError(f"shuffled sound needs at least two videos with different sounds, got {len(sounds)}")
    rng = np.random.default_rng(_stable_seed(seed, "sound", *(donors[source].key for source in sounds)))
    order = rng.permutation(len(sounds))
    while np.any(order == np.arange(len(sounds))):
        order = rng.permutation(len(sounds))
    partner = {source: donors[sounds[order[index]]] for index, source in enumerate(sounds)}
    return {key: partner[source] for key, source in sources.items()}


def _looped(track: AudioTrack, duration: float) -> AudioTrack:
    """`track` repeated from its start until `duration` seconds (and one more) are covered."""
    needed = int(math.ceil((duration + 1.0 - track.start_time) * track.sampling_rate))
    length = track.waveform.shape[0]
    if length == 0 or length >= needed:
        return track
    return AudioTrack(np.tile(track.waveform, -(-needed // length)), track.sampling_rate, track.start_time)


def control_sound(record: VideoRecord, audio: str, partners: Mapping[str, VideoRecord]) -> AudioTrack:
    """The sound `record`'s clips hear under `audio` = `"shuffled"` or `"silent"`.

    - `"silent"`: no samples, so every clip's window is zeros.
    - `"shuffled"`: the partner's sound (`partners`, from `sound_partners`) on the video's own clock,
      looped from its start when it is shorter than the video; a partner without a sound file gives
      silence, with a warning.
    """
    if audio == "silent":
        return AudioTrack(np.zeros(0, dtype=np.float32), SAMPLING_RATE)
    if audio != "shuffled":
        raise ValueError(f"audio must be 'shuffled' or 'silent' here, got {audio!r}")
    partner = partners[record.key]
    if partner.audio_path is None:
        warnings.warn(f"{record.key}: its shuffled-sound partner {partner.key} has no sound: silence", UserWarning, stacklevel=2)
        return AudioTrack(np.zeros(0, dtype=np.float32), SAMPLING_RATE)
    return _looped(partner.audio(SAMPLING_RATE), record.num_frames / record.fps)


class ModelPredictor:
    """`predict_video` running a `DTFSalModel` clip by clip over a video (through `inference.SaliencyPredictor`).

    `predictor_for(record)` gives the `SaliencyPredictor` that scores `record` (one per fold, say).
    Calling it with `audio=` an `AudioTrack` makes every clip hear that track instead of the video's
    own sound: `evaluate(audio="shuffled" | "silent")` runs its controls this way.
    """

    def __init__(self, predictor_for: Callable[[VideoRecord], object]):
        self.predictor_for = predictor_for

    def __call__(self, record: VideoRecord, audio: AudioTrack | str = "own") -> np.ndarray:
        """`(N, h, w)` maps of `record` at the model's resolution; `audio`: `"own"` or the track to hear."""
        predictor = self.predictor_for(record)
        if not isinstance(audio, str):
            if not predictor.uses_audio:
                raise ValueError(f"{predictor.model_id} is visual-only (use_audio=False): it hears no sound, so "
                                 "shuffled or silent sound controls nothing; evaluate it with its own (audio='own')")
            track = audio
        elif audio == "own":
            track = record.audio() if predictor.uses_audio else None
        else:
            raise ValueError(f"audio must be 'own' or an AudioTrack, got {audio!r}")
        maps: list[np.ndarray | None] = [None] * record.num_frames
        # Causal clips, every frame a target, maps at the model's resolution as the model gives them: the one loop
        # of `dtfsal predict` (`SaliencyLoop.iter_maps`).
        for frame, saliency in predictor.iter_maps(_record_frames(record), audio=track, stride=1, progress=False,
                                                   max_frames=record.num_frames, video_size=False):
            maps[frame.index] = saliency
        missing = [i for i, m in enumerate(maps) if m is None]
        if missing:
            raise ValueError(f"{record.key}: expected {record.num_frames} frames, the video gave none for frames {missing[:5]}")
        return np.stack(maps)


def model_predictor(
    model, processor=None, batch_size: int = 4, device: str | torch.device | None = None
) -> ModelPredictor:
    """`predict_video` running a `DTFSalModel` clip by clip over a video (a `ModelPredictor`).

    Every frame is a target (causal clips of `model.config.num_frames` frames, the first frame
    repeated at the start); the audio window of a clip ends at the end of its last frame. A video
    without sound gets silent audio features when the model uses audio. Returns `(N, h, w)` maps at
    the model's resolution, unblurred: `evaluate` blurs and resizes them as the protocol says.
    `processor` defaults to the one matching the model's configuration.
    """
    from .inference import SaliencyPredictor

    device = device if device is not None else next(model.parameters()).device
    return _clip_predictor(SaliencyPredictor(model, processor, device=device, batch_size=batch_size))


def _clip_predictor(predictor) -> ModelPredictor:
    return ModelPredictor(lambda record: predictor)


def load_model_predictor(model_path: str | os.PathLike, batch_size: int = 4, device: str | None = None) -> ModelPredictor:
    """`ModelPredictor` for a saved model (folder or Hub id), loaded with `SaliencyPredictor.from_pretrained`.

    A `{fold}` in `model_path` is replaced by each video's fold, so each fold's test videos are scored
    by that fold's model; each model is loaded once, when its first video comes.
    """
    from .inference import SaliencyPredictor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictors: dict[str, SaliencyPredictor] = {}

    def predictor_for(record: VideoRecord) -> SaliencyPredictor:
        path = str(model_path).replace("{fold}", str(record.fold))
        if path not in predictors:
            predictors[path] = SaliencyPredictor.from_pretrained(path, device=device, batch_size=batch_size)
        return predictors[path]

    return ModelPredictor(predictor_for)


def evaluate_video(
    record: VideoRecord,
    prediction,
    protocol: str,
    pool: ShufflePool | SameVideoOtherMaps | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    seed: int = 0,
    other_frames: int = 10,
    device: str | torch.device = "cpu",
    grid: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame scores of one video, `{metric: (N,) float64}` (NaN for frames without fixations): `score_frame` on
    each frame, its maps blurred on `grid` under the STAViS protocol (None: their own; see `blur_grid_of`).

    Raises `ValueError`, naming the video and the frame, for a predicted map with NaN, infinite or negative values
    (a saliency map is a non-negative density: KLD of a negative map is NaN, which averages would silently drop).
    """
    if len(prediction) != record.num_frames:
        raise ValueError(f"{record.key}: expected {record.num_frames} predicted maps, got {len(prediction)}")
    scores = {name: np.full(record.num_frames, math.nan) for name in metrics}
    for frame in range(record.num_frames):
        fixations = record.fixation_map(frame)
        if not fixations.any():
            continue
        frame_map = _checked_map(np.asarray(prediction[frame]), record, frame)
        other = pool.other_map(record, frame, fixations.shape, other_frames, fixations) if pool is not None and "sauc" in metrics else None
        try:
            frame_scores = score_frame(frame_map, record.saliency_map(frame), fixations, protocol, metrics, other,
                                       seed=frame_seed(seed, record.key, frame), grid=grid, device=device)
        except ValueError as error:
            raise ValueError(f"{record.key}, frame {frame + 1}: {error}") from error
        for name, value in frame_scores.items():
            scores[name][frame] = value
    return scores


def _checked_map(frame_map: np.ndarray, record: VideoRecord, frame: int) -> np.ndarray:
    if not np.isfinite(frame_map).all():
        raise ValueError(f"{record.key}: the predicted map of frame {frame + 1} holds NaN or infinite values")
    lowest = float(frame_map.min()) if frame_map.size else 0.0
    if lowest < 0:
        raise ValueError(
            f"{record.key}: the predicted map of frame {frame + 1} holds negative values (down to {lowest:.4g}); "
            "saliency maps must be non-negative (a sigmoid or softmax output, or values clipped at 0)"
        )
    return frame_map


def _row_problem(row: dict, columns: list[str], metrics: Sequence[str]) -> str | None:
    """What is wrong with a CSV row, or None: every column present, counts and metric values that can be."""
    if None in row or any(row.get(column) is None for column in columns):
        return f"it has {len([v for v in row.values() if v is not None])} fields, expected {len(columns)}"
    if not row["key"]:
        return "its key is empty"
    try:
        total, scored = int(row["num_frames"]), int(row["scored_frames"])
    except ValueError:
        return f"its frame counts {row['num_frames']!r}, {row['scored_frames']!r} are not integers"
    if not 0 <= scored <= total:
        return f"it scores {scored} of {total} frames"
    for name in metrics:
        try:
            value = float(row[name])
        except ValueError:
            return f"its {name} {row[name]!r} is not a number"
        low, high = METRIC_RANGES[name]
        if not math.isnan(value) and not (low <= value <= high and math.isfinite(value)):
            return f"its {name} {value} lies outside [{low}, {high}]"
    return None


def _read_rows(path: Path, columns: list[str], metrics: Sequence[str], log: Callable[[str], None]) -> list[dict]:
    """The rows of an earlier run's CSV. An incomplete last line (the disk filled up, the process was killed while
    writing) is dropped and the file rewritten without it, so that video is scored again; any other row that is not
    one this module writes is an error naming its line."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        text = handle.read()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is not None and list(reader.fieldnames) != columns:
        raise ValueError(f"{path} has the columns {list(reader.fieldnames)}, expected {columns}: use another output "
                         "folder or resume=False")
    rows = list(reader)
    problems = [_row_problem(row, columns, metrics) for row in rows]
    torn = bool(rows) and (problems[-1] is not None or not text.endswith("\n"))
    if torn:
        log(f"{path}: dropped its incomplete last line ({rows[-1].get('key')!r}); that video is scored again")
        rows, problems = rows[:-1], problems[:-1]
    for index, problem in enumerate(problems):
        if problem is not None:
            raise ValueError(f"{path}, row {index + 2} ({rows[index].get('key')!r}): {problem}; remove the row or start "
                             "over (--no-resume)")
    keys = [row["key"] for row in rows]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"{path} scores {duplicated[0]!r} twice; remove one row or start over (--no-resume)")
    if torn or not text.endswith("\n"):
        _write_rows(path, columns, rows)
    return rows


def _write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def _check_rows_match(rows: list[dict], records: Sequence[VideoRecord], path: Path) -> None:
    """Rows of videos evaluated now must describe those videos (dataset, name, frame count)."""
    by_key = {record.key: record for record in records}
    for row in rows:
        record = by_key.get(row["key"])
        if record is None:
            continue
        seen = (row["dataset"], row["video"], int(row["num_frames"]))
        wanted = (record.dataset, record.name, record.num_frames)
        if seen != wanted:
            raise ValueError(f"{path}: the row of {record.key} describes {seen} (dataset, video, frames), but the video "
                             f"is {wanted}; start over (--no-resume)")


def evaluation_state(records: Sequence[VideoRecord], protocol: str, metrics: Sequence[str], seed: int,
                     pool_frames_per_video: int, other_frames: int, source: dict | None,
                     audio: str | None = None, sauc_other: str | None = None, blur: dict | None = None) -> dict:
    """What determines the rows of `per_video.csv`: what is scored (`source`: the predictions folder or the model),
    the sound a model hears (`audio`, None for saved maps), the protocol, the STAViS blur (`blur`: its σ and grid,
    `"auto"` or `[height, width]`; None under the DHF1K protocol), the metrics and the seed; with sAUC, also
    its other map (`sauc_other`) and the pool (its settings and the videos drawn from, a fingerprint of their keys);
    with shuffled sound, the videos whose sounds are swapped. The datasets, split and folds are recorded too."""
    keys = "\n".join(sorted(record.key for record in records))
    videos = {"videos": len(records), "videos_sha256": hashlib.sha256(keys.encode()).hexdigest()[:16]}
    state = {
        "source": source, "audio": audio, "protocol": protocol, "blur": blur, "metrics": list(metrics), "seed": seed,
        "datasets": sorted({record.dataset for record in records}), "split": records[0].split,
        "folds": sorted({record.fold for record in records if record.fold is not None}),
    }
    if audio == "shuffled":
        state["sound_partners"] = videos
    if "sauc" in metrics:
        state["shuffle_pool"] = {"other_map": sauc_other, "frames_per_video": pool_frames_per_video,
                                 "other_frames": other_frames, **videos}
    return state


# Keys of the state that must match for rows to be reused; datasets, split and folds matter through the pool only.
_RESUME_KEYS = ("source", "audio", "protocol", "blur", "metrics", "seed", "sound_partners", "shuffle_pool")


def _resume_state(output_dir: Path, state: dict, resume: bool) -> bool:
    """Whether the earlier rows can be reused; writes the state of this run. Raises when the folder holds scores of
    another evaluation (or scores without a state), unless `resume` is False (then they are removed)."""
    state_path, csv_path = output_dir / STATE_NAME, output_dir / CSV_NAME
    if resume and csv_path.is_file():
        if not state_path.is_file():
            raise ValueError(f"{csv_path} has no {STATE_NAME} saying what was scored: use another output folder, or "
                             "start over (--no-resume)")
        try:
            earlier = json.loads(state_path.read_text())
        except ValueError as error:
            raise ValueError(f"{state_path} is not valid JSON ({error}): start over (--no-resume)") from error
        different = [key for key in _RESUME_KEYS if earlier.get(key) != state.get(key)]
        if different:
            key = different[0]
            raise ValueError(
                f"{output_dir} holds the scores of another evaluation ({key}: {earlier.get(key)!r}, now {state.get(key)!r}): "
                "use another output folder, or start over (--no-resume)"
            )
        return True
    for name in (CSV_NAME, SUMMARY_NAME):
        (output_dir / name).unlink(missing_ok=True)
    partial = state_path.with_name(STATE_NAME + ".tmp")
    partial.write_text(json.dumps(state, indent=2))
    partial.replace(state_path)
    return False


def video_means(rows: Iterable[Mapping], metrics: Sequence[str]) -> list[dict]:
    """Rows of frames, or of videos, to one row per video (in the order the videos first come): `key`, `dataset`,
    `scored_frames` and each metric's mean over the video's rows, NaN values left out (NaN when none is left).

    A row holds `key`, `dataset` and a value for each of `metrics` (a number or its text, as `per_video.csv` has it;
    NaN: no score). A row with `scored_frames` is a video's and brings that count; any other row is one frame,
    scored when it has a value for the first of `metrics`.
    """
    videos: dict[str, dict] = {}
    for row in rows:
        video = videos.setdefault(row["key"], {"key": row["key"], "dataset": row["dataset"], "scored_frames": 0,
                                              "values": {name: [] for name in metrics}})
        values = {name: float(row[name]) for name in metrics}
        video["scored_frames"] += int(row["scored_frames"]) if "scored_frames" in row else int(not math.isnan(values[metrics[0]]))
        for name, value in values.items():
            video["values"][name].append(value)
    return [{"key": video["key"], "dataset": video["dataset"], "scored_frames": video["scored_frames"],
             **{name: saliency_metrics.nanmean(values) for name, values in video.pop("values").items()}}
            for video in videos.values()]


def summarise(rows: Iterable[Mapping], metrics: Sequence[str]) -> dict:
    """Per-frame or per-video rows (`video_means`'s) to the means `evaluate` reports: `num_videos` (videos with at
    least one scored frame), `num_unscored_videos`, `metrics` (each metric's mean over the scored videos' means,
    NaN values left out) and `per_dataset` (`{dataset: {"num_videos", "metrics"}}`). A video without any scored
    frame counts in no mean. The one aggregation of `evaluate` and of the trainer's validation and test."""
    videos = video_means(rows, metrics)
    scored = [video for video in videos if video["scored_frames"] > 0]

    def means(subset):
        return {name: saliency_metrics.nanmean([video[name] for video in subset]) for name in metrics}

    datasets = sorted({video["dataset"] for video in videos})
    return {
        "num_videos": len(scored),
        "num_unscored_videos": len(videos) - len(scored),
        "metrics": means(scored),
        "per_dataset": {name: {"num_videos": sum(v["dataset"] == name for v in scored),
                               "metrics": means([v for v in scored if v["dataset"] == name])} for name in datasets},
    }


def evaluate(
    records: Sequence[VideoRecord],
    predict_video: Callable[[VideoRecord], np.ndarray],
    output_dir: str | Path,
    protocol: str = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
    resume: bool = True,
    seed: int = 0,
    pool_frames_per_video: int = 10,
    other_frames: int = 10,
    device: str | torch.device = "cpu",
    progress: bool = True,
    source: dict | None = None,
    log: Callable[[str], None] | None = None,
    audio: str = "own",
    sauc_other: str = "auto",
    blur_grid: tuple[int, int] | str | None = None,
) -> dict:
    """Evaluate every video, append one CSV row per video as it finishes, and write a JSON summary.

    `audio` (one of `AUDIO_MODES`) is the sound a `ModelPredictor` hears: each video's `"own"`, another evaluated
    video's (`"shuffled"`, `sound_partners` seeded by `seed`), or `"silent"`; other predictors (saved maps,
    baselines) hear nothing and take only `"own"`. `sauc_other` is sAUC's other map (one of `SAUC_OTHER_MAPS`, or
    `"auto"`: the protocol's, `PROTOCOL_SAUC_OTHER`). `blur_grid` (`(height, width)` or `"HxW"`) is the grid every
    prediction is blurred on under the STAViS protocol; None: each video's own (`blur_grid_of`: a model's output
    grid, the grid recorded with saved maps, or `DEFAULT_BLUR_GRID`, said once through `log`). Each row records the
    grid used (`blur_grid`), the summary the setting and the grids (`blur`).

    Per-frame scores come from `evaluate_video` (`score_frame`), the means from `summarise`.

    `output_dir/evaluation.json` records what is scored (`evaluation_state`; `source` describes the predictions,
    e.g. `{"predictions": "/abs/folder"}` or `{"model": "id"}`, with the sound heard and the sAUC other map). With
    `resume`, videos already in `per_video.csv` are skipped when the state matches; a folder holding the scores of
    another evaluation is refused (`resume=False` starts over). An incomplete last CSV line is dropped and that
    video scored again (`log` says so). Returns the summary: `num_videos` (videos with at least one scored frame),
    `metrics` (mean over them), `per_dataset`, `protocol` and the settings.
    """
    if not records:
        raise ValueError("expected at least one video to evaluate, got none")
    unknown = [name for name in metrics if name not in saliency_metrics.METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names among {list(saliency_metrics.METRIC_NAMES)}")
    protocol = protocol_for(records[0].dataset) if protocol == "auto" else protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'auto' or one of {list(PROTOCOLS)}, got {protocol!r}")
    sauc_other = PROTOCOL_SAUC_OTHER[protocol] if sauc_other == "auto" else sauc_other
    if sauc_other not in SAUC_OTHER_MAPS:
        raise ValueError(f"sauc_other must be 'auto' or one of {list(SAUC_OTHER_MAPS)}, got {sauc_other!r}")
    partners = _audio_partners(records, predict_video, audio, seed)
    blur_grid = None if blur_grid is None else check_grid(blur_grid)
    settings = {"audio": audio if isinstance(predict_video, ModelPredictor) else "", "sauc_other": sauc_other if "sauc" in metrics else ""}
    blur = {"sigma": STAVIS_BLUR_SIGMA, "grid": "auto" if blur_grid is None else list(blur_grid)} if protocol == "stavis" else None
    log = log or tqdm.write
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / CSV_NAME
    columns = ["key", "dataset", "fold", "video", *settings, "blur_grid", "num_frames", "scored_frames", *metrics]
    state = evaluation_state(records, protocol, metrics, seed, pool_frames_per_video, other_frames, source,
                             audio=settings["audio"] or None, sauc_other=settings["sauc_other"] or None, blur=blur)
    if resume and csv_path.is_file():
        _read_rows(csv_path, columns, metrics, log)  # other columns are the clearest reason to refuse: checked first
    rows = _read_rows(csv_path, columns, metrics, log) if _resume_state(output_dir, state, resume) else []
    _check_rows_match(rows, records, csv_path)
    done = {row["key"] for row in rows}
    defaulted = False
    pool = sauc_other_maps(records, sauc_other, pool_frames_per_video, seed, progress) if "sauc" in metrics else None
    mode = "a" if csv_path.is_file() else "w"
    with csv_path.open(mode, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if mode == "w":
            writer.writeheader()
        for record in tqdm([r for r in records if r.key not in done], desc=f"evaluating ({protocol})", disable=not progress):
            prediction = predict_video(record) if audio == "own" else predict_video(record, audio=control_sound(record, audio, partners))
            grid, origin = _blur_grid(predict_video, record, blur_grid) if protocol == "stavis" else (None, "")
            if origin == "default" and not defaulted:
                log(f"{record.key}: its saved maps record no grid ({MARKER_GRID_FIELD} in done.json): blurring them on "
                    f"{DEFAULT_BLUR_GRID[0]}x{DEFAULT_BLUR_GRID[1]}, the paper model's; give blur_grid (--blur-grid HxW) "
                    "for a model of another size")
                defaulted = True
            scores = evaluate_video(record, prediction, protocol, pool, metrics, seed, other_frames, device, grid)
            used = grid or (tuple(np.shape(prediction[0])) if protocol == "stavis" and len(prediction) else None)
            frames = [{"key": record.key, "dataset": record.dataset, **{name: scores[name][i] for name in metrics}}
                      for i in range(record.num_frames)]
            (means,) = video_means(frames, metrics)
            row = {
                "key": record.key, "dataset": record.dataset, "fold": "" if record.fold is None else record.fold,
                "video": record.name, **settings, "blur_grid": f"{used[0]}x{used[1]}" if used else "",
                "num_frames": record.num_frames, "scored_frames": means["scored_frames"],
                **{name: means[name] for name in metrics},
            }
            writer.writerow(row)
            handle.flush()
            rows.append({key: str(value) for key, value in row.items()})
    wanted = {record.key for record in records}
    rows = [row for row in rows if row["key"] in wanted]
    summary = summarise(rows, metrics)
    folds = sorted({record.fold for record in records if record.fold is not None})
    if blur is not None:
        grids = [row["blur_grid"] for row in rows if row["blur_grid"]]
        blur = {**blur, "grids": {grid: grids.count(grid) for grid in sorted(set(grids))}}
    summary.update(
        split=records[0].split, folds=folds, protocol=protocol, seed=seed, audio=settings["audio"] or None,
        sauc_other=settings["sauc_other"] or None, blur=blur, pool_frames_per_video=pool_frames_per_video,
        other_frames=other_frames, source=source,
    )
    if partners:
        summary["audio_partners"] = {key: partner.key for key, partner in sorted(partners.items())}
    (output_dir / SUMMARY_NAME).write_text(json.dumps(_nan_to_none(summary), indent=2))
    return summary


def _audio_partners(records: Sequence[VideoRecord], predict_video, audio: str, seed: int) -> dict[str, VideoRecord]:
    """Check `audio` against the predictor; the shuffled-sound partners (none for the other modes)."""
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be one of {list(AUDIO_MODES)}, got {audio!r}")
    if audio != "own" and not isinstance(predict_video, ModelPredictor):
        raise ValueError(
            f"audio={audio!r} changes the sound a model hears, so it needs a model (a ModelPredictor); "
            f"{type(predict_video).__name__} gives maps already made (saved predictions or a baseline)"
        )
    return sound_partners(records, seed) if audio == "shuffled" else {}


def _nan_to_none(value):
    """NaN (a metric without any scored frame) becomes JSON null."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_evaluation(
    dataset: str,
    root: str | Path,
    output_dir: str | Path,
    split: str | None = None,
    fold: int | str | None = "all",
    fold_lists: str | Path | None = None,
    predictions: str | Path | None = None,
    model: str | None = None,
    protocol: str = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
    max_videos: int | None = None,
    resume: bool = True,
    seed: int = 0,
    batch_size: int = 4,
    device: str | None = None,
    progress: bool = True,
    audio: str = "own",
    sauc_other: str = "auto",
    blur_grid: tuple[int, int] | str | None = None,
) -> dict:
    """Load a dataset's split (and STAViS fold) and evaluate saved `predictions` or a `model` on it.

    `split` defaults to `val` for DHF1K and `test` otherwise. With `model`, a `{fold}` in the path
    is replaced by each video's fold, so each fold's test videos are scored by that fold's model.
    `audio`, `sauc_other` and `blur_grid` are `evaluate`'s; `audio` other than `"own"` needs a `model`. The
    visual-only oracle of a synthetic set is blurred on its own grid.
    """
    if (predictions is None) == (model is None):
        raise ValueError("give exactly one of predictions (a folder of saved maps) or model (a saved model), got "
                         f"predictions={predictions!r}, model={model!r}")
    if predictions is not None and audio != "own":
        raise ValueError(f"audio={audio!r} re-runs a model with another sound; saved predictions were made with the "
                         "sound they were made with: give a model instead of predictions")
    records = _split_records(dataset, root, split, fold, fold_lists, max_videos)
    predict = PredictionFolder(predictions) if predictions is not None else load_model_predictor(model, batch_size, device)
    source = {"predictions": str(Path(predictions).resolve())} if predictions is not None else {"model": model}
    options = dict(protocol=protocol, metrics=metrics, resume=resume, seed=seed, progress=progress, sauc_other=sauc_other)
    summary = evaluate(records, predict, output_dir, audio=audio, source=source, blur_grid=blur_grid, **options)
    oracle = synthetic_oracle(records, Path(output_dir) / "visual_only_oracle", **options)
    if oracle is not None:
        summary["visual_only_oracle"] = {"num_videos": oracle["num_videos"], "metrics": oracle["metrics"]}
    return summary


def _split_records(dataset: str, root, split: str | None, fold, fold_lists, max_videos: int | None) -> list[VideoRecord]:
    from .data.readers import load_records

    records = load_records(dataset, root, split, fold, fold_lists)  # split None: the dataset's default
    return records if max_videos is None else records[:max_videos]


def synthetic_oracle(records: Sequence[VideoRecord], output_dir: str | Path, **evaluate_options) -> dict | None:
    """The visual-only oracle's summary on `records` when they are all synthetic videos
    (`dtfsal_hf.data.is_synthetic`), else None: `dtfsal_hf.data.visual_only_oracle` (a Gaussian on every
    candidate disc) scored by `evaluate` with `evaluate_options` into `output_dir`. No model that does not
    hear can beat it, so a score at or below it may mean "found every candidate", not "heard"."""
    from .data.synthetic import is_synthetic, visual_only_oracle

    if not records or not all(is_synthetic(record) for record in records):
        return None
    return evaluate(records, visual_only_oracle, output_dir, **{**evaluate_options, "progress": False})


def run_audio_controls(
    dataset: str,
    root: str | Path,
    output_dir: str | Path,
    model: str,
    split: str | None = None,
    fold: int | str | None = "all",
    fold_lists: str | Path | None = None,
    protocol: str = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
    max_videos: int | None = None,
    resume: bool = True,
    seed: int = 0,
    batch_size: int = 4,
    device: str | None = None,
    progress: bool = True,
    sauc_other: str = "auto",
    modes: Sequence[str] = AUDIO_MODES,
    blur_grid: tuple[int, int] | str | None = None,
) -> dict[str, dict]:
    """`run_evaluation`'s data loading with `evaluate_audio_controls`: a saved `model` scored on a dataset's
    split with each sound of `modes` into `output_dir/<mode>/`, plus, on a synthetic set, the visual-only
    oracle (`synthetic_oracle`, key `"oracle"`, in `output_dir/visual_only_oracle/`). Returns
    `{mode: summary}` for `format_audio_controls`."""
    records = _split_records(dataset, root, split, fold, fold_lists, max_videos)
    options = dict(protocol=protocol, metrics=metrics, resume=resume, seed=seed, progress=progress, sauc_other=sauc_other)
    summaries = evaluate_audio_controls(model, records, output_dir, modes, batch_size, device, blur_grid=blur_grid,
                                        **options)
    oracle = synthetic_oracle(records, Path(output_dir) / "visual_only_oracle", **options)
    if oracle is not None:
        summaries["oracle"] = oracle
    return summaries


def evaluate_audio_controls(
    model,
    records: Sequence[VideoRecord],
    output_dir: str | Path,
    modes: Sequence[str] = AUDIO_MODES,
    batch_size: int = 4,
    device: str | None = None,
    **evaluate_options,
) -> dict[str, dict]:
    """An audio-visual model scored with each video's own sound and with the controls, side by side.

    `model`: a `DTFSalModel`, a `SaliencyPredictor`, a `ModelPredictor`, or a saved model's folder or
    Hub id (`{fold}` allowed). Each mode of `modes` is one `evaluate` run on the same `records` (same
    protocol, seed and sAUC other map: `evaluate_options` go to every run) into `output_dir/<mode>/`.
    Returns `{mode: summary}`; `format_audio_controls` prints them as one table.
    """
    from .inference import SaliencyPredictor

    if isinstance(model, ModelPredictor):
        predict = model
    elif isinstance(model, SaliencyPredictor):
        predict = _clip_predictor(model)
    elif isinstance(model, (str, os.PathLike)):
        predict = load_model_predictor(model, batch_size, device)
    else:
        predict = model_predictor(model, batch_size=batch_size, device=device)
    unknown = [mode for mode in modes if mode not in AUDIO_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be among {list(AUDIO_MODES)}, got {list(modes)}")
    if isinstance(model, (str, os.PathLike)):
        evaluate_options.setdefault("source", {"model": str(model)})
    return {mode: evaluate(records, predict, Path(output_dir) / mode, audio=mode, **evaluate_options) for mode in modes}


def _format_value(name: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.3f}" if name not in ("nss", "kld") else f"{value:.2f}"


AUDIO_TITLES = {
    "own": "own sound",
    "shuffled": "shuffled sound (another test video's)",
    "silent": "silence",
    "oracle": "visual-only oracle (a map on every candidate: the best without hearing)",
}


def _settings_line(summary: dict) -> str | None:
    """What the model heard and which sAUC other map was used, when the summary says."""
    parts = []
    if summary.get("audio"):
        parts.append(f"sound: {AUDIO_TITLES[summary['audio']]}")
    if summary.get("sauc_other"):
        parts.append(f"sAUC other map: {summary['sauc_other']}")
    return "; ".join(parts) or None


def format_table(summary: dict) -> str:
    """A Markdown table per dataset (and overall), plus each dataset in SPEC §12's CC/NSS/AUC-J/SIM form,
    and a line saying what the model heard and which sAUC other map was used."""
    names = list(summary["metrics"])
    lines = [
        "| dataset | videos | " + " | ".join(METRIC_TITLES[n] for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    entries = list(summary["per_dataset"].items())
    if len(entries) > 1:
        entries.append(("all", {"num_videos": summary["num_videos"], "metrics": summary["metrics"]}))
    for dataset, values in entries:
        cells = " | ".join(_format_value(n, values["metrics"][n]) for n in names)
        lines.append(f"| {dataset} | {values['num_videos']} | {cells} |")
    if all(n in names for n in ("cc", "nss", "auc_judd", "sim")):
        lines.append("")
        for dataset, values in entries:
            m = values["metrics"]
            compact = "/".join(
                (f"{m[n]:.2f}" if n == "nss" else f"{m[n]:.3f}".lstrip("0")) if not math.isnan(m[n]) else "–"
                for n in ("cc", "nss", "auc_judd", "sim")
            )
            lines.append(f"{dataset} CC/NSS/AUC-J/SIM: {compact}")
    settings = _settings_line(summary)
    if settings:
        lines += ["", settings]
    oracle = summary.get("visual_only_oracle")
    if oracle:
        values = ", ".join(f"{METRIC_TITLES[n]} {_format_value(n, oracle['metrics'][n])}" for n in names if n in oracle["metrics"])
        lines += ["", f"{AUDIO_TITLES['oracle']}, {oracle['num_videos']} videos: {values}"]
    return "\n".join(lines)


def format_audio_controls(summaries: Mapping[str, dict]) -> str:
    """One Markdown table, a row per sound (`evaluate_audio_controls`'s result; `run_audio_controls` adds the
    visual-only oracle's row on a synthetic set, key `"oracle"`), over all videos, and the margins of the own
    sound over each control: what the model gains from hearing the right sound."""
    names = list(next(iter(summaries.values()))["metrics"])
    lines = [
        "| sound | videos | " + " | ".join(METRIC_TITLES[n] for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for mode, summary in summaries.items():
        cells = " | ".join(_format_value(n, summary["metrics"][n]) for n in names)
        lines.append(f"| {AUDIO_TITLES[mode]} | {summary['num_videos']} | {cells} |")
    if "own" in summaries:
        own = summaries["own"]["metrics"]
        for mode in (m for m in summaries if m != "own"):
            margins = ", ".join(f"{METRIC_TITLES[n]} {own[n] - summaries[mode]['metrics'][n]:+.3f}" for n in names)
            lines.append(f"\nown − {mode}: {margins}")
    return "\n".join(lines)


__all__ = [
    "AUDIO_MODES",
    "DEFAULT_BLUR_GRID",
    "DEFAULT_METRICS",
    "MARKER_GRID_FIELD",
    "PROTOCOLS",
    "PROTOCOL_SAUC_OTHER",
    "SAUC_OTHER_MAPS",
    "ModelPredictor",
    "PredictionFolder",
    "SameVideoOtherMaps",
    "ShufflePool",
    "blur_grid_of",
    "center_bias_map",
    "center_bias_predictor",
    "check_grid",
    "control_sound",
    "evaluate",
    "evaluate_audio_controls",
    "evaluate_video",
    "evaluation_state",
    "format_audio_controls",
    "format_table",
    "frame_seed",
    "load_model_predictor",
    "model_predictor",
    "prepare_prediction",
    "protocol_for",
    "run_audio_controls",
    "run_evaluation",
    "sauc_other_maps",
    "score_frame",
    "sound_partners",
    "summarise",
    "synthetic_oracle",
    "uniform_predictor",
    "video_means",
]
