"""Make a saved folder loadable with `trust_remote_code=True` where `dtfsal_hf` is not installed, and check it.

Importing `dtfsal_hf` registers its classes for the auto classes, so `model.save_pretrained(folder)` and
`processor.save_pretrained(folder)` already copy the code and write the `auto_map` entries. This module
serves folders saved otherwise (by an older version, or by hand) and the checks before publishing:

- `add_remote_code(folder, {"AutoProcessor": DTFSalProcessor, ...})` copies the files that define the
  classes, and the sibling files they import, into the folder, and writes the `auto_map` entries where
  transformers looks for them;
- `add_pipeline(folder)` adds the `video-saliency` pipeline (`pipeline_dtfsal.py`) and its `custom_pipelines`
  entry;
- `check_remote_loadable(folder)` refuses a folder whose model or processor would not load that way,
  naming what is missing.

Where transformers looks for each `auto_map` entry:

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


def sibling_import_closure(files) -> tuple[list[Path], list[Path]]:
    """`(found, missing)`: `files` and, recursively, the sibling files they import as `from .x import y`.

    A file that does not exist goes to `missing` (its imports cannot be followed); an import that would not
    resolve once copied raises `ValueError`.
    """
    pending = list(files)
    found: list[Path] = []
    missing: list[Path] = []
    while pending:
        path = pending.pop()
        if path in found or path in missing:
            continue
        if not path.is_file():
            missing.append(path)
            continue
        found.append(path)
        pending.extend(_sibling_imports(path))
    return sorted(found), sorted(missing)


def remote_code_files(classes) -> list[Path]:
    """The defining files of `classes` and, recursively, the sibling files they import."""
    found, missing = sibling_import_closure(Path(inspect.getfile(cls)).resolve() for cls in classes)
    if missing:
        raise ValueError(f"remote-code file {missing[0]} does not exist")
    return found


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


PIPELINE_TASK = "video-saliency"


def add_pipeline(folder: str | os.PathLike) -> list[Path]:
    """Copy the `video-saliency` pipeline's code (`pipeline_dtfsal.py` and the sibling files it imports) into a saved
    model folder and name it in its `config.json` (`custom_pipelines`), as transformers' `Pipeline.save_pretrained`
    does, so `pipeline("video-saliency", model=folder, trust_remote_code=True)` loads it without the package.
    Returns the paths of the copied `.py` files."""
    from .pipeline_dtfsal import DTFSalVideoSaliencyPipeline

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} holds no config.json; save the model there first")
    copied = []
    for source in remote_code_files([DTFSalVideoSaliencyPipeline]):
        shutil.copyfile(source, folder / source.name)
        copied.append(folder / source.name)
    config = _read_json(config_file)
    config["custom_pipelines"] = {PIPELINE_TASK: {
        "impl": f"pipeline_dtfsal.{DTFSalVideoSaliencyPipeline.__name__}", "pt": ["AutoModel"], "type": "multimodal"}}
    _write_json(config_file, config)
    return copied


# What `AutoConfig`/`AutoModel` and `AutoProcessor` need, with `trust_remote_code=True`, to build a saved
# DTFSal model and processor without the package.
MODEL_AUTO_CLASSES = ("AutoConfig", "AutoModel")
# Section of processor_config.json ("" for the top level) -> the auto class its `auto_map` must name.
PROCESSOR_AUTO_CLASSES = {
    "": "AutoProcessor",
    "video_processor": "AutoVideoProcessor",
    "feature_extractor": "AutoFeatureExtractor",
}


def _entry_problem(folder: Path, file_name: str, section: str, auto_class: str) -> str | None:
    """Why `file_name` (its `section`, "" for the top level) lacks a usable `auto_class` entry; None if it has one."""
    where = f"{file_name}" + (f" (its `{section}` section)" if section else "")
    content = _read_json(folder / file_name)
    entry = content.get(section) if section else content
    reference = ((entry or {}).get("auto_map") or {}).get(auto_class) if isinstance(entry, dict) else None
    if not isinstance(reference, str) or "." not in reference:
        return f"{where} has no `auto_map` entry for {auto_class}"
    if "--" in reference:  # "repo--module.Class": the code lives in another repository
        return None
    module, name = reference.rsplit(".", 1)
    source = folder / f"{module}.py"
    if source.is_file() and name not in _defined_names(source):
        return f"{where} maps {auto_class} to {reference}, but {source.name} defines no {name}"
    return None


def _defined_names(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    return {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))} | {
        target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
        if isinstance(target, ast.Name)
    }


def check_remote_loadable(folder: str | os.PathLike) -> None:
    """Raise `ValueError` naming every `auto_map` entry that `AutoModel` / `AutoProcessor` with
    `trust_remote_code=True` would miss in a saved model folder (`config.json` and `processor_config.json`).

    The code files the entries name, and the files those import, are checked by `sibling_import_closure`.
    """
    folder = Path(folder)
    problems = [_entry_problem(folder, "config.json", "", auto_class) for auto_class in MODEL_AUTO_CLASSES]
    processor_file = folder / "processor_config.json"
    if not processor_file.is_file():
        problems.append("there is no processor_config.json (save the processor with `processor.save_pretrained`)")
    else:
        sections = _read_json(processor_file)
        problems += [
            _entry_problem(folder, processor_file.name, section, auto_class)
            for section, auto_class in PROCESSOR_AUTO_CLASSES.items()
            if not section or section in sections
        ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ValueError(
            f"{folder} would not load with trust_remote_code=True where dtfsal_hf is not installed: "
            + "; ".join(problems)
            + ". Save the model and processor again with `save_pretrained` after `import dtfsal_hf` (which writes "
            "the code and the entries), or add them with `dtfsal_hf.remote_code.add_remote_code` (docs/hub.md)"
        )


__all__ = ["PIPELINE_TASK", "add_pipeline", "add_remote_code", "check_remote_loadable", "remote_code_files", "sibling_import_closure"]
