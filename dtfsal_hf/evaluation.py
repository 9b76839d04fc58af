"""Evaluation of predicted saliency maps under the DHF1K and STAViS protocols (SPEC §11).

Predictions come from a `predict_video(record) -> (N, h, w)` callable: a folder of saved maps
(`PredictionFolder`), a model (`model_predictor`), or a baseline (`center_bias_predictor`,
`uniform_predictor`).

- `"dhf1k"` protocol (DHF1K, UCF-Sports, Hollywood-2): the prediction is resized (bilinear) to the
  ground truth's size; metrics per frame, mean per video, mean over videos.
- `"stavis"` protocol (the audio-visual databases): the prediction is blurred (Gaussian σ = 2 px) at
  its own resolution, then resized to the ground truth's size; CC, SIM and KLD against the
  continuous map, NSS, AUC-Judd and sAUC against the binary fixations; per frame, per video, then the
  mean over all test videos of the folds evaluated.

Frames without fixations are skipped; a video with none counts in no mean. The other map of sAUC
for a frame holds the fixations of `other_frames` frames drawn at random from *other* videos of the
evaluation (seeded by the video and frame, so it does not depend on the order or on resuming).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics as saliency_metrics
from .data.io import read_saliency_map
from .data.readers import VideoRecord

PROTOCOLS = ("dhf1k", "stavis")
DEFAULT_METRICS = ("cc", "nss", "auc_judd", "sim", "kld", "sauc")
METRIC_TITLES = {"cc": "CC", "nss": "NSS", "auc_judd": "AUC-J", "sim": "SIM", "kld": "KLD", "sauc": "sAUC", "auc_borji": "AUC-B"}
STAVIS_BLUR_SIGMA = 2.0
CSV_NAME, SUMMARY_NAME, STATE_NAME = "per_video.csv", "summary.json", "evaluation.json"
# The values a per-video mean can take; a row outside them is not one this module wrote.
METRIC_RANGES = {"cc": (-1.0, 1.0), "nss": (-math.inf, math.inf), "auc_judd": (0.0, 1.0), "sim": (0.0, 1.0),
                 "kld": (0.0, math.inf), "sauc": (0.0, 1.0), "auc_borji": (0.0, 1.0)}


def protocol_for(dataset: str) -> str:
    """`"dhf1k"` for DHF1K, UCF-Sports and Hollywood-2, `"stavis"` for the audio-visual databases."""
    key = dataset.lower().replace("-", "").replace("_", "")
    return "dhf1k" if key in ("dhf1k", "ucfsports", "ucf", "hollywood2") else "stavis"


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `(N, h, w)` maps, radius 3σ, borders replicated."""
    radius = max(int(math.ceil(3 * sigma)), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    # (N, h, w) -> (N, 1, h, w)
    blurred = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))[:, 0]


def prepare_prediction(prediction, size: tuple[int, int], protocol: str, blur_sigma: float = STAVIS_BLUR_SIGMA) -> torch.Tensor:
    """Bring predictions `(N, h, w)` to the ground truth's `size` (height, width) as the protocol says, float64."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    maps = torch.from_numpy(np.array(prediction, dtype=np.float64))
    if maps.dim() != 3:
        raise ValueError(f"predictions must have shape (frames, height, width), got {tuple(maps.shape)}")
    if protocol == "stavis" and blur_sigma > 0:
        maps = _gaussian_blur(maps, blur_sigma)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return maps


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


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

    def other_map(self, record: VideoRecord, frame: int, size: tuple[int, int], other_frames: int = 10) -> np.ndarray | None:
        """Union of the fixations of `other_frames` random sampled frames of other videos, bool `size`; `None` if none."""
        candidates = [points for name, frames in self.samples.items() if name != record.name for points in frames]
        if not candidates:
            return None
        rng = np.random.default_rng(_stable_seed(self.seed, "other", record.key, frame))
        chosen = rng.choice(len(candidates), size=min(other_frames, len(candidates)), replace=False)
        points = np.concatenate([candidates[i] for i in chosen])
        other = np.zeros(size, dtype=bool)
        other[np.minimum((points[:, 0] * size[0]).astype(int), size[0] - 1), np.minimum((points[:, 1] * size[1]).astype(int), size[1] - 1)] = True
        return other


class PredictionFolder:
    """Saved predictions of each video, looked up first under `fold_<k>/` (per-fold models), then at the top:

    - `<video>.npz` with key `maps`, `(N, H, W)`;
    - `<video>/maps.npz` and `<video>/maps/*.png`, as `dtfsal predict` writes them;
    - `<video>/*.png|jpg`, one image per frame, in sorted order.

    `<video>` is the record's name or its video file's stem (DHF1K's `001` for `0001`). 8-bit maps are
    scaled to [0, 1].
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

    def __call__(self, record: VideoRecord) -> np.ndarray:
        for candidate in self._candidates(record):
            if candidate.suffix == ".npz" and candidate.is_file():
                with np.load(candidate) as content:
                    if "maps" not in content:
                        raise ValueError(f"{candidate}: expected the key 'maps', found {list(content.keys())}")
                    maps = content["maps"]
                return self._checked(maps, record, candidate)
            images = sorted(p for p in candidate.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if candidate.is_dir() else []
            if images:
                return self._checked(np.stack([read_saliency_map(p) for p in images]), record, candidate)
        raise ValueError(f"no prediction for {record.key}: looked for {[str(c) for c in self._candidates(record)]}")

    @staticmethod
    def _checked(maps: np.ndarray, record: VideoRecord, source: Path) -> np.ndarray:
        if maps.ndim != 3 or maps.shape[0] != record.num_frames:
            raise ValueError(f"{source}: expected {record.num_frames} maps (frames, height, width), got shape {maps.shape}")
        return maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)


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
    """The record's frames as a stream of `media.Frame`s (decoded, or read one file at a time)."""
    from .media import Frame, iter_frames
    from .data.io import read_frame

    if not record.frame_paths:
        return iter_frames(record.video_path)
    return (
        Frame(index=i, time=i / record.fps, end_time=(i + 1) / record.fps, image=read_frame(path))
        for i, path in enumerate(record.frame_paths)
    )


def model_predictor(
    model, processor=None, batch_size: int = 4, device: str | torch.device | None = None
) -> Callable[[VideoRecord], np.ndarray]:
    """`predict_video` running a `DTFSalModel` clip by clip over a video (through `inference.SaliencyPredictor`).

    Every frame is a target (causal clips of `model.config.num_frames` frames, the first frame
    repeated at the start); the audio window of a clip ends at the end of its last frame. A video
    without sound gets silent audio features when the model uses audio. Returns `(N, h, w)` maps at
    the model's resolution, unblurred: `evaluate` blurs and resizes them as the protocol says.
    `processor` defaults to the one matching the model's configuration.
    """
    from .inference import SaliencyPredictor

    device = device if device is not None else next(model.parameters()).device
    return _clip_predictor(SaliencyPredictor(model, processor, device=device, batch_size=batch_size))


def _clip_predictor(predictor) -> Callable[[VideoRecord], np.ndarray]:
    from .clips import iter_batches, iter_clips
    from .media import audio_window

    num_samples = predictor.processor.feature_extractor.num_samples

    def predict(record: VideoRecord) -> np.ndarray:
        track = record.audio() if predictor.uses_audio else None
        maps: list[np.ndarray | None] = [None] * record.num_frames
        clips = iter_clips(_record_frames(record), predictor.model.config.num_frames)
        for batch in iter_batches(clips, predictor.batch_size):
            audio = [audio_window(track, clip.end_time, num_samples) for clip in batch] if track is not None else None
            for clip, saliency in zip(batch, predictor.predict_clips([clip.images for clip in batch], audio).numpy()):
                if clip.target.index < record.num_frames:
                    maps[clip.target.index] = saliency
        missing = [i for i, m in enumerate(maps) if m is None]
        if missing:
            raise ValueError(f"{record.key}: expected {record.num_frames} frames, the video gave none for frames {missing[:5]}")
        return np.stack(maps)

    return predict


def load_model_predictor(model_path: str, batch_size: int = 4, device: str | None = None) -> Callable[[VideoRecord], np.ndarray]:
    """`model_predictor` for a saved model (folder or Hub id), loaded with `SaliencyPredictor.from_pretrained`."""
    from .inference import SaliencyPredictor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return _clip_predictor(SaliencyPredictor.from_pretrained(model_path, device=device, batch_size=batch_size))


def evaluate_video(
    record: VideoRecord,
    prediction,
    protocol: str,
    pool: ShufflePool | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    seed: int = 0,
    other_frames: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Per-frame scores of one video, `{metric: (N,) float64}` (NaN for frames without fixations).

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
        target = torch.from_numpy(record.saliency_map(frame)).to(device)
        predicted = prepare_prediction(frame_map[None], fixations.shape, protocol)[0].to(device)
        other = pool.other_map(record, frame, fixations.shape, other_frames) if pool is not None and "sauc" in metrics else None
        try:
            frame_scores = saliency_metrics.compute_metrics(
                predicted, target, torch.from_numpy(fixations).to(device),
                other_map=None if other is None else torch.from_numpy(other).to(device),
                metrics=metrics, seed=_stable_seed(seed, record.key, frame) % (2**63),
            )
        except ValueError as error:
            raise ValueError(f"{record.key}, frame {frame + 1}: {error}") from error
        for name, value in frame_scores.items():
            scores[name][frame] = float(value)
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
                     pool_frames_per_video: int, other_frames: int, source: dict | None) -> dict:
    """What determines the rows of `per_video.csv`: what is scored (`source`: the predictions folder or the model),
    the protocol, the metrics and the seed; with sAUC, also the shuffle pool (its settings and the videos drawn
    from, a fingerprint of their keys). The datasets, split and folds are recorded too."""
    state = {
        "source": source, "protocol": protocol, "metrics": list(metrics), "seed": seed,
        "datasets": sorted({record.dataset for record in records}), "split": records[0].split,
        "folds": sorted({record.fold for record in records if record.fold is not None}),
    }
    if "sauc" in metrics:
        keys = "\n".join(sorted(record.key for record in records))
        state["shuffle_pool"] = {"frames_per_video": pool_frames_per_video, "other_frames": other_frames,
                                 "videos": len(records), "videos_sha256": hashlib.sha256(keys.encode()).hexdigest()[:16]}
    return state


# Keys of the state that must match for rows to be reused; datasets, split and folds matter through the pool only.
_RESUME_KEYS = ("source", "protocol", "metrics", "seed", "shuffle_pool")


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


def _summarise(rows: list[dict], metrics: Sequence[str]) -> dict:
    """Means over the videos with at least one scored frame (a video without fixations counts in no mean)."""
    scored = [row for row in rows if int(row["scored_frames"]) > 0]

    def means(subset):
        return {name: saliency_metrics.nanmean([float(row[name]) for row in subset]) for name in metrics}

    datasets = sorted({row["dataset"] for row in rows})
    return {
        "num_videos": len(scored),
        "num_unscored_videos": len(rows) - len(scored),
        "metrics": means(scored),
        "per_dataset": {name: {"num_videos": sum(r["dataset"] == name for r in scored),
                               "metrics": means([r for r in scored if r["dataset"] == name])} for name in datasets},
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
) -> dict:
    """Evaluate every video, append one CSV row per video as it finishes, and write a JSON summary.

    `output_dir/evaluation.json` records what is scored (`evaluation_state`; `source` describes the predictions,
    e.g. `{"predictions": "/abs/folder"}` or `{"model": "id"}`). With `resume`, videos already in `per_video.csv`
    are skipped when the state matches; a folder holding the scores of another evaluation is refused (`resume=False`
    starts over). An incomplete last CSV line is dropped and that video scored again (`log` says so). Returns the
    summary: `num_videos` (videos with at least one scored frame), `metrics` (mean over them), `per_dataset`,
    `protocol` and the settings.
    """
    if not records:
        raise ValueError("expected at least one video to evaluate, got none")
    unknown = [name for name in metrics if name not in saliency_metrics.METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names among {list(saliency_metrics.METRIC_NAMES)}")
    protocol = protocol_for(records[0].dataset) if protocol == "auto" else protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'auto' or one of {list(PROTOCOLS)}, got {protocol!r}")
    log = log or tqdm.write
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / CSV_NAME
    columns = ["key", "dataset", "fold", "video", "num_frames", "scored_frames", *metrics]
    state = evaluation_state(records, protocol, metrics, seed, pool_frames_per_video, other_frames, source)
    if resume and csv_path.is_file():
        _read_rows(csv_path, columns, metrics, log)  # other columns are the clearest reason to refuse: checked first
    rows = _read_rows(csv_path, columns, metrics, log) if _resume_state(output_dir, state, resume) else []
    _check_rows_match(rows, records, csv_path)
    done = {row["key"] for row in rows}
    pool = ShufflePool(records, pool_frames_per_video, seed, progress) if "sauc" in metrics else None
    mode = "a" if csv_path.is_file() else "w"
    with csv_path.open(mode, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if mode == "w":
            writer.writeheader()
        for record in tqdm([r for r in records if r.key not in done], desc=f"evaluating ({protocol})", disable=not progress):
            scores = evaluate_video(record, predict_video(record), protocol, pool, metrics, seed, other_frames, device)
            row = {
                "key": record.key, "dataset": record.dataset, "fold": "" if record.fold is None else record.fold,
                "video": record.name, "num_frames": record.num_frames,
                "scored_frames": int(np.sum(~np.isnan(scores[metrics[0]]))),
                **{name: saliency_metrics.nanmean(values) for name, values in scores.items()},
            }
            writer.writerow(row)
            handle.flush()
            rows.append({key: str(value) for key, value in row.items()})
    wanted = {record.key for record in records}
    summary = _summarise([row for row in rows if row["key"] in wanted], metrics)
    folds = sorted({record.fold for record in records if record.fold is not None})
    summary.update(
        split=records[0].split, folds=folds, protocol=protocol, seed=seed,
        pool_frames_per_video=pool_frames_per_video, other_frames=other_frames, source=source,
    )
    (output_dir / SUMMARY_NAME).write_text(json.dumps(_nan_to_none(summary), indent=2))
    return summary


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
) -> dict:
    """Load a dataset's split (and STAViS fold) and evaluate saved `predictions` or a `model` on it.

    `split` defaults to `val` for DHF1K and `test` otherwise. With `model`, a `{fold}` in the path
    is replaced by each video's fold, so each fold's test videos are scored by that fold's model.
    """
    from .data.readers import load_records

    if (predictions is None) == (model is None):
        raise ValueError("give exactly one of predictions (a folder of saved maps) or model (a saved model), got "
                         f"predictions={predictions!r}, model={model!r}")
    split = split or ("val" if dataset.lower() == "dhf1k" else "test")
    records = load_records(dataset, root, split, fold, fold_lists)
    if max_videos is not None:
        records = records[:max_videos]
    if predictions is not None:
        predict = PredictionFolder(predictions)
    else:
        predictors: dict[str, Callable] = {}

        def predict(record: VideoRecord) -> np.ndarray:
            path = model.replace("{fold}", str(record.fold))
            if path not in predictors:
                predictors[path] = load_model_predictor(path, batch_size, device)
            return predictors[path](record)

    source = {"predictions": str(Path(predictions).resolve())} if predictions is not None else {"model": model}
    return evaluate(records, predict, output_dir, protocol, metrics, resume, seed, progress=progress, source=source)


def _format_value(name: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.3f}" if name not in ("nss", "kld") else f"{value:.2f}"


def format_table(summary: dict) -> str:
    """A Markdown table per dataset (and overall), plus each dataset in SPEC §12's CC/NSS/AUC-J/SIM form."""
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
    return "\n".join(lines)


__all__ = [
    "DEFAULT_METRICS",
    "PROTOCOLS",
    "PredictionFolder",
    "ShufflePool",
    "center_bias_map",
    "center_bias_predictor",
    "evaluate",
    "evaluate_video",
    "evaluation_state",
    "format_table",
    "load_model_predictor",
    "model_predictor",
    "prepare_prediction",
    "protocol_for",
    "run_evaluation",
    "uniform_predictor",
]
