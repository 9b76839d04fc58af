"""The audio branch hears the present: a small audio-visual DTFSal trained on the fast-switching synthetic task
(the sounding disc changes every 0.3-1 s, faster than the audio window) follows each video's own sound on
held-out videos, and loses that when every video hears another test video's sound (the sound-swap control of
`dtfsal evaluate --audio shuffled`). A model that lights every disc, or one whose fusion blurs the window's
tones together, scores the same with either sound and fails; so does one that does worse than the visual-only
oracle (a map on every disc).

One seed by default (about 1.5 minutes on 2 CPU cores); `DTFSAL_HEARING_SEEDS=0,1,2` runs more (docs/benchmarks.md
gives the figures of each: margins 0.41, 0.24 and 0.22).
"""

from __future__ import annotations

import os

import pytest

from dtfsal_hf.data import FAST_SEGMENTS_S, load_records
from dtfsal_hf.evaluation import evaluate_audio_controls, synthetic_oracle
from dtfsal_hf.modeling_dtfsal import DTFSalModel
from dtfsal_hf.training import TrainingConfig, prepare_synthetic, train

SEEDS = [int(seed) for seed in os.environ.get("DTFSAL_HEARING_SEEDS", "0").split(",")]

# The fast-switching task at the tiny model's own resolution (no resizing), in few short videos.
SYNTHETIC = dict(num_videos=24, duration_s=3.0, segment_s=list(FAST_SEGMENTS_S), height=64, width=96, radius=9.0,
                 map_fwhm=14.0, seed=0)
MARGIN = 0.15  # own-sound CC above shuffled-sound CC, on held-out videos


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hearing") / "synthetic"
    prepare_synthetic({**SYNTHETIC, "root": str(root)}, progress=False)
    return root


def recipe(root, output, seed: int) -> TrainingConfig:
    """examples/configs/synthetic_fast_av.yaml, smaller: 4 frames a clip, fewer and shorter videos, one pass over
    the 608 training clips (76 steps of 8)."""
    return TrainingConfig.from_dict({
        "model": {"size": "tiny", "use_audio": True, "config_overrides": {"num_frames": 4}},
        "data": {
            "train": [{"dataset": "SyntheticAV", "root": str(root), "split": "train", "fold": 1}],
            "train_stride": 2,
            "cache": "memory",
        },
        "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8,
                     "freeze_audio_trunk": False, "early_stopping_patience": 0, "seed": seed, "threads": 2},
        "output": {"dir": str(output), "tensorboard": False, "progress": False, "logging_steps": 1000},
    })


@pytest.mark.parametrize("seed", SEEDS)
def test_a_small_model_trained_on_fast_switching_sound_hears_it(synthetic_root, tmp_path, seed):
    train(recipe(synthetic_root, tmp_path / "run", seed))
    model = DTFSalModel.from_pretrained(tmp_path / "run" / "best").eval()
    records = load_records("SyntheticAV", synthetic_root, "test", fold=1)
    summaries = evaluate_audio_controls(model, records, tmp_path / "controls", modes=("own", "shuffled"),
                                        batch_size=16, metrics=("cc",), progress=False)
    own, shuffled = (summaries[mode]["metrics"]["cc"] for mode in ("own", "shuffled"))
    oracle = synthetic_oracle(records, tmp_path / "oracle", metrics=("cc",))["metrics"]["cc"]
    print(f"seed {seed}: CC own {own:.3f}, shuffled {shuffled:.3f}, oracle {oracle:.3f}")
    assert own - shuffled >= MARGIN and own > oracle, (own, shuffled, oracle)
