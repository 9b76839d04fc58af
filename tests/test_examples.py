"""The examples run and learn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("timm")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timm_fusion_example_trains():
    # main returns (mean of the last 5 losses) - (mean of the first 5): training must lower the loss.
    assert _load("timm_fusion").main(["--steps", "15", "--batch-size", "2"]) < 0
