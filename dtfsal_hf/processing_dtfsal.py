"""Processor for DTFSal: one call turns clips and their audio into the model's inputs."""

import warnings

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_dtfsal import DTFSalFeatureExtractor
from .video_processing_dtfsal import DTFSalVideoProcessor


class DTFSalProcessor(ProcessorMixin):
    r"""
    Holds a [`DTFSalVideoProcessor`] and a [`DTFSalFeatureExtractor`].

    `processor(videos=clips, audio=waveforms, sampling_rate=16000)` gives `pixel_values_videos`
    `(batch, num_frames, 3, height, width)` and `input_features` `(batch, num_audio_examples, 1, h, w)`.
    Without `audio`, only `pixel_values_videos` is returned: enough for the visual model DTFSal(V), while the
    audio-visual model refuses to run without audio. To run it on video without sound, pass
    `silent_audio=True`: the features of silence are then returned, with a warning.
    """

    def __init__(self, video_processor: DTFSalVideoProcessor, feature_extractor: DTFSalFeatureExtractor):
        super().__init__(video_processor, feature_extractor)

    @classmethod
    def from_model_config(cls, config) -> "DTFSalProcessor":
        """Build the processor matching a `DTFSalConfig`'s clip length, image size and audio input size."""
        return cls(DTFSalVideoProcessor.from_model_config(config), DTFSalFeatureExtractor.from_model_config(config))

    def __call__(
        self,
        videos=None,
        audio=None,
        sampling_rate: int | None = None,
        silent_audio: bool = False,
        return_tensors: str | None = "pt",
        **video_kwargs,
    ) -> BatchFeature:
        """
        Args:
            videos: one clip `(num_frames, height, width, 3)` or a batch of clips (see [`DTFSalVideoProcessor`]).
            audio: each clip's mono waveform ending at the end of its last frame (see [`DTFSalFeatureExtractor`]),
                one per clip.
            sampling_rate: the waveforms' sampling rate; must be 16000.
            silent_audio: with `audio=None`, return the features of silent clips (and warn).
            return_tensors: `"pt"` (default) or `"np"`.
            video_kwargs: overrides for the video processor (e.g. `do_normalize=False`).
        """
        if videos is None and audio is None and not silent_audio:
            raise ValueError("DTFSalProcessor needs videos, audio, or both; got neither")
        if audio is not None and silent_audio:
            raise ValueError("silent_audio=True replaces missing audio; it cannot be combined with audio")
        data = {}
        if videos is not None:
            data.update(self.video_processor(videos, return_tensors=return_tensors, **video_kwargs))
        if audio is not None:
            data.update(self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors))
        elif silent_audio:
            batch_size = len(data["pixel_values_videos"]) if data else 1
            warnings.warn("No audio was given: using the features of silent audio", UserWarning, stacklevel=2)
            data.update(self.feature_extractor.silent_features(batch_size, return_tensors=return_tensors))
        self._check_batch_sizes(data)
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _check_batch_sizes(data: dict) -> None:
        if "pixel_values_videos" in data and "input_features" in data:
            num_clips, num_waveforms = len(data["pixel_values_videos"]), len(data["input_features"])
            if num_clips != num_waveforms:
                raise ValueError(f"expected one waveform per clip: got {num_clips} clips and {num_waveforms} waveforms")

    def post_process_saliency(
        self, saliency_maps, target_sizes=None, blur_sigma: float | None = None, normalize: str | None = "max"
    ):
        """Maps back at the video's resolution, each divided by its maximum by default (as `dtfsal predict`
        writes them); see [`DTFSalVideoProcessor.post_process_saliency`]."""
        return self.video_processor.post_process_saliency(
            saliency_maps, target_sizes=target_sizes, blur_sigma=blur_sigma, normalize=normalize
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values_videos", "input_features"]


__all__ = ["DTFSalProcessor"]
