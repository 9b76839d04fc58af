"""The training configuration: four sections (model, data, training, output), read from YAML and flags.

Every key has the paper's value as its default where the paper gives one (SPEC §10): Adam at 1e-4,
×0.1 every 3 epochs, batch size 1, at most 10 epochs, early stopping with patience 3. Unknown keys and
values of the wrong type are refused with the key's dotted name, so a typo never trains silently with
a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics

MIXED_PRECISION = ("no", "bf16", "fp16")
CACHE_MODES = ("none", "memory", "disk")
MODEL_SIZES = ("paper", "tiny")
LOWER_IS_BETTER = ("loss", *metrics.LOWER_IS_BETTER)
# Metrics the validation loop computes (sAUC needs other videos' fixations, which a loader of clips has not).
VALIDATION_METRICS = tuple(name for name in metrics.METRIC_NAMES if name != "sauc")


@dataclass
class DataSource:
    """One dataset split: `dataset` is `dhf1k`, `ucf_sports`, `hollywood2` or a STAViS-layout database
    (AVAD, Coutrot_db1, Coutrot_db2, DIEM, ETMD_av, SumMe, or any database written the same way, such as
    the synthetic `SyntheticAV`); `fold` is 1-3 (or `all`) for STAViS databases."""

    dataset: str
    root: str
    split: str = "train"
    fold: int | str | None = None


@dataclass
class ModelSettings:
    """Which model to train and where its first weights come from.

    - `size`: `paper` (the published sizes) or `tiny` (0.6M parameters, for CPU experiments).
    - `use_audio`: `false` gives DTFSal(V).
    - `config_overrides`: `DTFSalConfig` fields to change, e.g. `{num_frames: 16}`.
    - `init_from`: a saved DTFSal folder or Hub id whose weights start the run. A visual-only checkpoint
      may start an audio-visual model: the audio branch and the AMFBs are then the only new weights.
    - `visual_weights`: `kinetics400` (torchvision's Kinetics-400 weights of the configured visual encoder), a local
      `.pth` file, or null.
    - `audio_weights`: `audioset` (torchvggish's VGGish), a local `.pth` file, or null.
    """

    size: str = "paper"
    use_audio: bool = True
    config_overrides: dict = field(default_factory=dict)
    init_from: str | None = None
    visual_weights: str | None = None
    audio_weights: str | None = None


@dataclass
class DataSettings:
    """Which clips train and validate, and how they are cut (SPEC §2 defaults: causal clips, the first
    frame repeated at the start of a video).

    - `validation`: splits to validate on after each epoch; with none, `validation_fraction` of the
      training videos (drawn with the seed) are held out instead.
    - `test`: splits the best model is evaluated on once training ends (full protocol, every frame).
    - `synthetic`: `SyntheticConfig` fields plus `root`: the synthetic audio-visual set is written there
      first if it is not there yet.
    - `*_stride`: every n-th frame (and each video's last) is a target, the stride of `dtfsal predict` (thins the
      clips of 25-30 fps videos); the older `*_target_stride` keys are read with a deprecation warning.
    - `cache`: `none`, `memory` or `disk` (under `cache_dir`): keep the processed tensors of every clip,
      so decoding and the log-mel run once; sensible for small sets only.
    """

    train: list[DataSource] = field(default_factory=list)
    validation: list[DataSource] = field(default_factory=list)
    test: list[DataSource] = field(default_factory=list)
    validation_fraction: float = 0.0
    synthetic: dict | None = None
    alignment: str = "last"
    start: str = "repeat"
    map_normalization: str = "none"
    train_stride: int = 1
    validation_stride: int = 1
    test_stride: int = 1
    cache: str = "none"
    cache_dir: str | None = None
    num_workers: int = 0


@dataclass
class TrainingSettings:
    """Optimisation, precision, freezing and stopping.

    `max_steps_per_epoch` caps the optimizer steps of an epoch (null: the whole training set);
    `early_stopping_metric` is a validation metric (`cc`, `nss`, `auc_judd`, `sim`: higher is better;
    `kld`, `loss`: lower is better); `early_stopping_patience` 0 turns early stopping off.
    `threads` sets `torch.set_num_threads` (null: leave torch's default). `freeze` lists parts of the model to
    keep fixed, by `DTFSalModel.part_groups` name (e.g. `[visual_branch]`: only the audio encoder and the fusion
    train), besides `freeze_audio_trunk` and `freeze_visual_encoder`. `learning_rate_multipliers` scales the
    learning rate of parts by the same names, e.g. `{audio_branch: 3}` (a part in two named groups takes the first
    one listed; the schedule scales every group alike).
    """

    epochs: int = 10
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_step_epochs: int = 3
    lr_gamma: float = 0.1
    batch_size: int = 1
    validation_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    max_grad_norm: float | None = None
    gradient_checkpointing: bool = False
    freeze_audio_trunk: bool = True
    freeze_visual_encoder: bool = False
    freeze: list[str] = field(default_factory=list)
    learning_rate_multipliers: dict[str, float] = field(default_factory=dict)
    early_stopping_patience: int = 3
    early_stopping_metric: str = "cc"
    validation_metrics: list[str] = field(default_factory=lambda: ["cc", "nss", "auc_judd", "sim", "kld"])
    max_steps_per_epoch: int | None = None
    seed: int = 0
    threads: int | None = None


@dataclass
class OutputSettings:
    """Where the run writes: `dir/checkpoints/step_*` (`save_state`), `dir/best` (the best model and its
    processor, `save_pretrained`), `dir/logs` (TensorBoard), `dir/history.json` and `dir/test`."""

    dir: str = "runs/dtfsal"
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    logging_steps: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainingConfig:
    """A whole run. `TrainingConfig.from_yaml(path, overrides)` reads one; `to_dict()` writes it back."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        return _build(cls, values, "")

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> "TrainingConfig":
        """Read `path` (or start from the defaults), then apply `key.sub=value` overrides (values in YAML syntax)."""
        values: dict = {}
        if path is not None:
            values = _read_yaml(Path(path))
        for override in overrides:
            _apply_override(values, override)
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Check every key's type (also for sections built in Python) and value; errors name the key."""
        self._check_types()
        _choice("model.size", self.model.size, MODEL_SIZES)
        _choice("training.mixed_precision", self.training.mixed_precision, MIXED_PRECISION)
        _choice("data.cache", self.data.cache, CACHE_MODES)
        self._validate_model()
        self._validate_training()
        self._validate_data()
        o = self.output
        if o.checkpoint_every_steps < 0 or o.keep_checkpoints < 1:
            raise ValueError("output.checkpoint_every_steps must be >= 0 and output.keep_checkpoints >= 1, got "
                             f"{o.checkpoint_every_steps} and {o.keep_checkpoints}")
        _at_least("output.logging_steps", o.logging_steps, 1)

    def _check_types(self) -> None:
        hints = typing.get_type_hints(TrainingConfig)
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if not isinstance(value, hints[section.name]):
                raise ValueError(f"{section.name} must be a {hints[section.name].__name__}, got {value!r}")
            section_hints = typing.get_type_hints(type(value))
            for item in dataclasses.fields(value):
                where = f"{section.name}.{item.name}"
                setattr(value, item.name, _convert(section_hints[item.name], getattr(value, item.name), where))

    def _validate_model(self) -> None:
        from ..configuration_dtfsal import DTFSalConfig

        overrides = self.model.config_overrides
        from transformers import PretrainedConfig

        known = {f.name for f in dataclasses.fields(DTFSalConfig)} - {f.name for f in dataclasses.fields(PretrainedConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown key model.config_overrides.{unknown[0]}: expected DTFSalConfig fields, "
                             f"one of {sorted(known)}")
        if "use_audio" in overrides:
            raise ValueError("model.config_overrides.use_audio: set model.use_audio instead")
        try:
            (DTFSalConfig.tiny if self.model.size == "tiny" else DTFSalConfig)(use_audio=self.model.use_audio, **overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.config_overrides: {error}") from None

    def _validate_training(self) -> None:
        t = self.training
        for name in ("epochs", "batch_size", "validation_batch_size", "gradient_accumulation_steps", "lr_step_epochs"):
            _at_least(f"training.{name}", getattr(t, name), 1)
        if not (math.isfinite(t.learning_rate) and t.learning_rate > 0):
            raise ValueError(f"training.learning_rate must be a finite number > 0, got {t.learning_rate}")
        if not (math.isfinite(t.lr_gamma) and 0 < t.lr_gamma <= 1):
            raise ValueError(f"training.lr_gamma must lie in (0, 1], got {t.lr_gamma}")
        if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
            raise ValueError(f"training.weight_decay must be a finite number >= 0, got {t.weight_decay}")
        if len(t.adam_betas) != 2 or not all(math.isfinite(beta) and 0 <= beta < 1 for beta in t.adam_betas):
            raise ValueError(f"training.adam_betas needs two values in [0, 1), got {t.adam_betas}")
        if t.max_grad_norm is not None and not (math.isfinite(t.max_grad_norm) and t.max_grad_norm > 0):
            raise ValueError(f"training.max_grad_norm must be a finite number > 0 (or null), got {t.max_grad_norm}")
        for name, multiplier in t.learning_rate_multipliers.items():
            if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not (
                    math.isfinite(multiplier) and multiplier > 0):
                raise ValueError(f"training.learning_rate_multipliers.{name} must be a finite number > 0, got {multiplier!r}")
        _at_least("training.early_stopping_patience", t.early_stopping_patience, 0)
        for name in ("max_steps_per_epoch", "threads"):
            if getattr(t, name) is not None:
                _at_least(f"training.{name}", getattr(t, name), 1)
        if not 0 <= t.seed < 2**32:
            raise ValueError(f"training.seed must lie in [0, 2**32), got {t.seed}")
        unknown = [name for name in t.validation_metrics if name not in VALIDATION_METRICS]
        if unknown or not t.validation_metrics:
            raise ValueError(f"training.validation_metrics must be names among {list(VALIDATION_METRICS)}, got "
                             f"{t.validation_metrics}")
        metrics = set(t.validation_metrics) | {"loss"}
        if t.early_stopping_metric not in metrics:
            raise ValueError(f"training.early_stopping_metric must be one of {sorted(metrics)}, got {t.early_stopping_metric!r}")

    def _validate_data(self) -> None:
        from ..clips import alignment_name

        d = self.data
        try:
            d.alignment = alignment_name(d.alignment, stacklevel=4)
        except ValueError as error:
            raise ValueError(f"data.{error}") from None
        if not (math.isfinite(d.validation_fraction) and 0 <= d.validation_fraction < 1):
            raise ValueError(f"data.validation_fraction must lie in [0, 1), got {d.validation_fraction}")
        if d.cache == "disk" and not d.cache_dir:
            raise ValueError("data.cache: disk needs data.cache_dir")
        for name in ("train_stride", "validation_stride", "test_stride"):
            _at_least(f"data.{name}", getattr(d, name), 1)
        _at_least("data.num_workers", d.num_workers, 0)

    @property
    def higher_is_better(self) -> bool:
        return self.training.early_stopping_metric not in LOWER_IS_BETTER


def _at_least(name: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}, got {value}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"no training configuration at {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of sections (model, data, training, output), got {type(values).__name__}")
    return values


def _apply_override(values: dict, override: str) -> None:
    """`training.learning_rate=1e-3` -> values["training"]["learning_rate"] = 0.001."""
    import yaml

    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise ValueError(f"an override must read 'section.key=value', got {override!r}")
    *parents, leaf = key.strip().split(".")
    target = values
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"cannot set {key!r}: {part!r} is not a section")
    target[leaf] = yaml.safe_load(text)


RENAMED_KEYS = {
    "data.train_target_stride": "train_stride",
    "data.validation_target_stride": "validation_stride",
    "data.test_target_stride": "test_stride",
}
"""Older keys still read, with a `FutureWarning` naming the new one: dotted old key -> new name."""


def _renamed_keys(values: dict, where: str) -> dict:
    renamed = {}
    for name, value in values.items():
        new = RENAMED_KEYS.get(f"{where}.{name}")
        if new is not None:
            warnings.warn(f"{where}.{name} is now {where}.{new}; the old key will stop working in a future version",
                          FutureWarning, stacklevel=5)
            if new in values:
                raise ValueError(f"{where}.{name} and {where}.{new} are the same setting: give only {where}.{new}")
            name = new
        renamed[name] = value
    return renamed


def _build(cls, values: Any, where: str):
    """Build dataclass `cls` from a mapping, checking every key and value type; `where` is the dotted path."""
    label = where or "the configuration"
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"{label} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _renamed_keys(values, where)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown key {prefix}{unknown[0]}: expected one of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{label} needs the key {missing[0]}")
    return cls(**kwargs)


def _convert(hint, value: Any, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return _scalar(hint, value, where)


def _scalar(hint, value: Any, where: str):
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # PyYAML reads `1e-4` (no dot) as a string: accept any number written as text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")


__all__ = ["DataSettings", "DataSource", "ModelSettings", "OutputSettings", "TrainingConfig", "TrainingSettings"]
