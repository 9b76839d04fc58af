"""The `video-saliency` pipeline: a video (or frames and their sound) in, saliency maps at its resolution out.

```python
from transformers import pipeline

saliency = pipeline("video-saliency", model="path/or/hub-id", trust_remote_code=True)
result = saliency("clip.mp4", stride=4)     # result["maps"]: (frames, height, width) float32 in [0, 1]
```

Importing `dtfsal_hf` registers the task; a folder written by `DTFSalVideoSaliencyPipeline.save_pretrained` (or
`dtfsal_hf.remote_code.add_pipeline`) names it in its `config.json` (`custom_pipelines`) and holds this file, so
the pipeline loads with `trust_remote_code=True` where `dtfsal_hf` is not installed. It runs `SaliencyLoop`, the
loop `dtfsal predict` runs: for the same settings its maps are those of `maps.npz` (before their 8-bit rounding).
"""

from __future__ import annotations

import numpy as np
from transformers import Pipeline

from .saliency_loop import SaliencyLoop

TASK = "video-saliency"


class DTFSalVideoSaliencyPipeline(Pipeline):
    """Saliency maps of a whole video.

    Call it with a video file or a folder of frame images; frames in memory (a list of `(height, width, 3)` uint8
    RGB images, or an iterable of `(image, time)` pairs) go in a dict, `{"frames": ..., "audio": waveform,
    "sampling_rate": 16000, "fps": 25}` (a plain list would be read as a batch of videos). Options:

    - `audio`: a file, or a mono waveform with `sampling_rate`; default: the video's own sound (silence, with a
      warning, without one);
    - `fps`: the rate of frames given without times (default 30);
    - `stride` (1), `alignment` (`"last"` or `"center"`), `batch_size` (clips per model call, 4), `normalize`
      (`"max"`, or None for the model's values), `blur_sigma` (0), `max_frames` (all).

    The device and dtype are the pipeline's own (`pipeline(..., device="cuda", dtype=torch.bfloat16)`). Returns a
    dict: `maps` `(frames, height, width)` float32 in [0, 1] at the frames' resolution, and `times` `(frames,)`
    float64, each frame's start in seconds.
    """

    _load_processor = True
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    _LOOP_OPTIONS = ("stride", "alignment", "batch_size", "normalize")
    _CALL_OPTIONS = ("audio", "sampling_rate", "fps", "blur_sigma", "max_frames")

    def _sanitize_parameters(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self._LOOP_OPTIONS) - set(self._CALL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown options {unknown}; the video-saliency pipeline takes "
                             f"{', '.join(self._LOOP_OPTIONS + self._CALL_OPTIONS)}")
        forward = {name: kwargs[name] for name in self._LOOP_OPTIONS + self._CALL_OPTIONS if name in kwargs}
        return {}, forward, {}

    def preprocess(self, inputs):
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - {"frames", "audio", "sampling_rate", "fps"})
            if "frames" not in inputs or unknown:
                raise ValueError(f"a dict input holds `frames` and optionally `audio`, `sampling_rate`, `fps`; got "
                                 f"{sorted(inputs)}")
            return dict(inputs)
        return {"frames": inputs}

    def _forward(self, model_inputs, stride: int = 1, alignment: str = "last", batch_size: int = 4,
                 normalize: str | None = "max", **options):
        loop = SaliencyLoop(self.model, self.processor, batch_size=batch_size, stride=stride, alignment=alignment,
                            normalize=normalize)
        frames = model_inputs.pop("frames")
        options = {**options, **model_inputs}
        maps, times = [], []
        for frame, saliency_map in loop.iter_maps(frames, progress=False, **options):
            maps.append(saliency_map.astype(np.float32))
            times.append(frame.time)
        return {"maps": np.stack(maps), "times": np.asarray(times, dtype=np.float64)}

    def postprocess(self, model_outputs):
        return model_outputs


def register_pipeline() -> None:
    """Register `video-saliency` with transformers' pipeline registry (for `pipeline("video-saliency", ...)`)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=DTFSalVideoSaliencyPipeline, pt_model=AutoModel,
                                            type="multimodal")


__all__ = ["DTFSalVideoSaliencyPipeline", "TASK", "register_pipeline"]
