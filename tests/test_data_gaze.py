"""Raw SMI gaze to fixation maps and continuous maps, on a written sample file and DHF1K's real video 002."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from data_trees import shared_data_or_skip
from dtfsal_hf.data import (
    continuous_map,
    fixation_map,
    fwhm_to_sigma,
    gaze_fixations,
    read_smi_gaze,
    recording_fixations,
    screen_to_video,
    write_dhf1k_annotation,
)

HEADER = "Time\tType\tTrial\tL Dia X [px]\tL Dia Y [px]\tL POR X [px]\tL POR Y [px]\tL Event Info\n"


def write_smi(path, samples):
    lines = [f"{t}\tSMP\t1\t16.0\t16.0\t{x:.2f}\t{y:.2f}\t{event}\n" for t, x, y, event in samples]
    path.write_text(HEADER + "".join(lines))
    return path


def test_screen_to_video_letterbox():
    # 640×360 on 1440×900: a = 4/9, b = (900 − 810) / 2 = 45.
    x, y = screen_to_video(np.array([0.0, 1440.0, 720.0]), np.array([45.0, 855.0, 450.0]), (640, 360))
    np.testing.assert_allclose(x, [0, 640, 320])
    np.testing.assert_allclose(y, [0, 360, 180])


def test_samples_to_frames_keep_fixations_only(tmp_path):
    t0 = 1_000_000
    samples = [
        (t0, 720.0, 450.0, "Fixation"),  # frame ceil(0) = 0: before the first frame, dropped
        (t0 + 20_000, 720.0, 450.0, "Fixation"),  # ceil(0.6) = frame 1
        (t0 + 30_000, 100.0, 450.0, "Saccade"),  # not a fixation
        (t0 + 40_000, 9.0, 40.0, "Fixation"),  # ceil(1.2) = frame 2, on the letterbox (y_screen < 45): dropped
        (t0 + 50_000, 1439.0, 854.0, "Fixation"),  # ceil(1.5) = frame 2, bottom-right pixel
        (t0 + 200_000, 720.0, 450.0, "Fixation"),  # frame 6: after the last frame (3)
    ]
    recording = read_smi_gaze(write_smi(tmp_path / "P01_Trail001.txt", samples))
    assert list(recording.event) == ["Fixation", "Fixation", "Saccade", "Fixation", "Fixation", "Fixation"]
    frames = recording_fixations(recording, (640, 360), num_frames=3)
    assert [f.tolist() for f in frames] == [[[180, 320]], [[359, 639]], []]


def test_read_smi_rejects_other_exports(tmp_path):
    (tmp_path / "bad.txt").write_text("Time\tX\tY\n1\t2\t3\n")
    with pytest.raises(ValueError, match="missing"):
        read_smi_gaze(tmp_path / "bad.txt")


def test_continuous_map_is_sum_of_gaussians_with_fwhm_30():
    assert fwhm_to_sigma(30) == pytest.approx(30 / (2 * math.sqrt(2 * math.log(2))))
    points = np.array([[20, 30], [20, 30], [60, 100]])
    result = continuous_map(points, (80, 120))
    counts = np.zeros((80, 120))
    np.add.at(counts, (points[:, 0], points[:, 1]), 1)
    reference = gaussian_filter(counts, fwhm_to_sigma(30), mode="constant", truncate=10)
    np.testing.assert_allclose(result, reference / reference.max(), atol=1e-6)
    # Half maximum 15 px from an isolated fixation's centre.
    single = continuous_map(np.array([[40, 60]]), (80, 120))
    assert single[40, 60] == 1.0 and single[40, 75] == pytest.approx(0.5, abs=1e-6)
    assert not continuous_map(np.zeros((0, 2)), (4, 4)).any()
    assert fixation_map(points, (80, 120)).sum() == 2


def test_real_dhf1k_video_002_gaze(tmp_path):
    gaze = shared_data_or_skip("dhf1k_002", "gaze")
    files = sorted(gaze.glob("P*_Trail002.txt"))
    assert len(files) == 17
    per_frame = gaze_fixations(files, (640, 360), num_frames=783)
    assert len(per_frame) == 783
    counts = np.array([len(points) for points in per_frame])
    # About 87 fixation samples per frame over the 17 observers (the data notes), none empty.
    assert 70 < counts.mean() < 100 and counts.min() > 0
    # Frames 60, 300 and 600: the fly on the daisy, right of centre in the upper half.
    for frame in (60, 300, 600):
        centre = np.median(per_frame[frame - 1], axis=0)
        assert 120 < centre[0] < 260 and 280 < centre[1] < 420, (frame, centre)
    fixations = np.stack([fixation_map(per_frame[i], (360, 640)) for i in range(3)])
    maps = np.stack([continuous_map(per_frame[i], (360, 640)) for i in range(3)])
    folder = write_dhf1k_annotation(tmp_path / "0002", fixations, maps)
    assert sorted(p.name for p in (folder / "maps").iterdir()) == ["0001.png", "0002.png", "0003.png"]
