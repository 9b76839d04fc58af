"""Raw eye-tracking samples to ground truth: per-frame fixation maps and continuous saliency maps.

DHF1K's recordings are SMI exports (tab-separated, one sample every 4 ms): `Time` in µs, the left
eye's point of regard `L POR X/Y [px]` on a 1440×900 screen, and the event `L Event Info`. The
video is scaled to the screen's width and letterboxed vertically. A sample belongs to frame
`ceil(fps · (t − t0) / 1e6)` (frames from 1, t0 the first sample's time); only samples inside a
`Fixation` event are kept. Each frame's continuous map is the sum of Gaussians of FWHM 30 px centred
on its fixation samples, normalised to a maximum of 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DHF1K_SCREEN_SIZE = (1440, 900)
"""Width and height of the screen the DHF1K videos were shown on."""

DHF1K_FWHM = 30.0
"""Full width at half maximum, in pixels, of the Gaussian DHF1K puts on each fixation."""


def fwhm_to_sigma(fwhm: float) -> float:
    """Standard deviation of a Gaussian with the given full width at half maximum (30 px -> 12.74 px)."""
    return fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class GazeRecording:
    """One observer's samples: time in µs, point of regard on the screen in px, event per sample."""

    time_us: np.ndarray
    x_screen: np.ndarray
    y_screen: np.ndarray
    event: np.ndarray


def read_smi_gaze(path: str | Path) -> GazeRecording:
    """Read an SMI sample export (`Pxx_TrailNNN.txt`) into a `GazeRecording`."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty gaze file")
    header = lines[0].split("\t")
    wanted = ("Time", "L POR X [px]", "L POR Y [px]", "L Event Info")
    missing = [name for name in wanted if name not in header]
    if missing:
        raise ValueError(f"{path}: expected the SMI columns {list(wanted)}, missing {missing}; header is {header}")
    columns = [header.index(name) for name in wanted]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    rows = [row for row in rows if len(row) == len(header)]
    time_us = np.array([int(row[columns[0]]) for row in rows], dtype=np.int64)
    x = np.array([float(row[columns[1]]) for row in rows], dtype=np.float64)
    y = np.array([float(row[columns[2]]) for row in rows], dtype=np.float64)
    event = np.array([row[columns[3]].strip() for row in rows])
    return GazeRecording(time_us, x, y, event)


def screen_to_video(
    x_screen: np.ndarray, y_screen: np.ndarray, video_size: tuple[int, int], screen_size: tuple[int, int] = DHF1K_SCREEN_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Map screen coordinates to video pixels for a video scaled to the screen width, letterboxed.

    With the video `width × height`: `a = width / screen_width`, `b = (screen_height − height / a) / 2`,
    `x = a·x_screen`, `y = a·(y_screen − b)`.
    """
    width, height = video_size
    scale = width / screen_size[0]
    border = (screen_size[1] - height / scale) / 2.0
    return scale * np.asarray(x_screen), scale * (np.asarray(y_screen) - border)


def recording_fixations(
    recording: GazeRecording,
    video_size: tuple[int, int],
    num_frames: int,
    fps: float = 30.0,
    screen_size: tuple[int, int] = DHF1K_SCREEN_SIZE,
) -> list[np.ndarray]:
    """Per frame (0-based list index = frame − 1), the `(K, 2)` int pixel `(row, column)` of fixation samples.

    A sample's pixel is the one containing its point (`floor`); samples outside the picture (on the
    letterbox) and after the last frame are dropped.
    """
    keep = recording.event == "Fixation"
    frame = np.ceil(fps * (recording.time_us - recording.time_us[0]) / 1e6).astype(np.int64)
    x, y = screen_to_video(recording.x_screen, recording.y_screen, video_size, screen_size)
    column, row = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    width, height = video_size
    keep &= (frame >= 1) & (frame <= num_frames) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
    per_frame: list[list[np.ndarray]] = [[] for _ in range(num_frames)]
    for index in np.flatnonzero(keep):
        per_frame[frame[index] - 1].append(np.array([row[index], column[index]]))
    return [np.array(points, dtype=np.int64).reshape(-1, 2) for points in per_frame]


def fixation_map(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary map of the fixated pixels, bool `(height, width)`; `points` are `(K, 2)` (row, column)."""
    fixated = np.zeros(size, dtype=bool)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    fixated[points[:, 0], points[:, 1]] = True
    return fixated


def continuous_map(points: np.ndarray, size: tuple[int, int], fwhm: float = DHF1K_FWHM) -> np.ndarray:
    """Sum of Gaussians (FWHM `fwhm` px) on the fixation samples, normalised to max 1, float32 `(height, width)`.

    `points` are `(K, 2)` pixel (row, column), one per sample (repeats add up). Each Gaussian is
    placed whole, so it is cut off at the picture's border (no reflection). No point gives zeros.
    """
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    if points.shape[0] == 0:
        return np.zeros(size, dtype=np.float32)
    unique, weight = np.unique(points, axis=0, return_counts=True)
    sigma = fwhm_to_sigma(fwhm)
    # A separable Gaussian per fixated pixel: (H, K) vertical profiles times (K, W) horizontal ones.
    vertical = np.exp(-((np.arange(size[0])[:, None] - unique[None, :, 0]) ** 2) / (2 * sigma**2))
    horizontal = np.exp(-((np.arange(size[1])[:, None] - unique[None, :, 1]) ** 2) / (2 * sigma**2))
    summed = (vertical * weight[None, :]).astype(np.float32) @ horizontal.T.astype(np.float32)
    return summed / summed.max()


def gaze_fixations(
    gaze_files: list[str | Path],
    video_size: tuple[int, int],
    num_frames: int,
    fps: float = 30.0,
    screen_size: tuple[int, int] = DHF1K_SCREEN_SIZE,
) -> list[np.ndarray]:
    """All observers' fixation samples of one video, per frame: a list of `num_frames` `(K, 2)` arrays."""
    if not gaze_files:
        raise ValueError("expected at least one gaze file, got none")
    merged: list[list[np.ndarray]] = [[] for _ in range(num_frames)]
    for path in gaze_files:
        for frame, points in enumerate(recording_fixations(read_smi_gaze(path), video_size, num_frames, fps, screen_size)):
            merged[frame].append(points)
    return [np.concatenate(points) for points in merged]


def gaze_to_ground_truth(
    gaze_files: list[str | Path],
    video_size: tuple[int, int],
    num_frames: int,
    fps: float = 30.0,
    fwhm: float = DHF1K_FWHM,
    screen_size: tuple[int, int] = DHF1K_SCREEN_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaze files of one video -> (fixation maps bool, continuous maps float32), each `(N, H, W)`.

    Holds the whole video in memory; for long videos use `gaze_fixations` and build maps per frame.
    """
    per_frame = gaze_fixations(gaze_files, video_size, num_frames, fps, screen_size)
    size = (video_size[1], video_size[0])
    fixations = np.stack([fixation_map(points, size) for points in per_frame])
    return fixations, np.stack([continuous_map(points, size, fwhm) for points in per_frame])


def write_dhf1k_annotation(output_dir: str | Path, fixation_maps: np.ndarray, maps: np.ndarray) -> Path:
    """Write `maps/%04d.png` (8-bit continuous) and `fixation/%04d.png` (0/255) as DHF1K does."""
    from PIL import Image

    output_dir = Path(output_dir)
    (output_dir / "maps").mkdir(parents=True, exist_ok=True)
    (output_dir / "fixation").mkdir(parents=True, exist_ok=True)
    for index, (fixations, saliency) in enumerate(zip(fixation_maps, maps), start=1):
        Image.fromarray(np.round(np.clip(saliency, 0, 1) * 255).astype(np.uint8)).save(output_dir / "maps" / f"{index:04d}.png")
        Image.fromarray(fixations.astype(np.uint8) * 255).save(output_dir / "fixation" / f"{index:04d}.png")
    return output_dir


__all__ = [
    "DHF1K_FWHM",
    "DHF1K_SCREEN_SIZE",
    "GazeRecording",
    "continuous_map",
    "fixation_map",
    "gaze_fixations",
    "fwhm_to_sigma",
    "gaze_to_ground_truth",
    "read_smi_gaze",
    "recording_fixations",
    "screen_to_video",
    "write_dhf1k_annotation",
]
