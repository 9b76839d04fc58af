"""Which frames make up each clip, and how the maps of a whole video are assembled.

A clip of `num_frames` frames predicts one map, that of its *target* frame:
- `"last"` (default, the paper's choice, as TMFI-Net and ViNet): the target is the clip's last frame;
- `"center"`: the target sits at position `num_frames // 2` of the clip.
These two words are the alignment everywhere (CLI, predictor, pipeline, training YAML, clip datasets);
`alignment_name` also takes the older `"causal"` / `"centre"`, with a deprecation warning.
Indices before the first frame repeat the first frame (so every frame gets a map); in centre alignment,
indices after the last frame repeat the last frame. Clip datasets may choose another start (`STARTS`):
`"reverse"` plays the first frames backwards, `"skip"` gives no clip to a target without a full one.

`stride` has one meaning everywhere (predictor, pipeline, CLI, evaluation, training datasets): with `stride = k`,
only frames 0, k, 2k, ... and the last frame are targets (`target_indices`). Predicting a video, the maps of the
frames in between are interpolated linearly in time (frame timestamps, so variable frame rate is respected); a
training or validation set simply has fewer clips.

A clip hears the sound that ends where its last frame ends (`ClipWindow.end_time`), frames timed by their decoded
timestamps (`media.iter_frames`, `media.frame_times`) or, for frames without timestamps, `1 / fps` apart; the clip
datasets use the same rule (`data.VideoRecord.frame_times`).

`iter_clips` works on a stream of frames and holds only the frames still needed, so memory does not
grow with the video's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import warnings

import numpy as np

ALIGNMENTS = ("last", "center")
STARTS = ("repeat", "reverse", "skip")
DEPRECATED_ALIGNMENTS = {"causal": "last", "centre": "center"}


def alignment_name(alignment: str, stacklevel: int = 2) -> str:
    """`alignment` as one of `ALIGNMENTS`; an older spelling (`DEPRECATED_ALIGNMENTS`) is accepted with a
    `FutureWarning` naming the new one; anything else raises a `ValueError` naming the choices."""
    if alignment in ALIGNMENTS:
        return alignment
    if alignment in DEPRECATED_ALIGNMENTS:
        new = DEPRECATED_ALIGNMENTS[alignment]
        warnings.warn(f"alignment {alignment!r} is now called {new!r}; the old name will stop working in a future "
                      "version", FutureWarning, stacklevel=stacklevel + 1)
        return new
    raise ValueError(f"alignment must be 'last' (the clip predicts its last frame) or 'center' (its centre frame), "
                     f"got {alignment!r}")


def _check_options(num_frames: int, alignment: str, stride: int) -> None:
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    alignment_name(alignment, stacklevel=3)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")


def frames_after_target(num_frames: int, alignment: str = "last") -> int:
    """How many frames of a clip come after its target frame."""
    _check_options(num_frames, alignment, 1)
    return 0 if alignment_name(alignment) == "last" else num_frames - 1 - num_frames // 2


def clip_frame_indices(
    target: int, num_frames: int, alignment: str = "last", last_index: int | None = None, start: str = "repeat"
) -> list[int] | None:
    """Indices of the frames of the clip whose map is that of frame `target`, in playback order.

    `start` says what a clip reaching outside the video holds (`STARTS`): `"repeat"` clamps indices to
    `[0, last_index]` (the first frame repeats at the start, the last at the end); `"reverse"` (with `"last"`
    alignment, near the start) plays frames `target + num_frames - 1` down to `target`; `"skip"` returns None.
    `"reverse"` and `"skip"` need `last_index`. Example: `clip_frame_indices(2, 4)` is `[0, 0, 1, 2]`.
    """
    if start not in STARTS:
        raise ValueError(f"start must be one of {list(STARTS)}, got {start!r}")
    after = frames_after_target(num_frames, alignment)
    first = target - (num_frames - 1 - after)
    if start != "repeat" and last_index is None:
        raise ValueError(f"start {start!r} needs the video's last_index")
    upper = last_index if last_index is not None else target + after
    if first < 0 or first + num_frames - 1 > upper:
        if start == "skip":
            return None
        if start == "reverse" and first < 0 and alignment_name(alignment) == "last":
            return [min(index, upper) for index in range(target + num_frames - 1, target - 1, -1)]
    return [min(max(index, 0), upper) for index in range(first, first + num_frames)]


def target_indices(total_frames: int, stride: int = 1) -> list[int]:
    """Frames that get a predicted map: every `stride`-th frame from 0, plus the last frame."""
    _check_options(1, "last", stride)
    if total_frames < 1:
        raise ValueError(f"total_frames must be positive, got {total_frames}")
    targets = list(range(0, total_frames, stride))
    if targets[-1] != total_frames - 1:
        targets.append(total_frames - 1)
    return targets


@dataclass(frozen=True)
class ClipWindow:
    """One clip, ready for the processor.

    Attributes:
        target: the `Frame` whose map the clip predicts.
        frames: the clip's `num_frames` `Frame`s in order (repeated frames are the same object).
        new_frames: the frames after the previous target up to this target, in order: the frames whose maps
            are this clip's map or are interpolated between the previous target and this one.
    """

    target: object
    frames: tuple
    new_frames: tuple

    @property
    def images(self) -> np.ndarray:
        """(num_frames, height, width, 3) uint8 RGB, the processor's `videos` input for this clip."""
        return np.stack([frame.image for frame in self.frames])

    @property
    def end_time(self) -> float:
        """End (s) of the clip's last frame: the clip's audio window ends here."""
        return self.frames[-1].end_time


class _FrameBuffer:
    """The most recent frames, addressable by index."""

    def __init__(self) -> None:
        self._frames: deque = deque()

    def append(self, frame) -> None:
        if self._frames and frame.index != self._frames[-1].index + 1:
            raise ValueError(f"frames must arrive in order: got index {frame.index} after {self._frames[-1].index}")
        self._frames.append(frame)

    def __getitem__(self, index: int):
        return self._frames[index - self._frames[0].index]

    def drop_before(self, index: int) -> None:
        while self._frames and self._frames[0].index < index:
            self._frames.popleft()

    def __len__(self) -> int:
        return len(self._frames)


def iter_clips(frames: Iterable, num_frames: int, alignment: str = "last", stride: int = 1) -> Iterator[ClipWindow]:
    """Turn a stream of frames (objects with `index`, `time`, `end_time`, `image`, as `media.Frame`) into clips.

    Yields one `ClipWindow` per target frame (see `target_indices`), in order, as soon as its frames have been
    read. Holds at most `max(num_frames, stride) + frames after the target` frames.
    """
    _check_options(num_frames, alignment, stride)
    alignment = alignment_name(alignment)
    after = frames_after_target(num_frames, alignment)
    buffer, previous_target, next_target, last = _FrameBuffer(), -1, 0, None
    for frame in frames:
        buffer.append(frame)
        last = frame.index
        if last == next_target + after:
            yield _make_window(buffer, next_target, previous_target, num_frames, alignment, None)
            previous_target, next_target = next_target, next_target + stride
            # Keep what the next target's clip, or a last-frame target right after this one, may still need.
            buffer.drop_before(previous_target + 1 - (num_frames - 1 - after))
    if last is None:
        raise ValueError("iter_clips got no frames")
    # The stream has ended: the remaining targets repeat the last frame after their target.
    while next_target <= last:
        yield _make_window(buffer, next_target, previous_target, num_frames, alignment, last)
        previous_target, next_target = next_target, next_target + stride
    if previous_target != last:
        yield _make_window(buffer, last, previous_target, num_frames, alignment, last)


def _make_window(buffer: _FrameBuffer, target: int, previous_target: int, num_frames: int, alignment: str, last_index):
    indices = clip_frame_indices(target, num_frames, alignment, last_index)
    return ClipWindow(
        target=buffer[target],
        frames=tuple(buffer[index] for index in indices),
        new_frames=tuple(buffer[index] for index in range(previous_target + 1, target + 1)),
    )


def iter_batches(items: Iterable, batch_size: int) -> Iterator[list]:
    """Group items (e.g. `ClipWindow`s) into lists of `batch_size`; the last list may be shorter."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def interpolate_maps(start_time: float, start_map: np.ndarray, end_time: float, end_map: np.ndarray, times) -> list[np.ndarray]:
    """Maps at `times` by linear interpolation between two maps; times outside the interval are clamped."""
    if start_map.shape != end_map.shape:
        raise ValueError(f"maps must have the same shape, got {start_map.shape} and {end_map.shape}")
    span = end_time - start_time
    maps = []
    for time in times:
        weight = 1.0 if span <= 0 else min(max((time - start_time) / span, 0.0), 1.0)
        interpolated = start_map * (1.0 - weight)
        interpolated += weight * end_map
        maps.append(interpolated)
    return maps


def iter_frame_maps(predictions: Iterable[tuple[ClipWindow, np.ndarray]]) -> Iterator[tuple[object, np.ndarray]]:
    """Every frame with its map, from the clips of `iter_clips` paired with the maps predicted for their targets.

    Frames between two targets get maps interpolated in time between the two predictions, one at a time: memory
    holds two predicted maps and the one being handed out, whatever the stride.
    """
    previous = None  # (time, map) of the previous target
    for window, saliency_map in predictions:
        saliency_map = np.asarray(saliency_map)
        if previous is None:
            previous = (window.target.time, saliency_map)
        for frame in window.new_frames:
            yield frame, interpolate_maps(previous[0], previous[1], window.target.time, saliency_map, [frame.time])[0]
        previous = (window.target.time, saliency_map)


__all__ = [
    "ALIGNMENTS",
    "STARTS",
    "DEPRECATED_ALIGNMENTS",
    "alignment_name",
    "ClipWindow",
    "clip_frame_indices",
    "frames_after_target",
    "interpolate_maps",
    "iter_batches",
    "iter_clips",
    "iter_frame_maps",
    "target_indices",
]
