"""One audio-end rule for training and inference: a clip hears the sound that ends where its last frame ends, frames
timed by their decoded timestamps (or `1 / fps` apart when they have none), in the clip datasets as in the predictor.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dtfsal_hf import media
from dtfsal_hf.clips import iter_clips
from dtfsal_hf.data import ClipPolicy, SaliencyClipDataset, VideoRecord, clip_index
from dtfsal_hf.processing_dtfsal import DTFSalProcessor
from dtfsal_hf.saliency_loop import SaliencyLoop, frame_source
from videos import write_test_video

pytestmark = pytest.mark.usefixtures("one_thread")

# Irregular gaps (40 ms to 160 ms) at a nominal 25 fps: by the last frame the decoded clock runs 0.4 s ahead of
# the nominal one, several VGGish hops.
VFR_TIMES = [0.0, 0.04, 0.12, 0.16, 0.30, 0.34, 0.38, 0.50, 0.54, 0.70, 0.74, 0.86]
FPS = 25.0


def _ground_truth(folder, count: int, size=(72, 128)) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    maps, fixations = [], []
    for index in range(count):
        saliency = np.zeros(size, np.uint8)
        saliency[20:40, 30 + 4 * index : 50 + 4 * index] = 255
        fixation = np.zeros(size, np.uint8)
        fixation[30, 40 + 4 * index] = 255
        maps.append(str(folder / f"map_{index:03d}.png"))
        fixations.append(str(folder / f"fix_{index:03d}.png"))
        Image.fromarray(saliency).save(maps[-1])
        Image.fromarray(fixation).save(fixations[-1])
    return maps, fixations


def _vfr_record(tmp_path) -> VideoRecord:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_test_video(tmp_path / "vfr.mkv", num_frames=len(VFR_TIMES), times=VFR_TIMES, fps=int(FPS),
                                sound="noise")
    maps, fixations = _ground_truth(tmp_path / "gt", len(VFR_TIMES))
    return VideoRecord(dataset="DHF1K", name="vfr", split="train", num_frames=len(VFR_TIMES), fps=FPS, map_paths=maps,
                       fixation_paths=fixations, video_path=str(path), audio_path=str(path))


def _compare_with_the_predictor(tiny_model, record: VideoRecord, frames, alignment: str) -> int:
    """Every training sample equals the predictor's inputs for the clip with the same target frame: the same
    pictures, frame times and log-mel. Returns how many clips were compared."""
    processor = DTFSalProcessor.from_model_config(tiny_model.config)
    length = tiny_model.config.num_frames
    dataset = SaliencyClipDataset([record], ClipPolicy(clip_length=length, alignment=alignment), processor=processor)
    loop = SaliencyLoop(tiny_model, processor)
    track = media.load_audio(record.audio_path)
    by_target = {row["target_frame"]: index for index, row in enumerate(dataset.clips)}
    compared = 0
    for window in iter_clips(frame_source(frames, fps=record.fps).frames(), length, alignment):
        sample = dataset[by_target[window.target.index]]
        inputs = loop.window_inputs([window], track)
        for key in ("pixel_values_videos", "frame_times", "input_features"):
            assert torch.equal(sample[key], inputs[key][0]), (key, window.target.index)
        compared += 1
    return compared


@pytest.mark.parametrize("alignment", ["last", "center"])
def test_training_samples_and_predicted_clips_hear_the_same_window_on_a_variable_frame_rate_video(
        tmp_path, tiny_model, alignment):
    record = _vfr_record(tmp_path)
    decoded = record.frame_times()
    # The video is variable-frame-rate, and the index / fps clock (the old training rule) would end the audio
    # elsewhere: for the last frame 0.4 s, 6400 samples, early.
    np.testing.assert_allclose(decoded[:, 0], VFR_TIMES, atol=1e-6)
    nominal = media.untimed_frame_times(record.num_frames, FPS)[:, 1]
    assert np.abs(decoded[:, 1] - nominal).max() > 0.3
    assert _compare_with_the_predictor(tiny_model, record, record.video_path, alignment) == record.num_frames
    # The clip index ends each clip's audio at its last frame's decoded end.
    clips = clip_index([record], ClipPolicy(clip_length=tiny_model.config.num_frames, alignment=alignment))
    for row in clips:
        assert row["audio_end_s"] == pytest.approx(decoded[row["frame_indices"][-1], 1], abs=1e-9)


def test_extracted_frames_are_timed_one_over_fps_apart_on_both_sides(tmp_path, tiny_model):
    """Frames stored as pictures carry no time: the datasets and a frame folder given to the predictor both space
    them `1 / fps` apart, and hear the same sound."""
    source = _vfr_record(tmp_path)
    folder = tmp_path / "frames"
    folder.mkdir()
    paths = []
    for frame in media.iter_frames(source.video_path):
        paths.append(str(folder / f"img_{frame.index + 1:05d}.png"))
        Image.fromarray(frame.image).save(paths[-1])
    record = VideoRecord(dataset="DHF1K", name="frames", split="train", num_frames=source.num_frames, fps=FPS,
                         map_paths=source.map_paths, fixation_paths=source.fixation_paths, frame_paths=paths,
                         audio_path=source.audio_path)
    np.testing.assert_array_equal(record.frame_times(), media.untimed_frame_times(record.num_frames, FPS))
    assert _compare_with_the_predictor(tiny_model, record, folder, "last") == record.num_frames


def test_decoded_frame_times_are_those_of_the_decoded_frames(tmp_path):
    record = _vfr_record(tmp_path)
    frames = list(media.iter_frames(record.video_path))
    np.testing.assert_array_equal(media.frame_times(record.video_path), [(f.time, f.end_time) for f in frames])
    times = record.frame_times()
    assert not times.flags.writeable  # the kept copy cannot be changed by a caller
    short = VideoRecord(**{**record.to_dict(), "num_frames": 20})
    with pytest.raises(ValueError, match="decodes to 12"):
        short.frame_times()
