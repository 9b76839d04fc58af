"""ONNX export (dynamic batch, DeformConv) checked against PyTorch with onnxruntime, tiny model."""

from __future__ import annotations

import contextlib
import io

import onnx
import pytest
import torch

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.cli import main
from dtfsal_hf.export import check_onnx, export_onnx

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


def tiny_model_with_active_offsets() -> DTFSalModel:
    """The offset predictors start at zero; non-zero ones make the deformable sampling matter."""
    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny()).eval()
    for block in model.fusion_blocks:
        torch.nn.init.normal_(block.adaptive_stream.offsets.weight, std=0.1)
        torch.nn.init.normal_(block.adaptive_stream.offsets.bias, std=0.5)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export, through `dtfsal export --check` of a saved model folder (exports take a while)."""
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model_with_active_offsets()
    model.save_pretrained(folder / "model")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(folder / "model"), str(folder / "dtfsal-tiny.onnx"), "--check"]) == 0
    return model, str(folder / "dtfsal-tiny.onnx"), printed.getvalue()


def test_graph_has_named_dynamic_inputs_and_deform_conv(exported):
    _, path, _ = exported
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["pixel_values_videos", "input_features"]
    assert [o.name for o in graph.output] == ["saliency_map"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # batch is symbolic
    assert sum(node.op_type == "DeformConv" for node in graph.node) == 4


def test_onnxruntime_matches_pytorch_at_several_batch_sizes(exported):
    model, path, _ = exported
    differences = check_onnx(path, model, batch_sizes=(1, 3))
    assert set(differences) == {1, 3}
    assert max(differences.values()) < 1e-4


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 19"):
        export_onnx(tiny_model_with_active_offsets(), tmp_path / "x.onnx", opset=17)


def test_cli_reports_the_check(exported):
    _, path, printed = exported
    assert printed.splitlines()[0] == path
    assert "batch 1: max |onnx - pytorch|" in printed and "batch 3: max |onnx - pytorch|" in printed
