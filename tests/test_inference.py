"""SaliencyPredictor, predict_to_folder and saliency_statistics on small generated videos and real clips."""

import json
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from dtfsal_hf import DTFSalConfig, DTFSalModel, DTFSalProcessor, inference, media
from dtfsal_hf.clips import iter_clips
from dtfsal_hf.inference import SaliencyPredictor, predict_to_folder, saliency_statistics
from videos import FPS, SIZE, streams_of, write_test_video

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
DHF1K_VIDEO = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"
def dhf1k_video() -> Path:
    if not DHF1K_VIDEO.is_file():
        pytest.skip(f"DHF1K sample clip not found at {DHF1K_VIDEO}")
    return DHF1K_VIDEO


@pytest.fixture(scope="module")
def predictor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SaliencyPredictor.from_pretrained("random-tiny", batch_size=4)


@pytest.fixture(scope="module")
def video(test_video) -> Path:
    return test_video


@pytest.fixture(scope="module")
def prediction(predictor, video):
    return predictor.predict_video(video, progress=False)


@pytest.fixture(scope="module")
def written(predictor, video, tmp_path_factory):
    output = tmp_path_factory.mktemp("predictions")
    return predict_to_folder(predictor, video, output, progress=False), output


# --- predictor -------------------------------------------------------------------------------------------


def test_maps_at_video_resolution(prediction):
    assert prediction.maps.shape == (12, *SIZE)
    assert prediction.maps.dtype == np.float32
    assert 0.0 <= prediction.maps.min()
    np.testing.assert_allclose(prediction.maps.max(axis=(1, 2)), 1.0, atol=1e-6)  # every frame is a target here
    assert prediction.size == SIZE and prediction.fps == FPS and prediction.has_audio
    np.testing.assert_allclose(prediction.times, np.arange(12) / FPS, atol=1e-6)


def test_streaming_gives_the_same_maps_and_the_frames(predictor, video, prediction):
    indices = []
    for index, image, saliency_map in predictor.iter_video_maps(video, progress=False):
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        np.testing.assert_allclose(saliency_map, prediction.maps[index], atol=1e-5)
        indices.append(index)
    assert indices == list(range(12))


def test_maps_follow_the_model_on_each_clip(predictor, video, prediction):
    """Frame 5's map is the model's output on the causal clip of frames 0..5 (first frame repeated)."""
    frames = [frame.image for frame in media.iter_frames(video)]
    num_frames = predictor.model.config.num_frames
    indices = [max(index, 0) for index in range(5 - num_frames + 1, 6)]
    clip = np.stack([frames[index] for index in indices])
    # Each frame at its own time, the repeated first frame included; the audio ends with frame 5.
    times = [(index / FPS, (index + 1) / FPS) for index in indices]
    track = media.load_audio(video)
    window = media.audio_window(track, 6 / FPS, predictor.processor.feature_extractor.num_samples)
    model_map = predictor.predict_clips([clip], [window], [times])
    expected = predictor.processor.post_process_saliency(model_map, target_sizes=SIZE, normalize=None)[0].numpy()
    np.testing.assert_allclose(prediction.maps[5], expected / expected.max(), atol=1e-5)
    raw = SaliencyPredictor(predictor.model, predictor.processor, normalize=None)
    np.testing.assert_allclose(raw.predict_video(video, max_frames=6, progress=False).maps[5], expected, atol=1e-5)
    # The processor's default scaling is the predictor's: the same maps from processor + model alone.
    default = predictor.processor.post_process_saliency(model_map, target_sizes=SIZE)[0].numpy()
    np.testing.assert_allclose(prediction.maps[5], default, atol=1e-5)


def test_the_model_gets_each_frames_decoded_time(predictor, tmp_path, monkeypatch):
    """Variable frame rate, stride and centre alignment: the frame times the model sees are the decoded ones,
    relative to the end of the clip's audio window (the end of its last frame)."""
    path = tmp_path / "vfr.mkv"
    pts = [0, 1, 2, 4, 5, 9, 10, 11, 12, 14]  # in 1/25 s: gaps of 2 and 4 frame periods
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 25)
        for value in pts:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * value, np.uint8), format="rgb24")
            frame.pts, frame.time_base = value, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    decoded = list(media.iter_frames(path))
    seen = []
    forward = predictor.model.forward
    monkeypatch.setattr(predictor.model, "forward", lambda **kw: seen.append(kw["frame_times"]) or forward(**kw))
    for alignment, stride in (("last", 1), ("center", 3)):
        seen.clear()
        runner = SaliencyPredictor(predictor.model, predictor.processor, alignment=alignment, stride=stride, batch_size=2)
        windows = list(iter_clips(media.iter_frames(path), 8, alignment, stride))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no sound: silent features
            runner.predict_video(path, progress=False)
        times = torch.cat(seen)
        assert times.shape == (len(windows), 8, 2)
        for window, got in zip(windows, times):
            expected = [(f.time - window.end_time, f.end_time - window.end_time) for f in window.frames]
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert decoded[5].time == pytest.approx(9 / 25) and decoded[4].end_time == pytest.approx(9 / 25)


def test_stride_predicts_targets_and_interpolates_between(predictor, video, prediction):
    strided = predictor.predict_video(video, stride=4, progress=False)
    assert strided.maps.shape == prediction.maps.shape
    for target in (0, 4, 8, 11):
        np.testing.assert_allclose(strided.maps[target], prediction.maps[target], atol=1e-5)
    halfway = 0.5 * (strided.maps[4] + strided.maps[8])
    np.testing.assert_allclose(strided.maps[6], halfway, atol=1e-5)


def test_progress_callback_counts_frames(predictor, video):
    calls = []
    predictor.predict_video(video, max_frames=7, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 7) for done in range(1, 8)]


def test_uint8_maps_blur_and_max_frames(predictor, video, prediction):
    result = predictor.predict_video(video, max_frames=9, blur_sigma=3.0, map_dtype="uint8", progress=False)
    assert result.maps.shape == (9, *SIZE) and result.maps.dtype == np.uint8
    # A blur smooths the map: its spatial variation shrinks.
    assert np.abs(np.diff(result.maps[8].astype(float) / 255, axis=1)).mean() < np.abs(np.diff(prediction.maps[8], axis=1)).mean()


def test_video_without_sound_gets_silence_and_a_warning(predictor, tmp_path):
    silent = write_test_video(tmp_path / "silent.mp4", num_frames=6, with_audio=False)
    with pytest.warns(UserWarning, match="no sound track"):
        result = predictor.predict_video(silent, progress=False)
    assert result.maps.shape == (6, *SIZE) and not result.has_audio


def test_untrained_models_say_so():
    with pytest.warns(UserWarning, match="randomly initialised, untrained"):
        predictor = SaliencyPredictor.from_pretrained("random-tiny")
    assert not predictor.trained and predictor.settings()["trained"] is False


def test_random_models_are_reproducible():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = (SaliencyPredictor.from_pretrained("random-tiny").model for _ in range(2))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_demo_checkpoint_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(inference.loading, "DEMO_CHECKPOINT", tmp_path / "demo-checkpoint")
    with pytest.raises(FileNotFoundError, match="demo checkpoint is not bundled"):
        SaliencyPredictor.from_pretrained("demo")


def test_saved_model_folder_loads_as_trained_and_predicts_the_same(predictor, video, prediction, tmp_path):
    predictor.model.save_pretrained(tmp_path)
    predictor.processor.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "untrained" warning for a saved checkpoint
        loaded = SaliencyPredictor.from_pretrained(tmp_path, batch_size=3)
    assert loaded.trained
    np.testing.assert_allclose(loaded.predict_video(video, max_frames=5, progress=False).maps, prediction.maps[:5], atol=1e-5)


def test_bfloat16_runs_close_to_float32(video, prediction):
    model = DTFSalModel(DTFSalConfig.tiny())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = SaliencyPredictor.from_pretrained("random-tiny").model
    model.load_state_dict(reference.state_dict())
    half = SaliencyPredictor(model, DTFSalProcessor.from_model_config(model.config), dtype=torch.bfloat16)
    maps = half.predict_video(video, max_frames=4, progress=False).maps
    assert maps.dtype == np.float32
    assert np.abs(maps - prediction.maps[:4]).mean() < 0.02
    # The same model back in float32 (its weights now rounded to bfloat16) runs without dtype errors.
    full = SaliencyPredictor(model, half.processor).predict_video(video, max_frames=2, progress=False).maps
    assert np.abs(full - prediction.maps[:2]).mean() < 0.02


def test_options_are_checked(predictor, video):
    with pytest.raises(ValueError, match="alignment must be 'last' .* or 'center'"):
        SaliencyPredictor(predictor.model, alignment="middle")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        SaliencyPredictor(predictor.model, batch_size=0)
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16"):
        SaliencyPredictor(predictor.model, dtype="int8")
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        next(predictor.iter_video_maps(video, stride=0))


def test_centre_alignment_uses_later_frames(predictor, video, prediction):
    centred = SaliencyPredictor(predictor.model, predictor.processor, alignment="center")
    maps = centred.predict_video(video, max_frames=10, progress=False).maps
    assert maps.shape == (10, *SIZE)
    assert not np.allclose(maps[2], prediction.maps[2], atol=1e-4)


# --- outputs on disk ---------------------------------------------------------------------------------------


def test_folder_outputs(written, prediction):
    paths, output = written
    assert paths["folder"] == output / "square"
    pngs = sorted(paths["maps"].glob("*.png"))
    assert [p.name for p in pngs[:2]] == ["000001.png", "000002.png"] and len(pngs) == 12
    with np.load(paths["npz"]) as saved:
        maps, times = saved["maps"], saved["times"]
    assert maps.shape == (12, *SIZE) and maps.dtype == np.uint8
    np.testing.assert_allclose(times, np.arange(12) / FPS, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[7])), maps[7])
    assert np.abs(maps.astype(float) / 255 - prediction.maps).max() <= 0.5 / 255 + 1e-5
    marker = json.loads(paths["done"].read_text())
    assert marker["num_frames"] == 12 and marker["settings"]["model"] == "random-tiny"
    assert marker["settings"]["trained"] is False and marker["outputs"] == {"pngs": True, "npz": True, "overlay": True}
    assert not list(paths["folder"].glob("*.tmp")) and not list(paths["folder"].glob("*.partial.mp4"))


def test_overlay_plays_with_sound_for_the_whole_video(written, video):
    paths, _ = written
    source, overlay = streams_of(video), streams_of(paths["overlay"])
    assert set(overlay) == {"video", "audio"}
    assert overlay["video"][1] == 12
    assert abs(overlay["video"][0] - source["video"][0]) <= 1 / FPS
    assert abs(overlay["audio"][0] - source["video"][0]) <= 1 / FPS
    assert overlay["audio"][1] == "aac"


def test_overlay_is_the_heat_map_over_the_frames(written, video):
    paths, _ = written
    with av.open(str(paths["overlay"])) as container:
        overlay = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    original = next(media.iter_frames(video)).image.astype(float)
    with np.load(paths["npz"]) as saved:
        expected = media.overlay_saliency(next(media.iter_frames(video)).image, saved["maps"][0] / 255.0)
    assert np.abs(overlay - expected).mean() < 6  # H.264 at crf 20
    assert np.abs(overlay - original).mean() > 10


def test_rerun_skips_a_finished_video(written, predictor, video):
    paths, output = written
    before = paths["done"].stat().st_mtime_ns, paths["overlay"].stat().st_mtime_ns
    predict_to_folder(predictor, video, output, progress=lambda *_: pytest.fail("a finished video was predicted again"))
    assert (paths["done"].stat().st_mtime_ns, paths["overlay"].stat().st_mtime_ns) == before


def test_incomplete_or_different_outputs_are_redone(predictor, video, tmp_path):
    paths = predict_to_folder(predictor, video, tmp_path, max_frames=6, write_overlay=False, progress=False)
    (paths["maps"] / "000003.png").unlink()
    calls = []
    predict_to_folder(predictor, video, tmp_path, max_frames=6, write_overlay=False, progress=lambda d, t: calls.append(d))
    assert calls[-1] == 6 and len(list(paths["maps"].glob("*.png"))) == 6
    # Other settings (fewer frames) redo the video and leave no stale maps behind.
    predict_to_folder(predictor, video, tmp_path, max_frames=4, write_overlay=False, progress=False)
    assert len(list(paths["maps"].glob("*.png"))) == 4
    with np.load(paths["npz"]) as saved:
        assert saved["maps"].shape == (4, *SIZE)
    assert json.loads(paths["done"].read_text())["settings"]["max_frames"] == 4


def test_interrupted_run_leaves_no_marker(predictor, video, tmp_path):
    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_to_folder(predictor, video, tmp_path, progress=interrupt)
    paths = inference.output_paths(video, tmp_path)
    assert not paths["done"].exists() and not paths["npz"].exists() and not list(paths["folder"].glob("*.tmp"))
    assert inference.finished_marker(paths, predictor.settings(), {"pngs": True, "npz": True, "overlay": True}) is None


def test_overlay_options_are_checked(predictor, video, tmp_path):
    with pytest.raises(ValueError, match="overlay_alpha must be in"):
        predict_to_folder(predictor, video, tmp_path, overlay_alpha=1.5)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        predict_to_folder(predictor, video, tmp_path, colormap="nope")


def test_dhf1k_clip_outputs(predictor, tmp_path):
    video = dhf1k_video()
    paths = predict_to_folder(predictor, video, tmp_path, max_frames=10, progress=False)
    with np.load(paths["npz"]) as saved:
        assert saved["maps"].shape == (10, 360, 640)
    overlay = streams_of(paths["overlay"])
    assert overlay["video"][1] == 10 and abs(overlay["video"][0] - 10 / 30) <= 1 / 30
    assert overlay["audio"][1] == "aac" and abs(overlay["audio"][0] - 10 / 30) <= 1 / 30


# --- statistics and inputs ---------------------------------------------------------------------------------


def test_statistics_of_known_maps():
    peak = np.zeros((2, 5, 8), np.float32)
    peak[0, 3, 6] = 1.0
    peak[1] = 0.25
    stats = saliency_statistics(peak)
    assert (stats["center_x"][0], stats["center_y"][0], stats["entropy"][0]) == (6.0, 3.0, 0.0)
    assert stats["center_x"][1] == pytest.approx(3.5) and stats["center_y"][1] == pytest.approx(2.0)
    assert stats["entropy"][1] == pytest.approx(np.log2(40))
    assert stats["center_x_norm"][0] == pytest.approx(6 / 8) and (stats["peak_x"][0], stats["peak_y"][0]) == (6, 3)
    uint8 = saliency_statistics((peak * 255).astype(np.uint8))
    np.testing.assert_allclose(uint8["center_x"], stats["center_x"])


def test_statistics_stream_one_map_at_a_time(tmp_path):
    """The Space peaked at 16 GB on a 2 s 4K upload: the statistics made float64 copies of the whole stack."""
    import tracemalloc

    rng = np.random.default_rng(0)
    maps = rng.integers(0, 256, (6, 1080, 1920), dtype=np.uint8)  # 12 MB
    tracemalloc.start()
    whole = saliency_statistics(maps)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 24e6  # the old code needed about 37 bytes a pixel: 460 MB here
    streamed = saliency_statistics(iter(maps))
    weights = maps[4].astype(np.float64) / maps[4].sum()
    positive = weights[weights > 0]
    for name in inference.STATISTICS:
        np.testing.assert_allclose(streamed[name], whole[name])
    assert whole["entropy"][4] == pytest.approx(-(positive * np.log2(positive)).sum(), rel=1e-12)
    assert whole["center_x"][4] == pytest.approx((weights.sum(0) * np.arange(1920)).sum(), rel=1e-12)
    assert whole["mean"][4] == pytest.approx(maps[4].mean(), rel=1e-12)
    with pytest.raises(ValueError, match="at least one frame"):
        saliency_statistics(iter([]))


def test_statistics_of_an_empty_map_are_nan():
    stats = saliency_statistics(np.zeros((4, 4), np.uint8))
    assert np.isnan(stats["center_x"][0]) and np.isnan(stats["entropy"][0]) and stats["mean"][0] == 0


def test_find_videos(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/001.AVI", "a/002.mp4", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = inference.find_videos([tmp_path / "a", tmp_path / "missing.mp4"])
    assert [p.name for p in found] == ["001.AVI", "002.mp4", "missing.mp4"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b/002.mkv").write_bytes(b"")
    with pytest.raises(ValueError, match="would both write to '<output>/002/'"):
        inference.find_videos([tmp_path / "a", tmp_path / "b/002.mkv"])


def test_demo_checkpoint_predicts_the_bundled_example():
    example = inference.DEMO_CHECKPOINT.parent / "synthetic_example.mp4"
    if not (inference.DEMO_CHECKPOINT / "config.json").is_file() or not example.is_file():
        pytest.skip("the demo checkpoint or its example clip is not bundled")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a trained checkpoint: no "untrained" warning
        predictor = SaliencyPredictor.from_pretrained("demo")
    result = predictor.predict_video(example, max_frames=9, stride=8, progress=False)
    assert predictor.trained and result.has_audio and result.maps.shape[0] == 9
    assert result.maps[8].max() == pytest.approx(1.0)


def test_demo_checkpoint_warns_once_on_other_videos(video, tmp_path):
    example = inference.DEMO_CHECKPOINT.parent / inference.SYNTHETIC_EXAMPLE_NAME
    if not (inference.DEMO_CHECKPOINT / "config.json").is_file() or not example.is_file():
        pytest.skip("the demo checkpoint or its example clip is not bundled")
    copy = tmp_path / "upload.mp4"  # the example under another name, as an upload reaches the Space
    copy.write_bytes(example.read_bytes())
    predictor = SaliencyPredictor.from_pretrained("demo")
    assert predictor.demo and inference.is_synthetic_example(copy) and not inference.is_synthetic_example(video)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        predictor.predict_video(copy, max_frames=2, progress=False)
    with pytest.warns(UserWarning) as seen:
        predictor.predict_video(video, max_frames=2, progress=False)
        predictor.predict_video(video, max_frames=2, progress=False)
    messages = [str(w.message) for w in seen if "demo checkpoint" in str(w.message)]
    assert len(messages) == 1, messages
    assert "trained only on synthetic videos of coloured discs" in messages[0] and "`dtfsal train`" in messages[0]
    # A model loaded from the same folder directly is recognised; another one is not.
    assert SaliencyPredictor(DTFSalModel.from_pretrained(inference.DEMO_CHECKPOINT)).demo
    assert not SaliencyPredictor(DTFSalModel(DTFSalConfig.tiny()), trained=True).demo


@pytest.mark.parametrize("model_id, message", [
    ("runs/stage2/best", "no model folder at runs/stage2/best"),
    ("./checkpoints", r"no model folder at \./checkpoints"),
    ("~/not/here/at/all", "no model folder at ~/not/here/at/all"),
])
def test_a_model_that_is_neither_a_folder_nor_a_hub_id_is_named(model_id, message):
    with pytest.raises(FileNotFoundError, match=message):
        inference.load_model_and_processor(model_id)


def test_a_folder_that_is_not_a_saved_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        inference.load_model_and_processor(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        inference.load_model_and_processor(tmp_path / "weights.pt")


def test_fast_attention_by_default_gives_the_eager_maps(video):
    from dtfsal_hf.mvit_attention import MViTAutoAttention

    def build(attention=None):
        torch.manual_seed(0)
        model = DTFSalModel(DTFSalConfig.tiny())
        options = {} if attention is None else {"attention": attention}
        return SaliencyPredictor(model, normalize=None, **options)

    fast, eager = build(), build("eager")
    assert type(fast.model.visual_encoder.blocks[0].attn) is MViTAutoAttention
    assert type(eager.model.visual_encoder.blocks[0].attn) is not MViTAutoAttention
    difference = np.abs(fast.predict_video(video).maps - eager.predict_video(video).maps).max()
    assert difference < 1e-4


def test_prefetch_keeps_order_and_bounds_what_runs_ahead():
    import threading
    import time

    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    consumed = []
    for item in inference.prefetch(items(), max_items=4):
        time.sleep(0.002)
        # At most the queue's 4, one waiting to be put, and the one handed out run ahead of the consumer.
        assert len(produced) - len(consumed) <= 6
        consumed.append(item)
    assert consumed == list(range(50))
    assert not any("(produce)" in thread.name and thread.is_alive() for thread in threading.enumerate())


def test_prefetch_raises_the_producers_error_and_stops_when_closed():
    def failing():
        yield 1
        raise ValueError("corrupt frame")

    with pytest.raises(ValueError, match="corrupt frame"):
        list(inference.prefetch(failing(), max_items=2))

    started = []

    def endless():
        i = 0
        while True:
            started.append(i)
            yield i
            i += 1

    stream = inference.prefetch(endless(), max_items=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    count = len(started)
    import time

    time.sleep(0.3)
    assert len(started) <= count + 1  # the producer stopped


def test_the_demo_checkpoints_maps_of_its_example_are_unchanged():
    """Maps of the bundled example by the demo checkpoint, stored when the checkpoint was trained: any change to the
    frames-to-maps path (or to the model's arithmetic) shows here."""
    reference = np.load(Path(__file__).parent / "data" / "demo_synthetic_example_maps.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = SaliencyPredictor.from_pretrained("demo").predict_video(
            inference.DEMO_CHECKPOINT.parent / inference.SYNTHETIC_EXAMPLE_NAME, progress=False)
    assert np.abs(result.maps[reference["frames"]] - reference["maps"]).max() <= 1e-6
    assert np.abs(result.maps.astype(np.float64).sum(axis=(1, 2)) - reference["sums"]).max() <= 1e-6 * result.maps[0].size
    assert np.array_equal(result.times, reference["times"])


def test_frames_from_memory_give_the_files_maps(predictor, video, prediction):
    from dtfsal_hf.media import iter_frames, read_frames

    timed = [(frame.image, frame.time) for frame in iter_frames(video)]
    # The last frame lasts 1 / fps, as the file's does.
    from_pairs = np.stack([m for _, m in predictor.iter_maps(iter(timed), audio=video, fps=FPS, progress=False)])
    assert np.abs(from_pairs - prediction.maps).max() < 1e-6
    frames = list(iter_frames(video))
    from_frames = np.stack([m for _, m in predictor.iter_maps(frames, audio=video, progress=False)])
    assert np.abs(from_frames - prediction.maps).max() < 1e-6
    # Untimed arrays are 1 / fps apart: at the video's own rate, the same maps.
    images, _ = read_frames(video)
    from_arrays = np.stack([m for _, m in predictor.iter_maps(list(images), audio=video, fps=FPS, progress=False)])
    assert np.abs(from_arrays - prediction.maps).max() < 1e-5


def test_a_folder_of_frames_with_its_wav_is_one_video(predictor, video, prediction, tmp_path, capsys):
    import wave

    from PIL import Image

    from dtfsal_hf import cli
    from dtfsal_hf.media import load_audio, read_frames

    images, _ = read_frames(video)
    folder = tmp_path / "clip_frames"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index + 1:05d}.png")
    track = load_audio(video)
    samples = np.round(np.clip(track.waveform, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(folder / "sound.wav"), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    heard = load_audio(folder / "sound.wav")
    from_folder = np.stack([m for _, m in predictor.iter_maps(folder, fps=FPS, progress=False)])
    from_arrays = np.stack([m for _, m in predictor.iter_maps(list(images), audio=heard, fps=FPS, progress=False)])
    assert np.array_equal(from_folder, from_arrays)
    assert np.abs(from_folder - prediction.maps).max() < 0.05  # the same frames and (16-bit) sound
    silent = np.stack([m for _, m in predictor.iter_maps(list(images), audio=np.zeros(16000, np.float32),
                                                         sampling_rate=16000, fps=FPS, progress=False)])
    assert np.abs(silent - from_arrays).max() > 1e-3  # control: the folder's sound is heard

    status = cli.main(["predict", str(folder), "--output", str(tmp_path / "out"), "--model", "random-tiny",
                       "--fps", str(FPS), "--no-progress"])
    assert status == 0, capsys.readouterr()
    with np.load(tmp_path / "out" / "clip_frames" / "maps.npz") as saved:
        assert saved["maps"].shape == (len(images), *SIZE)
        assert np.allclose(saved["times"], np.arange(len(images)) / FPS)
    assert set(streams_of(tmp_path / "out" / "clip_frames" / "overlay.mp4")) == {"video", "audio"}
    # A rerun skips the finished folder; a frame replaced, or a frame more, is predicted again.
    again = ["predict", str(folder), "--output", str(tmp_path / "out"), "--model", "random-tiny", "--fps", str(FPS),
             "--no-progress"]
    capsys.readouterr()
    assert cli.main(again) == 0 and "1 skipped" in capsys.readouterr().out
    Image.fromarray(images[0][::-1].copy()).save(folder / "00003.png")
    assert cli.main(again) == 0 and "1 written, 0 skipped" in capsys.readouterr().out
    Image.fromarray(images[-1]).save(folder / f"{len(images) + 1:05d}.png")
    assert cli.main(again) == 0 and "1 written, 0 skipped" in capsys.readouterr().out
    with np.load(tmp_path / "out" / "clip_frames" / "maps.npz") as saved:
        assert saved["maps"].shape == (len(images) + 1, *SIZE)


def test_frames_in_memory_are_checked(predictor):
    with pytest.raises(ValueError, match=r"frame 1 must be a \(height, width, 3\) uint8"):
        list(predictor.iter_maps([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], progress=False))
    with pytest.raises(ValueError, match="frames is empty"):
        list(predictor.iter_maps([], progress=False))
