"""The Space (`space/app.py`), driven through its API with `gradio_client`.

The app runs as its own process on 127.0.0.1 (tests/space_server.py) with the untrained tiny model and a
2 s length cap, so a run takes seconds; the checks are on what a visitor gets: the overlay video with its
sound, the heat maps, the statistics, the download, and the messages for wrong input.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import time
import tomllib
import wave
import zipfile
from pathlib import Path

import gradio as gr
import httpx
import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import SpaceCard
from matplotlib import colormaps
from PIL import Image

import hostile_media
from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.inference import DEMO_CHECKPOINT
from dtfsal_hf.media import VideoInfo, load_audio, probe_video, read_frames
from dtfsal_hf.npz_stream import NpzMapWriter
from dtfsal_hf.processing_dtfsal import DTFSalProcessor
from space_server import APP, DHF1K_CLIP, REPO_ROOT, running_space

CAP_SECONDS = 2.0
needs_clip = pytest.mark.skipif(not DHF1K_CLIP.is_file(), reason=f"the DHF1K clip is not at {DHF1K_CLIP}")


def _load_app():
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return _load_app()


@pytest.fixture(scope="module")
def visual_model(tmp_path_factory):
    """A saved tiny DTFSal(V) folder: the visual-only variant loaded from a path, as a Space variable may give."""
    folder = tmp_path_factory.mktemp("dtfsal-v-tiny")
    model = DTFSalModel(DTFSalConfig.tiny(use_audio=False))
    model.save_pretrained(folder)
    DTFSalProcessor.from_model_config(model.config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory, visual_model):
    log = tmp_path_factory.mktemp("space") / "space.log"
    with running_space(log, {"DTFSAL_MODEL_VISUAL": str(visual_model)}) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def dhf1k_run(client):
    """(outputs, progress updates seen while it ran) of one run on the DHF1K clip."""
    if not DHF1K_CLIP.is_file():
        pytest.skip(f"the DHF1K clip is not at {DHF1K_CLIP}")
    job = client.submit(handle_file(str(DHF1K_CLIP)), "audio-visual", 8, 1.0, 0.5, "jet", api_name="/predict")
    updates = set()
    while not job.done():
        for unit in job.status().progress_data or []:
            updates.add((unit.desc, unit.index, unit.length, unit.unit))
        time.sleep(0.02)
    return job.result(), updates


@pytest.fixture(scope="module")
def dhf1k_result(dhf1k_run):
    return dhf1k_run[0]


# The Space's files


def test_readme_front_matter_names_the_app_and_its_models(app):
    card = SpaceCard.load(APP.parent / "README.md").data
    assert card.sdk == "gradio"
    assert (APP.parent / card.app_file) == APP
    assert card.models == [app.DEFAULT_MODEL, app.DEFAULT_VISUAL_MODEL]
    import gradio

    assert card.sdk_version.split(".")[0] == gradio.__version__.split(".")[0]


def test_requirements_cover_the_package_dependencies():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    name = re.compile(r"^[A-Za-z0-9_.-]+")
    needed = {name.match(spec).group(0).lower() for spec in pyproject["project"]["dependencies"]}
    lines = (APP.parent / "requirements.txt").read_text().splitlines()
    listed = {name.match(line).group(0).lower() for line in lines if line.strip() and not line.startswith("#")}
    assert needed <= listed, f"missing from space/requirements.txt: {sorted(needed - listed)}"


# Settings


def test_model_ids_come_from_the_environment(app, monkeypatch):
    monkeypatch.delenv("DTFSAL_MODEL", raising=False)
    monkeypatch.setenv("DTFSAL_MODEL_VISUAL", "some-org/dtfsal-v")
    assert app.model_id("audio-visual") == app.DEFAULT_MODEL
    assert app.model_id("visual-only") == "some-org/dtfsal-v"


def test_length_cap_is_set_by_environment_and_explained(app, monkeypatch):
    monkeypatch.setenv("DTFSAL_DEVICE", "cpu")
    monkeypatch.delenv("DTFSAL_MAX_SECONDS", raising=False)
    seconds, reason = app.length_cap()
    assert seconds == app.CPU_MAX_SECONDS
    assert reason == "this Space runs on CPU only, so each video is limited to its first 10 s"
    monkeypatch.setenv("DTFSAL_MAX_SECONDS", "3.5")
    assert app.length_cap()[0] == 3.5
    monkeypatch.setenv("DTFSAL_MAX_SECONDS", "0")
    with pytest.raises(ValueError, match="DTFSAL_MAX_SECONDS must be positive, got 0"):
        app.length_cap()


@pytest.mark.skipif(not (DEMO_CHECKPOINT / "config.json").is_file(), reason=f"no demo checkpoint at {DEMO_CHECKPOINT}")
def test_unreachable_hub_model_falls_back_to_the_demo_checkpoint(app, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setenv("DTFSAL_DEVICE", "cpu")
    monkeypatch.setenv("DTFSAL_MODEL", "dtfsal-hf/not-published")
    loaded = app.load_model("audio-visual")
    assert loaded.model_id == "demo" and loaded.predictor.trained
    assert loaded.note.startswith("`dtfsal-hf/not-published` could not be loaded (")
    assert loaded.note.endswith("so the embedded audio-visual demo checkpoint is used.")


@pytest.mark.skipif(not (DEMO_CHECKPOINT / "config.json").is_file(), reason=f"no demo checkpoint at {DEMO_CHECKPOINT}")
def test_visual_only_without_its_model_says_what_ran(app, monkeypatch):
    """The fallback for a visual-only model that cannot be loaded is the audio-visual demo checkpoint: the
    summary says so (and what the demo checkpoint is), instead of passing its maps off as visual-only ones."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("DTFSAL_DEVICE", "cpu")
    monkeypatch.setenv("DTFSAL_MODEL_VISUAL", "dtfsal-hf/visual-not-published")
    loaded = app.load_model("visual-only")
    assert loaded.predictor.uses_audio
    other_video = str(DHF1K_CLIP)
    caveats = app._model_caveats("visual-only", loaded, other_video)
    assert caveats[0] == ("**visual-only was chosen, but no visual-only model is available: the audio-visual model "
                          "`demo` ran instead, so these maps use the sound.**")
    assert "trained only on synthetic videos of coloured discs" in caveats[1] and "DTFSAL_MODEL" in caveats[1]
    # On its own synthetic example the demo checkpoint is what it claims to be; audio-visual was asked for.
    assert app._model_caveats("audio-visual", loaded, app.example_videos()[0]) == []


def test_no_loadable_model_gives_both_reasons(app, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("DTFSAL_MODEL_VISUAL", "dtfsal-hf/not-published-either")
    monkeypatch.setattr(app, "FALLBACK_MODEL", str(tmp_path / "no-checkpoint-here"))
    with pytest.raises(gr.Error, match=r"`dtfsal-hf/not-published-either` could not be loaded \(.+\), nor the embedded demo checkpoint \(.+\)"):
        app.load_model("visual-only")


# A run on the DHF1K clip


@needs_clip
def test_overlay_video_is_the_capped_clip_with_sound(dhf1k_result):
    overlay = dhf1k_result[0]
    info, source = probe_video(overlay), probe_video(DHF1K_CLIP)
    assert (info.width, info.height) == (source.width, source.height)
    assert info.video_codec == "h264" and info.has_audio and info.audio_codec == "aac"
    frames, times = read_frames(overlay)
    assert len(frames) == round(CAP_SECONDS * source.fps)  # 60 frames at 30 fps
    assert times[-1] < CAP_SECONDS
    sound = load_audio(overlay)
    assert abs(sound.duration - CAP_SECONDS) < 0.1 and np.abs(sound.waveform).max() > 0.01


@needs_clip
def test_gallery_shows_coloured_heat_maps(dhf1k_result, app):
    gallery = dhf1k_result[1]
    assert len(gallery) == app.GALLERY_SIZE
    assert gallery[0]["caption"] == "frame 1 · 0.00 s"
    assert gallery[-1]["caption"] == "frame 60 · 1.97 s"
    image = np.asarray(Image.open(gallery[-1]["image"]))
    assert image.shape == (360, 640, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # a colour map, not a flat image
    with np.load(io.BytesIO(zipfile.ZipFile(dhf1k_result[4]).read("maps.npz"))) as saved:
        last_map = saved["maps"][-1]
    expected = (colormaps["jet"](last_map / 255.0)[..., :3] * 255).astype(np.uint8)
    assert np.abs(image.astype(int) - expected).max() <= 1  # the last map, coloured with the chosen map


@needs_clip
def test_download_holds_every_map_and_the_statistics(dhf1k_result):
    with zipfile.ZipFile(dhf1k_result[4]) as bundle:
        names = bundle.namelist()
        assert sum(name.startswith("maps/") and name.endswith(".png") for name in names) == 60
        with np.load(io.BytesIO(bundle.read("maps.npz"))) as saved:
            maps, times = saved["maps"], saved["times"]
        table = pd.read_csv(io.BytesIO(bundle.read("statistics.csv")))
    assert maps.shape == (60, 360, 640) and maps.dtype == np.uint8
    assert list(table.columns[:2]) == ["frame", "time_s"] and list(table["frame"]) == list(range(1, 61))
    np.testing.assert_allclose(table["time_s"], times, atol=1e-6)
    # The centre of mass and entropy of the last map, computed here from the map itself.
    weights = maps[-1].astype(np.float64) / maps[-1].sum()
    height, width = maps.shape[1:]
    np.testing.assert_allclose(table["center_x_norm"].iloc[-1], (weights.sum(0) * np.arange(width)).sum() / width, atol=1e-6)
    np.testing.assert_allclose(table["center_y_norm"].iloc[-1], (weights.sum(1) * np.arange(height)).sum() / height, atol=1e-6)
    positive = weights[weights > 0]
    np.testing.assert_allclose(table["entropy"].iloc[-1], -(positive * np.log2(positive)).sum(), rtol=1e-6)


@needs_clip
def test_plots_follow_the_statistics_over_time(dhf1k_result):
    centre, entropy = dhf1k_result[2], dhf1k_result[3]
    centre_rows = pd.DataFrame(centre["data"], columns=centre["columns"])
    assert sorted(centre_rows["coordinate"].unique()) == ["x (of width)", "y (of height)"]
    assert len(centre_rows) == 2 * 60 and centre_rows["position"].between(0, 1).all()
    entropy_rows = pd.DataFrame(entropy["data"], columns=entropy["columns"])
    assert len(entropy_rows) == 60 and entropy_rows["time (s)"].is_monotonic_increasing


@needs_clip
def test_progress_is_reported_while_it_runs(dhf1k_run):
    updates = dhf1k_run[1]
    assert ("Loading the model", None, None, "steps") in updates
    assert ("Predicting saliency", 60, 60, "frames") in updates


@needs_clip
def test_summary_says_the_video_was_cut_and_why(dhf1k_result):
    summary = dhf1k_result[5]
    assert "**002.AVI**: 60 frames predicted with `random-tiny`" in summary
    assert "Only the first part of this 26.1 s video was processed" in summary
    assert "limited to its first 2 s" in summary


@needs_clip
def test_visual_only_variant_uses_its_own_model(client, visual_model):
    result = client.predict(handle_file(str(DHF1K_CLIP)), "visual-only", 16, 0.0, 0.8, "viridis", api_name="/predict")
    assert f"predicted with `{visual_model}`" in result[5]
    assert probe_video(result[0]).has_audio  # the overlay keeps the sound even when the model ignores it


def test_the_page_says_which_models_run_and_what_the_demo_checkpoint_is(client):
    config = httpx.get(client.src.rstrip("/") + "/config", timeout=10).json()
    text = " ".join(str(c["props"].get("value", "")) for c in config["components"] if c.get("type") == "markdown")
    assert "audio-visual: `random-tiny`" in text and "visual-only: `" in text
    assert "demo checkpoint, which was trained only on synthetic videos of coloured discs" in text
    assert "its maps of any other video mean nothing" in text


def test_the_bundled_example_is_offered_and_runs(client, app):
    examples = app.example_videos()
    if not examples:
        pytest.skip(f"no example clip bundled in {app.ASSETS}")
    config = httpx.get(client.src.rstrip("/") + "/config", timeout=10).json()
    offered = [str(sample) for c in config["components"] if c.get("type") == "dataset" for sample in c["props"]["samples"]]
    assert any(Path(examples[0]).name in sample for sample in offered)
    result = client.predict(handle_file(examples[0]), "audio-visual", 8, 0.0, 0.5, "jet", api_name="/predict")
    assert probe_video(result[0]).has_audio and len(result[1]) > 0


# Wrong input


def test_a_file_that_is_not_a_video_gets_a_readable_message(client, tmp_path):
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is a text file, not a video\n")
    with pytest.raises(AppError, match=r"holiday\.mp4 cannot be used: .*Upload a video file") as error:
        client.predict(handle_file(str(fake)), "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")
    assert "Traceback" not in str(error.value) and str(tmp_path) not in str(error.value)


def _write_silence(path):
    with wave.open(str(path), "wb") as recording:
        recording.setnchannels(1), recording.setsampwidth(2), recording.setframerate(16000)
        recording.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    return path


def test_a_sound_file_gets_a_readable_message(client, tmp_path):
    sound = _write_silence(tmp_path / "interview.wav")
    with pytest.raises(AppError, match=r"Invalid file type\. Please upload a file that is one of these formats: \['video', '\.mp4'"):
        client.predict(handle_file(str(sound)), "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")
    # The same sound under a video's name passes the type check; the app names what the file holds.
    disguised = _write_silence(tmp_path / "interview.mp4")
    with pytest.raises(AppError, match=r"interview\.mp4 cannot be used: interview\.mp4 has no video stream \(streams found: \['audio'\]\)"):
        client.predict(handle_file(str(disguised)), "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")


def test_no_video_gets_a_readable_message(client):
    with pytest.raises(AppError, match="No video: upload one or pick the example"):
        client.predict(None, "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")


def test_options_outside_their_choices_are_refused(client):
    if not DHF1K_CLIP.is_file():
        pytest.skip(f"the DHF1K clip is not at {DHF1K_CLIP}")
    with pytest.raises(AppError, match=r"Value: rainbow-ish is not in the list of choices: \['jet', "):
        client.predict(handle_file(str(DHF1K_CLIP)), "audio-visual", 4, 0.0, 0.5, "rainbow-ish", api_name="/predict")
    with pytest.raises(AppError, match=r"Value 0 is less than minimum value 1"):
        client.predict(handle_file(str(DHF1K_CLIP)), "audio-visual", 0, 0.0, 0.5, "jet", api_name="/predict")


# Hostile input: large frames, long large videos, odd names, 7.1 sound


def test_frames_over_the_pixel_cap_are_refused(app, monkeypatch, tmp_path):
    video = hostile_media.make_clip(tmp_path / "wide.mp4", num_frames=4, size=(48, 64))
    monkeypatch.setenv("DTFSAL_MAX_FRAME_PIXELS", str(64 * 48 - 1))
    with pytest.raises(gr.Error, match=r"wide\.mp4 is 64x48 \(0\.0 megapixels a frame\): this Space takes frames of up to"):
        app.check_video(str(video))
    monkeypatch.setenv("DTFSAL_MAX_FRAME_PIXELS", str(64 * 48))
    assert app.check_video(str(video)).width == 64
    monkeypatch.delenv("DTFSAL_MAX_FRAME_PIXELS")
    assert app.frame_pixels_cap() == 2560 * 1440


def test_frame_cap_counts_pixels_as_well_as_seconds(app):
    def info(width, height, seconds, fps=30.0):
        return VideoInfo("v.mp4", width, height, 0, fps, int(seconds * fps), seconds, "h264", True)

    budget = 10 * 30 * 1920 * 1080
    assert app.frame_cap(info(1920, 1080, 8.0), 10.0, budget) is None  # within both caps
    assert app.frame_cap(info(1920, 1080, 20.0), 10.0, budget) == 300  # the time cap
    assert app.frame_cap(info(2560, 1440, 20.0), 10.0, budget) == budget // (2560 * 1440)  # 168 frames, 5.6 s
    assert app.frame_cap(info(640, 360, 20.0), 10.0, budget) == 300
    reason = app.cap_reason(info(2560, 1440, 20.0), 168, "time", budget)
    assert reason.startswith("at 2560x1440 this Space processes 168 frames (5.6 s;")
    assert app.cap_reason(info(640, 360, 20.0), 300, "the time cap", budget) == "the time cap"


def test_gallery_of_large_maps_is_shrunk_and_read_one_map_at_a_time(app, tmp_path):
    maps = np.zeros((5, 1440, 2560), np.uint8)
    maps[:, 700:740, 1200:1300] = 255
    writer = NpzMapWriter(tmp_path / "maps.npz")
    for index, saliency_map in enumerate(maps):
        writer.add(saliency_map, index / 30)
    writer.close()
    gallery = app.heat_maps(tmp_path / "maps.npz", np.arange(5) / 30, "jet", count=3)
    assert [caption for _, caption in gallery] == ["frame 1 · 0.00 s", "frame 3 · 0.07 s", "frame 5 · 0.13 s"]
    assert all(image.shape == (540, 960, 3) for image, _ in gallery)
    red = (np.asarray(colormaps["jet"](1.0)[:3]) * 255).astype(np.uint8)
    assert (gallery[0][0][270, 469] == red).all()  # the hot block, at its place in the smaller picture


def test_an_upload_named_dots_stays_in_its_run_folder(client, app, tmp_path):
    """`...mp4` has the stem `..`: its outputs went to the Space's results folder itself, beside other runs."""
    video = hostile_media.make_clip(tmp_path / "...mp4", num_frames=8)
    result = client.predict(handle_file(str(video)), "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")
    assert result[5].startswith("**...mp4**: 8 frames predicted")  # the name reached the app as it was
    assert probe_video(result[0]).has_audio
    assert not any((app.RESULTS_DIR / name).exists() for name in ("overlay.mp4", "maps", "maps.npz", "done.json"))


def test_an_upload_with_71_sound_is_predicted_with_its_sound(client, tmp_path):
    """A 7.1 track used to end the Space's process."""
    video = hostile_media.make_clip(tmp_path / "surround.mp4", num_frames=12, layout="7.1")
    result = client.predict(handle_file(str(video)), "audio-visual", 4, 0.0, 0.5, "jet", api_name="/predict")
    overlay = load_audio(result[0])
    assert np.abs(overlay.waveform).max() > 0.05 and "12 frames predicted" in result[5]
