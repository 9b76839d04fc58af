"""Training DTFSal with Accelerate: the paper's recipe (SPEC §10), resumable, on one or many devices.

`TrainingConfig.from_yaml(path, overrides)` reads a run's configuration, `train(config, resume=...)` runs
it; `dtfsal train` is the same from the command line, and `accelerate launch -m dtfsal_hf.cli train ...`
runs it on several GPUs or machines.
"""

from .config import DataSettings, DataSource, ModelSettings, OutputSettings, TrainingConfig, TrainingSettings
from .data import CachedClips, IndexedClips, build_clip_dataset, collate_clips, hold_out, prepare_synthetic
from .trainer import LoopState, Trainer, build_model, find_checkpoint, train

__all__ = [
    "CachedClips",
    "DataSettings",
    "DataSource",
    "IndexedClips",
    "LoopState",
    "ModelSettings",
    "OutputSettings",
    "Trainer",
    "TrainingConfig",
    "TrainingSettings",
    "build_clip_dataset",
    "build_model",
    "collate_clips",
    "find_checkpoint",
    "hold_out",
    "prepare_synthetic",
    "train",
]
