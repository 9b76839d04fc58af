"""Model ids to models: folders, Hub ids, the bundled demo checkpoint and untrained models.

Model ids besides folders and Hub ids: `demo` (the checkpoint bundled in `dtfsal_hf/assets/demo-checkpoint`),
`random` and `random-tiny` (untrained models, for checking the pipeline and timing it; their maps mean nothing).
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import torch

from ..configuration_dtfsal import DTFSalConfig
from ..modeling_dtfsal import DTFSalModel
from ..processing_dtfsal import DTFSalProcessor

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo-checkpoint"
# The clip the demo checkpoint is shown on, beside it in the assets.
SYNTHETIC_EXAMPLE_NAME = "synthetic_example.mp4"
RANDOM_MODELS = {"random": DTFSalConfig, "random-tiny": DTFSalConfig.tiny}


def untrained_message(model_id: str) -> str:
    return (
        f"'{model_id}' is a randomly initialised, untrained DTFSal model: its saliency maps are meaningless "
        "(use it to check the pipeline or to time it, not to look at the maps)"
    )



def _build_random_model(model_id: str) -> DTFSalModel:
    # A fixed seed, so every process of a distributed job (and every rerun) builds the same untrained model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DTFSalModel(RANDOM_MODELS[model_id]())


def load_model_and_processor(model_id_or_path: str | os.PathLike) -> tuple[DTFSalModel, DTFSalProcessor, bool]:
    """`(model, processor, trained)` for a folder, a Hub id, `demo`, `random` or `random-tiny`.

    The processor is read from the same place, or built from the model's configuration when it has none.
    """
    model_id = str(model_id_or_path)
    if model_id in RANDOM_MODELS:
        model = _build_random_model(model_id)
        return model, DTFSalProcessor.from_model_config(model.config), False
    if model_id == "demo":
        if not (DEMO_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(
                f"The demo checkpoint is not bundled with this installation (expected {DEMO_CHECKPOINT}/config.json). "
                "Give a trained model folder or Hub id, or 'random' / 'random-tiny' for an untrained model"
            )
        model_id = str(DEMO_CHECKPOINT)
    source = _model_source(model_id)
    try:
        model = DTFSalModel.from_pretrained(source)
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise FileNotFoundError(
            f"no model folder at {model_id}, and no model {model_id!r} could be loaded from the Hub: "
            f"{_first_line(error)}"
        ) from error
    try:
        processor = DTFSalProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = DTFSalProcessor.from_model_config(model.config)
    return model, processor, True


def _model_source(model_id: str) -> str:
    """A model folder, or a Hub id; anything else is refused with a message naming it."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_id} holds no config.json: not a model folder written by save_pretrained "
                "(or `dtfsal train`'s best/)"
            )
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"{model_id} is a file: a model is a folder written by save_pretrained, or a Hub id")
    if not _is_hub_id(model_id):
        raise FileNotFoundError(
            f"no model folder at {model_id} (nor is it a Hub id 'namespace/name'; other ids: demo, random, random-tiny)"
        )
    return model_id


def _is_hub_id(model_id: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return model_id.count("/") <= 1


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def is_demo_checkpoint(model) -> bool:
    """Whether `model` was loaded from the bundled demo checkpoint (`DEMO_CHECKPOINT`, model id `demo`)."""
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if not name:
        return False
    try:
        return Path(name).resolve() == DEMO_CHECKPOINT.resolve()
    except OSError:
        return False


def is_synthetic_example(path: str | os.PathLike) -> bool:
    """Whether `path` is the demo checkpoint's own synthetic example clip (or a copy of it, such as an upload)."""
    example = DEMO_CHECKPOINT.parent / SYNTHETIC_EXAMPLE_NAME
    path = Path(path)
    try:
        if not example.is_file() or not path.is_file() or path.stat().st_size != example.stat().st_size:
            return False
        return path.resolve() == example.resolve() or filecmp.cmp(path, example, shallow=False)
    except OSError:
        return False


def demo_message(how: str = "given as --model (or to SaliencyPredictor.from_pretrained)") -> str:
    """What the demo checkpoint is, said when it runs on another video; `how` tells where to give a trained model."""
    return (
        "the demo checkpoint was trained only on synthetic videos of coloured discs, each with its own tone "
        "(dtfsal_hf.data.synthetic): on any other video its maps mean nothing. For real videos use a trained "
        f"model: a folder written by `dtfsal train` (its best/) or a Hub id, {how}"
    )


__all__ = [
    "DEMO_CHECKPOINT",
    "RANDOM_MODELS",
    "SYNTHETIC_EXAMPLE_NAME",
    "demo_message",
    "is_demo_checkpoint",
    "is_synthetic_example",
    "load_model_and_processor",
    "untrained_message",
]
