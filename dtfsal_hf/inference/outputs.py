"""What `dtfsal predict` writes for one video, and the statistics of maps.

`predict_to_folder` writes one video's outputs: 8-bit PNG maps, one compressed `maps.npz`, an overlay MP4 with
the original sound, and a `done.json` marker written last, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..media import AudioReader, write_overlay_video
from ..npz_stream import NpzMapWriter
from ..saliency_loop import IMAGE_EXTENSIONS, frame_source, source_info

if TYPE_CHECKING:
    from .predictor import ProgressCallback, SaliencyPredictor

MARKER_NAME = "done.json"


def to_uint8(saliency_map: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 8-bit grey levels (0-255, rounded); one float copy of the map is made."""
    saliency_map = np.asarray(saliency_map)
    scaled = np.clip(saliency_map if np.issubdtype(saliency_map.dtype, np.floating) else saliency_map.astype(np.float32),
                     0.0, 1.0)
    scaled *= 255.0
    return np.round(scaled, out=scaled).astype(np.uint8)


STATISTICS = ("center_x", "center_y", "center_x_norm", "center_y_norm", "entropy", "peak_x", "peak_y", "mean")
# Elements of a map converted to float64 at once by `saliency_statistics` (2 MB).
_STATISTICS_BLOCK = 1 << 18


def _map_statistics(saliency_map: np.ndarray) -> tuple[float, ...]:
    """`STATISTICS` of one (height, width) map, reading it by blocks of rows so float64 copies stay small.

    With the total T, the entropy of p = m / T is log2 T - sum(m log2 m) / T; the centre of mass comes from the
    row and column sums.
    """
    if saliency_map.ndim != 2 or 0 in saliency_map.shape:
        raise ValueError(f"each map must be (height, width), got shape {saliency_map.shape}")
    if np.issubdtype(saliency_map.dtype, np.floating) and (saliency_map < 0).any():
        raise ValueError("saliency maps must be non-negative")
    height, width = saliency_map.shape
    rows, columns, weighted_logs = np.zeros(height), np.zeros(width), 0.0
    step = max(1, _STATISTICS_BLOCK // width)
    for first in range(0, height, step):
        block = saliency_map[first : first + step].astype(np.float64)
        rows[first : first + step] = block.sum(axis=1)
        columns += block.sum(axis=0)
        positive = block[block > 0]
        weighted_logs += float((positive * np.log2(positive)).sum())
    total = float(rows.sum())
    peak_y, peak_x = divmod(int(np.argmax(saliency_map)), width)
    if total > 0:
        center_x = float((columns * np.arange(width)).sum()) / total
        center_y = float((rows * np.arange(height)).sum()) / total
        entropy = max(math.log2(total) - weighted_logs / total, 0.0)
    else:
        center_x = center_y = entropy = math.nan
    return center_x, center_y, center_x / width, center_y / height, entropy, peak_x, peak_y, total / (height * width)


def saliency_statistics(maps: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame statistics of maps `(frames, height, width)` (or one `(height, width)` map, or any iterable of
    maps, e.g. `iter_npz_maps("maps.npz")`), float or uint8, computed one map at a time: memory holds one map and
    a few megabytes, whatever the resolution and the number of frames.

    Returns arrays of shape `(frames,)`:
        center_x, center_y: the centre of mass in pixels (column, row), 0 at the top-left pixel's centre;
        center_x_norm, center_y_norm: the same divided by the width and height, in [0, 1];
        entropy: Shannon entropy in bits of the map normalised to sum 1 (log2(H*W) for a uniform map);
        peak_x, peak_y: position of the maximum; mean: the mean value (in the maps' own scale).
    A map that sums to zero has NaN centre and entropy.
    """
    if isinstance(maps, np.ndarray):
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3 or maps.shape[0] == 0:
            raise ValueError(f"maps must be (frames, height, width) with at least one frame, got shape {maps.shape}")
    rows = [_map_statistics(np.asarray(saliency_map)) for saliency_map in maps]
    if not rows:
        raise ValueError("maps must hold at least one frame, got none")
    columns = list(zip(*rows))
    result = {name: np.asarray(values, dtype=np.float64) for name, values in zip(STATISTICS, columns)}
    result["peak_x"], result["peak_y"] = result["peak_x"].astype(np.int64), result["peak_y"].astype(np.int64)
    return result


def output_name(video_path: str | os.PathLike) -> str:
    """The name of a video's output folder: its file name without extension, made safe to join to the output
    folder. A name of dots only (`...mp4` has the stem `..`, `..mp4` the stem `.`) would name the output folder's
    parent or the output folder itself: its dots become `_`. Characters that do not print (newlines...) become `_`."""
    name = "".join(character if character.isprintable() else "_" for character in Path(video_path).stem)
    if not name.strip("."):
        name = "_" * max(len(name), 1)
    return name


def output_paths(video_path: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Where `predict_to_folder` writes a video's outputs: `<output_dir>/<output_name(video)>/...`.

    Raises `ValueError` when that folder would not lie directly inside `output_dir` (a link pointing elsewhere).
    """
    output_dir = Path(output_dir)
    folder = output_dir / output_name(video_path)
    if folder.resolve().parent != output_dir.resolve():
        raise ValueError(f"the output folder of {video_path}, {folder}, leads outside {output_dir} (to {folder.resolve()})")
    return {
        "folder": folder,
        "maps": folder / "maps",
        "npz": folder / "maps.npz",
        "overlay": folder / "overlay.mp4",
        "done": folder / MARKER_NAME,
    }


def source_identity(video_path: str | os.PathLike) -> dict | None:
    """What identifies the input a marker was written for: a file's absolute path, size and modification time (ns);
    a folder of frame images, its absolute path, its frame count and a digest of the name, size and modification time
    of every file the predictor reads there (the images and the `.wav`), so a frame added, removed or replaced is
    seen. None for a path that is neither."""
    path = Path(video_path).resolve()
    try:
        status = path.stat()
        if path.is_dir():
            return _folder_identity(path)
    except OSError:
        return None
    return {"path": str(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns} if path.is_file() else None


def _folder_identity(folder: Path) -> dict:
    digest, frames = hashlib.sha256(), 0
    for entry in sorted(folder.iterdir()):
        suffix = entry.suffix.lower()
        if not entry.is_file() or (suffix not in IMAGE_EXTENSIONS and suffix != ".wav"):
            continue
        frames += suffix in IMAGE_EXTENSIONS
        status = entry.stat()
        digest.update(f"{entry.name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"path": str(folder), "frames": frames, "files_sha256": digest.hexdigest()}


def _requested(write_pngs: bool, write_npz: bool, write_overlay: bool) -> dict[str, bool]:
    return {"pngs": bool(write_pngs), "npz": bool(write_npz), "overlay": bool(write_overlay)}


def _read_marker(paths: dict[str, Path]) -> dict | None:
    try:
        marker = json.loads(paths["done"].read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finished_marker(paths: dict[str, Path], settings: dict, outputs: dict[str, bool],
                    video_path: str | os.PathLike | None = None) -> dict | None:
    """The `done.json` content when the video was finished with these settings and its outputs are all there; with
    `video_path`, also only when the marker was written for that very file (`source_identity`: path, size and
    modification time), so another file of the same name, or the same file changed, is predicted again."""
    marker = _read_marker(paths)
    if marker is None:
        return None
    if marker.get("settings") != settings or any(want and not marker.get("outputs", {}).get(name) for name, want in outputs.items()):
        return None
    if video_path is not None and (marker.get("source") is None or marker.get("source") != source_identity(video_path)):
        return None
    frames = marker.get("num_frames")
    if outputs["pngs"] and len(list(paths["maps"].glob("*.png"))) != frames:
        return None
    if outputs["npz"] and not paths["npz"].is_file():
        return None
    if outputs["overlay"] and not paths["overlay"].is_file():
        return None
    return marker


def _clear_outputs(paths: dict[str, Path]) -> None:
    """Remove what an earlier, unfinished or differently configured run left, so no stale frame survives."""
    paths["done"].unlink(missing_ok=True)
    if paths["maps"].is_dir():
        for png in paths["maps"].glob("*.png"):
            png.unlink()
    for name in ("npz", "overlay"):
        paths[name].unlink(missing_ok=True)


def _remove_failed(paths: dict[str, Path]) -> None:
    """After a failure: the temporary files and every output of the run go, and the folder if nothing else is in it."""
    _clear_outputs(paths)
    for temporary in (_overlay_partial(paths["overlay"]), paths["npz"].with_name(paths["npz"].name + ".tmp"),
                      paths["done"].with_name(MARKER_NAME + ".tmp")):
        temporary.unlink(missing_ok=True)
    for folder in (paths["maps"], paths["folder"]):
        try:
            folder.rmdir()
        except OSError:  # absent, or holding files of the user's
            pass


def _write_png(path: Path, saliency_map: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(saliency_map, mode="L").save(path, compress_level=3)


def predict_to_folder(
    predictor: SaliencyPredictor,
    video_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    overlay_alpha: float = 0.5,
    colormap: str = "jet",
    write_pngs: bool = True,
    write_npz: bool = True,
    write_overlay: bool = True,
    stride: int | None = None,
    blur_sigma: float = 0.0,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | bool | None = None,
    extra_marker: dict | None = None,
    fps: float | None = None,
) -> dict[str, Path]:
    """Predict one video (a file, or a folder of frame images `fps` apart, with its `.wav` if any) and write its outputs under `<output_dir>/<video stem>/`:

    - `maps/000001.png ...`: one 8-bit grey map per frame, at the video's resolution;
    - `maps.npz`: `maps` (frames, height, width) uint8 (the PNGs' values) and `times` (frames,) in seconds;
    - `overlay.mp4`: H.264, the heat map (`colormap`, weight `overlay_alpha` x map) over the frames, with the
      original sound as AAC;
    - `done.json`: written last: settings, frame count, timing. A video whose marker matches the settings and
      whose outputs are all present is skipped (unless `overwrite`); anything else is redone from scratch.

    The video is decoded once and memory stays flat. Returns the paths (`folder`, `maps`, `npz`, `overlay`,
    `done`). Other arguments as `SaliencyPredictor.iter_video_maps`; `extra_marker` adds fields to `done.json`.
    """
    if not (write_pngs or write_npz or write_overlay):
        raise ValueError("nothing to write: write_pngs, write_npz and write_overlay are all False")
    if write_overlay:
        check_overlay_options(overlay_alpha, colormap)
    paths = output_paths(video_path, output_dir)
    settings = predictor.settings(stride, blur_sigma, max_frames, fps)
    outputs = _requested(write_pngs, write_npz, write_overlay)
    if not overwrite and finished_marker(paths, settings, outputs, video_path) is not None:
        return paths
    started = time.perf_counter()
    info = source_info(video_path, fps)  # an unreadable file fails here, before anything is written
    source = source_identity(video_path)
    _clear_outputs(paths)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    try:
        count = _write_outputs(predictor, video_path, paths, info, outputs, overlay_alpha, colormap,
                               (stride, blur_sigma, max_frames, progress, fps))
    except BaseException:
        _remove_failed(paths)
        raise
    marker = {
        "video": str(Path(video_path).resolve()),
        "source": source,
        "num_frames": count,
        "fps": info.fps,
        "size": [info.height, info.width],
        # the model's maps before they were resized to the video: where evaluation blurs saved maps
        "map_size": [int(side) for side in predictor.model.config.image_size],
        "has_audio": info.has_audio,
        "settings": settings,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - started, 3),
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra_marker or {}),
    }
    partial = paths["done"].with_name(MARKER_NAME + ".tmp")
    partial.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(partial, paths["done"])
    return paths


def _write_outputs(predictor, video_path, paths: dict, info, outputs: dict, alpha: float, colormap: str, options) -> int:
    """Stream the maps of a video into its PNGs, `maps.npz` and overlay; returns the number of frames."""
    if outputs["pngs"]:
        paths["maps"].mkdir(exist_ok=True)
    npz = NpzMapWriter(paths["npz"]) if outputs["npz"] else None
    count = 0

    def saved(pairs):
        nonlocal count
        for frame, saliency_map in pairs:
            grey = to_uint8(saliency_map)
            if outputs["pngs"]:
                _write_png(paths["maps"] / f"{frame.index + 1:06d}.png", grey)
            if npz is not None:
                npz.add(grey, frame.time)
            count += 1
            yield frame, saliency_map

    try:
        if outputs["overlay"]:
            _write_overlay(saved(predictor.iter_frames_and_maps(video_path, *options)), video_path, paths["overlay"],
                           info, alpha, colormap)
        else:
            stride, blur_sigma, max_frames, progress, fps = options
            for _ in saved(predictor.iter_maps(video_path, stride=stride, blur_sigma=blur_sigma, max_frames=max_frames,
                                               progress=progress, fps=fps)):
                pass
        if npz is not None:
            npz.close()
    except BaseException:
        if npz is not None:
            npz.discard()
        raise
    return count


def _in_step(pairs: Iterator[tuple]) -> tuple[Iterator, Iterator]:
    """The first and the second items of `pairs` as two iterators, for a consumer that takes one of each in turn,
    first then second (`zip`), holding one pair. (`itertools.tee` keeps its items in blocks of 57 until both sides
    have passed a block: 57 frames and maps of a 4K video are 3 GB.)"""
    slot: list = []

    def firsts():
        for first, second in pairs:
            slot.append(second)
            yield first

    def seconds():
        while slot:
            yield slot.pop()

    return firsts(), seconds()


def _overlay_partial(path: Path) -> Path:
    return path.with_name(path.stem + ".partial.mp4")


def _write_overlay(pairs: Iterator, video_path, path: Path, info, alpha: float, colormap: str) -> None:
    partial = _overlay_partial(path)
    frames, maps = _in_step(pairs)
    try:
        # The video's own track; a frame folder's .wav at its own rate (a sound file has no video stream to probe).
        # Either is read as the frames are written.
        with contextlib.ExitStack() as stack:
            sound = None if not info.has_audio else video_path if info.video_codec != "images" else \
                stack.enter_context(AudioReader(frame_source(video_path).audio, sampling_rate=None))
            write_overlay_video(frames, maps, sound, partial, fps=info.fps or 30.0, alpha=alpha, colormap=colormap)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def check_overlay_options(overlay_alpha: float, colormap: str) -> None:
    """Raise `ValueError` for an overlay opacity outside [0, 1] or an unknown matplotlib colour map."""
    from matplotlib import colormaps

    if not 0.0 <= overlay_alpha <= 1.0:
        raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
    if colormap not in colormaps:
        raise ValueError(f"unknown colormap {colormap!r}: use a matplotlib colour map name such as 'jet' or 'inferno'")


__all__ = [
    "MARKER_NAME",
    "STATISTICS",
    "check_overlay_options",
    "finished_marker",
    "output_name",
    "output_paths",
    "predict_to_folder",
    "saliency_statistics",
    "source_identity",
    "to_uint8",
]
