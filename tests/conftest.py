"""Fixtures shared by the test modules: one torch thread, the tiny models and their inputs, a small test video.

Helpers that are not fixtures live in plain modules beside the tests (`videos`, `isolation`, `data_trees`,
`hostile_media`, `plugin_packages`); no test module imports another.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dtfsal_hf import DTFSalConfig, DTFSalModel
from videos import write_test_video


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the tiny model gains
    nothing from threads, and on a shared machine they only compete."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model() -> DTFSalModel:
    """The tiny audio-visual DTFSal, seed 0, in eval mode."""
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny()).eval()


@pytest.fixture
def tiny_inputs(tiny_model) -> dict:
    """One random clip for `tiny_model` (`build_dummy_inputs`, seed 1)."""
    torch.manual_seed(1)
    return DTFSalModel.build_dummy_inputs(tiny_model.config, 1)


@pytest.fixture(scope="module")
def test_video(tmp_path_factory):
    """A 12-frame H.264 + AAC test video (`videos.write_test_video`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_test_video(tmp_path_factory.mktemp("videos") / "square.mp4")
