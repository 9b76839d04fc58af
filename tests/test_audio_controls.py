"""The hearing test: a model evaluated with its own sound, another test video's sound, and silence."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from data_trees import write_stavis
from dtfsal_hf.cli import main
from dtfsal_hf.configuration_dtfsal import DTFSalConfig
from dtfsal_hf.data import load_records
from dtfsal_hf.evaluation import (
    AUDIO_MODES,
    evaluate,
    evaluate_audio_controls,
    format_audio_controls,
    format_table,
    model_predictor,
    run_evaluation,
    sound_partners,
    uniform_predictor,
)
from dtfsal_hf.inference import SaliencyPredictor
from dtfsal_hf.modeling_dtfsal import DTFSalModel
from dtfsal_hf.processing_dtfsal import DTFSalProcessor

WINDOW = DTFSalProcessor.from_model_config(DTFSalConfig.tiny()).feature_extractor.num_samples  # one clip's audio window at 16 kHz
FPS = 25.0
# Video name -> (tone in Hz, length of its sound in seconds). V2's sound is shorter than its 5 frames
# (0.2 s), so a video paired with it hears V2's sound looped.
SOUNDS = {"V1": (300.0, 2.0), "V2": (700.0, 0.05), "V3": (1100.0, 1.5), "V4": (1900.0, 3.0)}


@pytest.fixture()
def avad(tmp_path):
    """Four 5-frame AVAD videos whose sounds differ in pitch and length (16-bit wav, 16 kHz)."""
    root = write_stavis(tmp_path / "stavis", "AVAD", list(SOUNDS), num_frames=5, fps=FPS)
    for name, (tone, seconds) in SOUNDS.items():
        samples = np.round(12000 * np.sin(2 * np.pi * tone * np.arange(int(16000 * seconds)) / 16000)).astype(np.int16)
        wavfile.write(root / "video_audio" / "AVAD" / name / f"{name}.wav", 16000, samples)
    return root


@pytest.fixture()
def tiny_model():
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny(use_audio=True)).eval()


def wav_samples(root, name) -> np.ndarray:
    """The video's sound as the file holds it, float in [-1, 1), read without the project's code."""
    rate, samples = wavfile.read(root / "video_audio" / "AVAD" / name / f"{name}.wav")
    assert rate == 16000
    return samples.astype(np.float64) / 32768.0


def expected_window(samples: np.ndarray, end_time: float, looped: bool) -> np.ndarray:
    """The WINDOW samples ending at `end_time`: zeros before the start; past the end, zeros or the sound again."""
    end = int(round(end_time * 16000))
    positions = np.arange(end - WINDOW, end)
    window = np.zeros(WINDOW)
    inside = positions >= 0 if looped else (positions >= 0) & (positions < samples.size)
    window[inside] = samples[positions[inside] % samples.size]
    return window


@pytest.fixture()
def heard(monkeypatch):
    """Spy on the waveforms each clip hands the processor: a list of (clips, windows) per model call."""
    calls = []
    original = SaliencyPredictor.clip_inputs

    def spy(self, clips, audio=None, frame_times=None):
        calls.append([np.array(w, dtype=np.float64) for w in audio] if audio is not None else None)
        return original(self, clips, audio, frame_times)

    monkeypatch.setattr(SaliencyPredictor, "clip_inputs", spy)
    return calls


def windows_of(calls) -> list[np.ndarray]:
    return [window for call in calls for window in call]


def test_sound_partners_are_a_seeded_derangement(avad, tmp_path):
    records = load_records("AVAD", avad, "test", fold="all")
    partners = sound_partners(records, seed=0)
    elsewhere = load_records("AVAD", write_stavis(tmp_path / "copy", "AVAD", list(SOUNDS), num_frames=5), "test", fold="all")
    assert {k: p.key for k, p in sound_partners(elsewhere, seed=0).items()} == {k: p.key for k, p in partners.items()}
    assert sorted(partners) == sorted(r.key for r in records)
    assert all(partners[r.key].audio_path != r.audio_path for r in records)
    # Every sound is given to exactly one other video, whatever the order the records come in.
    assert sorted(p.key for p in partners.values()) == sorted(partners)
    assert {k: p.key for k, p in sound_partners(records[::-1], seed=0).items()} == {k: p.key for k, p in partners.items()}
    seeds = {tuple(sorted((k, p.key) for k, p in sound_partners(records, seed=s).items())) for s in range(20)}
    assert len(seeds) > 1  # 9 derangements of 4 sounds: the seed chooses among them
    # A video listed twice (in two folds) keeps one sound: neither copy hears it.
    twice = records + [dataclasses.replace(records[0], fold=9)]
    doubled = sound_partners(twice, seed=3)
    assert all(doubled[r.key].audio_path != r.audio_path for r in twice)
    with pytest.raises(ValueError, match="at least two videos with different sounds"):
        sound_partners([records[0], dataclasses.replace(records[0], fold=9)])


def test_shuffled_sound_feeds_the_partners_waveform(avad, tiny_model, heard, tmp_path):
    records = load_records("AVAD", avad, "test", fold="all")
    summary = evaluate(records, model_predictor(tiny_model, batch_size=5), tmp_path / "shuffled", audio="shuffled",
                       progress=False, metrics=("cc", "sauc"))
    assert summary["audio"] == "shuffled" and summary["sauc_other"] == "same-video"
    partners = summary["audio_partners"]
    assert all(partners[r.key] != r.key for r in records) and sorted(partners.values()) == sorted(partners)
    # One model call per video (5 clips, batch 5), in the order of the records; clip t ends at (t + 1) / fps.
    assert len(heard) == len(records)
    by_key = {r.key: r for r in records}
    for record, windows in zip(records, heard):
        partner = by_key[partners[record.key]]
        samples = wav_samples(avad, partner.name)
        for t, window in enumerate(windows):
            np.testing.assert_allclose(window, expected_window(samples, (t + 1) / FPS, looped=True), atol=1e-6)
            assert not np.allclose(window, expected_window(wav_samples(avad, record.name), (t + 1) / FPS, looped=False))
    # The partner shorter than the video was looped, not cut to silence.
    short = next(i for i, r in enumerate(records) if by_key[partners[r.key]].name == "V2")
    assert np.abs(heard[short][-1][-400:]).max() > 0.3


def test_silent_feeds_zeros_and_own_is_the_videos_sound(avad, tiny_model, heard, tmp_path):
    records = load_records("AVAD", avad, "test", fold=1)
    predict = model_predictor(tiny_model, batch_size=5)
    silent = evaluate(records, predict, tmp_path / "silent", audio="silent", progress=False, metrics=("cc",))
    assert silent["audio"] == "silent" and "audio_partners" not in silent
    assert all(not window.any() for window in windows_of(heard))
    heard.clear()
    own = evaluate(records, predict, tmp_path / "own", progress=False, metrics=("cc",))
    assert own["audio"] == "own"
    for record, windows in zip(records, heard):
        for t, window in enumerate(windows):
            np.testing.assert_allclose(window, expected_window(wav_samples(avad, record.name), (t + 1) / FPS, looped=False), atol=1e-6)
    # "own" is the predictor's plain call, as before the controls existed; the sound reaches the maps.
    record = records[0]
    plain = predict(record)
    assert np.array_equal(plain, predict(record, audio=record.audio()))
    silence = predict(record, audio=dataclasses.replace(record.audio(), waveform=np.zeros(0, np.float32)))
    assert not np.allclose(plain, silence, atol=1e-7)


def test_controls_need_a_model_that_hears(avad, tmp_path):
    records = load_records("AVAD", avad, "test", fold="all")
    with pytest.raises(ValueError, match="needs a model"):
        evaluate(records, uniform_predictor, tmp_path / "a", audio="shuffled", progress=False)
    with pytest.raises(ValueError, match="audio must be one of"):
        evaluate(records, uniform_predictor, tmp_path / "b", audio="loud", progress=False)
    assert evaluate(records, uniform_predictor, tmp_path / "c", progress=False, metrics=("cc",))["audio"] is None
    torch.manual_seed(0)
    visual = model_predictor(DTFSalModel(DTFSalConfig.tiny(use_audio=False)))
    with pytest.raises(ValueError, match="visual-only"):
        evaluate(records, visual, tmp_path / "d", audio="silent", progress=False)
    with pytest.raises(ValueError, match="give a model instead of predictions"):
        run_evaluation("AVAD", avad, tmp_path / "e", predictions=tmp_path, audio="silent")


def test_evaluate_audio_controls_side_by_side(avad, tiny_model, tmp_path):
    records = load_records("AVAD", avad, "test", fold=1)
    summaries = evaluate_audio_controls(tiny_model, records, tmp_path / "controls", batch_size=5, progress=False,
                                        metrics=("cc", "nss"))
    assert list(summaries) == list(AUDIO_MODES) and all(summaries[m]["audio"] == m for m in AUDIO_MODES)
    for mode in AUDIO_MODES:
        assert json.loads((tmp_path / "controls" / mode / "summary.json").read_text())["audio"] == mode
    table = format_audio_controls(summaries)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "videos" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| own sound", "| shuffled sound (another test video's)", "| silence"]
    margin = summaries["own"]["metrics"]["cc"] - summaries["shuffled"]["metrics"]["cc"]
    assert f"own − shuffled: CC {margin:+.3f}" in table
    assert "sound: silence" in format_table(summaries["silent"])
    with pytest.raises(ValueError, match="modes must be among"):
        evaluate_audio_controls(tiny_model, records, tmp_path / "x", modes=("own", "muted"))


def test_cli_evaluate_with_shuffled_sound(avad, tiny_model, tmp_path, capsys, heard):
    tiny_model.save_pretrained(tmp_path / "model")
    arguments = ["evaluate", "--dataset", "AVAD", "--root", str(avad), "--model", str(tmp_path / "model"),
                 "--output", str(tmp_path / "eval"), "--metrics", "cc,sauc", "--batch-size", "5", "--seed", "4"]
    assert main(arguments + ["--audio", "shuffled"]) == 0
    printed = capsys.readouterr().out
    assert "sound: shuffled sound (another test video's); sAUC other map: same-video" in printed
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["audio"] == "shuffled" and summary["seed"] == 4 and summary["num_videos"] == 4
    records = load_records("AVAD", avad, "test", fold="all")
    assert summary["audio_partners"] == {k: p.key for k, p in sorted(sound_partners(records, seed=4).items())}
    first = records[0]
    partner = wav_samples(avad, sound_partners(records, seed=4)[first.key].name)
    np.testing.assert_allclose(heard[0][2], expected_window(partner, 3 / FPS, looped=True), atol=1e-6)
    # The videos already scored heard another sound: a rerun with other settings refuses to mix them in.
    # The command reports an expected error in one line and exits 1.
    capsys.readouterr()
    assert main(arguments + ["--audio", "own"]) == 1
    assert "another evaluation (audio: 'shuffled', now 'own')" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "AVAD", "--root", str(avad), "--predictions", str(tmp_path),
                 "--output", str(tmp_path / "p"), "--audio", "silent"]) == 1
    assert "give a model instead of predictions" in capsys.readouterr().err
