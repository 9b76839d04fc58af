"""Clip sampling: causal and centre windows, first-frame padding, stride with temporal interpolation, batching,
and bounded memory on a stream of frames."""

import weakref

import numpy as np
import pytest

from dtfsal_hf.clips import (
    clip_frame_indices,
    interpolate_maps,
    iter_batches,
    iter_clips,
    iter_frame_maps,
    target_indices,
)
from dtfsal_hf.media import Frame


def synthetic_frames(count: int, times=None):
    times = times if times is not None else [index / 10 for index in range(count + 1)]
    for index in range(count):
        yield Frame(index, times[index], times[index + 1] if index + 1 < len(times) else times[index] + 0.1,
                    np.full((2, 3, 3), index % 256, np.uint8))


def test_causal_window_ends_at_the_target_and_repeats_the_first_frame():
    assert clip_frame_indices(10, 4) == [7, 8, 9, 10]
    assert clip_frame_indices(2, 4) == [0, 0, 1, 2]
    assert clip_frame_indices(0, 32) == [0] * 32


def test_centre_window_puts_the_target_in_the_middle():
    assert clip_frame_indices(10, 4, "center") == [8, 9, 10, 11]
    assert clip_frame_indices(10, 5, "center") == [8, 9, 10, 11, 12]
    assert clip_frame_indices(0, 4, "center", last_index=5) == [0, 0, 0, 1]
    assert clip_frame_indices(5, 4, "center", last_index=5) == [3, 4, 5, 5]


def test_targets_with_stride_include_the_last_frame():
    assert target_indices(10) == list(range(10))
    assert target_indices(10, 4) == [0, 4, 8, 9]
    assert target_indices(9, 4) == [0, 4, 8]
    assert target_indices(1, 4) == [0]


@pytest.mark.parametrize("alignment", ["last", "center"])
@pytest.mark.parametrize("stride", [1, 3, 8])
@pytest.mark.parametrize("count", [1, 2, 7, 20])
def test_iter_clips_gives_every_target_its_window(alignment, stride, count):
    windows = list(iter_clips(synthetic_frames(count), num_frames=4, alignment=alignment, stride=stride))
    assert [w.target.index for w in windows] == target_indices(count, stride)
    for window in windows:
        expected = clip_frame_indices(window.target.index, 4, alignment, last_index=count - 1)
        assert [frame.index for frame in window.frames] == expected
        assert window.images.shape == (4, 2, 3, 3)
        assert window.end_time == window.frames[-1].end_time
    # Each frame appears exactly once among the frames whose maps the clips provide.
    assert [frame.index for w in windows for frame in w.new_frames] == list(range(count))


def test_one_frame_video_gives_one_clip_of_that_frame():
    (window,) = iter_clips(synthetic_frames(1), num_frames=8)
    assert [frame.index for frame in window.frames] == [0] * 8


def test_memory_stays_bounded_on_a_long_stream():
    alive = weakref.WeakSet()

    def tracked_frames():
        for frame in synthetic_frames(300):
            alive.add(frame)
            yield frame

    most = 0
    for window in iter_clips(tracked_frames(), num_frames=8, stride=3):
        del window  # frames are freed by reference counting as soon as nothing holds them
        most = max(most, len(alive))
    assert most <= 8 + 3 + 1


def test_frames_out_of_order_are_refused():
    frames = list(synthetic_frames(3))
    with pytest.raises(ValueError, match="in order"):
        list(iter_clips([frames[0], frames[2]], num_frames=2))


@pytest.mark.parametrize("options, message", [
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 4, "alignment": "middle"}, "alignment"),
    ({"num_frames": 4, "stride": 0}, "stride"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        list(iter_clips(synthetic_frames(3), **options))


def test_empty_stream_is_refused():
    with pytest.raises(ValueError, match="no frames"):
        list(iter_clips([], num_frames=4))


def test_batches():
    assert list(iter_batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(iter_batches([], 3)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(range(3), 0))


def test_interpolation_is_linear_in_time():
    start, end = np.zeros((2, 2)), np.ones((2, 2))
    maps = interpolate_maps(0.0, start, 1.0, end, [0.0, 0.25, 1.0, 2.0])
    assert [float(m[0, 0]) for m in maps] == [0.0, 0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match="same shape"):
        interpolate_maps(0.0, start, 1.0, np.ones((3, 3)), [0.5])


def test_stride_interpolates_between_predicted_frames_with_variable_frame_rate():
    times = [0.0, 0.1, 0.4, 0.5, 0.9, 1.0, 1.1]
    windows = list(iter_clips(synthetic_frames(6, times), num_frames=2, stride=4))
    assert [w.target.index for w in windows] == [0, 4, 5]
    # A "prediction" equal to the target's time lets us read the interpolation weights back.
    predictions = [(w, np.full((1, 1), w.target.time)) for w in windows]
    frame_maps = list(iter_frame_maps(predictions))
    assert [frame.index for frame, _ in frame_maps] == list(range(6))
    np.testing.assert_allclose([m[0, 0] for _, m in frame_maps], times[:6])


def test_stride_one_gives_each_frame_its_own_prediction():
    windows = list(iter_clips(synthetic_frames(5), num_frames=3))
    predictions = [(w, np.full((1, 1), 10.0 * w.target.index)) for w in windows]
    np.testing.assert_array_equal([m[0, 0] for _, m in iter_frame_maps(predictions)], [0, 10, 20, 30, 40])


def test_one_alignment_vocabulary_and_the_older_names_still_work_with_a_warning():
    from dtfsal_hf.clips import ALIGNMENTS, alignment_name
    from dtfsal_hf.data.clips import ClipPolicy
    from dtfsal_hf.training import TrainingConfig

    assert ALIGNMENTS == ("last", "center")
    for old, new in (("causal", "last"), ("centre", "center")):
        with pytest.warns(FutureWarning, match=f"alignment '{old}' is now called '{new}'"):
            assert alignment_name(old) == new
        with pytest.warns(FutureWarning):
            assert clip_frame_indices(10, 4, old) == clip_frame_indices(10, 4, new)
        with pytest.warns(FutureWarning):
            assert ClipPolicy(clip_length=4, alignment=old).alignment == new
        with pytest.warns(FutureWarning):
            assert TrainingConfig.from_dict({"data": {"alignment": old}}).data.alignment == new
    with pytest.raises(ValueError, match="alignment must be 'last' .* or 'center' .*, got 'first'"):
        alignment_name("first")
    with pytest.raises(ValueError, match="data.alignment must be 'last'"):
        TrainingConfig.from_dict({"data": {"alignment": "first"}})
