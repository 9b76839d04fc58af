"""DTFSalProcessor: videos + audio in one call, AutoProcessor registration, save/load, and loading as remote code
in a process where `dtfsal_hf` cannot be imported."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoProcessor, AutoVideoProcessor

from dtfsal_hf.clips import iter_clips
from dtfsal_hf.configuration_dtfsal import DTFSalConfig
from dtfsal_hf.feature_extraction_dtfsal import DTFSalFeatureExtractor
from dtfsal_hf.media import audio_window, iter_frames, load_audio
from dtfsal_hf.processing_dtfsal import DTFSalProcessor
from dtfsal_hf.remote_code import add_remote_code, remote_code_files
from dtfsal_hf.video_processing_dtfsal import DTFSalVideoProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
DHF1K_VIDEO = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"
PROCESSOR_CLASSES = {
    "AutoProcessor": DTFSalProcessor,
    "AutoFeatureExtractor": DTFSalFeatureExtractor,
    "AutoVideoProcessor": DTFSalVideoProcessor,
}


def register_auto_classes() -> None:
    AutoVideoProcessor.register(DTFSalConfig, DTFSalVideoProcessor, exist_ok=True)
    AutoFeatureExtractor.register(DTFSalConfig, DTFSalFeatureExtractor, exist_ok=True)
    AutoProcessor.register(DTFSalConfig, DTFSalProcessor, exist_ok=True)


def tiny_processor() -> DTFSalProcessor:
    return DTFSalProcessor.from_model_config(DTFSalConfig.tiny())


def sample_inputs(batch: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (8, 40, 60, 3), dtype=np.uint8) for _ in range(batch)]
    waveforms = [rng.normal(0, 0.1, 24560).astype(np.float32) for _ in range(batch)]
    return clips, waveforms


def test_videos_and_audio():
    clips, waveforms = sample_inputs()
    inputs = tiny_processor()(videos=clips, audio=waveforms, sampling_rate=16000)
    assert set(inputs) == {"pixel_values_videos", "input_features"}
    assert inputs["pixel_values_videos"].shape == (2, 8, 3, 64, 96)
    assert inputs["input_features"].shape == (2, 9, 1, 32, 48)
    assert inputs["pixel_values_videos"].dtype == inputs["input_features"].dtype == torch.float32


def test_paper_sizes_by_default():
    processor = DTFSalProcessor(DTFSalVideoProcessor(), DTFSalFeatureExtractor())
    inputs = processor(
        videos=np.zeros((32, 36, 64, 3), np.uint8), audio=np.zeros(24560, np.float32), sampling_rate=16000
    )
    assert inputs["pixel_values_videos"].shape == (1, 32, 3, 224, 384)
    assert inputs["input_features"].shape == (1, 9, 1, 112, 192)


def test_videos_only_for_the_visual_model():
    clips, _ = sample_inputs()
    inputs = tiny_processor()(videos=clips)
    assert set(inputs) == {"pixel_values_videos"}


def test_silent_audio_only_when_asked_and_with_a_warning():
    clips, _ = sample_inputs(3)
    with pytest.warns(UserWarning, match="silent audio"):
        inputs = tiny_processor()(videos=clips, silent_audio=True)
    assert inputs["input_features"].shape == (3, 9, 1, 32, 48)
    torch.testing.assert_close(inputs["input_features"], torch.full_like(inputs["input_features"], float(np.log(0.01))))


def test_inconsistent_calls_are_refused():
    clips, waveforms = sample_inputs()
    processor = tiny_processor()
    with pytest.raises(ValueError, match="got neither"):
        processor()
    with pytest.raises(ValueError, match="2 clips and 1 waveforms"):
        processor(videos=clips, audio=waveforms[:1], sampling_rate=16000)
    with pytest.raises(ValueError, match="cannot be combined"):
        processor(videos=clips, audio=waveforms, sampling_rate=16000, silent_audio=True)
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(videos=clips, audio=waveforms, sampling_rate=44100)


def test_real_video_clips_and_their_audio():
    if not DHF1K_VIDEO.is_file():
        pytest.skip(f"DHF1K sample video not found at {DHF1K_VIDEO}")
    processor = tiny_processor()
    track = load_audio(DHF1K_VIDEO)
    frames = (frame for frame in iter_frames(DHF1K_VIDEO) if frame.index < 60)
    windows = list(iter_clips(frames, num_frames=8, stride=20))
    assert [w.target.index for w in windows] == [0, 20, 40, 59]
    inputs = processor(
        videos=[w.images for w in windows],
        audio=[audio_window(track, w.end_time) for w in windows],
        sampling_rate=track.sampling_rate,
    )
    assert inputs["pixel_values_videos"].shape == (4, 8, 3, 64, 96)
    assert inputs["input_features"].shape == (4, 9, 1, 32, 48)
    # The first clip's audio starts before the file: its early examples are padding, its last one is sound.
    first = inputs["input_features"][0, :, 0]
    assert torch.allclose(first[0], torch.tensor(float(np.log(0.01))))
    assert first[-1].std() > 0.1


def test_save_and_load_round_trip(tmp_path):
    register_auto_classes()
    processor = tiny_processor()
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "DTFSalProcessor"
    assert saved["video_processor"]["num_frames"] == 8
    assert saved["feature_extractor"]["audio_input_size"] == [32, 48]
    clips, waveforms = sample_inputs()
    expected = processor(videos=clips, audio=waveforms, sampling_rate=16000)
    for loaded in (DTFSalProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, DTFSalProcessor)
        outputs = loaded(videos=clips, audio=waveforms, sampling_rate=16000)
        for key in expected:
            torch.testing.assert_close(outputs[key], expected[key])


def test_remote_code_files_are_the_three_processor_files():
    names = sorted(path.name for path in remote_code_files(PROCESSOR_CLASSES.values()))
    assert names == ["feature_extraction_dtfsal.py", "processing_dtfsal.py", "video_processing_dtfsal.py"]


def load_module_from(path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "statement, message",
    [
        ("from dtfsal_hf.media import iter_frames", "imports its own package"),
        ("import dtfsal_hf.clips", "imports its own package"),
        ("from ..media import iter_frames", "parent package"),
        ("from . import clips", "import modules by name"),
    ],
)
def test_remote_code_refuses_imports_that_break_once_copied(tmp_path, monkeypatch, statement, message):
    module_file = tmp_path / "dtfsal_hf" / "modeling_broken.py"
    module_file.parent.mkdir()
    # The import sits in a function so that loading the module here does not run it.
    module_file.write_text(f"def helper():\n    {statement}\n\n\nclass Broken:\n    pass\n")
    broken = load_module_from(module_file, monkeypatch).Broken
    with pytest.raises(ValueError, match=message):
        remote_code_files([broken])


REMOTE_LOAD_SCRIPT = """
import json, sys
import numpy as np
import torch
sys.modules["dtfsal_hf"] = None  # make sure the installed package cannot be used
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
inputs = processor(videos=np.load(sys.argv[2]), audio=np.load(sys.argv[3]), sampling_rate=16000)
torch.save({key: value for key, value in inputs.items()}, sys.argv[4])
"""


def test_plain_save_loads_without_the_package(tmp_path):
    folder = tmp_path / "processor"
    tiny_processor().save_pretrained(folder)  # nothing else: importing dtfsal_hf registered the classes
    assert sorted(path.name for path in folder.glob("*.py")) == [
        "feature_extraction_dtfsal.py", "processing_dtfsal.py", "video_processing_dtfsal.py"
    ]
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_dtfsal.DTFSalProcessor"}
    assert saved["video_processor"]["auto_map"]["AutoVideoProcessor"] == "video_processing_dtfsal.DTFSalVideoProcessor"
    assert saved["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == (
        "feature_extraction_dtfsal.DTFSalFeatureExtractor"
    )
    clips, waveforms = sample_inputs()
    np.save(tmp_path / "clips.npy", np.stack(clips))
    np.save(tmp_path / "audio.npy", np.stack(waveforms))
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    environment.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_LOAD_SCRIPT, str(folder), str(tmp_path / "clips.npy"),
         str(tmp_path / "audio.npy"), str(tmp_path / "outputs.pt")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "outputs.pt")
    local = tiny_processor()(videos=clips, audio=waveforms, sampling_rate=16000)
    for key in ("pixel_values_videos", "input_features"):
        torch.testing.assert_close(remote[key], local[key])


def test_add_remote_code_completes_a_folder_saved_without_it(tmp_path):
    """A folder saved by hand or by an older version: code files and auto_map entries are added."""
    folder = tmp_path / "processor"
    tiny_processor().save_pretrained(folder)
    for path in folder.glob("*.py"):
        path.unlink()
    saved = json.loads((folder / "processor_config.json").read_text())
    for entry in (saved, saved["video_processor"], saved["feature_extractor"]):
        entry.pop("auto_map")
    (folder / "processor_config.json").write_text(json.dumps(saved))
    copied = add_remote_code(folder, PROCESSOR_CLASSES)
    assert sorted(path.name for path in copied) == [
        "feature_extraction_dtfsal.py", "processing_dtfsal.py", "video_processing_dtfsal.py"
    ]
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_dtfsal.DTFSalProcessor"}
    assert saved["video_processor"]["auto_map"] == {"AutoVideoProcessor": "video_processing_dtfsal.DTFSalVideoProcessor"}
    assert saved["feature_extractor"]["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_dtfsal.DTFSalFeatureExtractor"
    }
