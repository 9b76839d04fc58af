"""Many videos: finding them, sharing them between the processes of a job, and `predict_job` (`dtfsal predict`).

`predict_videos` runs a list of videos (a failing file is reported, the others go on), shared between the
processes of an `accelerate launch` / `torchrun` job.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..saliency_loop import is_frame_folder
from .loading import demo_message, is_synthetic_example, untrained_message
from .outputs import _read_marker, _requested, check_overlay_options, finished_marker, output_name, output_paths, predict_to_folder
from .predictor import SaliencyPredictor
from .runtime import Runtime, preset

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")


def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Video files from files and folders (a folder gives its files with a video extension, sorted; a folder of
    frame images without video files is one video).

    A path that does not exist is kept (it is reported as failed when its turn comes). Raises `ValueError`
    when two inputs would share an output folder (same `output_name`).
    """
    videos = []
    for item in inputs:
        path = Path(item)
        if is_frame_folder(path) and not any(p.suffix.lower() in VIDEO_EXTENSIONS for p in path.iterdir()):
            videos.append(path)  # one video stored as frame images
        elif path.is_dir():
            videos.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS))
        else:
            # A missing file stays in the list: it fails on its own, reported, and the others go on.
            videos.append(path)
    unique = list(dict.fromkeys(videos))
    names: dict[str, Path] = {}
    for video in unique:
        name = output_name(video)
        if name in names:
            raise ValueError(
                f"{names[name]} and {video} would both write to '<output>/{name}/': "
                "predict them into different output folders"
            )
        names[name] = video
    return unique


@dataclass
class VideoResult:
    """The outcome of one video in `predict_videos`: `status` is "done", "skipped" or "failed"."""

    video: Path
    status: str
    seconds: float = 0.0
    num_frames: int | None = None
    error: str | None = None


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def process_share(videos: Sequence) -> tuple[list, int, int, object]:
    """`(this process's videos, process index, number of processes, accelerate state)`.

    Under `accelerate launch` or `torchrun`, `accelerate.PartialState` shares the list out in contiguous parts,
    one per process, so each video is handled once; a plain run gets the whole list (state None).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return list(videos), 0, 1, None
    try:
        from datetime import timedelta

        from accelerate import PartialState
    except ImportError as error:
        raise ImportError("sharing videos between processes needs accelerate: pip install 'dtfsal_hf[train]'") from error
    # PartialState only sets up CPU processes when told to (accelerate launch --cpu sets ACCELERATE_USE_CPU).
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not _accelerator_available()
    # Processes may finish their shares hours apart: the final barrier must not time out.
    state = PartialState(cpu=cpu, timeout=timedelta(days=7))
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate set up {state.num_processes} process(es): "
            "every process would predict every video. Launch with `accelerate launch` (add --cpu without GPUs)"
        )
    with state.split_between_processes(list(videos)) as share:
        share = list(share)
    return share, state.process_index, state.num_processes, state


def predict_videos(
    predictor: SaliencyPredictor,
    videos: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    log: Callable[[str], None] = print,
    process_index: int = 0,
    **options,
) -> list[VideoResult]:
    """`predict_to_folder` for each video; a failing video is logged and the others go on.

    `options` go to `predict_to_folder`. Returns one `VideoResult` per video, in order.
    """
    results = []
    for video in map(Path, videos):
        started = time.perf_counter()
        try:
            paths = output_paths(video, output_dir)
            settings = predictor.settings(options.get("stride"), options.get("blur_sigma", 0.0), options.get("max_frames"),
                                          options.get("fps"))
            wanted = _requested(options.get("write_pngs", True), options.get("write_npz", True),
                                options.get("write_overlay", True))
            marker = None if options.get("overwrite") else finished_marker(paths, settings, wanted, video)
            if marker is not None:
                log(f"[process {process_index}] skipped {video}: finished earlier ({paths['done']})")
                results.append(VideoResult(video, "skipped", num_frames=marker.get("num_frames")))
                continue
            previous = _read_marker(paths)
            if previous is not None and previous.get("video") != str(video.resolve()):
                log(f"[process {process_index}] {paths['folder']} holds the outputs of {previous.get('video')}: "
                    f"replacing them with those of {video}")
            predict_to_folder(predictor, video, output_dir, extra_marker={"process_index": process_index}, **options)
        except Exception as error:  # one bad file must not stop the batch
            message = f"{type(error).__name__}: {error}"
            log(f"[process {process_index}] FAILED {video}: {message}")
            results.append(VideoResult(video, "failed", time.perf_counter() - started, error=message))
            continue
        seconds = time.perf_counter() - started
        frames = json.loads(paths["done"].read_text())["num_frames"]
        log(f"[process {process_index}] done {video}: {frames} frames in {seconds:.1f} s -> {paths['folder']}")
        results.append(VideoResult(video, "done", seconds, frames))
    return results


def _default_device(state) -> str:
    if state is not None:
        return str(state.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_job(
    inputs: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 4,
    stride: int = 1,
    alignment: str = "last",
    normalize: str | None = "max",
    attention: str = "auto",
    runtime: str | Runtime | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> list[VideoResult]:
    """What `dtfsal predict` does: find the videos, take this process's share, load the model, predict each
    video into `output_dir`, log a summary. Returns this process's `VideoResult`s.

    `runtime` (a `Runtime` or the name of one of `PRESETS`) replaces `dtype` and `attention`.
    Under several processes every process loads the model on its own device (`accelerate`'s choice unless
    `device` is given) and writes its own videos; they wait for each other before returning.
    """
    check_overlay_options(options.get("overlay_alpha", 0.5), options.get("colormap", "jet"))
    runtime = preset(runtime) if isinstance(runtime, str) else runtime
    videos = find_videos(inputs)
    if not videos:
        raise ValueError(f"no video files found in {[str(item) for item in inputs]} (extensions: {', '.join(VIDEO_EXTENSIONS)})")
    share, index, count, state = process_share(videos)
    prefix = f"[process {index}]"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised, untrained.*")
        warnings.filterwarnings("ignore", message=".*matrix arithmetic .*runs slower here than float32")
        predictor = SaliencyPredictor.from_pretrained(model, device=device or _default_device(state), dtype=dtype,
                                                      batch_size=batch_size, stride=stride, alignment=alignment,
                                                      normalize=normalize, attention=attention, runtime=runtime)
    if not predictor.trained:
        log(f"{prefix} WARNING: {untrained_message(str(model))}")
    slow = predictor.runtime.slow_reason(predictor.device)
    if slow:
        log(f"{prefix} WARNING: {slow}")
    if predictor.demo and not all(is_synthetic_example(video) for video in share):
        log(f"{prefix} WARNING: {demo_message()}")
        predictor.warned_about_demo = True
    log(f"{prefix} {len(share)} of {len(videos)} videos on {predictor.device} ({count} process{'es' if count > 1 else ''})")
    results = predict_videos(predictor, share, output_dir, log=log, process_index=index, **options)
    failed = [result for result in results if result.status == "failed"]
    done = sum(result.status == "done" for result in results)
    log(f"{prefix} finished: {done} written, {len(results) - done - len(failed)} skipped, {len(failed)} failed"
        + ("".join(f"\n  {result.video}: {result.error}" for result in failed)))
    if state is not None:
        state.wait_for_everyone()
    return results


__all__ = ["VIDEO_EXTENSIONS", "VideoResult", "find_videos", "predict_job", "predict_videos", "process_share"]
