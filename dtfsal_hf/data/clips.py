"""Clips: which frames feed the model for each target frame, as a `datasets.Dataset` index and a torch dataset.

The peers differ in clip length, which frame of the clip is predicted, how the start of a video is
handled and how target maps are normalised; `ClipPolicy` keeps each an explicit option, with the
paper's choices as defaults (32 frames, the last frame is the target, the first frame repeated at the
start so every frame gets a map, maps as stored).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..clips import STARTS, alignment_name, clip_frame_indices, target_indices
from ..media import audio_window
from .io import AUDIO_WINDOW_SAMPLES, SAMPLING_RATE
from .readers import VideoRecord

NORMALIZATIONS = ("none", "max", "sum")


@dataclass(frozen=True)
class ClipPolicy:
    """How clips are cut around a target frame.

    - `clip_length`: frames per clip (the paper: 32).
    - `alignment`: `"last"` (the target is the clip's last frame: the paper, TMFI-Net, ViNet) or
      `"center"` (the target sits at position `clip_length // 2`, TASED-Net style); `dtfsal_hf.clips`'s words
      (the older `"causal"` / `"centre"` are accepted with a deprecation warning).
    - `start`: frames before the video's start. `"repeat"` repeats the first frame (the paper);
      `"reverse"` plays the first frames backwards so the clip ends on the target (ViNet's test-time
      handling); `"skip"` gives no clip to targets without a full clip.
    - `stride`: every `stride`-th frame from the first, and the last frame, is a target (`clips.target_indices`:
      the stride of the predictor, the pipeline and the CLI; 1 for evaluation, larger thins training clips). The
      older `target_stride=` is accepted with a deprecation warning.
    - `map_normalization`: the target map `"none"` (as stored, in [0, 1]), `"max"` (max 1) or `"sum"` (sum 1).
    """

    clip_length: int = 32
    alignment: str = "last"
    start: str = "repeat"
    stride: int = 1
    map_normalization: str = "none"
    target_stride: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.target_stride is not None:
            warnings.warn("ClipPolicy(target_stride=...) is now ClipPolicy(stride=...); the old name will stop working "
                          "in a future version", FutureWarning, stacklevel=3)
            object.__setattr__(self, "stride", self.target_stride)
            object.__setattr__(self, "target_stride", None)
        if self.clip_length < 1 or self.stride < 1:
            raise ValueError(f"clip_length and stride must be >= 1, got {self.clip_length} and {self.stride}")
        object.__setattr__(self, "alignment", alignment_name(self.alignment, stacklevel=3))
        for name, value, allowed in (
            ("start", self.start, STARTS),
            ("map_normalization", self.map_normalization, NORMALIZATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")

    def frame_indices(self, target: int, num_frames: int) -> list[int] | None:
        """The 0-based frames of the clip whose prediction is frame `target`, in playback order; `None` if skipped
        (`clips.clip_frame_indices` with this policy's start)."""
        return clip_frame_indices(target, self.clip_length, self.alignment, last_index=num_frames - 1, start=self.start)

    def clips(self, num_frames: int) -> list[tuple[int, list[int]]]:
        """`(target, frame indices)` of every clip of a video with `num_frames` frames (targets:
        `clips.target_indices(num_frames, stride)`)."""
        clips = []
        for target in target_indices(num_frames, self.stride):
            indices = self.frame_indices(target, num_frames)
            if indices is not None:
                clips.append((target, indices))
        return clips

    def normalize_map(self, saliency_map: np.ndarray) -> np.ndarray:
        if self.map_normalization == "none":
            return saliency_map
        total = saliency_map.max() if self.map_normalization == "max" else saliency_map.sum()
        return saliency_map / total if total > 0 else saliency_map


def video_index(records: Sequence[VideoRecord]):
    """One row per video with every field of its `VideoRecord`, as a `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list([record.to_dict() for record in records])


def records_from_index(index) -> list[VideoRecord]:
    """The `VideoRecord`s of a `video_index` dataset (for example one loaded with `load_from_disk`)."""
    return [VideoRecord.from_dict(row) for row in index]


def clip_index(records: Sequence[VideoRecord], policy: ClipPolicy = ClipPolicy()):
    """One row per clip, as a `datasets.Dataset` (filter, shuffle, split, save or push it to the Hub).

    Columns: `video_key`, `dataset`, `video`, `split`, `fold` (-1 for none), `target_frame`,
    `frame_indices` (0-based, playback order), `audio_end_s` (end of the clip's last frame, from
    `VideoRecord.frame_times`: the rule and the clock of the predictor's clips), `num_frames`, `fps`, `has_audio`.
    """
    from datasets import Dataset

    rows = []
    for record in records:
        times = record.frame_times()
        for target, indices in policy.clips(record.num_frames):
            rows.append(
                {
                    "video_key": record.key, "dataset": record.dataset, "video": record.name, "split": record.split,
                    "fold": -1 if record.fold is None else record.fold, "target_frame": target,
                    "frame_indices": indices, "audio_end_s": float(times[indices[-1], 1]),
                    "num_frames": record.num_frames, "fps": record.fps, "has_audio": record.has_audio,
                }
            )
    if not rows:
        raise ValueError(f"no clips: {len(records)} videos gave none under {policy}")
    return Dataset.from_list(rows)


def _resize_map(saliency_map: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(saliency_map, dtype=np.float32))[None, None]
    # (1, 1, H, W) -> (1, 1, h, w)
    return torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0]


def _resize_fixations(fixation_map: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Move each fixated pixel to the pixel it falls on at the new size (no fixation is lost or smeared)."""
    rows, columns = np.nonzero(fixation_map)
    resized = torch.zeros(size, dtype=torch.bool)
    rows = np.minimum((rows + 0.5) * size[0] / fixation_map.shape[0], size[0] - 1).astype(np.int64)
    columns = np.minimum((columns + 0.5) * size[1] / fixation_map.shape[1], size[1] - 1).astype(np.int64)
    resized[torch.from_numpy(rows), torch.from_numpy(columns)] = True
    return resized


class SaliencyClipDataset(torch.utils.data.Dataset):
    """Clips with their target map and fixations, optionally run through a processor.

    Without a processor a sample holds `frames` uint8 `(T, H, W, 3)`, `waveform` float32
    `(audio_samples,)` (only for videos with sound: the window ending at the clip's last frame,
    zero-padded before the file's start), `sampling_rate`, `saliency_map` float32 `(H, W)`,
    `fixation_map` bool `(H, W)`, `video_key` and `target_frame`.

    With `processor` (called as `processor(videos=frames, audio=waveform, sampling_rate=sr,
    frame_times=times, audio_end_times=[audio_end_s], return_tensors="pt")`, where `times` `(T, 2)` are the
    clip's frames' start and end from `VideoRecord.frame_times`, repeated frames keeping their own), a sample holds
    `pixel_values_videos` `(T, 3, h, w)`, `input_features` `(A, 1, h_a, w_a)` when there is sound,
    `frame_times` `(T, 2)` when the processor returns them, `labels` float32 `(h, w)` (the target map
    resized to the processed frames), `fixation_labels` bool `(h, w)`, `video_key` and `target_frame`; with
    `keep_ground_truth=True` also the full-size `saliency_map` and `fixation_map`.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        policy: ClipPolicy = ClipPolicy(),
        clips=None,
        processor: Callable | None = None,
        sampling_rate: int = SAMPLING_RATE,
        audio_samples: int = AUDIO_WINDOW_SAMPLES,
        keep_ground_truth: bool = False,
        cached_tracks: int = 8,
    ) -> None:
        self.records = {record.key: record for record in records}
        self.policy = policy
        self.clips = clips if clips is not None else clip_index(list(records), policy)
        missing = sorted(set(self.clips.unique("video_key")) - set(self.records))
        if missing:
            raise ValueError(f"the clip index names videos that are not among the records: {missing[:5]}")
        self.processor = processor
        self.sampling_rate = sampling_rate
        self.audio_samples = audio_samples
        self.keep_ground_truth = keep_ground_truth or processor is None
        self._tracks: OrderedDict = OrderedDict()
        self._cached_tracks = cached_tracks

    def __len__(self) -> int:
        return len(self.clips)

    def _audio(self, record: VideoRecord):
        """The video's `AudioTrack` (or `None`), from a small cache of recently used videos."""
        if record.key not in self._tracks:
            self._tracks[record.key] = record.audio(self.sampling_rate)
            while len(self._tracks) > self._cached_tracks:
                self._tracks.popitem(last=False)
        return self._tracks[record.key]

    def __getitem__(self, index: int) -> dict:
        row = self.clips[int(index)]
        record = self.records[row["video_key"]]
        frames = record.frames(row["frame_indices"])
        track = self._audio(record)
        window = None if track is None else audio_window(track, row["audio_end_s"], self.audio_samples)
        saliency_map = self.policy.normalize_map(record.saliency_map(row["target_frame"])).astype(np.float32)
        fixation_map = record.fixation_map(row["target_frame"])
        sample = {"video_key": record.key, "target_frame": row["target_frame"]}
        if self.keep_ground_truth:
            sample.update(saliency_map=saliency_map, fixation_map=fixation_map)
        if self.processor is None:
            sample.update(frames=frames, sampling_rate=self.sampling_rate)
            if window is not None:
                sample["waveform"] = window
            return sample
        times = record.frame_times()[row["frame_indices"]]
        return self._process(sample, frames, window, saliency_map, fixation_map, times, row["audio_end_s"])

    def _process(self, sample, frames, window, saliency_map, fixation_map, frame_times, audio_end) -> dict:
        kwargs = {"videos": frames, "frame_times": frame_times, "audio_end_times": [audio_end], "return_tensors": "pt"}
        if window is not None:
            kwargs.update(audio=window, sampling_rate=self.sampling_rate)
        processed = self.processor(**kwargs)
        if "pixel_values_videos" not in processed:
            raise ValueError(f"the processor must return 'pixel_values_videos', returned {sorted(processed.keys())}")
        # Processors return a batch of one: (1, T, 3, h, w) -> (T, 3, h, w)
        pixel_values = processed["pixel_values_videos"][0]
        size = tuple(pixel_values.shape[-2:])
        sample.update(
            pixel_values_videos=pixel_values,
            labels=_resize_map(saliency_map, size),
            fixation_labels=_resize_fixations(fixation_map, size),
        )
        for key in ("input_features", "frame_times"):
            if processed.get(key) is not None:
                sample[key] = processed[key][0]
        return sample


__all__ = [
    "ClipPolicy",
    "SaliencyClipDataset",
    "clip_index",
    "records_from_index",
    "video_index",
]
