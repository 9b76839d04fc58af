"""`dtfsal predict`: batches with bad files, resuming, output options, and sharing between two processes."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dtfsal_hf import cli, inference
from videos import FPS, SIZE, streams_of, write_test_video

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "random-tiny", "--no-progress"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    broken = folder / "b_broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    return {
        "good": write_test_video(folder / "a_good.mp4", num_frames=8),
        "broken": broken,
        "other": write_test_video(folder / "c_other.mp4", num_frames=6, with_audio=False),
        "missing": folder / "d_missing.mp4",
    }


def run_cli(capsys, *args) -> tuple[int, str]:
    status = cli.main(["predict", *map(str, args)])
    return status, capsys.readouterr().out


def test_a_bad_file_does_not_stop_the_batch(videos, tmp_path, capsys):
    inputs = [videos["good"], videos["broken"], videos["other"], videos["missing"]]
    status, out = run_cli(capsys, *inputs, "--output", tmp_path, *TINY)
    assert status == 1
    assert re.search(r"FAILED .*b_broken\.mp4: ValueError: Cannot read", out)
    assert re.search(r"FAILED .*d_missing\.mp4: FileNotFoundError", out)
    assert "finished: 2 written, 0 skipped, 2 failed" in out
    assert "randomly initialised, untrained" in out
    for name, frames in (("a_good", 8), ("c_other", 6)):
        marker = json.loads((tmp_path / name / "done.json").read_text())
        assert marker["num_frames"] == frames and marker["settings"]["trained"] is False
        assert len(list((tmp_path / name / "maps").glob("*.png"))) == frames
        with np.load(tmp_path / name / "maps.npz") as saved:
            assert saved["maps"].shape == (frames, *SIZE)
    assert not (tmp_path / "b_broken" / "done.json").exists()
    assert set(streams_of(tmp_path / "a_good" / "overlay.mp4")) == {"video", "audio"}
    assert set(streams_of(tmp_path / "c_other" / "overlay.mp4")) == {"video"}  # the input has no sound

    # A rerun skips what is finished and retries the rest.
    status, out = run_cli(capsys, *inputs, "--output", tmp_path, *TINY)
    assert status == 1 and "finished: 0 written, 2 skipped, 2 failed" in out
    status, out = run_cli(capsys, videos["good"], "--output", tmp_path, *TINY)
    assert status == 0 and "skipped" in out


def test_folder_input_stride_and_output_options(videos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_test_video(folder / "clip.mp4", num_frames=9)
    (folder / "readme.txt").write_text("not a video")
    out_dir = tmp_path / "out"
    status, _ = run_cli(capsys, folder, "--output", out_dir, *TINY, "--stride", "4", "--no-pngs", "--no-overlay",
                        "--blur-sigma", "1.5", "--batch-size", "2")
    assert status == 0
    assert sorted(p.name for p in (out_dir / "clip").iterdir()) == ["done.json", "maps.npz"]
    settings = json.loads((out_dir / "clip" / "done.json").read_text())["settings"]
    assert (settings["stride"], settings["blur_sigma"]) == (4, 1.5)
    # Asking for an output the finished run did not write redoes the video.
    status, out = run_cli(capsys, folder, "--output", out_dir, *TINY, "--stride", "4", "--no-pngs", "--blur-sigma", "1.5")
    assert status == 0 and "1 written" in out and (out_dir / "clip" / "overlay.mp4").is_file()


def test_overlay_of_the_dhf1k_clip_keeps_sound_and_length(tmp_path, capsys):
    video = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"
    if not video.is_file():
        pytest.skip(f"DHF1K sample clip not found at {video}")
    status, _ = run_cli(capsys, video, "--output", tmp_path, *TINY, "--max-frames", "15", "--stride", "5", "--no-pngs")
    assert status == 0
    overlay = streams_of(tmp_path / "002" / "overlay.mp4")
    assert overlay["video"][1] == 15 and abs(overlay["video"][0] - 0.5) <= 1 / 30
    assert abs(overlay["audio"][0] - 0.5) <= 1 / 30


def test_missing_demo_checkpoint_is_a_clear_error(videos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference.loading, "DEMO_CHECKPOINT", tmp_path / "absent")
    assert cli.main(["predict", str(videos["good"]), "--output", str(tmp_path)]) == 1
    assert re.match(r"dtfsal predict: error: The demo checkpoint is not bundled.*'random' / 'random-tiny'",
                    capsys.readouterr().err)
    with pytest.raises(FileNotFoundError, match="demo checkpoint is not bundled"):
        cli.main(["predict", str(videos["good"]), "--output", str(tmp_path), "--debug"])


def test_bad_options_stop_before_any_work(videos, tmp_path, capsys):
    assert cli.main(["predict", str(videos["good"]), "--output", str(tmp_path), *TINY, "--colormap", "nope"]) == 1
    assert "dtfsal predict: error: unknown colormap 'nope'" in capsys.readouterr().err
    assert cli.main(["predict", str(videos["good"]), "--output", str(tmp_path), *TINY, "--stride", "0"]) == 1
    assert "dtfsal predict: error: stride must be a positive integer, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_demo_checkpoint_on_another_video_says_so_once(videos, tmp_path, capsys):
    if not (inference.DEMO_CHECKPOINT / "config.json").is_file():
        pytest.skip("the demo checkpoint is not bundled")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        status, out = run_cli(capsys, videos["good"], videos["other"], "--output", tmp_path, "--no-progress",
                              "--no-overlay", "--no-pngs")
    assert status == 0
    assert out.count("trained only on synthetic videos of coloured discs") == 1, out
    assert not [w for w in seen if "demo checkpoint" in str(w.message)]  # said in the log, not again as a warning
    assert "WARNING: the demo checkpoint" in out and "--model" in out


def test_the_demo_checkpoint_on_its_own_example_says_nothing(tmp_path, capsys):
    example = inference.DEMO_CHECKPOINT.parent / inference.SYNTHETIC_EXAMPLE_NAME
    if not example.is_file() or not (inference.DEMO_CHECKPOINT / "config.json").is_file():
        pytest.skip("the demo checkpoint or its example is not bundled")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        status, out = run_cli(capsys, example, "--output", tmp_path, "--no-progress", "--no-overlay", "--no-pngs",
                              "--max-frames", "9", "--stride", "8")
    assert status == 0 and "synthetic videos" not in out
    assert not [w for w in seen if "demo checkpoint" in str(w.message)]


def test_bf16_on_a_cpu_without_native_bf16_says_so_once(videos, tmp_path, capsys, monkeypatch):
    from dtfsal_hf.inference import runtime

    monkeypatch.setattr(runtime, "cpu_native_flags", lambda dtype, cpuinfo="/proc/cpuinfo": [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        status, out = run_cli(capsys, videos["other"], "--output", tmp_path, *TINY, "--dtype", "bfloat16",
                              "--no-overlay", "--no-pngs")
    assert status == 0
    assert out.count("WARNING: this CPU has no native bf16 matrix arithmetic") == 1, out
    assert not [w for w in seen if "matrix arithmetic" in str(w.message)]  # said in the log, not again as a warning
    status, out = run_cli(capsys, videos["other"], "--output", tmp_path / "fp32", *TINY, "--no-overlay", "--no-pngs")
    assert status == 0 and "matrix arithmetic" not in out


def test_two_processes_share_the_videos(videos, tmp_path):
    """torchrun with two CPU processes: every video is handled by exactly one of them."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["v1", "v2", "v3"]
    for name in names:
        write_test_video(folder / f"{name}.mp4", num_frames=5)
    (folder / "v4.mp4").write_bytes(b"broken")
    out_dir = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dtfsal_hf.cli", "predict", str(folder), "--output", str(out_dir), *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log  # v4 failed, in whichever process had it
    assert len(re.findall(r"\[process \d\] FAILED .*v4\.mp4", log)) == 1, log
    handled_by = {}
    for name in names:
        done_lines = re.findall(rf"\[process (\d)\] done \S*{name}\.mp4", log)
        assert len(done_lines) == 1, log
        marker = json.loads((out_dir / name / "done.json").read_text())
        assert marker["process_index"] == int(done_lines[0])
        handled_by[name] = marker["process_index"]
    assert set(handled_by.values()) == {0, 1}
    assert "2 of 4 videos" in log


def test_the_attention_kernel_is_chosen_on_the_command_line(videos, tmp_path, capsys, monkeypatch):
    kernels = []
    original = inference.SaliencyPredictor.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        kernels.append(self.model.config.mvit_attention)

    monkeypatch.setattr(inference.SaliencyPredictor, "__init__", recording)
    maps = {}
    for kernel in ("eager", "blocked"):
        status, _ = run_cli(capsys, videos["good"], "--output", tmp_path / kernel, *TINY, "--attention", kernel,
                            "--no-overlay", "--no-pngs")
        assert status == 0
        with np.load(tmp_path / kernel / "a_good" / "maps.npz") as saved:
            maps[kernel] = saved["maps"].astype(int)
    assert kernels == ["eager", "blocked"]
    assert np.abs(maps["eager"] - maps["blocked"]).max() <= 1
    status = cli.main(["predict", str(videos["good"]), "--output", str(tmp_path / "x"), *TINY, "--attention", "flash"])
    assert status == 1 and "attention must be one of" in capsys.readouterr().err
