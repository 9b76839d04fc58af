"""Run Python code in a fresh process where `dtfsal_hf` cannot be imported.

An import blocker goes first on `sys.meta_path`, so neither an editable install nor the checkout on
`sys.path` can provide the package: what loads must come from a saved folder's own files.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_PACKAGE = textwrap.dedent(
    """
    import sys

    class _BlockPackage:
        def find_spec(self, name, path=None, target=None):
            if name == "dtfsal_hf" or name.startswith("dtfsal_hf."):
                raise ModuleNotFoundError(f"{name} is blocked in this process")

    sys.meta_path.insert(0, _BlockPackage())
    try:
        import dtfsal_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("dtfsal_hf was importable")
    """
)


def run_without_package(code: str, cwd, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` with `dtfsal_hf` blocked; raise with the process's output if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# Loads each folder with AutoModel / AutoProcessor and trust_remote_code=True, runs processor, model and
# post-processing on the saved clips and waveforms, and saves every tensor for the test to compare.
_MAPS_SCRIPT = """
    import json
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor

    torch.set_num_threads({threads})
    data = np.load({inputs!r})
    classes = []
    for index, folder in enumerate({folders!r}):
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        parts = (model, processor, processor.video_processor, processor.feature_extractor)
        classes.append([f"{{type(part).__module__.split('.')[0]}}:{{type(part).__name__}}" for part in parts])
        inputs = processor(videos=list(data["clips"]), audio=list(data["waveforms"]), sampling_rate=16000)
        with torch.inference_mode():
            raw = model(**inputs).saliency_map
        maps = torch.stack(processor.post_process_saliency(raw, target_sizes=tuple(data["size"])))
        save_file({{"pixel_values_videos": inputs["pixel_values_videos"], "input_features": inputs["input_features"],
                    "raw": raw.contiguous(), "maps": maps}}, {output!r} + f"/{{index}}.safetensors")
    print(json.dumps(classes))
"""


def real_clip_inputs(video, num_frames: int, targets, num_samples: int = 24560) -> dict:
    """The clips (as `SaliencyPredictor` builds them: causal, the first frame repeated at the start) and audio
    windows of the `targets` frames of a real video, with the video's (height, width)."""
    import numpy as np

    from dtfsal_hf.clips import iter_clips
    from dtfsal_hf.media import audio_window, iter_frames, load_audio

    track = load_audio(video)
    frames = (frame for frame in iter_frames(video) if frame.index <= max(targets))
    windows = [window for window in iter_clips(frames, num_frames) if window.target.index in set(targets)]
    clips = np.stack([window.images for window in windows])
    return {
        "clips": clips,
        "waveforms": np.stack([audio_window(track, window.end_time, num_samples) for window in windows]),
        "size": np.asarray(clips.shape[2:4]),
    }


def maps_without_package(folders, inputs: dict, work_dir) -> tuple[list[dict], list]:
    """For each saved folder, what processor + model + `post_process_saliency` give on `inputs` in a process where
    `dtfsal_hf` cannot be imported: `([{pixel_values_videos, input_features, raw, maps}], [class names])`."""
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import load_file

    work_dir = Path(work_dir)
    np.savez(work_dir / "inputs.npz", **inputs)
    code = _MAPS_SCRIPT.format(threads=torch.get_num_threads(), inputs=str(work_dir / "inputs.npz"),
                               folders=[str(folder) for folder in folders], output=str(work_dir))
    result = run_without_package(code, cwd=work_dir, env=_offline_env(work_dir))
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    return [load_file(work_dir / f"{index}.safetensors") for index in range(len(folders))], classes


def _offline_env(work_dir) -> dict:
    import os

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HOME=str(work_dir) + "/hf_home", HF_HUB_OFFLINE="1")
    return env


def maps_with_package(folder, inputs: dict) -> dict:
    """The same as `maps_without_package`, with the package's classes loaded from `folder`."""
    import torch

    from dtfsal_hf import DTFSalModel, DTFSalProcessor

    model = DTFSalModel.from_pretrained(folder).eval()
    processor = DTFSalProcessor.from_pretrained(folder)
    features = processor(videos=list(inputs["clips"]), audio=list(inputs["waveforms"]), sampling_rate=16000)
    with torch.inference_mode():
        raw = model(**features).saliency_map
    maps = torch.stack(processor.post_process_saliency(raw, target_sizes=tuple(inputs["size"])))
    return {"pixel_values_videos": features["pixel_values_videos"], "input_features": features["input_features"],
            "raw": raw, "maps": maps}


def check_remote_model_equals(model, folder, work_dir, loaded_class: str = "model") -> None:
    """Save `model` to `folder`, load it there with `AutoModel` and `trust_remote_code=True` where this package cannot
    be imported, and check that its maps on random inputs equal the package model's exactly; `loaded_class` names
    the object whose class must come from the remote code (`"model"`, or an attribute path such as
    `"model.decoder"`)."""
    import torch

    model.save_pretrained(folder)
    inputs = type(model).build_dummy_inputs(model.config)
    torch.save(inputs, Path(work_dir) / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).saliency_map, Path(work_dir) / "expected.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type({loaded_class}).__module__.startswith("transformers_modules"), type({loaded_class}).__module__
        inputs = torch.load({str(Path(work_dir) / 'inputs.pt')!r})
        with torch.no_grad():
            assert torch.equal(model(**inputs).saliency_map, torch.load({str(Path(work_dir) / 'expected.pt')!r}))
        """,
        cwd=work_dir,
    )
