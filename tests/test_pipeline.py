"""The `video-saliency` transformers pipeline: the maps of `dtfsal predict`, with and without the package."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dtfsal_hf import DTFSalModel, DTFSalProcessor, cli
from dtfsal_hf.inference import DEMO_CHECKPOINT, SYNTHETIC_EXAMPLE_NAME, to_uint8
from dtfsal_hf.remote_code import add_pipeline

from isolation import run_without_package

EXAMPLE = DEMO_CHECKPOINT.parent / SYNTHETIC_EXAMPLE_NAME
FRAMES = 24  # of the example's 200: enough for clips of 8 at stride 2 and the interpolation between them


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The demo checkpoint saved with its remote code and the pipeline, running the predictor's default kernel."""
    folder = tmp_path_factory.mktemp("with_pipeline")
    DTFSalModel.from_pretrained(DEMO_CHECKPOINT).set_mvit_attention("auto").save_pretrained(folder)
    DTFSalProcessor.from_pretrained(DEMO_CHECKPOINT).save_pretrained(folder)
    add_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def predicted(folder, tmp_path_factory):
    """`dtfsal predict`'s maps.npz for the example, stride 2."""
    output = tmp_path_factory.mktemp("predicted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = cli.main(["predict", str(EXAMPLE), "--model", str(folder), "--output", str(output), "--stride", "2",
                           "--max-frames", str(FRAMES), "--no-pngs", "--no-overlay", "--no-progress"])
    assert status == 0
    with np.load(output / EXAMPLE.stem / "maps.npz") as saved:
        return {name: saved[name] for name in ("maps", "times")}


def test_the_registered_pipeline_gives_the_maps_of_dtfsal_predict(folder, predicted, tmp_path):
    from transformers import pipeline

    from dtfsal_hf import DTFSalVideoSaliencyPipeline

    # A folder without the pipeline's code: the task comes from the registry `import dtfsal_hf` filled.
    plain = tmp_path / "plain"
    DTFSalModel.from_pretrained(DEMO_CHECKPOINT).set_mvit_attention("auto").save_pretrained(plain)
    DTFSalProcessor.from_pretrained(DEMO_CHECKPOINT).save_pretrained(plain)
    saliency = pipeline("video-saliency", model=str(plain))
    assert type(saliency) is DTFSalVideoSaliencyPipeline
    result = saliency(str(EXAMPLE), stride=2, max_frames=FRAMES)
    assert result["maps"].dtype == np.float32 and result["maps"].shape == (FRAMES, 96, 160)
    assert 0.0 <= result["maps"].min() and result["maps"].max() <= 1.0
    assert np.array_equal(to_uint8(result["maps"]), predicted["maps"])
    assert np.array_equal(result["times"], predicted["times"])
    # Frames in memory, with the file's sound: the same maps.
    from dtfsal_hf.media import iter_frames

    frames = [(frame.image, frame.time) for frame, _ in zip(iter_frames(EXAMPLE), range(FRAMES))]
    again = saliency({"frames": iter(frames), "audio": str(EXAMPLE), "fps": 25}, stride=2)
    assert np.abs(again["maps"] - result["maps"]).max() < 1e-6
    with pytest.raises(ValueError, match="unknown options"):
        saliency(str(EXAMPLE), strides=2)


def test_the_pipeline_loads_where_the_package_is_not_installed(folder, predicted, tmp_path):
    import json

    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["video-saliency"]["impl"] == "pipeline_dtfsal.DTFSalVideoSaliencyPipeline"
    output = tmp_path / "maps.npz"
    code = f"""
        import numpy as np
        import torch
        from transformers import pipeline

        torch.set_num_threads({torch.get_num_threads()})  # the parent's: float sums depend on the thread count
        saliency = pipeline("video-saliency", model={str(folder)!r}, trust_remote_code=True)
        assert type(saliency).__module__.split(".")[0] == "transformers_modules", type(saliency).__module__
        result = saliency({str(EXAMPLE)!r}, stride=2, max_frames={FRAMES})
        np.savez({str(output)!r}, maps=result["maps"], times=result["times"])
    """
    run_without_package(code, cwd=tmp_path, timeout=600)
    with np.load(output) as remote:
        assert np.array_equal(to_uint8(remote["maps"]), predicted["maps"])
        assert np.array_equal(remote["times"], predicted["times"])
