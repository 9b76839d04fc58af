"""Processor for DTFSal: one call turns clips and their audio into the model's inputs."""

import warnings

import numpy as np
import torch
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

    With `frame_times` (each frame's start and end, in seconds) it also returns `frame_times`
    `(batch, num_frames, 2)`, relative to the end of each clip's audio window: the audio-visual model fuses
    with each visual time step the sound of its own time span, whatever the frame rate, stride or alignment.
    Without them the model assumes `config.frame_rate` frames per second ending where the audio ends.
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
        frame_times=None,
        audio_end_times=None,
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
            frame_times: per clip, its frames' `(start, end)` times in seconds, `(num_frames, 2)`, on any clock (a
                `(batch, num_frames, 2)` array, or a list of them); repeated frames keep their own times.
            audio_end_times: per clip, where its audio window ends, on the clip's clock; by default the end of its
                last frame (as the audio passed here and by `dtfsal_hf.media.audio_window` is cut).
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
        if frame_times is not None:
            data["frame_times"] = self.relative_frame_times(frame_times, audio_end_times)
            if return_tensors != "pt":
                data["frame_times"] = data["frame_times"].numpy()
        elif audio_end_times is not None:
            raise ValueError("audio_end_times needs frame_times")
        self._check_batch_sizes(data)
        return BatchFeature(data, tensor_type=return_tensors)

    def relative_frame_times(self, frame_times, audio_end_times=None) -> torch.Tensor:
        """Frames' `(start, end)` times -> `(batch, num_frames, 2)` float32 seconds relative to each clip's audio
        end (by default the end of its last frame). Refuses times that are not finite or end before they start."""
        clips = [np.asarray(times, dtype=np.float64) for times in (frame_times if _is_batch(frame_times) else [frame_times])]
        num_frames = self.video_processor.num_frames
        for position, times in enumerate(clips):
            if times.shape != (num_frames, 2):
                raise ValueError(f"frame_times of clip {position} must have shape ({num_frames}, 2) = (frames, (start, end)), "
                                 f"got {times.shape}")
            if not np.all(np.isfinite(times)) or np.any(times[:, 1] < times[:, 0]):
                raise ValueError(f"frame_times of clip {position} must be finite, each frame ending no earlier than it starts")
        if audio_end_times is None:
            ends = [times[-1, 1] for times in clips]
        else:
            ends = np.asarray(audio_end_times, dtype=np.float64).reshape(-1)
            if ends.shape[0] != len(clips) or not np.all(np.isfinite(ends)):
                raise ValueError(f"expected one finite audio end time per clip: got {ends.shape[0]} for {len(clips)} clips")
        return torch.from_numpy(np.stack([times - end for times, end in zip(clips, ends)]).astype(np.float32))

    @staticmethod
    def _check_batch_sizes(data: dict) -> None:
        if "pixel_values_videos" in data and "input_features" in data:
            num_clips, num_waveforms = len(data["pixel_values_videos"]), len(data["input_features"])
            if num_clips != num_waveforms:
                raise ValueError(f"expected one waveform per clip: got {num_clips} clips and {num_waveforms} waveforms")
        if "pixel_values_videos" in data and "frame_times" in data:
            num_clips, num_times = len(data["pixel_values_videos"]), len(data["frame_times"])
            if num_clips != num_times:
                raise ValueError(f"expected the frame times of every clip: got {num_clips} clips and {num_times} sets of times")

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
        return ["pixel_values_videos", "input_features", "frame_times"]


def _is_batch(frame_times) -> bool:
    """A list of clips' times, or a (batch, frames, 2) array, as opposed to one clip's (frames, 2)."""
    if isinstance(frame_times, (list, tuple)):
        return len(frame_times) > 0 and np.asarray(frame_times[0], dtype=object).ndim == 2
    return np.ndim(frame_times) == 3


__all__ = ["DTFSalProcessor"]
