"""Small dataset trees in each dataset's exact folder layout, written by the tests."""

from pathlib import Path

import av
import numpy as np
from PIL import Image
from scipy.io import savemat, wavfile


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def ground_truth(frame: int, size=(24, 32)):
    """A continuous map (uint8) and a binary fixation map (uint8 0/255) with one fixation at a frame-dependent place."""
    fixation = np.zeros(size, np.uint8)
    row, column = 4 + frame % 10, 6 + 2 * (frame % 10)
    fixation[row, column] = 255
    rows, columns = np.mgrid[0 : size[0], 0 : size[1]]
    saliency = np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / 18.0)
    return np.round(saliency * 255).astype(np.uint8), fixation


def frame_image(frame: int, size=(24, 32)) -> np.ndarray:
    return np.full((*size, 3), (frame * 23) % 256, np.uint8)


def write_avi(path: Path, num_frames: int, size=(24, 32), fps: int = 30, tone_hz: float = 440.0) -> None:
    """An AVI (MPEG-4 Part 2 video, PCM stereo 44.1 kHz audio), as DHF1K's video files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[1], size[0], "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=44100)
        audio.layout = "stereo"
        for i in range(num_frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame_image(i, size), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = (np.sin(2 * np.pi * tone_hz * np.arange(int(44100 * num_frames / fps)) / 44100) * 10000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([samples, samples]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in audio.encode(frame):
            container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def write_dhf1k(root: Path, videos=(1, 2, 601), num_frames: int = 6, extracted=(2,)) -> Path:
    """`video/NNN.AVI` and `annotation/NNNN/{maps,fixation}/NNNN.png`; videos in `extracted` also get `images/`."""
    for number in videos:
        folder = root / "annotation" / f"{number:04d}"
        for frame in range(num_frames):
            saliency, fixation = ground_truth(frame)
            _png(folder / "maps" / f"{frame + 1:04d}.png", saliency)
            _png(folder / "fixation" / f"{frame + 1:04d}.png", fixation)
            if number in extracted:
                _png(folder / "images" / f"{frame + 1:04d}.png", frame_image(frame))
        if number not in extracted:
            write_avi(root / "video" / f"{number:03d}.AVI", num_frames)
    return root


def write_images_maps_fixation(root: Path, clips: dict, num_frames: int = 5, pattern: str = "{clip}_{frame:03d}.png") -> Path:
    """UCF-Sports / Hollywood-2: `{training,testing}/<clip>/{images,maps,fixation}/<file>`."""
    for split, names in clips.items():
        for clip in names:
            stem = clip.replace("-", "_")
            for frame in range(num_frames):
                name = pattern.format(clip=stem, frame=frame + 1)
                saliency, fixation = ground_truth(frame)
                _png(root / split / clip / "images" / name, frame_image(frame))
                _png(root / split / clip / "maps" / name, saliency)
                _png(root / split / clip / "fixation" / name, fixation)
    return root


def write_stavis(root: Path, database: str, videos: list[str], num_frames: int = 6, fps: float = 25.0, single_split=False) -> Path:
    """`video_frames`, `video_audio`, `annotations/<DB>/<video>/{maps/eyeMap_%05d.jpg,fixMap_%05d.mat}`, `fold_lists`."""
    for index, video in enumerate(videos):
        for frame in range(num_frames):
            saliency, fixation = ground_truth(frame + index)
            frames = root / "video_frames" / database / video
            frames.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame_image(frame)).save(frames / f"img_{frame + 1:05d}.jpg", quality=95)
            annotation = root / "annotations" / database / video
            (annotation / "maps").mkdir(parents=True, exist_ok=True)
            Image.fromarray(saliency).save(annotation / "maps" / f"eyeMap_{frame + 1:05d}.jpg", quality=95)
            savemat(annotation / f"fixMap_{frame + 1:05d}.mat", {"eyeMap": (fixation > 0).astype(np.uint8)})
        audio = root / "video_audio" / database / video
        audio.mkdir(parents=True, exist_ok=True)
        tone = np.sin(2 * np.pi * 500 * np.arange(int(16000 * num_frames / fps)) / 16000)
        wavfile.write(audio / f"{video}.wav", 16000, (tone * 16000).astype(np.int16))
    lists = root / "fold_lists"
    lists.mkdir(parents=True, exist_ok=True)
    line = lambda v: f"{v} {num_frames} {fps:.6f}\n"  # noqa: E731
    if single_split:
        (lists / f"{database}_list_test_fps.txt").write_text("".join(map(line, videos[:1])))
        (lists / f"{database}_list_train_fps.txt").write_text("".join(map(line, videos[1:])))
        return root
    for fold in (1, 2, 3):
        test = [v for i, v in enumerate(videos) if i % 3 == fold - 1]
        (lists / f"{database}_list_test_{fold}_fps.txt").write_text("".join(map(line, test)))
        (lists / f"{database}_list_train_{fold}_fps.txt").write_text("".join(line(v) for v in videos if v not in test))
    return root


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The project's real third-party data (`shared/data/`, beside the repository)."""


def shared_data_or_skip(*parts: str) -> Path:
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (shared/data/ must sit beside the repository)")
    return path
