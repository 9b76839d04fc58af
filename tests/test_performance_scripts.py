"""scripts/precision_check.py, scripts/attention_kernels.py and scripts/freed_memory_check.py on the CPU, at small sizes;
scripts/gpu_check.sh's commands and its stop on a machine without CUDA."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_precision_check_fits_then_compares_every_path(tmp_path, capsys):
    report_path = tmp_path / "precision.json"
    status = load_script("precision_check").main([
        "--tiny", "--device", "cpu", "--seconds", "2", "--batch-size", "2", "--eval-clips", "2",
        "--paths", "sdpa-fp32", "blocked-bf16", "--cpu-paths", "--json", str(report_path), "--save", str(tmp_path / "fitted"),
    ])
    assert status == 0
    report = json.loads(report_path.read_text())
    rows = {(row["model"], row["path"]): row for row in report["comparisons"]}
    assert set(rows) == {(m, p) for m in ("untrained", "trained") for p in ("sdpa-fp32", "blocked-bf16")}
    for model in ("untrained", "trained"):
        # fp32 kernels give the eager maps; bf16 moves them, but little
        assert rows[model, "sdpa-fp32"]["max_abs_diff"] < 1e-4 and rows[model, "sdpa-fp32"]["cc"] > 0.9999
        assert 0 < rows[model, "blocked-bf16"]["max_abs_diff"] < 0.1 and rows[model, "blocked-bf16"]["clips"] == 2
    assert len(report["loss_curve"]) >= 1 and all(step["loss"] == step["loss"] for step in report["loss_curve"])
    assert (tmp_path / "fitted" / "model.safetensors").is_file()
    assert "| trained | cpu | blocked-bf16 | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--paths", "turbo"], "unknown paths"),
    (["--seconds", "0"], "--seconds must be > 0"),
])
def test_precision_check_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_script("precision_check").main(["--tiny", "--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_attention_kernels_agree_with_the_masked_form(capsys):
    # Stage 4 at full size: 1,345 queries and keys, 8 heads; fp32, so every kernel gives the masked result.
    assert load_script("attention_kernels").main(
        ["--device", "cpu", "--batch-size", "1", "--dtype", "fp32", "--repeats", "1", "--stages", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 |")]
    kernels = {line.split("|")[4].strip(): float(line.split("|")[-2]) for line in rows}
    assert set(kernels) == {"mask + SDPA", "folded + SDPA", "folded + blocked"}
    assert kernels["mask + SDPA"] == 0 and max(kernels.values()) < 1e-4
    assert all(re.search(r"\| \d+\.\d+ \|", line) for line in rows)  # a time in ms on every row


def test_freed_memory_check_times_both_settings_in_fresh_processes(capsys):
    assert load_script("freed_memory_check").main(
        ["--tiny", "--networks", "DTFSal", "--paths", "eager-fp32", "--rounds", "1", "--calls", "2", "--threads", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| DTFSal |")]
    assert [row[2].strip() for row in rows] == ["kept", "returned"]
    for row in rows:
        seconds, user, kernel = (float(cell) for cell in row[3:6])
        assert seconds > 0 and user > 0 and kernel >= 0 and int(row[6].replace(",", "")) >= 0


def test_freed_memory_check_refuses_an_unknown_path(capsys):
    with pytest.raises(SystemExit):
        load_script("freed_memory_check").main(["--tiny", "--paths", "turbo"])
    assert "unknown paths" in capsys.readouterr().err


def _gpu_check_commands(name: str) -> list[list[str]]:
    """The `dtfsal_hf.cli <name>` invocations of scripts/gpu_check.sh, continuation lines joined and its shell
    variables given example values, as argument lists."""
    text = (SCRIPTS / "gpu_check.sh").read_text().replace("\\\n", " ")
    values = {"$PY": "python", "$OUT": "/out", "$VIDEO_FRAMES": "256", "$VIDEO": "clip.mp4", "$REMAINING": "100"}
    commands = []
    for line in text.splitlines():
        if f"-m dtfsal_hf.cli {name}" not in line:
            continue
        line = line.split("-m dtfsal_hf.cli", 1)[1].split(">", 1)[0]
        for variable, value in values.items():
            line = line.replace(f'"{variable}"', value).replace(variable, value)
        commands.append(shlex.split(line))
    return commands


def test_the_gpu_checks_benchmark_commands_parse_and_time_the_whole_video():
    from dtfsal_hf.cli import build_parser

    commands = _gpu_check_commands("benchmark")
    assert len(commands) == 2  # without compilation (per clip and whole video), then compiled
    parsed = [build_parser().parse_args(command) for command in commands]
    for args in parsed:
        assert args.device == "cuda" and set(args.paths) <= {"sdpa-bf16", "sdpa-bf16-cl", "sdpa-fp16", "compiled-sdpa-bf16"}
    first = parsed[0]
    assert first.video == "clip.mp4" and first.strides == [1, 4] and first.video_frames == 256
    assert first.video_path == "sdpa-bf16" and first.video_batch_size == 32 and 32 in first.batch_sizes


def test_the_gpu_check_stops_in_one_line_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run its full check")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, BUDGET="60")
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "sees no CUDA GPU" in summary and '"cuda_available": false' in (out / "env.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "summary.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written outside OUT
