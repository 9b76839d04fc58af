"""Video in, saliency maps out: the predictor behind `dtfsal predict`, the Space, evaluation, the benchmark and the
`video-saliency` pipeline.

- `loading.py`: model ids to models (`load_model_and_processor`: folders, Hub ids, `demo`, `random`, `random-tiny`).
- `runtime.py`: `Runtime`, how the model runs (attention kernel, cast or autocast, float32 islands, channels-last,
  compile) and its named `PRESETS`.
- `predictor.py`: `SaliencyPredictor`, a model run over whole videos (`iter_maps`, `predict_video`).
- `outputs.py`: what `dtfsal predict` writes for one video (`predict_to_folder`) and map statistics.
- `jobs.py`: many videos, shared between processes (`predict_videos`, `predict_job`).

Every public name is importable from `dtfsal_hf.inference`.
"""

from ..npz_stream import iter_npz_maps
from .jobs import VIDEO_EXTENSIONS, VideoResult, find_videos, predict_job, predict_videos, process_share
from .loading import (
    DEMO_CHECKPOINT,
    RANDOM_MODELS,
    SYNTHETIC_EXAMPLE_NAME,
    demo_message,
    is_demo_checkpoint,
    is_synthetic_example,
    load_model_and_processor,
    untrained_message,
)
from .outputs import (
    MARKER_NAME,
    STATISTICS,
    check_overlay_options,
    finished_marker,
    output_name,
    output_paths,
    predict_to_folder,
    saliency_statistics,
    source_identity,
    to_uint8,
)
from ..saliency_loop import ALIGNMENTS, IMAGE_EXTENSIONS, ProgressCallback, SaliencyLoop, frame_source, prefetch
from .predictor import SaliencyPredictor, VideoSaliency
from .runtime import (FLOAT32_ENDS, NATIVE_CPU_FLAGS, PRESETS, Runtime, cpu_native_flags, keep_float32, keep_freed_memory,
                      preset, release_freed_memory, resolve_dtype)

__all__ = [
    "ALIGNMENTS",
    "DEMO_CHECKPOINT",
    "FLOAT32_ENDS",
    "IMAGE_EXTENSIONS",
    "MARKER_NAME",
    "NATIVE_CPU_FLAGS",
    "PRESETS",
    "RANDOM_MODELS",
    "STATISTICS",
    "SYNTHETIC_EXAMPLE_NAME",
    "VIDEO_EXTENSIONS",
    "ProgressCallback",
    "Runtime",
    "SaliencyLoop",
    "SaliencyPredictor",
    "VideoResult",
    "VideoSaliency",
    "check_overlay_options",
    "cpu_native_flags",
    "demo_message",
    "find_videos",
    "finished_marker",
    "frame_source",
    "is_demo_checkpoint",
    "is_synthetic_example",
    "iter_npz_maps",
    "keep_float32",
    "keep_freed_memory",
    "load_model_and_processor",
    "output_name",
    "output_paths",
    "predict_job",
    "predict_to_folder",
    "predict_videos",
    "prefetch",
    "preset",
    "release_freed_memory",
    "process_share",
    "resolve_dtype",
    "saliency_statistics",
    "source_identity",
    "to_uint8",
    "untrained_message",
]
