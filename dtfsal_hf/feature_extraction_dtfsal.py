"""Audio feature extractor for DTFSal: a clip's waveform -> VGGish log-mel examples.

The log-mel follows Google's VGGish input pipeline (`mel_features.py`): 25 ms periodic-Hann frames
without padding, 10 ms hop, |rfft| with n_fft 512, 64 HTK mel bands from 125 to 7500 Hz whose
triangles are built in mel space, log(mel + 0.01). `transformers.audio_utils` reproduces it
(`mel_filter_bank(..., norm=None, mel_scale="htk", triangularize_in_mel_space=True)` and
`spectrogram(..., power=1.0, center=False)`); torchaudio's `MelSpectrogram` does not (centre padding,
triangles built in Hz).

One clip uses 9 examples of 64 log-mel frames with a hop of 11 frames: 152 frames, i.e. 24,560 samples
at 16 kHz ending at the end of the clip's last frame. Each 64x64 example (time x mel band, the VGGish
orientation) is resized bilinearly to `audio_input_size`.
"""

import warnings

import numpy as np
import torch

from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature


class DTFSalFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns clip waveforms (mono, 16 kHz) into `input_features` of shape
    `(batch, num_audio_examples, 1, audio_input_size[0], audio_input_size[1])`.

    Args:
        num_audio_examples (`int`, defaults to 9): log-mel examples per clip.
        audio_input_size (`list[int]`, defaults to `[112, 192]`): (height, width) each example is resized to.
        feature_size (`int`, defaults to 64): mel bands.
        sampling_rate (`int`, defaults to 16000): the only sampling rate accepted.
        frame_length (`int`, defaults to 400): STFT frame, 25 ms.
        hop_length (`int`, defaults to 160): STFT hop, 10 ms.
        fft_length (`int`, defaults to 512): FFT size, the next power of two of `frame_length`.
        min_frequency, max_frequency (`float`, defaults to 125 and 7500): edges of the mel bank, Hz.
        log_offset (`float`, defaults to 0.01): added before the logarithm.
        example_frames (`int`, defaults to 64): log-mel frames per example (0.64 s).
        example_hop (`int`, defaults to 11): log-mel frames between consecutive examples (0.11 s).
    """

    model_input_names = ["input_features"]

    def __init__(
        self,
        num_audio_examples: int = 9,
        audio_input_size: list[int] | tuple[int, int] = (112, 192),
        feature_size: int = 64,
        sampling_rate: int = 16000,
        frame_length: int = 400,
        hop_length: int = 160,
        fft_length: int = 512,
        min_frequency: float = 125.0,
        max_frequency: float = 7500.0,
        log_offset: float = 0.01,
        example_frames: int = 64,
        example_hop: int = 11,
        padding_value: float = 0.0,
        **kwargs,
    ):
        kwargs.setdefault("return_attention_mask", False)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        audio_input_size = [int(side) for side in audio_input_size]
        if len(audio_input_size) != 2 or min(audio_input_size) < 1:
            raise ValueError(f"audio_input_size must be [height, width] of positive sides, got {audio_input_size}")
        if num_audio_examples < 1:
            raise ValueError(f"num_audio_examples must be positive, got {num_audio_examples}")
        self.num_audio_examples = int(num_audio_examples)
        self.audio_input_size = audio_input_size
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.fft_length = fft_length
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency
        self.log_offset = log_offset
        self.example_frames = example_frames
        self.example_hop = example_hop
        self.window = window_function(frame_length, "hann", periodic=True)
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=fft_length // 2 + 1,
            num_mel_filters=feature_size,
            min_frequency=min_frequency,
            max_frequency=max_frequency,
            sampling_rate=sampling_rate,
            norm=None,
            mel_scale="htk",
            triangularize_in_mel_space=True,
        )

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "DTFSalFeatureExtractor":
        """Build the extractor for a `DTFSalConfig` (uses `num_audio_examples` and `audio_input_size`)."""
        return cls(
            num_audio_examples=config.num_audio_examples, audio_input_size=list(config.audio_input_size), **kwargs
        )

    @property
    def num_log_mel_frames(self) -> int:
        """Log-mel frames one clip covers: 64 + 8 * 11 = 152 by default."""
        return self.example_frames + (self.num_audio_examples - 1) * self.example_hop

    @property
    def num_samples(self) -> int:
        """Samples one clip's audio window holds: (152 - 1) * 160 + 400 = 24,560 by default (1.535 s)."""
        return (self.num_log_mel_frames - 1) * self.hop_length + self.frame_length

    def log_mel_spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """VGGish log-mel of a mono waveform (samples,) -> (frames, mel bands) float64, frames without padding."""
        magnitude_mel = spectrogram(
            np.asarray(waveform, dtype=np.float64),
            self.window,
            frame_length=self.frame_length,
            hop_length=self.hop_length,
            fft_length=self.fft_length,
            power=1.0,
            center=False,
            mel_filters=self.mel_filters,
            mel_floor=0.0,
        )
        # (mel bands, frames) -> (frames, mel bands), the VGGish orientation
        return np.log(magnitude_mel + self.log_offset).T

    def frame_examples(self, log_mel: np.ndarray) -> np.ndarray:
        """Cut (frames, mel bands) into the clip's examples -> (num_audio_examples, example_frames, mel bands)."""
        needed = self.num_log_mel_frames
        if log_mel.shape[0] != needed:
            raise ValueError(f"expected {needed} log-mel frames, got {log_mel.shape[0]}")
        starts = np.arange(self.num_audio_examples) * self.example_hop
        return np.stack([log_mel[start : start + self.example_frames] for start in starts])

    def clip_window(self, waveform: np.ndarray) -> np.ndarray:
        """The last `num_samples` samples of a waveform, zero-padded at the start when it is shorter."""
        if waveform.shape[0] >= self.num_samples:
            return waveform[waveform.shape[0] - self.num_samples :]
        return np.concatenate([np.zeros(self.num_samples - waveform.shape[0], dtype=waveform.dtype), waveform])

    def _examples_to_features(self, examples: np.ndarray) -> torch.Tensor:
        """(A, frames, bands) -> (A, 1, height, width) float32, bilinear."""
        tensor = torch.from_numpy(examples.astype(np.float32))[:, None]
        height, width = self.audio_input_size
        # Antialiasing only matters when shrinking (small test sizes); plain bilinear when enlarging.
        antialias = height < examples.shape[1] or width < examples.shape[2]
        return torch.nn.functional.interpolate(
            tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
        )

    def _check_sampling_rate(self, sampling_rate) -> None:
        if sampling_rate is None:
            warnings.warn(
                f"No sampling_rate was given to {self.__class__.__name__}: assuming {self.sampling_rate} Hz. "
                "Pass sampling_rate to be sure the audio matches.",
                UserWarning,
                stacklevel=3,
            )
            return
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)):
            raise ValueError(f"sampling_rate must be an integer number of Hz, got {sampling_rate!r}")
        if sampling_rate != self.sampling_rate:
            raise ValueError(
                f"expected sampling_rate={self.sampling_rate} (Hz), got {sampling_rate}: resample the audio first "
                "(dtfsal_hf.media.resample_audio, or torchaudio.functional.resample)"
            )

    def _as_waveforms(self, audio) -> list[np.ndarray]:
        """A waveform (samples,), a batch (batch, samples) or a list of waveforms -> list of float arrays."""
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        if isinstance(audio, np.ndarray):
            if audio.ndim == 1:
                audio = [audio]
            elif audio.ndim == 2:
                audio = list(audio)
            else:
                raise ValueError(f"expected a waveform (samples,) or a batch (batch, samples), got shape {audio.shape}")
        if not isinstance(audio, (list, tuple)) or len(audio) == 0:
            raise ValueError(f"expected a waveform or a non-empty list of waveforms, got {type(audio).__name__}")
        if all(isinstance(value, (int, float, np.floating)) for value in audio):
            audio = [np.asarray(audio)]
        return [self._check_waveform(waveform, position) for position, waveform in enumerate(audio)]

    @staticmethod
    def _check_waveform(waveform, position: int) -> np.ndarray:
        if isinstance(waveform, torch.Tensor):
            waveform = waveform.detach().cpu().numpy()
        waveform = np.asarray(waveform)
        if waveform.ndim != 1:
            raise ValueError(
                f"waveform {position} must be mono (samples,), got shape {waveform.shape}: average the channels first"
            )
        if not np.issubdtype(waveform.dtype, np.floating):
            raise ValueError(
                f"waveform {position} must be floating point in [-1, 1], got dtype {waveform.dtype} "
                "(divide 16-bit PCM by 32768)"
            )
        if not np.all(np.isfinite(waveform)):
            raise ValueError(f"waveform {position} holds NaN or infinite values")
        return waveform

    def __call__(self, audio, sampling_rate: int | None = None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """
        Args:
            audio: a mono waveform `(samples,)`, a batch `(batch, samples)` or a list of waveforms (numpy or torch,
                float in [-1, 1]). Each is one clip's audio *ending at the end of the clip's last frame*; only its last
                `num_samples` (24,560) samples are used, and a shorter one is zero-padded at the start, as audio before
                the file's start.
            sampling_rate: must equal `self.sampling_rate` (16000).
            return_tensors: `"pt"` (default), `"np"` or None (lists of numpy arrays).

        Returns:
            `BatchFeature` with `input_features` of shape `(batch, num_audio_examples, 1, height, width)` float32.
        """
        if kwargs:
            raise ValueError(f"unexpected arguments for {self.__class__.__name__}: {sorted(kwargs)}")
        self._check_sampling_rate(sampling_rate)
        features = []
        for waveform in self._as_waveforms(audio):
            examples = self.frame_examples(self.log_mel_spectrogram(self.clip_window(waveform)))
            features.append(self._examples_to_features(examples))
        # (batch, A, 1, height, width)
        stacked = torch.stack(features)
        if return_tensors is None:
            return BatchFeature({"input_features": [array for array in stacked.numpy()]})
        return BatchFeature({"input_features": stacked}, tensor_type=return_tensors)

    def silent_features(self, batch_size: int = 1, return_tensors: str | None = "pt") -> BatchFeature:
        """The features of silent clips, for audio-visual models run on video without sound."""
        silence = np.zeros((batch_size, self.num_samples), dtype=np.float32)
        return self(silence, sampling_rate=self.sampling_rate, return_tensors=return_tensors)


__all__ = ["DTFSalFeatureExtractor"]
