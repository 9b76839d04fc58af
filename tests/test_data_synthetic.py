"""The synthetic audio-visual set: STAViS layout, and only the sound tells which disc is looked at."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from dtfsal_hf import DTFSalConfig, DTFSalModel, metrics
from dtfsal_hf.cli import main
from dtfsal_hf.evaluation import evaluate, synthetic_oracle
from dtfsal_hf.data import (
    FAST_SEGMENTS_S,
    PALETTE,
    SLOW_SEGMENTS_S,
    SyntheticConfig,
    colour_table,
    generate_synthetic_dataset,
    load_records,
    read_fixation_map,
    visual_only_oracle,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    config = SyntheticConfig(num_videos=6, duration_s=4.0)
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), config, progress=False), config


def sources(root, record):
    return json.loads((root / "annotations" / "SyntheticAV" / record.name / "sources.json").read_text())


def test_layout_reads_as_a_stavis_database(synthetic):
    root, config = synthetic
    records = load_records("SyntheticAV", root, "test", fold="all")
    assert sorted(r.name for r in records) == [f"synth_{i:04d}" for i in range(6)]
    assert [r.name for r in load_records("SyntheticAV", root, "train", fold=2)] == ["synth_0000", "synth_0002", "synth_0003", "synth_0005"]
    record = records[0]
    assert record.num_frames == 100 and record.fps == 25.0
    assert record.frames([0]).shape == (1, 96, 160, 3)
    assert record.fixation_map(0).sum() >= 1 and record.saliency_map(0).max() > 0.9
    track = record.audio()
    assert track.sampling_rate == 16000 and track.waveform.shape == (64000,)
    assert json.loads((root / "config.json").read_text())["num_objects"] == 3


def test_fixations_sit_on_the_sounding_disc_and_the_tone_is_its_colour(synthetic):
    root, config = synthetic
    for record in load_records("SyntheticAV", root, "test", fold="all"):
        info = sources(root, record)
        centres = np.array(info["centres"])
        for frame in (5, 50, 95):
            sounding = info["sounding_object"][frame]
            fixated = np.argwhere(record.fixation_map(frame)).mean(axis=0)
            assert np.linalg.norm(fixated + 0.5 - centres[frame, sounding]) < config.radius
            # The dominant frequency of the 0.25 s of sound around the frame is the sounding disc's tone.
            waveform = record.audio().waveform
            middle = int((frame + 0.5) / config.fps * 16000)
            piece = waveform[max(middle - 2000, 0) : middle + 2000]
            peak = np.fft.rfftfreq(piece.size, 1 / 16000)[np.abs(np.fft.rfft(piece * np.hanning(piece.size))).argmax()]
            segment = next(s for s in info["segments"] if s[0] <= (frame + 0.5) / config.fps < s[1])
            if min(abs(segment[0] * 16000 - middle), abs(segment[1] * 16000 - middle)) > 2000:
                assert peak == pytest.approx(info["frequencies_hz"][sounding], abs=10)
        # Each colour keeps its tone in every video.
        for colour, frequency in zip(info["colours"], info["frequencies_hz"]):
            assert any(tuple(colour) == p[0] and frequency == p[1] for p in PALETTE)


def test_which_disc_sounds_is_not_visible(synthetic):
    root, config = synthetic
    infos = [sources(root, r) for r in load_records("SyntheticAV", root, "test", fold="all")]
    # Segments last 1.5–3 s and always switch to another disc.
    for info in infos:
        lengths = [end - start for start, end, _ in info["segments"][:-1]]
        assert all(1.5 <= length <= 3.0 for length in lengths)
        owners = [k for _, _, k in info["segments"]]
        assert all(a != b for a, b in zip(owners, owners[1:]))
    # Every colour sounds in some video: the sounding colour is not fixed.
    sounding_colours = {info["palette_indices"][k] for info in infos for _, _, k in info["segments"]}
    assert sounding_colours == set(range(config.palette_size))
    # The discs are drawn alike: same radius, and the sounding disc moves no differently.
    speeds = []
    for info in infos:
        centres = np.array(info["centres"])
        step = np.linalg.norm(np.diff(centres, axis=0), axis=2)
        sounding = np.array(info["sounding_object"][:-1])
        speeds.append((step[np.arange(len(sounding)), sounding].mean(), step.mean()))
    sounding_speed, mean_speed = np.mean(speeds, axis=0)
    assert sounding_speed == pytest.approx(mean_speed, rel=0.35)


def test_generation_is_reproducible_and_checked(tmp_path):
    config = SyntheticConfig(num_videos=3, duration_s=1.0, seed=5)
    first = generate_synthetic_dataset(tmp_path / "a", config, progress=False)
    second = generate_synthetic_dataset(tmp_path / "b", config, progress=False)
    for name in ("video_audio/SyntheticAV/synth_0001/synth_0001.wav", "video_frames/SyntheticAV/synth_0002/img_00010.jpg"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # A .mat header carries its creation time: compare the maps themselves.
    fixations = "annotations/SyntheticAV/synth_0002/fixMap_00010.mat"
    np.testing.assert_array_equal(read_fixation_map(first / fixations), read_fixation_map(second / fixations))
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticConfig(num_objects=4, palette_size=3)
    with pytest.raises(ValueError, match="segment_s"):
        SyntheticConfig(segment_s=(2.0, 1.0))


def test_fast_switching_segments_are_shorter_than_the_audio_window(tmp_path):
    config = SyntheticConfig(num_videos=3, duration_s=4.0, segment_s=FAST_SEGMENTS_S)
    root = generate_synthetic_dataset(tmp_path, config, progress=False)
    window_s = DTFSalConfig().audio_window_s
    for record in load_records("SyntheticAV", root, "test", fold="all"):
        segments = sources(root, record)["segments"]
        lengths = [end - start for start, end, _ in segments[:-1]]
        assert len(segments) >= 5 and all(0.3 <= length <= 1.0 < window_s for length in lengths)
    assert SLOW_SEGMENTS_S[0] > 1.0 and SyntheticConfig().segment_s == SLOW_SEGMENTS_S


def luma(colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def test_alike_distractors_are_shades_of_one_family_at_one_luminance(tmp_path):
    config = SyntheticConfig(num_videos=8, duration_s=1.0, distractors="alike")
    root = generate_synthetic_dataset(tmp_path, config, progress=False)
    table = colour_table("alike")
    families = set()
    for record in load_records("SyntheticAV", root, "test", fold="all"):
        info = sources(root, record)
        family = {index // 3 for index in info["palette_indices"]}
        assert len(family) == 1 and len(set(info["palette_indices"])) == 3  # three different shades of one family
        families |= family
        for index, colour, frequency in zip(info["palette_indices"], info["colours"], info["frequencies_hz"]):
            assert tuple(colour) == table[index][0] and frequency == table[index][1]
    assert families == {0, 1}
    lumas = [luma(colour) for colour, _ in table]
    assert max(lumas) - min(lumas) < 2.0  # no shade stands out by brightness
    assert len({frequency for _, frequency in table}) == 6  # every shade has its own tone
    with pytest.raises(ValueError, match="distractors"):
        SyntheticConfig(distractors="similar")
    with pytest.raises(ValueError, match="one family of 3 shades"):
        SyntheticConfig(distractors="alike", num_objects=4, palette_size=4)


def test_visual_only_oracle_lights_every_disc_and_scores_below_the_sounding_one(synthetic):
    root, config = synthetic
    record = load_records("SyntheticAV", root, "test", fold="all")[0]
    info = sources(root, record)
    oracle = visual_only_oracle(record)
    assert oracle.shape == (record.num_frames, config.height, config.width) and oracle.max() == pytest.approx(1.0)
    centres = np.floor(np.array(info["centres"])).astype(int)
    frames = range(0, record.num_frames, 10)
    for frame in frames:
        for row, column in centres[frame]:
            # A peak on every disc, sounding or not (at least 1/3 of the maximum where discs overlap).
            assert oracle[frame, row, column] > 0.3
    # Against the observers, the oracle is far from a map on the sounding disc alone (the ground truth itself).
    scores = [metrics.cc(torch.from_numpy(oracle[f]), torch.from_numpy(record.saliency_map(f))).item() for f in frames]
    assert 0.3 < np.mean(scores) < 0.75
    with pytest.raises(ValueError, match="not a synthetic video"):
        visual_only_oracle(dataclasses.replace(record, map_paths=[str(root / "elsewhere" / "maps" / "eyeMap_00001.jpg")]))


def test_evaluate_prints_the_visual_only_oracle_beside_the_sound_controls(synthetic, tmp_path, capsys):
    """`dtfsal evaluate --audio controls` on a synthetic set: own, shuffled and silent rows, and the oracle's row
    (the same scores as `evaluate` gives `visual_only_oracle`), so "found every disc" is not read as hearing; a
    plain evaluation prints the oracle's line too; a set that is not synthetic gets no oracle."""
    root, _ = synthetic
    torch.manual_seed(0)
    DTFSalModel(DTFSalConfig.tiny(use_audio=True)).save_pretrained(tmp_path / "model")
    arguments = ["evaluate", "--dataset", "SyntheticAV", "--root", str(root), "--fold", "1", "--model",
                 str(tmp_path / "model"), "--metrics", "cc,nss", "--batch-size", "8", "--max-videos", "2"]
    assert main(arguments + ["--output", str(tmp_path / "controls"), "--audio", "controls"]) == 0
    table = capsys.readouterr().out
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "videos" not in line]
    assert rows == ["| own sound", "| shuffled sound (another test video's)", "| silence",
                    "| visual-only oracle (a map on every candidate: the best without hearing)"]
    records = load_records("SyntheticAV", root, "test", fold=1)[:2]
    expected = evaluate(records, visual_only_oracle, tmp_path / "direct", metrics=("cc", "nss"), progress=False)
    oracle = json.loads((tmp_path / "controls" / "visual_only_oracle" / "summary.json").read_text())
    assert oracle["metrics"]["cc"] == pytest.approx(expected["metrics"]["cc"])
    assert f"| 2 | {expected['metrics']['cc']:.3f} |" in table
    own = json.loads((tmp_path / "controls" / "own" / "summary.json").read_text())
    assert f"own − oracle: CC {own['metrics']['cc'] - expected['metrics']['cc']:+.3f}" in table
    assert main(arguments + ["--output", str(tmp_path / "own")]) == 0
    assert f"visual-only oracle (a map on every candidate: the best without hearing), 2 videos: CC " \
           f"{expected['metrics']['cc']:.3f}" in capsys.readouterr().out
    assert synthetic_oracle([dataclasses.replace(records[0], map_paths=[str(tmp_path / "x" / "maps" / "a.jpg")])],
                            tmp_path / "none") is None
