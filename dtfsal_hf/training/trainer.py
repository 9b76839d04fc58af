"""The training loop on Accelerate: one process, many GPUs or many machines with the same code.

A run writes, under `output.dir`:
- `checkpoints/step_XXXXXXXX/` — `Accelerator.save_state` (model as safetensors, optimizer and gradient scaler
  as weights-only torch files) plus `trainer_state.json` (the loop's position and history, the learning-rate
  schedule, Accelerate's step) and `rng_state_<process>.json` (each process's Python, NumPy and torch random
  states), written under a temporary name and renamed when complete, so an interrupted save never looks like a
  checkpoint. Reading one runs no code: safetensors, `torch.load(weights_only=True)` and JSON only;
- `best/` — the best model so far (`save_pretrained`, with its processor and the `video-saliency` pipeline's code),
  ready for `dtfsal push`;
- `logs/` — TensorBoard (loss, learning rate, validation metrics); `history.json` — one entry per epoch;
- `test/summary.json` — the best model on the test splits, when `data.test` names some.

`resume` continues exactly: the shuffling order of an epoch depends only on the seed and the epoch, the
loop skips the batches it had consumed, and the random states are those of the moment of the save.
SIGINT or SIGTERM (Ctrl-C, a cluster's preemption) ends the run at the next optimizer step with a
checkpoint; a second SIGINT stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration_dtfsal import DTFSalConfig
from ..evaluation import protocol_for, score_frame, summarise
from ..metrics import METRIC_TITLES
from ..modeling_dtfsal import DTFSalModel, correlation_coefficient, kl_divergence
from ..processing_dtfsal import DTFSalProcessor
from ..remote_code import add_pipeline
from .config import ModelSettings, TrainingConfig
from .data import build_clip_dataset, collate_clips, hold_out, load_sources, prepare_synthetic

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
AUDIO_MODULES = ("audio_encoder.", "fusion_blocks.")


def model_config(settings: ModelSettings) -> DTFSalConfig:
    """The `DTFSalConfig` the model settings describe: `init_from`'s, or the paper's / tiny sizes, with the overrides."""
    if settings.init_from:
        return DTFSalConfig.from_pretrained(settings.init_from, use_audio=settings.use_audio, **settings.config_overrides)
    if settings.size == "tiny":
        return DTFSalConfig.tiny(use_audio=settings.use_audio, **settings.config_overrides)
    return DTFSalConfig(use_audio=settings.use_audio, **settings.config_overrides)


def build_model(settings: ModelSettings) -> DTFSalModel:
    """The model the settings describe, with its starting weights (a saved DTFSal, Kinetics-400, AudioSet)."""
    config = model_config(settings)
    model = DTFSalModel(config)
    if settings.init_from:
        _load_initial_weights(model, settings.init_from)
    if settings.visual_weights:
        model.visual_encoder.load_pretrained(*_weight_source(settings.visual_weights, "kinetics400"))
    if settings.audio_weights:
        if not config.use_audio:
            raise ValueError("model.audio_weights is set, but the model has no audio branch (model.use_audio: false)")
        from ..encoders import load_audioset_vggish_weights

        load_audioset_vggish_weights(model.audio_encoder.trunk, *_weight_source(settings.audio_weights, "audioset"))
    return model


def _weight_source(value: str, published: str) -> list[str]:
    """`[]` for the published weights (the loader's default URL), `[path]` for a local file."""
    return [] if value == published else [value]


def _load_initial_weights(model: DTFSalModel, source: str) -> None:
    """Copy a saved DTFSal's weights; only the audio branch may be absent from it (stage 1 -> stage 2)."""
    saved = DTFSalModel.from_pretrained(source)
    missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
    not_audio = [key for key in missing + unexpected if not key.startswith(AUDIO_MODULES)]
    if not_audio:
        raise ValueError(f"model.init_from {source} does not fit the configured model: {sorted(not_audio)[:8]}")
    if missing:
        logger.info("init_from %s: %d audio-branch tensors start from scratch", source, len(missing))


TRAINER_STATE_NAME = "trainer_state.json"
RNG_STATE_NAME = "rng_state_{}.json"
MODEL_FILE, OPTIMIZER_FILE = "model.safetensors", "optimizer.bin"


@dataclass
class LoopState:
    """Where the loop stands; saved with every checkpoint as JSON (`trainer_state.json`), the random states
    (`rng`, this process's at the moment of the save) in `rng_state_<process>.json`."""

    epoch: int = 0
    batches_in_epoch: int = 0
    global_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    finished: bool = False
    history: list = field(default_factory=list)
    rng: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the random states, as JSON types."""
        return {key: value for key, value in self.__dict__.items() if key != "rng"}

    @classmethod
    def from_dict(cls, values: dict) -> "LoopState":
        expected = {f for f in cls.__dataclass_fields__ if f != "rng"}
        if not isinstance(values, dict) or set(values) != expected:
            raise ValueError(f"expected the keys {sorted(expected)}, got {sorted(values) if isinstance(values, dict) else values!r}")
        return cls(**values)


def _capture_rng() -> dict:
    """This process's random states as JSON types (the torch states as base64)."""
    import base64

    def encoded(tensor: torch.Tensor) -> str:
        return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")

    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
            "torch": encoded(torch.get_rng_state()),
            "cuda": [encoded(state) for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None}


def _restore_rng(states: dict) -> None:
    import base64

    def decoded(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(decoded(states["torch"]))
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decoded(state) for state in states["cuda"]])


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a JSON object")
    return content


def check_checkpoint(folder: str | Path, num_processes: int = 1) -> None:
    """Raise `ValueError` naming the file when `folder` is not a complete, readable checkpoint of this loop.

    Every file is read as `resume` reads it (safetensors, `torch.load(weights_only=True)`, JSON), so reading runs
    no code; a truncated or damaged file, or one missing, is named.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    needed = [MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_NAME] + [RNG_STATE_NAME.format(i) for i in range(num_processes)]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder / missing[0]} is missing: the checkpoint is incomplete")
    pickles = sorted(folder.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise ValueError(f"{pickles[0]} is a pickle, which this loop neither writes nor reads")
    try:
        with safe_open(str(folder / MODEL_FILE), framework="pt") as weights:
            for key in weights.keys():
                weights.get_slice(key)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{folder / MODEL_FILE} cannot be read ({error})") from error
    for name in [OPTIMIZER_FILE] + [n for n in ("scaler.pt",) if (folder / n).is_file()]:
        try:
            torch.load(folder / name, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for a damaged or unsafe file
            raise ValueError(f"{folder / name} cannot be read as weights ({type(error).__name__}: {error})") from error
    state = _read_json(folder / TRAINER_STATE_NAME)
    try:
        LoopState.from_dict(state.get("loop"))
        if not isinstance(state.get("scheduler"), dict) or not isinstance(state.get("accelerator_step"), int):
            raise ValueError("expected 'loop', 'scheduler' and 'accelerator_step'")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{folder / TRAINER_STATE_NAME} is not a state of this loop ({error})") from error
    for index in range(num_processes):
        path = folder / RNG_STATE_NAME.format(index)
        rng = _read_json(path)
        if set(rng) != {"python", "numpy", "torch", "cuda"}:
            raise ValueError(f"{path} is not a set of random states (keys {sorted(rng)})")


def _checkpoints(output_dir: str | Path) -> list[Path]:
    folder = Path(output_dir) / "checkpoints"
    return sorted(folder.glob(f"{CHECKPOINT_PREFIX}*[0-9]")) if folder.is_dir() else []


def find_checkpoint(output_dir: str | Path, resume: str | bool, num_processes: int = 1,
                    log: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint to resume from. `resume=True`: the newest complete one of the run; a damaged or incomplete
    newest one is named and the one before it taken (`log` says so); None, said too, when the run has none. A path:
    that one, which must be complete. `num_processes` is the number of processes whose random states it must hold."""
    log = log or (lambda message: None)
    if resume is False or resume is None:
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {path}")
        check_checkpoint(path, num_processes)
        return path
    found = _checkpoints(output_dir)
    if not found:
        log(f"resume: no checkpoint in {Path(output_dir) / 'checkpoints'}: starting from scratch")
        return None
    for newer, candidate in enumerate(reversed(found)):
        try:
            check_checkpoint(candidate, num_processes)
        except ValueError as error:
            log(f"resume: skipping {candidate.name}: {error}")
            continue
        if newer:
            log(f"resume: falling back to {candidate.name}, the newest complete checkpoint")
        return candidate
    raise ValueError(f"no usable checkpoint in {Path(output_dir) / 'checkpoints'}: all {len(found)} are damaged or "
                     "incomplete (see above); remove them to start from scratch")


def parameter_groups(model: DTFSalModel, learning_rate: float, multipliers: dict[str, float]) -> list[dict]:
    """The optimizer's parameter groups: the trainable parameters of each part named in `multipliers`
    (`DTFSalModel.part_groups` names) at `learning_rate` times its multiplier, in the order given, then the rest at
    `learning_rate`. An unknown name raises a `ValueError` naming the choices."""
    groups = model.part_groups()
    unknown = [name for name in multipliers if name not in groups or not groups[name]]
    if unknown:
        raise ValueError(f"training.learning_rate_multipliers: unknown part(s) {unknown}; this model has "
                         f"{sorted(n for n in groups if groups[n])}")
    taken: set[int] = set()
    result = []
    for name, multiplier in multipliers.items():
        params = [p for part in groups[name] for p in model.get_submodule(part).parameters()
                  if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in params)
        if params:
            result.append({"params": params, "lr": learning_rate * multiplier, "part": name})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return [{"params": rest, "lr": learning_rate}] + result


class Trainer:
    """Trains one `TrainingConfig`. `callbacks` are called as `callback(trainer)` after every optimizer step."""

    def __init__(self, config: TrainingConfig, callbacks: Sequence[Callable] = ()):
        self.config = config
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output.dir)
        self.state = LoopState()
        self.stop_requested = False
        self._signals_seen = 0

    # ----------------------------------------------------------------------------------------- setup
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        t = self.config.training
        if t.threads:
            torch.set_num_threads(t.threads)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            mixed_precision=t.mixed_precision,
            log_with="tensorboard" if self.config.output.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
            step_scheduler_with_optimizer=False,
        )
        set_seed(t.seed)

    def _setup_data(self) -> None:
        d, progress = self.config.data, self.config.output.progress and self.accelerator.is_main_process
        clip_length = self.model.config.num_frames
        with self.accelerator.main_process_first():
            if d.synthetic is not None:
                prepare_synthetic(d.synthetic, progress=progress)
            if not d.train:
                raise ValueError("data.train names no dataset split to train on")
            train_records = load_sources(d.train)
            if d.validation:
                validation_records = load_sources(d.validation)
            elif d.validation_fraction > 0:
                train_records, validation_records = hold_out(train_records, d.validation_fraction, self.config.training.seed)
            else:
                validation_records = []
            self._check_audio(train_records + validation_records)
            build = lambda records, stride, gt, name: build_clip_dataset(  # noqa: E731
                records, d, self.processor, clip_length, stride, gt, name, progress)
            self.train_dataset = build(train_records, d.train_stride, False, "train")
            self.validation_dataset = build(validation_records, d.validation_stride, True, "validation") if validation_records else None
            self.test_records = load_sources(d.test) if d.test else []
        self.video_counts = (len(train_records), len(validation_records))

    def _check_audio(self, records) -> None:
        silent = [r.key for r in records if not r.has_audio]
        if self.model.config.use_audio and silent:
            raise ValueError(f"the audio-visual model needs sound, but {len(silent)} videos have none (e.g. {silent[0]}); "
                             "train DTFSal(V) (model.use_audio: false) on them")

    def _setup_model(self) -> None:
        t = self.config.training
        self.model = build_model(self.config.model)
        # Frozen parts get no gradient and stay in eval mode (no drop-path) whatever `train()` says.
        if self.model.config.use_audio:
            self.model.freeze_audio_trunk(t.freeze_audio_trunk)
        self.model.freeze_visual_encoder(t.freeze_visual_encoder)
        if t.freeze:
            self.model.freeze_parts(t.freeze)
        if t.gradient_checkpointing:
            # The name transformers 5 keeps; `gradient_checkpointing_enable` is its deprecated alias.
            self.model.activation_checkpointing_enable()
        self.processor = DTFSalProcessor.from_model_config(self.model.config)

    def _setup_optimisation(self) -> None:
        t, d = self.config.training, self.config.data
        groups = parameter_groups(self.model, t.learning_rate, t.learning_rate_multipliers)
        self.optimizer = torch.optim.Adam(groups, lr=t.learning_rate, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.lr_step_epochs, gamma=t.lr_gamma)
        loader = lambda dataset, batch, shuffle: torch.utils.data.DataLoader(  # noqa: E731
            dataset, batch_size=batch, shuffle=shuffle, collate_fn=collate_clips, num_workers=d.num_workers)
        train_loader = loader(self.train_dataset, t.batch_size, True)
        prepared = [self.model, self.optimizer, train_loader]
        if self.validation_dataset is not None:
            prepared.append(loader(self.validation_dataset, t.validation_batch_size, False))
        prepared = self.accelerator.prepare(*prepared)
        self.model, self.optimizer, self.train_loader = prepared[:3]
        self.validation_loader = prepared[3] if len(prepared) > 3 else None
        # StepLR counts epochs, not optimizer steps, so it is not prepared (which would step it per process); it is
        # saved with the loop's state as JSON (register_for_checkpointing would pickle it).

    # ------------------------------------------------------------------------------------------ run
    def train(self, resume: str | bool | None = None) -> dict:
        """Run to the end (or to early stopping, or to an interrupt) and return a summary."""
        self._setup_accelerator()
        self._setup_model()
        self._setup_data()
        self._setup_optimisation()
        checkpoint = find_checkpoint(self.output_dir, resume, self.accelerator.num_processes, self._print) if resume else None
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
            self._print(f"resumed from {checkpoint} (epoch {self.state.epoch + 1}, step {self.state.global_step})")
        self._write_run_files()
        self._init_trackers()
        self._describe()
        previous = self._install_signal_handlers()
        try:
            status = self._loop(resumed_mid_epoch=checkpoint is not None and self.state.batches_in_epoch > 0)
        finally:
            self._restore_signal_handlers(previous)
            self.accelerator.end_training()
        test = self._test() if status != "interrupted" and self.test_records else None
        return self._summary(status, test)

    def _loop(self, resumed_mid_epoch: bool) -> str:
        t = self.config.training
        if self.state.finished:
            return "completed"
        for epoch in range(self.state.epoch, t.epochs):
            self.state.epoch = epoch
            outcome = self._train_epoch(epoch, restore_rng=resumed_mid_epoch)
            resumed_mid_epoch = False
            if outcome == "interrupted":
                self._save_checkpoint()
                self._print(f"interrupted: checkpoint at step {self.state.global_step}; continue with --resume")
                return "interrupted"
            if self._end_epoch(epoch):
                self.state.finished = True
                self._save_checkpoint()
                return "early_stopped"
        self.state.finished = True
        self._save_checkpoint()
        return "completed"

    def _epoch_batches(self, epoch: int, restore_rng: bool):
        """The epoch's batches from the loop's position; the shuffle depends only on seed and epoch."""
        self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if self.state.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, self.state.batches_in_epoch)
            loader.set_epoch(epoch)
        batches = iter(loader)
        first = next(batches, None)
        if restore_rng and self.state.rng:
            # Starting the loader drew from the torch RNG; the uninterrupted run had drawn it before the save.
            _restore_rng(self.state.rng)
        if first is not None:
            yield first
            yield from batches
        if hasattr(loader, "end"):
            loader.end()

    def _train_epoch(self, epoch: int, restore_rng: bool) -> str:
        t, accelerator = self.config.training, self.accelerator
        self.model.train()
        steps_per_epoch = self._steps_per_epoch()
        steps_done = math.ceil(self.state.batches_in_epoch / t.gradient_accumulation_steps)
        bar = tqdm(total=steps_per_epoch, initial=steps_done, desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=not (self.config.output.progress and accelerator.is_main_process), dynamic_ncols=True)
        window = []
        for batch in self._epoch_batches(epoch, restore_rng):
            loss = self._train_batch(batch)
            self.state.batches_in_epoch += 1
            window.append(loss)
            if not accelerator.sync_gradients:
                continue
            self.state.global_step += 1
            steps_done += 1
            mean_loss = self._record_loss(window)
            window = []
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self._learning_rate():.2e}")
            for callback in self.callbacks:
                callback(self)
            if self._should_stop():
                bar.close()
                return "interrupted"
            every = self.config.output.checkpoint_every_steps
            if every and self.state.global_step % every == 0:
                self._save_checkpoint()
            if t.max_steps_per_epoch and steps_done >= t.max_steps_per_epoch:
                break
        bar.close()
        return "done"

    def _train_batch(self, batch: dict) -> float:
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            outputs = self.model(**self._model_inputs(batch), labels=batch["labels"])
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients:
                self._check_and_clip_gradients(float(outputs.loss.detach()))
            self.optimizer.step()
            self.optimizer.zero_grad()
        return float(outputs.loss.detach())

    def _check_and_clip_gradients(self, loss: float) -> None:
        """Clip the gradients to `training.max_grad_norm` (when set) and, without fp16 loss scaling (whose scaler
        skips such steps itself), refuse a step whose gradients are not finite: AdamW would turn every weight it
        touches into NaN, silently, and the next forward would feed NaN offsets to the deformable convolution."""
        accelerator, max_norm = self.accelerator, self.config.training.max_grad_norm
        norm = None
        if max_norm:
            norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        elif accelerator.scaler is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if accelerator.scaler is None and norm is not None and not math.isfinite(float(norm)):
            raise FloatingPointError(
                f"the gradients of optimizer step {self.state.global_step + 1} are not finite (loss {loss:.4g}); the "
                "step was not taken: lower training.learning_rate, or check the data and the last checkpoint")

    def _model_inputs(self, batch: dict) -> dict:
        inputs = {"pixel_values_videos": batch["pixel_values_videos"]}
        if self._unwrapped.config.use_audio:
            inputs["input_features"] = batch["input_features"]
            if "frame_times" in batch:
                inputs["frame_times"] = batch["frame_times"]
        return inputs

    @property
    def _unwrapped(self) -> DTFSalModel:
        return self.accelerator.unwrap_model(self.model)

    def _steps_per_epoch(self) -> int:
        t = self.config.training
        steps = math.ceil(len(self.train_loader) / t.gradient_accumulation_steps)
        return min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps

    def _learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _record_loss(self, losses: list[float]) -> float:
        """Loss of the optimizer step (mean over its micro-batches and processes); logged every `logging_steps`."""
        value = torch.tensor(sum(losses) / len(losses), device=self.accelerator.device)
        mean_loss = float(self.accelerator.reduce(value, "mean"))
        self.state.epoch_loss_sum += mean_loss
        self.state.epoch_loss_count += 1
        if self.state.global_step % self.config.output.logging_steps == 0:
            self.accelerator.log({"train/loss": mean_loss, "train/learning_rate": self._learning_rate()},
                                 step=self.state.global_step)
        return mean_loss

    # --------------------------------------------------------------------------- epoch end, stopping
    def _end_epoch(self, epoch: int) -> bool:
        """Validate, export the best model, step the schedule, checkpoint. Returns True to stop early."""
        t, s = self.config.training, self.state
        entry = {"epoch": epoch + 1, "step": s.global_step, "learning_rate": self._learning_rate(),
                 "train_loss": s.epoch_loss_sum / max(s.epoch_loss_count, 1)}
        improved = False
        if self.validation_loader is not None:
            metrics = self.evaluate_loader(self.validation_loader, self.validation_dataset, desc="validation")
            entry["validation"] = metrics
            self.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=s.global_step)
            improved = self._is_improvement(metrics[t.early_stopping_metric])
            self._print(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}, validation "
                        + ", ".join(f"{METRIC_TITLES.get(k, k)} {v:.4f}" for k, v in metrics.items()))
        else:
            improved = True  # without validation the latest model is the one exported
        s.epochs_without_improvement = 0 if improved else s.epochs_without_improvement + 1
        if improved:
            s.best_epoch = epoch + 1
            s.best_metric = entry.get("validation", {}).get(t.early_stopping_metric)
            self._export_best(entry)
        s.history.append(entry)
        self.scheduler.step()
        s.epoch, s.batches_in_epoch, s.epoch_loss_sum, s.epoch_loss_count = epoch + 1, 0, 0.0, 0
        self._write_history()
        stop = bool(t.early_stopping_patience) and s.epochs_without_improvement >= t.early_stopping_patience
        if stop:
            self._print(f"early stopping: no improvement of validation {t.early_stopping_metric} for "
                        f"{s.epochs_without_improvement} epochs; best epoch {s.best_epoch}")
        else:
            self._save_checkpoint()
        return stop

    def _is_improvement(self, value: float) -> bool:
        best = self.state.best_metric
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self.config.higher_is_better else value < best

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_loader(self, loader, dataset, desc: str = "evaluation", metrics: Sequence[str] | None = None) -> dict:
        """Metrics of the model on a loader's clips under each dataset's protocol (SPEC §11), scored and averaged as
        `dtfsal evaluate` scores and averages them: each clip's map, at the model's output grid, against its target
        frame's ground truth (`evaluation.score_frame`: blurred on that grid for the audio-visual sets, resized to
        the ground truth's size), then per video and over videos (`evaluation.summarise`). Also the loss (KL - CC at
        the model's resolution), averaged the same way. The per-dataset means are kept in `_last_per_dataset`."""
        metrics = list(metrics or self.config.training.validation_metrics)
        self.model.eval()
        protocols = [protocol_for(dataset_name) for dataset_name in dataset.video_datasets]
        rows = []
        show = self.config.output.progress and self.accelerator.is_main_process
        for batch in tqdm(loader, desc=desc, disable=not show, leave=False, dynamic_ncols=True):
            maps = self.model(**self._model_inputs(batch)).saliency_map.float()
            losses = kl_divergence(maps, batch["labels"].float()) - correlation_coefficient(maps, batch["labels"].float())
            maps = maps.cpu().numpy()
            batch_rows = []
            for i, video in enumerate(batch["video_index"].tolist()):
                scores = score_frame(maps[i], batch["saliency_map"][i], batch["fixation_map"][i], protocols[video], metrics)
                batch_rows.append([video, float(losses[i])] + [scores[name] for name in metrics])
            rows.append(self.accelerator.gather_for_metrics(torch.tensor(batch_rows, dtype=torch.float64, device=self.accelerator.device)))
        self.model.train()
        names = ["loss"] + metrics
        # The loss comes first: every clip has one, so every video counts in `num_videos`, as before the metrics.
        frames = [{"key": dataset.video_keys[int(row[0])], "dataset": dataset.video_datasets[int(row[0])],
                   **dict(zip(names, row[1:]))} for row in torch.cat(rows).cpu().tolist()]
        summary = summarise(frames, names)
        self._last_per_dataset = summary["per_dataset"]
        return summary["metrics"]

    def _test(self) -> dict:
        """The best model on `data.test`, every `test_stride`-th frame (and the last), written to `test/summary.json`."""
        d = self.config.data
        best = self.output_dir / "best"
        if (best / "config.json").is_file():
            weights = DTFSalModel.from_pretrained(best).state_dict()
            self._unwrapped.load_state_dict(weights)
        dataset = build_clip_dataset(self.test_records, d, self.processor, self._unwrapped.config.num_frames,
                                     d.test_stride, True, "test", self.config.output.progress and self.accelerator.is_main_process)
        loader = self.accelerator.prepare(torch.utils.data.DataLoader(
            dataset, batch_size=self.config.training.validation_batch_size, shuffle=False, collate_fn=collate_clips,
            num_workers=d.num_workers))
        metrics = ["cc", "nss", "auc_judd", "sim", "kld"]
        started = time.time()
        self.model.eval()
        summary = self._test_summary(loader, dataset, metrics)
        summary["seconds"] = round(time.time() - started, 1)
        if self.accelerator.is_main_process:
            folder = self.output_dir / "test"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps(summary, indent=2))
            self._print("test: " + ", ".join(f"{METRIC_TITLES[k]} {v:.4f}" for k, v in summary["metrics"].items()))
        return summary

    def _test_summary(self, loader, dataset, metrics) -> dict:
        protocols = sorted({protocol_for(name) for name in dataset.video_datasets})
        overall = self.evaluate_loader(loader, dataset, desc="test", metrics=metrics)
        per_dataset = self._last_per_dataset
        return {"num_videos": len(dataset.video_keys), "metrics": {k: overall[k] for k in metrics},
                "per_dataset": per_dataset, "protocol": protocols[0] if len(protocols) == 1 else protocols,
                "stride": self.config.data.test_stride, "model": str(self.output_dir / "best")}

    # ---------------------------------------------------------------------------- saving and logging
    def _save_checkpoint(self) -> None:
        accelerator = self.accelerator
        folder = self.output_dir / "checkpoints"
        final = folder / f"{CHECKPOINT_PREFIX}{self.state.global_step:08d}"
        partial = folder / f"{final.name}.partial"
        if accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        self._save_loop_state(partial)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            for old in sorted(folder.glob(f"{CHECKPOINT_PREFIX}*[0-9]"))[: -self.config.output.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def _save_loop_state(self, folder: Path) -> None:
        """The loop's position, the schedule and Accelerate's step as JSON (main process), and each process's
        random states (taken now, as `save_state` took Accelerate's)."""
        rng = _capture_rng()
        (folder / RNG_STATE_NAME.format(self.accelerator.process_index)).write_text(json.dumps(rng))
        if self.accelerator.is_main_process:
            state = {"loop": self.state.to_dict(), "scheduler": self.scheduler.state_dict(),
                     "accelerator_step": int(self.accelerator.step)}
            (folder / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1))

    def _load_checkpoint(self, folder: Path) -> None:
        """`Accelerator.load_state` (model from safetensors, optimizer and scaler weights-only) and the loop's JSON."""
        self.accelerator.load_state(str(folder))
        state = _read_json(folder / TRAINER_STATE_NAME)
        self.state = LoopState.from_dict(state["loop"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.accelerator.step = state["accelerator_step"]
        self.state.rng = _read_json(folder / RNG_STATE_NAME.format(self.accelerator.process_index))
        _restore_rng(self.state.rng)

    def _export_best(self, entry: dict) -> None:
        """`save_pretrained` of the model and its processor, swapped in only once complete."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            best, partial = self.output_dir / "best", self.output_dir / "best.partial"
            if partial.exists():
                shutil.rmtree(partial)
            self._unwrapped.save_pretrained(partial, state_dict=accelerator.get_state_dict(self.model))
            self.processor.save_pretrained(partial)
            add_pipeline(partial)  # `pipeline("video-saliency", model=best, trust_remote_code=True)` without the package
            (partial / "training_summary.json").write_text(json.dumps(
                {"epoch": entry["epoch"], "step": entry["step"], "train_loss": entry["train_loss"],
                 "validation": entry.get("validation"), "training_config": self.config.to_dict()}, indent=2))
            if best.exists():
                shutil.rmtree(best)
            os.replace(partial, best)
        accelerator.wait_for_everyone()

    def _write_run_files(self) -> None:
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "training_config.yaml").write_text(self.config.to_yaml())

    def _write_history(self) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / "history.json").write_text(json.dumps(self.state.history, indent=2))

    def _init_trackers(self) -> None:
        if not self.config.output.tensorboard:
            return
        flat = {}
        for section, values in self.config.to_dict().items():
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        self.accelerator.init_trackers("dtfsal", config=flat)

    def _describe(self) -> None:
        model = self._unwrapped
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        train_videos, validation_videos = self.video_counts
        self._print(
            f"{'DTFSal' if model.config.use_audio else 'DTFSal(V)'}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trained; "
            f"{len(self.train_dataset)} training clips from {train_videos} videos, "
            f"{len(self.validation_dataset) if self.validation_dataset is not None else 0} validation clips from "
            f"{validation_videos} videos; {self._steps_per_epoch()} steps per epoch on {self.accelerator.num_processes} "
            f"process(es), batch {self.config.training.batch_size} x {self.config.training.gradient_accumulation_steps} "
            f"accumulation x {self.accelerator.num_processes}"
        )

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def _summary(self, status: str, test: dict | None) -> dict:
        return {"status": status, "global_step": self.state.global_step, "epochs_run": len(self.state.history),
                "best_epoch": self.state.best_epoch, "best_metric": self.state.best_metric,
                "best_model": str(self.output_dir / "best"), "history": self.state.history, "test": test}

    # ---------------------------------------------------------------------------------- interrupts
    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def _on_signal(self, number, frame) -> None:
        self._signals_seen += 1
        if number == signal.SIGINT and self._signals_seen > 1:
            raise KeyboardInterrupt
        self.stop_requested = True
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def _should_stop(self) -> bool:
        """Any process asked to stop: all of them stop at the same step."""
        if self.accelerator.num_processes == 1:
            return self.stop_requested
        flag = torch.tensor(float(self.stop_requested), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum") > 0)


def train(config: TrainingConfig, resume: str | bool | None = None, callbacks: Sequence[Callable] = ()) -> dict:
    """Train as `config` says; `resume=True` continues from the run's latest checkpoint, a path from that one."""
    return Trainer(config, callbacks).train(resume)


__all__ = ["LoopState", "Trainer", "build_model", "check_checkpoint", "find_checkpoint", "parameter_groups", "train"]
