"""The registry of named parts: built-ins, parts registered in code, plugins other distributions publish under
entry points (a small distribution written to a temporary folder), and the errors that name the choices."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dtfsal_hf import plugins
from dtfsal_hf.plugins import (
    ENTRY_POINT_GROUPS,
    PluginNotFoundError,
    available_parts,
    build_part,
    get_part,
    part_record,
    register_decoder,
    register_fusion,
    register_visual_encoder,
)
from dtfsal_hf.remote_code import sibling_import_closure
from plugin_packages import PLUGIN_SOURCE, write_distribution

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"




@pytest.fixture(autouse=True)
def restored_registry():
    """Each test sees the built-ins only and leaves them so."""
    saved = {kind: dict(parts) for kind, parts in plugins._REGISTRY.items()}
    yield
    for kind, parts in saved.items():
        plugins._REGISTRY[kind] = parts


def test_built_in_parts_by_kind():
    assert available_parts("visual_encoder") == ["mvit_v2_s", "r2plus1d_18", "s3d", "swin3d_b", "swin3d_s", "swin3d_t"]
    assert available_parts("audio_encoder") == ["vggish"]
    assert available_parts("fusion") == ["amfb", "concat", "cross_attention"]
    assert available_parts("decoder") == ["multi", "single", "unet"]
    assert part_record("fusion", "amfb") == {"name": "amfb", "distribution": "dtfsal_hf"}
    assert ENTRY_POINT_GROUPS == {"visual_encoder": "dtfsal_hf.visual_encoders", "audio_encoder": "dtfsal_hf.audio_encoders",
                                  "fusion": "dtfsal_hf.fusion", "decoder": "dtfsal_hf.decoders"}


def test_unknown_names_and_kinds_name_the_choices():
    with pytest.raises(PluginNotFoundError, match=r"Unknown decoder 'unet3'; choose one of: multi, single, unet$"):
        get_part("decoder", "unet3")
    with pytest.raises(ValueError, match=r"Unknown visual_encoder 'mvit'; choose one of: mvit_v2_s, r2plus1d_18, s3d"):
        build_part("visual_encoder", "mvit", 8, [64, 96])
    with pytest.raises(ValueError, match="part kind must be one of visual_encoder, audio_encoder, fusion, decoder, got 'neck'"):
        get_part("neck", "fpn")
    with pytest.raises(PluginNotFoundError, match=r"a fusion is named by a string, got None; choose one of: amfb"):
        get_part("fusion", None)


def test_built_parts_are_checked_against_their_contract():
    register_visual_encoder("flat", lambda num_frames, image_size: torch.nn.Linear(3, 8))
    with pytest.raises(ValueError, match=r"visual_encoder 'flat' must state `out_channels` as 4 positive integers, got None"):
        build_part("visual_encoder", "flat", 8, [64, 96])
    register_fusion("not_a_module", lambda visual_dim, audio_dim: "sum")
    with pytest.raises(ValueError, match="must build a torch.nn.Module, its factory returned a str"):
        build_part("fusion", "not_a_module", 8, 8)
    encoder = build_part("visual_encoder", "swin3d_t", 8, [64, 96], embed_dim=8, depths=[1, 1, 1, 1],
                         num_heads=[1, 1, 1, 1], window_size=(2, 2, 2))
    assert encoder.out_channels == (8, 16, 32, 64) and encoder.variant == "swin3d_t"


def test_registering_in_code_as_a_decorator():
    @register_decoder("mean_map", distribution="my-lab-parts")
    class MeanMapDecoder(torch.nn.Module):
        def __init__(self, feature_dim, num_levels, level_frames, output_size):
            super().__init__()
            self.to_map = torch.nn.Conv3d(feature_dim, 1, 1)
            self.output_size = tuple(output_size)

        def forward(self, levels):
            logits = self.to_map(levels[0]).mean(dim=2)
            return torch.sigmoid(torch.nn.functional.interpolate(logits, size=self.output_size))[:, 0], None

    assert isinstance(MeanMapDecoder, type)  # the decorator returns the class
    assert part_record("decoder", "mean_map") == {"name": "mean_map", "distribution": "my-lab-parts"}
    decoder = build_part("decoder", "mean_map", 16, 4, 4, [64, 96])
    saliency_map, _ = decoder([torch.randn(2, 16, 4, 16, 24)])
    assert saliency_map.shape == (2, 64, 96)
    with pytest.raises(ValueError, match=r"a decoder named 'mean_map' is already registered \(by my-lab-parts\)"):
        register_decoder("mean_map", MeanMapDecoder)
    register_decoder("mean_map", MeanMapDecoder, distribution="other", replace=True)
    assert get_part("decoder", "mean_map").distribution == "other"
    with pytest.raises(ValueError, match="a part name must be letters, digits"):
        register_fusion("two words", MeanMapDecoder)


def test_a_plugin_distribution_is_found_through_its_entry_points(tmp_path, monkeypatch):
    root = write_distribution(tmp_path / "site", "dtfsal-film", "dtfsal_film", PLUGIN_SOURCE,
                              {"dtfsal_hf.fusion": {"film": "dtfsal_film:FiLMFusion"}})
    assert "film" not in available_parts("fusion")
    monkeypatch.syspath_prepend(str(root))
    assert available_parts("fusion") == ["amfb", "concat", "cross_attention", "film"]
    spec = get_part("fusion", "film")
    assert spec.distribution == "dtfsal-film" and spec.factory.__module__ == "dtfsal_film"
    assert part_record("fusion", "film") == {"name": "film", "distribution": "dtfsal-film"}
    block = build_part("fusion", "film", 16, 24, hidden_dim=4)
    visual = torch.randn(2, 16, 4, 6, 10)
    out = block(visual, torch.randn(2, 24, 9, 2, 3))
    assert out.shape == visual.shape
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_a_missing_plugin_names_itself_and_the_distribution_to_install(tmp_path, monkeypatch):
    with pytest.raises(PluginNotFoundError, match=(
        r"The fusion 'film' is not available: it is provided by the distribution 'dtfsal-film', which is "
        r"not installed: pip install dtfsal-film\. Available fusion parts: amfb, concat, cross_attention$"
    )):
        get_part("fusion", "film", distribution="dtfsal-film")
    # Installed, but without that part: said so.
    root = write_distribution(tmp_path / "site", "dtfsal-film", "dtfsal_film", PLUGIN_SOURCE,
                              {"dtfsal_hf.fusion": {"film_v2": "dtfsal_film:FiLMFusion"}})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginNotFoundError, match=r"'dtfsal-film' that provided it is installed but publishes no "
                                                  r"fusion of that name \(entry-point group 'dtfsal_hf.fusion'\)"):
        get_part("fusion", "film", distribution="dtfsal-film")


def test_a_plugin_that_fails_to_import_or_is_published_twice_is_named(tmp_path, monkeypatch):
    broken = write_distribution(tmp_path / "a", "dtfsal-broken", "dtfsal_broken", "import not_a_module_anywhere\n",
                                {"dtfsal_hf.decoders": {"broken": "dtfsal_broken:Decoder"}})
    monkeypatch.syspath_prepend(str(broken))
    with pytest.raises(ValueError, match=r"The decoder plugin 'broken' \(dtfsal_broken:Decoder\) of the distribution "
                                         r"'dtfsal-broken' failed to import: ModuleNotFoundError"):
        get_part("decoder", "broken")
    for index, root in enumerate((tmp_path / "b", tmp_path / "c")):
        write_distribution(root, f"dtfsal-twin{index}", f"dtfsal_twin{index}", PLUGIN_SOURCE,
                           {"dtfsal_hf.fusion": {"twin": f"dtfsal_twin{index}:FiLMFusion"}})
        monkeypatch.syspath_prepend(str(root))
    with pytest.raises(ValueError, match=r"'twin' is published by several distributions \(dtfsal-twin\d, dtfsal-twin\d\)"):
        get_part("fusion", "twin")


def test_the_registry_and_its_parts_load_as_remote_code_without_transformers_or_the_package(tmp_path):
    """The files `plugins.py` imports, copied into a bare folder as `trust_remote_code` copies them, import without
    `dtfsal_hf` and without transformers, and build every built-in part."""
    package_dir = Path(plugins.__file__).parent
    found, missing = sibling_import_closure([package_dir / "plugins.py"])
    assert not missing
    names = sorted(path.name for path in found)
    assert names == ["audio_encoders.py", "decoders.py", "encoders.py", "fusion.py", "layers.py", "mvit_attention.py",
                     "plugins.py", "video_encoders.py"]
    copy = tmp_path / "remote_module"
    copy.mkdir()
    for path in found:
        shutil.copyfile(path, copy / path.name)
    (copy / "__init__.py").write_text("")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = None
        sys.modules["dtfsal_hf"] = None
        sys.path.insert(0, {str(tmp_path)!r})
        from remote_module.plugins import available_parts, build_part
        print(sorted((kind, name) for kind in ("visual_encoder", "fusion", "decoder") for name in available_parts(kind)))
        block = build_part("fusion", "cross_attention", 8, 8, attention_dim=4, num_heads=2)
        print(type(block).__module__)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "('decoder', 'unet')" in result.stdout and "('visual_encoder', 's3d')" in result.stdout
    assert "remote_module.fusion" in result.stdout
