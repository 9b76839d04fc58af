"""DTFSal Space: where people look in a video, predicted from its pictures and its sound.

Upload a video (or pick the bundled example), choose the model variant and a few display options, and get
the video with the predicted saliency blended over it (with its sound), a gallery of heat maps, the
saliency centre of mass and entropy over time, and the maps to download.

Environment variables (Space "Variables", or the shell when run locally with `python space/app.py`):
- `DTFSAL_MODEL`: the audio-visual model, a Hub id or a folder (default `DEFAULT_MODEL`);
- `DTFSAL_MODEL_VISUAL`: the visual-only model DTFSal(V) (default `DEFAULT_VISUAL_MODEL`);
- `DTFSAL_MAX_SECONDS`: how much of each video is processed (default 10 s on CPU, 120 s on a GPU);
- `DTFSAL_MAX_MEGAPIXEL_FRAMES`: the same as pixels x frames (default 10 s of 1080p at 30 fps on CPU, 120 s on a
  GPU), so a large video is cut sooner than a small one;
- `DTFSAL_MAX_FRAME_PIXELS`: the largest frame taken (default 2560 x 1440); larger videos are refused;
- `DTFSAL_DEVICE`: `cpu` or `cuda` (default: `cuda` when available).
A Hub model that cannot be loaded (offline, not published yet) is replaced by the checkpoint embedded in
the package (`demo`), and the page says so. Prediction itself is `dtfsal_hf.inference`'s, as in the CLI.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pandas as pd
import torch
from huggingface_hub.errors import HfHubHTTPError
from matplotlib import colormaps
from PIL import Image

from dtfsal_hf.inference import (
    DEMO_CHECKPOINT,
    VIDEO_EXTENSIONS,
    SaliencyPredictor,
    demo_message,
    is_synthetic_example,
    iter_npz_maps,
    predict_to_folder,
    saliency_statistics,
    untrained_message,
)
from dtfsal_hf.media import VideoInfo, probe_video

logger = logging.getLogger("dtfsal_space")

DEFAULT_MODEL = "dtfsal-hf/dtfsal"
DEFAULT_VISUAL_MODEL = "dtfsal-hf/dtfsal-v"
FALLBACK_MODEL = "demo"
VARIANTS = {  # the Model choice -> (its environment variable, its default)
    "audio-visual": ("DTFSAL_MODEL", DEFAULT_MODEL),
    "visual-only": ("DTFSAL_MODEL_VISUAL", DEFAULT_VISUAL_MODEL),
}
COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "hot")
# Any video type the browser names, and the extensions `dtfsal predict` takes (case-insensitive), since
# browsers name some (e.g. ".AVI", ".mkv") with no video type.
VIDEO_FILE_TYPES = ["video", *VIDEO_EXTENSIONS]
GALLERY_SIZE = 8
GALLERY_MAX_SIDE = 960  # heat maps are shown at most this wide or high (a 4K map in RGBA float64 is 265 MB)
DEFAULT_STRIDE = 4
CPU_MAX_SECONDS, GPU_MAX_SECONDS = 10.0, 120.0
# Pixels x frames processed: 10 s (CPU) or 120 s (GPU) of 1080p at 30 fps; a 4K video gets a quarter of that.
CPU_MAX_MEGAPIXEL_FRAMES, GPU_MAX_MEGAPIXEL_FRAMES = 10 * 30 * 1920 * 1080 / 1e6, 120 * 30 * 1920 * 1080 / 1e6
# The largest frame taken: at 2560x1440 a run with the demo model peaks at 1.7 GB, at 3840x2160 at 2.6 GB.
MAX_FRAME_PIXELS = 2560 * 1440
MAX_UPLOAD = "200mb"
RESULTS_LIFETIME_S = 3600  # result folders older than this are deleted when a new run starts
RESULTS_DIR = Path(tempfile.gettempdir()) / "dtfsal-space"
ASSETS = DEMO_CHECKPOINT.parent  # the package's assets: the demo checkpoint and the example clip


# Configuration


def device() -> str:
    return os.environ.get("DTFSAL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def model_id(variant: str) -> str:
    """The model id of a variant: its environment variable, else the Hub id the Space is published with."""
    if variant not in VARIANTS:
        raise gr.Error(f"Unknown variant {variant!r}: choose one of {list(VARIANTS)}")
    variable, default = VARIANTS[variant]
    return os.environ.get(variable) or default


def _positive_setting(name: str, default: float) -> float:
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be positive, got {value:g}")
    return value


def length_cap() -> tuple[float, str]:
    """Seconds of each video processed, and why, as shown on the page."""
    on_gpu = device().startswith("cuda")
    seconds = _positive_setting("DTFSAL_MAX_SECONDS", GPU_MAX_SECONDS if on_gpu else CPU_MAX_SECONDS)
    hardware = "a GPU" if on_gpu else "CPU only"
    return seconds, f"this Space runs on {hardware}, so each video is limited to its first {seconds:g} s"


def pixel_frames_cap() -> float:
    """Pixels x frames of each video processed (so a large video is cut sooner than a small one)."""
    on_gpu = device().startswith("cuda")
    default = GPU_MAX_MEGAPIXEL_FRAMES if on_gpu else CPU_MAX_MEGAPIXEL_FRAMES
    return _positive_setting("DTFSAL_MAX_MEGAPIXEL_FRAMES", default) * 1e6


def frame_pixels_cap() -> int:
    """The largest frame (pixels) the Space takes."""
    return int(_positive_setting("DTFSAL_MAX_FRAME_PIXELS", MAX_FRAME_PIXELS))


# Models


@dataclass(frozen=True)
class LoadedModel:
    predictor: SaliencyPredictor
    model_id: str
    note: str  # shown on the page when the model is not the one asked for


# Why a model may not load: not on disk or on the Hub, the Hub unreachable or offline, not a DTFSal model.
LOAD_ERRORS = (OSError, ValueError, HfHubHTTPError, httpx.HTTPError)
_predictors: dict[str, LoadedModel] = {}
_predictors_lock = threading.Lock()


def load_model(variant: str) -> LoadedModel:
    """The variant's predictor, loaded once; the embedded demo checkpoint when the Hub model cannot be loaded."""
    wanted = model_id(variant)
    with _predictors_lock:
        if wanted not in _predictors:
            _predictors[wanted] = _load(wanted)
        return _predictors[wanted]


def _load(wanted: str) -> LoadedModel:
    try:
        return LoadedModel(SaliencyPredictor.from_pretrained(wanted, device=device()), wanted, "")
    except LOAD_ERRORS as error:
        if wanted == FALLBACK_MODEL:
            raise gr.Error(f"The model `{wanted}` could not be loaded: {_first_line(error)}") from error
        reason = _first_line(error)
    logger.warning("Could not load %s (%s); using the embedded demo checkpoint", wanted, reason)
    try:
        predictor = SaliencyPredictor.from_pretrained(FALLBACK_MODEL, device=device())
    except LOAD_ERRORS as error:
        raise gr.Error(
            f"`{wanted}` could not be loaded ({reason}), nor the embedded demo checkpoint ({_first_line(error)})"
        ) from error
    kind = "audio-visual" if predictor.uses_audio else "visual-only"
    note = f"`{wanted}` could not be loaded ({reason}), so the embedded {kind} demo checkpoint is used."
    return LoadedModel(predictor, FALLBACK_MODEL, note)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# Input


def check_video(path: str | None) -> VideoInfo:
    """Describe the upload, or stop with a message a person can act on."""
    if not path:
        raise gr.Error("No video: upload one or pick the example below.")
    name = Path(path).name
    try:
        info = probe_video(path)
    except (OSError, ValueError) as error:
        message = str(error).replace(str(path), name)
        raise gr.Error(f"{name} cannot be used: {message}. Upload a video file (MP4, AVI, MOV, WebM, MKV...).")
    if info.width < 16 or info.height < 16:
        raise gr.Error(f"{name} is {info.width}x{info.height} pixels: the model needs at least 16x16.")
    largest = frame_pixels_cap()
    if info.width * info.height > largest:
        raise gr.Error(
            f"{name} is {info.width}x{info.height} ({info.width * info.height / 1e6:.1f} megapixels a frame): this Space "
            f"takes frames of up to {largest / 1e6:.1f} megapixels{' (2560x1440)' if largest == MAX_FRAME_PIXELS else ''}. "
            "Scale the video down, or run the app on your own machine."
        )
    return info


def frame_cap(info: VideoInfo, seconds: float, pixel_frames: float | None = None) -> int | None:
    """How many frames are processed: those starting in the first `seconds`, and no more than `pixel_frames`
    divided by the frame's pixels. None when the whole video is within both."""
    by_time = None
    if info.duration is None or info.duration > seconds:
        # Frames start at k / fps; those starting before `seconds` are kept.
        by_time = max(1, math.ceil(seconds * (info.fps or 30.0) - 1e-6))
    by_pixels = None
    if pixel_frames is not None:
        by_pixels = max(1, int(pixel_frames // (info.width * info.height)))
        known = info.num_frames or (info.duration * info.fps if info.duration and info.fps else None)
        if known is not None and known <= by_pixels:
            by_pixels = None
    caps = [cap for cap in (by_time, by_pixels) if cap is not None]
    return min(caps) if caps else None


def cap_reason(info: VideoInfo, max_frames: int, seconds_reason: str, pixel_frames: float) -> str:
    """Why a video was cut, for the summary: the time cap, or the pixels x frames cap of a large video."""
    if max_frames == max(1, int(pixel_frames // (info.width * info.height))):
        seconds = max_frames / (info.fps or 30.0)
        return (f"at {info.width}x{info.height} this Space processes {max_frames} frames ({seconds:.1f} s; it takes "
                f"{pixel_frames / 1e6:g} megapixel-frames of each video)")
    return seconds_reason


# Output


def _gallery_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, GALLERY_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def heat_maps(maps, times: np.ndarray, colormap: str, count: int = GALLERY_SIZE) -> list[tuple]:
    """Up to `count` maps, evenly spaced in time, coloured with `colormap`, with their frame and time.

    `maps` are (frames, height, width) uint8, as `maps.npz` stores them, or a path to `maps.npz` (read one map at
    a time). Maps larger than `GALLERY_MAX_SIDE` are shown shrunk to it.
    """
    frames = len(times)
    indices = np.unique(np.linspace(0, frames - 1, num=min(count, frames)).round().astype(int))
    source = iter_npz_maps(maps) if isinstance(maps, (str, Path)) else iter(maps)
    table = colormaps[colormap]
    images = []
    for index, saliency_map in enumerate(source):
        if index not in indices:
            continue
        height, width = _gallery_size(*saliency_map.shape)
        if (height, width) != saliency_map.shape:
            saliency_map = np.asarray(Image.fromarray(saliency_map).resize((width, height), Image.Resampling.BILINEAR))
        image = (table(saliency_map.astype(np.float32) / 255.0)[..., :3] * 255).astype(np.uint8)
        images.append((image, f"frame {index + 1} · {times[index]:.2f} s"))  # numbered as the PNGs
        if index == indices[-1]:
            break
    return images


def statistics_tables(statistics: dict, times: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long tables for the plots: centre of mass (fractions of width and height) and entropy over time."""
    centre = pd.concat(
        [
            pd.DataFrame({"time (s)": times, "position": statistics["center_x_norm"], "coordinate": "x (of width)"}),
            pd.DataFrame({"time (s)": times, "position": statistics["center_y_norm"], "coordinate": "y (of height)"}),
        ],
        ignore_index=True,
    )
    entropy = pd.DataFrame({"time (s)": times, "entropy (bits)": statistics["entropy"]})
    return centre, entropy


STATISTICS_COLUMNS = ("center_x", "center_y", "center_x_norm", "center_y_norm", "entropy", "peak_x", "peak_y", "mean")


def write_download(outputs: dict, statistics: dict, times: np.ndarray) -> Path:
    """One zip of a run: the PNG maps, maps.npz and statistics.csv (one row per frame)."""
    folder = Path(outputs["folder"])
    columns = {"frame": np.arange(1, len(times) + 1), "time_s": times, **{k: statistics[k] for k in STATISTICS_COLUMNS}}
    table = pd.DataFrame(columns)
    csv = folder / "statistics.csv"
    csv.write_text(table.to_csv(index=False), encoding="utf-8")
    archive = folder / f"{folder.name}_saliency.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for png in sorted(Path(outputs["maps"]).glob("*.png")):
            bundle.write(png, f"maps/{png.name}")
        bundle.write(outputs["npz"], "maps.npz")
        bundle.write(csv, "statistics.csv")
    return archive


def _new_results_folder() -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in RESULTS_DIR.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > RESULTS_LIFETIME_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS_DIR))


# The event


def predict(video, variant, stride, blur_sigma, opacity, colormap, progress=gr.Progress()):
    """Run the model on the first seconds of `video`; returns the values of the page's outputs."""
    started = time.perf_counter()
    info = check_video(video)
    if colormap not in COLORMAPS:
        raise gr.Error(f"Unknown colour map {colormap!r}: choose one of {list(COLORMAPS)}")
    progress(0.0, desc="Loading the model")
    loaded = load_model(variant)
    seconds, reason = length_cap()
    pixel_frames = pixel_frames_cap()
    max_frames = frame_cap(info, seconds, pixel_frames)

    def report(done: int, total: int | None) -> None:
        progress((done, total), desc="Predicting saliency", unit="frames")

    outputs = _predict_to_folder(
        video, loaded.predictor, overlay_alpha=float(opacity), colormap=colormap, stride=int(stride),
        blur_sigma=float(blur_sigma), max_frames=max_frames, progress=report,
    )
    # The maps are read back one at a time: a 4K map stack would not fit in memory as float64 copies.
    with np.load(outputs["npz"]) as saved:
        times = saved["times"]
    statistics = saliency_statistics(iter_npz_maps(outputs["npz"]))
    centre, entropy = statistics_tables(statistics, times)
    archive = write_download(outputs, statistics, times)
    cut = max_frames is not None and len(times) >= max_frames
    if cut:
        reason = cap_reason(info, max_frames, reason, pixel_frames)
    caveats = _model_caveats(variant, loaded, video)
    summary = _summary(Path(video).name, info, loaded, len(times), cut, reason, time.perf_counter() - started, caveats)
    return str(outputs["overlay"]), heat_maps(outputs["npz"], times, colormap), centre, entropy, str(archive), summary


def _predict_to_folder(video: str, predictor: SaliencyPredictor, **options) -> dict:
    """`predict_to_folder` into a new results folder; a file that fails to decode gets a readable message."""
    try:
        return predict_to_folder(predictor, video, _new_results_folder(), **options)
    except ValueError as error:
        name = Path(video).name
        raise gr.Error(f"{name} could not be processed: {str(error).replace(str(video), name)}") from error


def _model_caveats(variant: str, loaded: LoadedModel, video: str) -> list[str]:
    """What the visitor must know about the model that ran: not the variant chosen, or the demo checkpoint
    on a video other than its synthetic example."""
    caveats = []
    kind = "audio-visual" if loaded.predictor.uses_audio else "visual-only"
    if kind != variant:
        uses = "these maps use the sound" if loaded.predictor.uses_audio else "these maps ignore the sound"
        caveats.append(f"**{variant} was chosen, but no {variant} model is available: the {kind} model "
                       f"`{loaded.model_id}` ran instead, so {uses}.**")
    if loaded.predictor.demo and not is_synthetic_example(video):
        caveats.append(f"**Warning: {demo_message('set as the Space variable DTFSAL_MODEL')}.**")
    return caveats


def _summary(name: str, info: VideoInfo, loaded: LoadedModel, frames: int, cut: bool, reason: str, elapsed: float,
             caveats: list[str] = ()) -> str:
    lines = [f"**{name}**: {frames} frames predicted with `{loaded.model_id}` in {elapsed:.1f} s.", *caveats]
    if cut:
        length = f"this {info.duration:.1f} s video" if info.duration else "this video"
        lines.append(f"Only the first part of {length} was processed: {reason}.")
    if not info.has_audio and loaded.predictor.uses_audio:
        lines.append("The video has no sound track: the audio-visual model heard silence.")
    if not loaded.predictor.trained:
        lines.append(f"Warning: {untrained_message(loaded.model_id)}.")
    if loaded.note:
        lines.append(loaded.note)
    return "\n\n".join(lines)


# The page


def _models_note() -> str:
    """The page's statement of the models it runs, and what the demo checkpoint is."""
    models = ", ".join(f"{variant}: `{model_id(variant)}`" for variant in VARIANTS)
    return (
        f"*Models: {models}. A model that cannot be loaded is replaced by the embedded demo checkpoint, which was "
        "trained only on synthetic videos of coloured discs with tones: it shows the pipeline on the example, and "
        "its maps of any other video mean nothing. The summary under the results names the model that ran.*"
    )


def example_videos() -> list[str]:
    """The synthetic clips bundled with the package, so the page works without an upload."""
    return sorted(str(path) for suffix in ("*.mp4", "*.avi", "*.mkv") for path in ASSETS.glob(suffix))


def build_demo() -> gr.Blocks:
    seconds, reason = length_cap()
    # delete_cache: gradio's copies of uploads and results go after an hour, as the results folders do.
    with gr.Blocks(title="DTFSal video saliency", delete_cache=(RESULTS_LIFETIME_S, RESULTS_LIFETIME_S)) as demo:
        gr.Markdown(
            "# DTFSal: audio-visual video saliency\n"
            "Where do people look in a video? DTFSal (BMVC 2025) predicts it from the pictures and the sound. "
            f"Upload a video or pick the example. *Length cap: {reason}.*\n\n"
            f"{_models_note()}"
        )
        with gr.Row():
            with gr.Column(scale=1):
                # A file box rather than a video player: browsers play few containers (no AVI, MKV...), and the
                # model reads them all; the overlay on the right is always playable.
                video = gr.File(label="Video", file_types=VIDEO_FILE_TYPES, elem_id="input-video")
                examples = example_videos()
                if examples:
                    gr.Examples(examples, inputs=video, label="Example (synthetic, with sound)")
                variant = gr.Radio(list(VARIANTS), value="audio-visual", label="Model",
                                   info="audio-visual: DTFSal; visual-only: DTFSal(V), which ignores the sound")
                stride = gr.Slider(1, 16, value=DEFAULT_STRIDE, step=1, label="Stride",
                                   info="predict every k-th frame; the frames between are interpolated in time")
                blur = gr.Slider(0.0, 8.0, value=0.0, step=0.5, label="Blur (sigma, pixels at the model's resolution)")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colour map")
                run = gr.Button("Predict saliency", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                overlay = gr.Video(label="Saliency overlay (with sound)", elem_id="overlay-video", interactive=False)
                summary = gr.Markdown(elem_id="summary")
                gallery = gr.Gallery(label="Heat maps", columns=4, rows=2, height="auto", object_fit="contain",
                                     format="png", elem_id="heat-maps")
                with gr.Row():
                    centre = gr.LinePlot(x="time (s)", y="position", color="coordinate", y_lim=[0, 1],
                                         title="Saliency centre of mass", elem_id="centre-plot")
                    entropy = gr.LinePlot(x="time (s)", y="entropy (bits)", title="Saliency entropy",
                                          elem_id="entropy-plot")
                download = gr.File(label="Maps (PNG, NPZ, CSV)", elem_id="download")
        run.click(
            predict,
            inputs=[video, variant, stride, blur, opacity, colormap],
            outputs=[overlay, gallery, centre, entropy, download, summary],
            api_name="predict",
            concurrency_limit=1,
        )
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address; locally it is 127.0.0.1:7860.
    build_demo().queue(max_size=16).launch(max_file_size=MAX_UPLOAD, allowed_paths=[str(ASSETS)])


if __name__ == "__main__":
    main()
