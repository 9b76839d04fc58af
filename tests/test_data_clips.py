"""Clip policies, the clip index as a `datasets.Dataset`, the torch dataset and the audio window."""

import numpy as np
import pytest
import torch

from data_trees import write_dhf1k, write_stavis
from dtfsal_hf.clips import clip_frame_indices, target_indices
from dtfsal_hf.data import (
    ClipPolicy,
    SaliencyClipDataset,
    audio_window,
    clip_index,
    read_dhf1k,
    read_stavis,
    records_from_index,
    video_index,
)


def test_audio_window_ends_at_time_and_zero_pads_the_start():
    waveform = np.arange(1, 32001, dtype=np.float32)  # 2 s at 16 kHz
    window = audio_window(waveform, 16000, end_time_s=1.0)
    assert window.shape == (24560,) and window.dtype == np.float32
    assert window[-1] == 16000 and window[-16000] == 1
    assert not window[: 24560 - 16000].any()
    late = audio_window(waveform, 16000, end_time_s=2.5)
    assert late[-8000:].sum() == 0 and late[-8001] == 32000
    with pytest.raises(ValueError, match="1-D"):
        audio_window(np.zeros((2, 10)), 16000, 1.0)


def test_policy_start_of_video_options():
    assert ClipPolicy(clip_length=4).frame_indices(1, 10) == [0, 0, 0, 1]
    assert ClipPolicy(clip_length=4).frame_indices(5, 10) == [2, 3, 4, 5]
    assert ClipPolicy(clip_length=4, start="reverse").frame_indices(1, 10) == [4, 3, 2, 1]
    assert ClipPolicy(clip_length=4, start="skip").frame_indices(1, 10) is None
    assert ClipPolicy(clip_length=4, alignment="center").frame_indices(9, 10) == [7, 8, 9, 9]
    # One meaning of stride (`clips.target_indices`): every 2nd frame from the first, and the last one.
    assert [t for t, _ in ClipPolicy(clip_length=4, start="skip", stride=2).clips(10)] == [4, 6, 8, 9]
    assert [t for t, _ in ClipPolicy(clip_length=4, stride=3).clips(10)] == target_indices(10, 3) == [0, 3, 6, 9]
    assert len(ClipPolicy(clip_length=4).clips(10)) == 10
    with pytest.raises(ValueError, match="start must be one of"):
        ClipPolicy(start="mirror")


def test_the_clip_datasets_window_with_the_one_clip_module():
    """The datasets' clips are `clips.clip_frame_indices` with a start option: the same frames the predictor uses."""
    for target in range(10):
        assert ClipPolicy(clip_length=4).frame_indices(target, 10) == clip_frame_indices(target, 4, last_index=9)
        assert (ClipPolicy(clip_length=5, alignment="center").frame_indices(target, 10)
                == clip_frame_indices(target, 5, "center", last_index=9))
    assert clip_frame_indices(1, 4, last_index=9, start="reverse") == [4, 3, 2, 1]
    assert clip_frame_indices(1, 4, last_index=9, start="skip") is None
    with pytest.raises(ValueError, match="needs the video's last_index"):
        clip_frame_indices(1, 4, start="skip")


def test_the_older_target_stride_is_read_with_a_warning():
    with pytest.warns(FutureWarning, match="now ClipPolicy\\(stride"):
        policy = ClipPolicy(clip_length=4, target_stride=3)
    assert policy == ClipPolicy(clip_length=4, stride=3) and policy.clips(10) == ClipPolicy(clip_length=4, stride=3).clips(10)


def test_policy_map_normalisation():
    saliency = np.array([[0.0, 0.25], [0.5, 0.25]], np.float32)
    assert ClipPolicy(map_normalization="max").normalize_map(saliency).max() == 1.0
    assert ClipPolicy(map_normalization="sum").normalize_map(saliency).sum() == pytest.approx(1.0)
    assert ClipPolicy().normalize_map(saliency) is saliency


def test_clip_index_is_a_datasets_dataset(tmp_path):
    records = read_stavis(write_stavis(tmp_path / "av", "Coutrot_db1", ["a", "b", "c"]), "Coutrot_db1", "train", 1)
    clips = clip_index(records, ClipPolicy(clip_length=4))
    assert len(clips) == 12 and clips[7]["video"] == "c" and clips[7]["target_frame"] == 1
    assert clips[7]["frame_indices"] == [0, 0, 0, 1] and clips[7]["audio_end_s"] == pytest.approx(2 / 25)
    assert len(clips.filter(lambda row: row["target_frame"] >= 3)) == 6
    split = clips.train_test_split(test_size=0.25, seed=0)
    assert len(split["train"]) == 9 and len(split["test"]) == 3
    clips.save_to_disk(tmp_path / "clips")
    videos = video_index(records)
    videos.save_to_disk(tmp_path / "videos")
    from datasets import load_from_disk

    restored = records_from_index(load_from_disk(tmp_path / "videos"))
    assert restored == records
    dataset = SaliencyClipDataset(restored, ClipPolicy(clip_length=4), clips=load_from_disk(tmp_path / "clips").shuffle(seed=1))
    assert len(dataset) == 12


def test_torch_dataset_raw_samples(tmp_path):
    records = read_stavis(write_stavis(tmp_path, "SumMe", ["v1", "v2", "v3"]), "SumMe", "test", 1)
    dataset = SaliencyClipDataset(records, ClipPolicy(clip_length=4))
    sample = dataset[5]
    assert sample["frames"].shape == (4, 24, 32, 3) and sample["frames"].dtype == np.uint8
    assert sample["waveform"].shape == (24560,) and sample["sampling_rate"] == 16000
    # Target frame 5 ends at 6 / 25 s = 3840 samples: the rest of the window is the zero padding.
    assert not sample["waveform"][: 24560 - 3840].any() and sample["waveform"][-3840:].any()
    assert sample["saliency_map"].shape == (24, 32) and sample["fixation_map"].sum() == 1
    assert sample["video_key"] == "SumMe/fold1/v1" and sample["target_frame"] == 5


def fake_processor(videos, audio=None, sampling_rate=None, frame_times=None, audio_end_times=None, return_tensors=None):
    frames = torch.from_numpy(np.asarray(videos)).permute(0, 3, 1, 2).float() / 255
    # (T, 3, H, W) -> (1, T, 3, 12, 16)
    result = {"pixel_values_videos": torch.nn.functional.interpolate(frames, size=(12, 16))[None]}
    result["frame_times"] = torch.from_numpy(np.asarray(frame_times) - audio_end_times[0])[None]
    if audio is not None:
        assert sampling_rate == 16000 and audio.shape == (24560,)
        result["input_features"] = torch.zeros(1, 9, 1, 8, 8)
    return result


def test_torch_dataset_with_processor_collates(tmp_path):
    records = read_dhf1k(write_dhf1k(tmp_path, videos=(1, 2)), "train")
    dataset = SaliencyClipDataset(records, ClipPolicy(clip_length=3), processor=fake_processor)
    with_audio = dataset[2]  # video 0001, decoded from the AVI, with sound
    assert with_audio["pixel_values_videos"].shape == (3, 3, 12, 16)
    assert with_audio["input_features"].shape == (9, 1, 8, 8)
    assert with_audio["labels"].shape == (12, 16) and with_audio["fixation_labels"].sum() == 1
    # Target 2's clip is frames 0, 1, 2 at the video's frame rate; its audio ends at the end of frame 2.
    fps = records[0].fps
    np.testing.assert_allclose(with_audio["frame_times"].numpy(), (np.array([[0, 1], [1, 2], [2, 3]]) - 3) / fps)
    # At the start the first frame repeats, with its own time.
    np.testing.assert_allclose(dataset[0]["frame_times"].numpy(), (np.array([[0, 1], [0, 1], [0, 1]]) - 1) / fps)
    assert "input_features" not in dataset[8]  # video 0002 has extracted frames only
    batch = next(iter(torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [0, 1]), batch_size=2)))
    assert batch["pixel_values_videos"].shape == (2, 3, 3, 12, 16) and batch["labels"].shape == (2, 12, 16)


def test_processor_must_return_pixel_values(tmp_path):
    records = read_dhf1k(write_dhf1k(tmp_path, videos=(2,)), "train")
    dataset = SaliencyClipDataset(records, ClipPolicy(clip_length=2), processor=lambda **kwargs: {"pixel_values": 0})
    with pytest.raises(ValueError, match="pixel_values_videos"):
        dataset[0]


def test_the_training_yaml_reads_the_older_stride_keys_with_a_warning():
    from dtfsal_hf.training import TrainingConfig

    with pytest.warns(FutureWarning, match="data.train_target_stride is now data.train_stride"):
        config = TrainingConfig.from_dict({"data": {"train_target_stride": 3, "test_stride": 2}})
    assert (config.data.train_stride, config.data.test_stride) == (3, 2)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="give only data.validation_stride"):
        TrainingConfig.from_dict({"data": {"validation_target_stride": 3, "validation_stride": 2}})
