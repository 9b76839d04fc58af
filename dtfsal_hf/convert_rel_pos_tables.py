"""Convert a saved DTFSal model from torchvision's relative-position layout to the per-axis one.

Models saved before the MViT encoder sized each relative-position table to its own axis hold every
spatial table (`rel_pos_h`, `rel_pos_w`) at 2 * max(H, W) - 1 rows, which torchvision's attention
resized (linear interpolation, half-pixel centres) to the axis' 2 * max(q, k) - 1 rows at every
forward. This script does that resizing once, with the same interpolation, so the converted model
computes what the saved one computed and loads with the current encoder:

    python -m dtfsal_hf.convert_rel_pos_tables MODEL_DIR [OUTPUT_DIR]

Without OUTPUT_DIR the folder is converted in place. Only safetensors weights are read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from .configuration_dtfsal import DTFSalConfig
from .encoders import resize_rel_pos_tables
from .modeling_dtfsal import DTFSalModel

REL_POS_NAMES = ("rel_pos_h", "rel_pos_w", "rel_pos_t")

__all__ = ["convert_rel_pos_tables"]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"expected the weights at {single} (or a model.safetensors.index.json), found none")
    return [single]


def _convert_file(path: Path, target: dict[str, torch.Size], destination: Path) -> list[str]:
    """Resize the file's tables whose length differs from `target`'s; returns the keys resized."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    tables = {
        key: torch.empty(target[key], dtype=value.dtype, device="meta")
        for key, value in state.items()
        if key.rsplit(".", 1)[-1] in REL_POS_NAMES and key in target
        and value.dim() == 2 and value.shape[1] == target[key][1] and value.shape[0] != target[key][0]
    }
    others = [key for key, value in state.items() if key in target and key not in tables and value.shape != target[key]]
    if others:
        raise ValueError(f"{path}: {others[:5]} differ from the configuration in more than a relative-position table's "
                         "length; this is not a layout this script converts")
    state = resize_rel_pos_tables(state, tables)
    temporary = destination.with_name(destination.name + ".partial")
    save_file(state, str(temporary), metadata=metadata)
    os.replace(temporary, destination)
    return sorted(tables)


def convert_rel_pos_tables(model_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> list[str]:
    """Convert the model saved in `model_dir` (into `output_dir`, or in place); returns the keys resized.

    A model already in the per-axis layout is left as it is (an empty list).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"expected a saved DTFSal model (config.json, model.safetensors) in {model_dir}")
    config = DTFSalConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        target = {key: value.shape for key, value in DTFSalModel(config).state_dict().items()}
    output_dir = model_dir if output_dir is None else Path(output_dir)
    if output_dir.resolve() != model_dir.resolve():
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in model_dir.iterdir():
            if path.is_file() and not path.name.endswith(".safetensors"):
                shutil.copy2(path, output_dir / path.name)
    converted = []
    for path in _weight_files(model_dir):
        converted += _convert_file(path, target, output_dir / path.name)
    return converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtfsal_hf.convert_rel_pos_tables", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="a saved model folder (config.json, model.safetensors)")
    parser.add_argument("output_dir", nargs="?", default=None, help="where to write the converted model (default: in place)")
    args = parser.parse_args(argv)
    try:
        converted = convert_rel_pos_tables(args.model_dir, args.output_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"resized {len(converted)} relative-position tables" if converted else "already in the per-axis layout: nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
