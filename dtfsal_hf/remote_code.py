"""Make a saved folder loadable with `trust_remote_code=True` where `dtfsal_hf` is not installed.

`add_remote_code(folder, {"AutoProcessor": DTFSalProcessor, ...})` copies the files that define the
classes, and the sibling files they import, into the folder, and writes the `auto_map` entries where
transformers looks for them:

- `AutoConfig`, `AutoModel*`: `config.json`;
- `AutoProcessor`: `processor_config.json`;
- `AutoFeatureExtractor`, `AutoVideoProcessor`, `AutoImageProcessor`: the matching section of
  `processor_config.json` when the folder has one, else `preprocessor_config.json` /
  `video_preprocessor_config.json`.

Remote-code files may import each other only as `from .x import y`; anything that would not resolve
once copied (`from ..x`, `import dtfsal_hf...`) is refused with a `ValueError`.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

_SECTIONS = {
    "AutoFeatureExtractor": ("feature_extractor", "preprocessor_config.json"),
    "AutoVideoProcessor": ("video_processor", "video_preprocessor_config.json"),
    "AutoImageProcessor": ("image_processor", "preprocessor_config.json"),
}


def _sibling_imports(source_file: Path) -> list[Path]:
    """Files `source_file` imports as `from .x import y`; raises on imports that break once copied."""
    tree = ast.parse(source_file.read_text(encoding="utf-8"), filename=str(source_file))
    package = source_file.parent.name
    siblings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 1:
            raise ValueError(f"{source_file.name} imports from a parent package (line {node.lineno}): not portable")
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                raise ValueError(f"{source_file.name} uses `from . import ...` (line {node.lineno}): import modules by name")
            siblings.append(source_file.parent / f"{node.module.replace('.', '/')}.py")
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(name == package or name.startswith(package + ".") for name in names):
            raise ValueError(f"{source_file.name} imports its own package `{package}` (line {node.lineno}): use `from .x import y`")
    return siblings


def remote_code_files(classes) -> list[Path]:
    """The defining files of `classes` and, recursively, the sibling files they import."""
    pending = [Path(inspect.getfile(cls)).resolve() for cls in classes]
    found: list[Path] = []
    while pending:
        path = pending.pop()
        if path in found:
            continue
        if not path.is_file():
            raise ValueError(f"remote-code file {path} does not exist")
        found.append(path)
        pending.extend(_sibling_imports(path))
    return sorted(found)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _auto_map_target(folder: Path, auto_class: str) -> tuple[Path, str | None]:
    """(json file, section or None for the top level) where `auto_class` belongs."""
    if auto_class == "AutoConfig" or auto_class.startswith("AutoModel"):
        return folder / "config.json", None
    if auto_class == "AutoProcessor":
        return folder / "processor_config.json", None
    if auto_class in _SECTIONS:
        section, standalone = _SECTIONS[auto_class]
        processor_file = folder / "processor_config.json"
        if processor_file.is_file() and section in _read_json(processor_file):
            return processor_file, section
        return folder / standalone, None
    raise ValueError(f"unsupported auto class {auto_class!r}")


def add_remote_code(folder: str | os.PathLike, auto_map: Mapping[str, type]) -> list[Path]:
    """Copy the code of `auto_map`'s classes into `folder` and register them in its config files.

    Args:
        folder: a folder written by `save_pretrained` (its config files must exist).
        auto_map: auto class name -> class, e.g. `{"AutoConfig": DTFSalConfig, "AutoModel": DTFSalModel}` or
            `{"AutoProcessor": DTFSalProcessor, "AutoFeatureExtractor": DTFSalFeatureExtractor,
            "AutoVideoProcessor": DTFSalVideoProcessor}`.

    Returns:
        The paths of the copied `.py` files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; call save_pretrained first")
    copied = []
    for source in remote_code_files(auto_map.values()):
        shutil.copyfile(source, folder / source.name)
        copied.append(folder / source.name)
    for auto_class, cls in auto_map.items():
        path, section = _auto_map_target(folder, auto_class)
        if not path.is_file():
            raise ValueError(f"{path.name} is missing in {folder}: save the object there before adding {auto_class}")
        data = _read_json(path)
        entry = data.setdefault(section, {}) if section else data
        entry.setdefault("auto_map", {})[auto_class] = f"{Path(inspect.getfile(cls)).stem}.{cls.__name__}"
        _write_json(path, data)
    return copied


__all__ = ["add_remote_code", "remote_code_files"]
