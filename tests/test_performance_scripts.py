"""scripts/precision_check.py, scripts/attention_kernels.py and scripts/freed_memory_check.py on the CPU, at small sizes."""

from __future__ import annotations

import importlib.util
import json
import re
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
