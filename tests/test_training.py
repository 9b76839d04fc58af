"""Training: configuration checks, exact resumption after an interrupt, two processes, best-model export,
and the audio-visual model beating the visual-only one on the synthetic task."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtfsal_hf import DTFSalModel, DTFSalProcessor
from dtfsal_hf.data import SyntheticConfig, generate_synthetic_dataset
from dtfsal_hf.training import TrainingConfig, find_checkpoint, train
from dtfsal_hf.training.trainer import Trainer, build_model, check_checkpoint, parameter_groups
from isolation import maps_with_package, maps_without_package, real_clip_inputs

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DHF1K_VIDEO = REPO.parent / "shared/data/dhf1k_002/002.AVI"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """Six short synthetic videos (fold 1: four to train, two to test)."""
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig(num_videos=6, duration_s=1.2, height=64, width=96, radius=8.0, map_fwhm=12.0, seed=3)
    return generate_synthetic_dataset(root, config, progress=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def small_config(root: Path, cache: Path, output: Path, **sections) -> TrainingConfig:
    """Tiny model, 18 training clips of 3 videos, one validation video: 5 optimizer steps an epoch."""
    values = {
        "model": {"size": "tiny", "use_audio": True, "config_overrides": {"backbone_stochastic_depth": 0.2}},
        "data": {
            "train": [{"dataset": "SyntheticAV", "root": str(root), "split": "train", "fold": 1}],
            "validation_fraction": 0.25, "train_stride": 5, "validation_stride": 10,
            "cache": "disk", "cache_dir": str(cache),
        },
        "training": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 2, "gradient_accumulation_steps": 2,
                     "freeze_audio_trunk": False, "seed": 7, "threads": 2},
        "output": {"dir": str(output), "checkpoint_every_steps": 2, "keep_checkpoints": 3, "logging_steps": 1,
                   "progress": False},
    }
    for section, updates in sections.items():
        values[section].update(updates)
    return TrainingConfig.from_dict(values)


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(find_checkpoint(output, True) / "model.safetensors")


class CodeOnLoad:
    """Pickled, this object runs `code` when unpickled: what a planted file may hold."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(CodeOnLoad(f"open({str(marker)!r}, 'w').write('ran')"), path)


# ----------------------------------------------------------------------------------------- disk cache
def test_disk_cache_holds_tensors_and_a_planted_pickle_never_runs(synthetic_root, tmp_path):
    """The cache used to be read with torch.load(weights_only=False): a file planted under its name ran code."""
    import numpy as np

    from dtfsal_hf import DTFSalConfig
    from dtfsal_hf.data import SaliencyClipDataset, load_records
    from dtfsal_hf.training.config import DataSettings
    from dtfsal_hf.training.data import IndexedClips, build_clip_dataset, clip_policy

    records = load_records("SyntheticAV", synthetic_root, "train", fold=1)[:1]
    settings = DataSettings(cache="disk", cache_dir=str(tmp_path / "cache"))
    processor = DTFSalProcessor.from_model_config(DTFSalConfig.tiny())
    fresh = IndexedClips(SaliencyClipDataset(records, clip_policy(settings, 8, 10), processor=processor,
                                             keep_ground_truth=True), True)
    marker = tmp_path / "ran"
    for suffix in (".pt", ".safetensors"):
        plant_pickle(tmp_path / "cache" / f"validation-{fresh.fingerprint()}{suffix}", marker)
    with pytest.warns(UserWarning, match="is not a readable cache of these clips"):
        built = build_clip_dataset(records, settings, processor, 8, 10, True, "validation", progress=False)
    assert not marker.exists()
    read = build_clip_dataset(records, settings, processor, 8, 10, True, "validation", progress=False)
    assert len(read) == len(fresh) == len(built) > 0
    for index in (0, len(fresh) - 1):
        expected, cached = fresh[index], read[index]
        assert cached.keys() == expected.keys()
        for key, value in expected.items():
            assert type(cached[key]) is type(value), key
            if isinstance(value, torch.Tensor):
                assert torch.equal(cached[key], value), key
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(cached[key], value)
                assert cached[key].dtype == value.dtype
            else:
                assert cached[key] == value


# ------------------------------------------------------------------------------------- configuration
def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learnig_rate: 0.001\n")
    with pytest.raises(ValueError, match=r"unknown key training\.learnig_rate"):
        TrainingConfig.from_yaml(path)


def test_wrong_type_is_named_and_numbers_written_as_text_are_read():
    with pytest.raises(ValueError, match=r"training\.epochs must be int"):
        TrainingConfig.from_yaml(None, ["training.epochs=ten"])
    config = TrainingConfig.from_yaml(None, ["training.learning_rate=1e-3", "data.train=[{dataset: DIEM, root: x}]"])
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert config.data.train[0].dataset == "DIEM" and config.data.train[0].split == "train"


@pytest.mark.parametrize("override, message", [
    ("model.config_overrides={use_audio: 'no'}", r"model\.config_overrides\.use_audio: set model\.use_audio instead"),
    ("model.config_overrides={feature_dimm: 32}", r"unknown key model\.config_overrides\.feature_dimm"),
    ("model.config_overrides={feature_dim: -3}", r"model\.config_overrides: `feature_dim` must be a positive integer, got -3"),
    ("model.config_overrides={num_frames: 7.5}", r"`num_frames` must be a positive integer, got 7\.5"),
    ("model.config_overrides={image_size: [64, -96]}", r"`image_size` must be a list of positive integers"),
    ("training.learning_rate=.nan", r"training\.learning_rate must be a finite number > 0, got nan"),
    ("training.learning_rate=inf", r"training\.learning_rate must be a finite number > 0, got inf"),
    ("training.weight_decay=-0.1", r"training\.weight_decay must be a finite number >= 0, got -0\.1"),
    ("training.adam_betas=[0.9, 1.0]", r"training\.adam_betas needs two values in \[0, 1\), got \[0\.9, 1\.0\]"),
    ("training.adam_betas=[-0.1, 0.9]", r"training\.adam_betas needs two values in \[0, 1\)"),
    ("training.max_grad_norm=-1", r"training\.max_grad_norm must be a finite number > 0"),
    ("training.seed=-1", r"training\.seed must lie in \[0, 2\*\*32\), got -1"),
    ("training.validation_metrics=[cc, sauc]", r"training\.validation_metrics must be names among"),
    ("training.threads=0", r"training\.threads must be at least 1, got 0"),
    ("data.num_workers=-2", r"data\.num_workers must be at least 0, got -2"),
    ("data.train_stride=0", r"data\.train_stride must be at least 1, got 0"),
    ("output.logging_steps=0", r"output\.logging_steps must be at least 1, got 0"),
    ("training.batch_size=1.5", r"training\.batch_size must be int, got 1\.5"),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_yaml(None, ["model.size=tiny", override])


def test_settings_built_in_python_are_checked_too():
    """A `ModelSettings(use_audio="no")` was taken as true: "no" is a non-empty string."""
    from dtfsal_hf import DTFSalConfig
    from dtfsal_hf.training.config import ModelSettings, TrainingSettings

    with pytest.raises(ValueError, match=r"model\.use_audio must be bool, got 'no'"):
        TrainingConfig(model=ModelSettings(use_audio="no"))
    with pytest.raises(ValueError, match=r"training\.weight_decay must be a finite number >= 0"):
        TrainingConfig(training=TrainingSettings(weight_decay=-1.0))
    with pytest.raises(ValueError, match=r"`use_audio` must be true or false, got 'no'"):
        DTFSalConfig(use_audio="no")
    with pytest.raises(ValueError, match=r"`backbone_dims` must be a list of positive integers, got \[96, 'x', 384, 768\]"):
        DTFSalConfig(backbone_dims=[96, "x", 384, 768])
    assert TrainingConfig.from_yaml(None, ["model.use_audio=no"]).model.use_audio is False  # YAML's no is false


def test_paper_recipe_is_the_default():
    training = TrainingConfig().training
    assert (training.learning_rate, training.lr_step_epochs, training.lr_gamma) == (1e-4, 3, 0.1)
    assert (training.batch_size, training.epochs, training.early_stopping_patience) == (1, 10, 3)
    assert training.freeze_audio_trunk is True


def test_shipped_configs_load():
    for path in sorted((REPO / "examples" / "configs").glob("*.yaml")):
        TrainingConfig.from_yaml(path)


def test_activation_checkpointing_is_switched_on_without_deprecation_warnings(tmp_path):
    from dtfsal_hf.training.trainer import Trainer

    config = TrainingConfig.from_dict({
        "model": {"size": "tiny"}, "training": {"gradient_checkpointing": True},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False, "progress": False},
    })
    trainer = Trainer(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer._setup_model()
    assert trainer.model.visual_encoder.gradient_checkpointing


def test_missing_dataset_folder_is_reported(tmp_path):
    config = TrainingConfig.from_dict({
        "model": {"size": "tiny"},
        "data": {"train": [{"dataset": "AVAD", "root": str(tmp_path / "nowhere")}]},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False, "progress": False},
    })
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(config)


# ---------------------------------------------------------------------------------- exact resumption
def check_best_export(output: Path, summary: dict) -> None:
    """The best epoch's model and processor load back; its record and the TensorBoard logs are there."""
    best = Path(summary["best_model"])
    model = DTFSalModel.from_pretrained(best)
    processor = DTFSalProcessor.from_pretrained(best)
    assert model.config.num_frames == processor.video_processor.num_frames == 8
    record = json.loads((best / "training_summary.json").read_text())
    assert record["epoch"] == summary["best_epoch"]
    assert set(record["validation"]) >= {"cc", "nss", "auc_judd", "sim", "kld", "loss"}
    assert list((output / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs missing"
    # The video-saliency pipeline travels with the model, for `pipeline(..., trust_remote_code=True)`.
    assert (best / "pipeline_dtfsal.py").is_file()
    assert json.loads((best / "config.json").read_text())["custom_pipelines"]["video-saliency"]["impl"] == \
        "pipeline_dtfsal.DTFSalVideoSaliencyPipeline"


def check_best_loads_without_the_package(best: Path, work_dir: Path) -> None:
    """best/ is a whole Hub repository: AutoProcessor + AutoModel load it where dtfsal_hf cannot be imported,
    and give the package's maps on real frames and sound (DHF1K video 002)."""
    if not DHF1K_VIDEO.is_file():
        return
    inputs = real_clip_inputs(DHF1K_VIDEO, 8, [0, 30])
    (remote,), (classes,) = maps_without_package([best], inputs, work_dir)
    assert classes[:2] == ["transformers_modules:DTFSalModel", "transformers_modules:DTFSalProcessor"]
    for key, value in maps_with_package(best, inputs).items():
        torch.testing.assert_close(remote[key], value, rtol=0, atol=1e-6, msg=key)


def test_interrupted_run_resumes_to_the_same_weights(synthetic_root, cache_dir, tmp_path):
    straight = tmp_path / "straight"
    summary = train(small_config(synthetic_root, cache_dir, straight))
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    check_best_export(straight, summary)
    (tmp_path / "remote").mkdir()
    check_best_loads_without_the_package(Path(summary["best_model"]), tmp_path / "remote")

    interrupted = tmp_path / "interrupted"
    config = small_config(synthetic_root, cache_dir, interrupted)

    def interrupt_at_step_3(trainer):  # mid-epoch, between two periodic checkpoints
        if trainer.state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(config, callbacks=[interrupt_at_step_3])
    assert first["status"] == "interrupted" and first["global_step"] == 3
    # A copy whose newest checkpoint (step 3) is damaged: resuming it falls back to step 2.
    damaged = tmp_path / "damaged"
    shutil.copytree(interrupted, damaged)
    newest = damaged / "checkpoints" / "step_00000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = train(config, resume=True)
    assert resumed["status"] == "completed" and resumed["global_step"] == summary["global_step"]
    expected = final_weights(straight)
    assert_same_weights(final_weights(interrupted), expected)
    assert [e["validation"]["cc"] for e in resumed["history"]] == pytest.approx(
        [e["validation"]["cc"] for e in summary["history"]], abs=1e-6)

    messages = []
    fallback = Trainer(small_config(synthetic_root, cache_dir, damaged))
    fallback._print = messages.append
    assert fallback.train(resume=True)["status"] == "completed"
    assert f"resume: skipping step_00000003: {newest} cannot be read" in messages[0]
    assert messages[1] == "resume: falling back to step_00000002, the newest complete checkpoint"
    assert messages[2].startswith(f"resumed from {damaged / 'checkpoints' / 'step_00000002'} (epoch 1, step 2)")
    assert_same_weights(final_weights(damaged), expected)

    # A checkpoint is data: pickles planted in it are refused or never unpickled.
    planted, marker = tmp_path / "planted", tmp_path / "ran"
    shutil.copytree(find_checkpoint(straight, True), planted)
    plant_pickle(planted / "random_states_0.pkl", marker)  # Accelerate's: read weights-only, and not needed
    assert train(small_config(synthetic_root, cache_dir, tmp_path / "elsewhere"), resume=str(planted))["status"] == "completed"
    assert not marker.exists()
    plant_pickle(planted / "custom_checkpoint_0.pkl", marker)  # what register_for_checkpointing used to write
    with pytest.raises(ValueError, match=r"custom_checkpoint_0\.pkl is a pickle, which this loop neither writes nor reads"):
        train(small_config(synthetic_root, cache_dir, tmp_path / "elsewhere"), resume=str(planted))
    (planted / "custom_checkpoint_0.pkl").unlink()
    plant_pickle(planted / "optimizer.bin", marker)
    with pytest.raises(ValueError, match=r"optimizer\.bin cannot be read as weights \(UnpicklingError"):
        train(small_config(synthetic_root, cache_dir, tmp_path / "elsewhere"), resume=str(planted))
    assert not marker.exists()


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path):
    messages = []
    assert find_checkpoint(tmp_path, True, log=messages.append) is None
    assert messages == [f"resume: no checkpoint in {tmp_path / 'checkpoints'}: starting from scratch"]
    (tmp_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no usable checkpoint in .*: all 1 are damaged or incomplete"):
        find_checkpoint(tmp_path, True, log=messages.append)
    assert "resume: skipping step_00000004: " in messages[-1] and "model.safetensors is missing" in messages[-1]


# ------------------------------------------------------------------------------------- two processes
RANK_SCRIPT = """
import hashlib, json, os, sys
import torch
from dtfsal_hf.training import TrainingConfig, train

def record(trainer):
    # Parameters only: BatchNorm running statistics are each process's own until the next forward pass
    # broadcasts rank 0's, as DistributedDataParallel does.
    weights = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    digest = hashlib.sha256(b"".join(weights[k].detach().cpu().numpy().tobytes() for k in sorted(weights))).hexdigest()
    rank = trainer.accelerator.process_index
    path = os.path.join(sys.argv[2], f"rank{rank}.json")
    with open(path, "w") as handle:
        json.dump({"step": trainer.state.global_step, "digest": digest, "processes": trainer.accelerator.num_processes,
                   "clips": len(trainer.train_dataset)}, handle)

train(TrainingConfig.from_yaml(sys.argv[1]), callbacks=[record])
"""


def test_two_cpu_processes_train_one_model(synthetic_root, cache_dir, tmp_path):
    torchrun = Path(PYTHON).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    config = small_config(synthetic_root, cache_dir, tmp_path / "run", training={"epochs": 1, "gradient_accumulation_steps": 1})
    (tmp_path / "run.yaml").write_text(config.to_yaml())
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", str(tmp_path / "rank.py"),
         str(tmp_path / "run.yaml"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["processes"] == 2 for r in ranks)
    # Each process saw half of every batch of 2 x 2 clips: the steps are those of the sharded set.
    assert ranks[0]["step"] == ranks[1]["step"] == -(-ranks[0]["clips"] // 4)
    assert ranks[0]["digest"] == ranks[1]["digest"], "the two processes ended with different weights"
    checkpoint = find_checkpoint(tmp_path / "run", True)
    assert {p.name for p in checkpoint.glob("rng_state_*.json")} == {"rng_state_0.json", "rng_state_1.json"}
    check_checkpoint(checkpoint, num_processes=2)  # every process's random states are there, as JSON


# ------------------------------------------------------------------------- what the paper claims to learn
def test_demo_checkpoint_uses_the_sound(tmp_path):
    """What the paper claims the audio branch learns, on a trained model: the bundled demo checkpoint (the
    audio-visual model trained with examples/configs/synthetic_fast_av.yaml, scripts/train_demo.sh) on held-out
    videos of the fast-switching task (the sounding disc changes every 0.3-1 s). The discs differ only in colour
    and the fixations follow the one that sounds, so with each video's own sound the maps must match the
    fixations better than with the same pictures and another test video's sound (`dtfsal evaluate --audio
    shuffled`, the sound-swap control), and better than the visual-only oracle (a map on every disc), the best
    a model that does not hear can do. Figures on these 4 videos are in the checkpoint's README."""
    from dtfsal_hf.data import load_records
    from dtfsal_hf.evaluation import evaluate_audio_controls, synthetic_oracle
    from dtfsal_hf.training.data import prepare_synthetic

    config = TrainingConfig.from_yaml(Path(__file__).parents[1] / "examples/configs/synthetic_fast_av.yaml")
    root = tmp_path / "synthetic"
    # Video i depends only on the seed and i: the first 12 videos of the recipe's set, of which fold 1 tests 4
    # (never trained on).
    prepare_synthetic({**config.data.synthetic, "root": str(root), "num_videos": 12}, progress=False)
    records = load_records("SyntheticAV", root, "test", fold=1)
    assert [r.name for r in records] == ["synth_0000", "synth_0003", "synth_0006", "synth_0009"]
    model = DTFSalModel.from_pretrained(Path(__file__).parents[1] / "dtfsal_hf/assets/demo-checkpoint").eval()
    summaries = evaluate_audio_controls(model, records, tmp_path / "controls", modes=("own", "shuffled"),
                                        batch_size=16, metrics=("cc",), progress=False)
    own, shuffled = (summaries[mode]["metrics"]["cc"] for mode in ("own", "shuffled"))
    oracle = synthetic_oracle(records, tmp_path / "oracle", metrics=("cc",))["metrics"]["cc"]
    assert own >= 0.6 and own - shuffled >= 0.15 and own > oracle, (own, shuffled, oracle)


def test_parts_to_freeze_are_named_in_the_training_section():
    config = TrainingConfig.from_dict({"model": {"size": "tiny"}, "training": {"freeze": ["visual_branch"]}})
    assert config.training.freeze == ["visual_branch"]
    model = build_model(config.model).freeze_parts(config.training.freeze)
    assert not any(p.requires_grad for p in model.visual_encoder.parameters())
    with pytest.raises(ValueError, match="training.freeze"):
        TrainingConfig.from_dict({"training": {"freeze": "visual_branch"}})


def test_learning_rate_multipliers_scale_the_named_parts_and_nothing_else():
    config = TrainingConfig.from_dict({"model": {"size": "tiny"},
                                       "training": {"learning_rate": 1e-3, "learning_rate_multipliers": {"audio_branch": 3}}})
    model = build_model(config.model)
    groups = parameter_groups(model, config.training.learning_rate, config.training.learning_rate_multipliers)
    audio = {id(p) for name in ("audio_encoder", "fusion_blocks") for p in model.get_submodule(name).parameters()}
    assert [group["lr"] for group in groups] == [1e-3, 3e-3]
    assert {id(p) for p in groups[1]["params"]} == audio
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(id(p) for p in model.parameters())
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    optimizer.step(), scheduler.step()
    assert [round(group["lr"], 12) for group in optimizer.param_groups] == [1e-4, 3e-4]
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['audio_brunch'\]"):
        parameter_groups(model, 1e-3, {"audio_brunch": 3})
    with pytest.raises(ValueError, match="learning_rate_multipliers.audio_branch must be a finite number > 0"):
        TrainingConfig.from_dict({"training": {"learning_rate_multipliers": {"audio_branch": -1}}})


# ------------------------------------------------------------------------------ validation = evaluation
def test_validation_scores_and_averages_as_dtfsal_evaluate(synthetic_root, tmp_path):
    """The trainer's validation scored and averaged its clips with code of its own; it calls evaluation's
    `score_frame` and `summarise` now, so its numbers are `evaluate`'s on the same clips' maps (the maps the
    validation scored, caught as the model gives them): two held-out videos, every 5th frame a target, the
    audio-visual protocol (blur on the model's grid)."""
    import dataclasses

    import numpy as np

    from dtfsal_hf.data import load_records
    from dtfsal_hf.evaluation import evaluate

    held_out = {"dataset": "SyntheticAV", "root": str(synthetic_root), "split": "test", "fold": 1}
    config = small_config(synthetic_root, tmp_path / "cache", tmp_path / "run",
                          data={"validation": [held_out], "validation_fraction": 0.0, "validation_stride": 5,
                                "cache": "none"},
                          training={"epochs": 1, "max_steps_per_epoch": 1})
    validation_maps = []

    def catch_validation_maps(trainer):  # after the optimizer step: the forward passes still to come are validation's
        def keep(module, inputs, output):
            if not module.training:
                validation_maps.extend(output.saliency_map.detach().float().numpy())
        trainer._unwrapped.register_forward_hook(keep)

    trainer = Trainer(config, callbacks=[catch_validation_maps])
    validated = trainer.train()["history"][0]["validation"]
    per_dataset = trainer._last_per_dataset

    index = trainer.validation_dataset.clips.clips  # the clips in the (unshuffled) validation order
    maps = {(row["video_key"], row["target_frame"]): m for row, m in zip(index, validation_maps)}
    records, targets_of = [], {}
    for record in load_records("SyntheticAV", synthetic_root, "test", fold=1):  # the target frames only
        targets = sorted(frame for key, frame in maps if key == record.key)
        # every 5th frame and the last: the one meaning of stride
        assert targets == list(range(0, record.num_frames, 5)) + [record.num_frames - 1]
        targets_of[record.key] = targets
        records.append(dataclasses.replace(record, num_frames=len(targets),
                                           map_paths=[record.map_paths[t] for t in targets],
                                           fixation_paths=[record.fixation_paths[t] for t in targets],
                                           frame_paths=[record.frame_paths[t] for t in targets]))
    assert len(records) == 2 and len(validation_maps) == len(index) == sum(map(len, targets_of.values()))

    def clip_maps(record):
        return np.stack([maps[record.key, t] for t in targets_of[record.key]])

    metrics = config.training.validation_metrics
    evaluated = evaluate(records, clip_maps, tmp_path / "eval", metrics=metrics, progress=False)
    assert evaluated["protocol"] == "stavis" and evaluated["blur"]["grids"] == {"64x96": 2}
    for name in metrics:
        # The same float32 maps and the same float64 scoring; AUC-J's jitter (under 1e-7) is seeded per frame by
        # the evaluation and once by the validation, so it breaks the maps' near-ties differently: a few 1e-6.
        tolerance = 1e-5 if name == "auc_judd" else 1e-6
        assert validated[name] == pytest.approx(evaluated["metrics"][name], rel=tolerance, abs=tolerance), name
        assert per_dataset["SyntheticAV"]["metrics"][name] == pytest.approx(validated[name], rel=1e-12), name
    assert per_dataset["SyntheticAV"]["num_videos"] == evaluated["per_dataset"]["SyntheticAV"]["num_videos"] == 2
    # The comparison tells protocols apart: scored without the blur (DHF1K's), the same maps score otherwise.
    unblurred = evaluate(records, clip_maps, tmp_path / "dhf1k", protocol="dhf1k", metrics=metrics, progress=False)
    assert abs(unblurred["metrics"]["cc"] - validated["cc"]) > 1e-3


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_a_step_with_non_finite_gradients_is_refused(synthetic_root, cache_dir, tmp_path, max_grad_norm):
    """A NaN in the weights (here planted after step 1) makes the next step's gradients NaN: training stops at that
    step with one line naming it, and the weights it would have written are not saved as a checkpoint of it."""
    output = tmp_path / "run"
    config = small_config(synthetic_root, cache_dir, output, training={"max_grad_norm": max_grad_norm})

    def plant_nan_after_step_1(trainer):
        if trainer.state.global_step == 1:
            with torch.no_grad():
                dict(trainer._unwrapped.named_parameters())["decoder_heads.0.to_map.bias"].fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="gradients of optimizer step 2 are not finite") as raised:
        train(config, callbacks=[plant_nan_after_step_1])
    assert not (output / "checkpoints" / "step_00000002").exists()
    from dtfsal_cli import error_line, is_expected_error

    assert is_expected_error(raised.value)  # `dtfsal train` reports it in one line
    assert error_line("train", raised.value).startswith("dtfsal train: error: the gradients of optimizer step 2")
