"""Training and validation clips: the dataset readers, the processor, an optional tensor cache, batching."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ClipPolicy, SaliencyClipDataset, SyntheticConfig, VideoRecord, generate_synthetic_dataset, load_records
from .config import DataSettings, DataSource

MODEL_INPUTS = ("pixel_values_videos", "input_features", "frame_times", "labels")
GROUND_TRUTH = ("saliency_map", "fixation_map")


def prepare_synthetic(settings: dict, progress: bool = True) -> Path:
    """Write the synthetic audio-visual set described by `settings` (`root` plus `SyntheticConfig` fields)
    unless the same set is already there; a different set at `root` is an error, never overwritten."""
    settings = dict(settings)
    if "root" not in settings:
        raise ValueError("data.synthetic needs a root folder")
    root = Path(settings.pop("root"))
    allowed = {f.name for f in fields(SyntheticConfig)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"unknown key data.synthetic.{unknown[0]}: expected root or one of {sorted(allowed)}")
    if "segment_s" in settings or "speed_px_s" in settings:
        settings = {k: tuple(v) if k in ("segment_s", "speed_px_s") else v for k, v in settings.items()}
    synthetic = SyntheticConfig(**settings)
    written = root / "config.json"
    if written.is_file():
        existing = json.loads(written.read_text())
        wanted = json.loads(json.dumps(asdict(synthetic)))
        different = sorted(k for k, v in wanted.items() if existing.get(k) != v)
        if different:
            raise ValueError(
                f"{root} holds a synthetic set with other settings ({different[0]}: {existing.get(different[0])!r}, "
                f"asked {wanted[different[0]]!r}); choose another data.synthetic.root"
            )
        return root
    return generate_synthetic_dataset(root, synthetic, progress=progress)


def load_source(source: DataSource) -> list[VideoRecord]:
    """The videos of one configured split; a missing dataset folder is reported with its key."""
    root = Path(source.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {source.dataset}: the folder {root} does not exist (data.*.root)")
    records = load_records(source.dataset, root, split=source.split, fold=source.fold)
    if not records:
        raise ValueError(f"dataset {source.dataset} ({source.split}, fold {source.fold}) at {root} has no videos")
    return records


def load_sources(sources: Sequence[DataSource]) -> list[VideoRecord]:
    return [record for source in sources for record in load_source(source)]


def hold_out(records: list[VideoRecord], fraction: float, seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Split videos (not clips, so no video is on both sides) into training and held-out validation."""
    ordered = sorted(records, key=lambda r: r.key)
    count = max(1, int(round(fraction * len(ordered))))
    if count >= len(ordered):
        raise ValueError(f"data.validation_fraction {fraction} leaves no training video out of {len(ordered)}")
    chosen = set(np.random.default_rng(seed).choice(len(ordered), size=count, replace=False).tolist())
    train = [r for i, r in enumerate(ordered) if i not in chosen]
    held_out = [r for i, r in enumerate(ordered) if i in chosen]
    return train, held_out


def clip_policy(settings: DataSettings, clip_length: int, stride: int) -> ClipPolicy:
    return ClipPolicy(clip_length=clip_length, alignment=settings.alignment, start=settings.start,
                      stride=stride, map_normalization=settings.map_normalization)


class IndexedClips(torch.utils.data.Dataset):
    """A `SaliencyClipDataset` whose samples also carry `video_index` (an int, so it can be gathered across
    processes) and only the keys the loop uses."""

    def __init__(self, clips: SaliencyClipDataset, keep_ground_truth: bool):
        self.clips = clips
        self.video_keys = sorted(clips.records)
        self._index = {key: i for i, key in enumerate(self.video_keys)}
        self.video_datasets = [clips.records[key].dataset for key in self.video_keys]
        self.keys = MODEL_INPUTS + (GROUND_TRUTH if keep_ground_truth else ())

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        sample = self.clips[index]
        kept = {key: sample[key] for key in self.keys if key in sample}
        kept["video_index"] = self._index[sample["video_key"]]
        return kept

    def fingerprint(self) -> str:
        """Identifies the clips and their processing, to name cache files."""
        processor = self.clips.processor
        content = {
            "records": [self.clips.records[key].to_dict() for key in self.video_keys],
            "policy": asdict(self.clips.policy),
            "processor": json.loads(processor.to_json_string()) if processor is not None else None,
            "keys": list(self.keys),
            # How clips are timed (`VideoRecord.frame_times`): caches of clips timed another way are not these clips.
            "timing": "frame-times",
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CachedClips(torch.utils.data.Dataset):
    """Every sample of a dataset computed once and kept (in memory, optionally saved to disk).

    The processed clips of a small set (the synthetic one) fit in memory; reading JPEGs and computing
    the log-mel for every clip of every epoch would cost more than training the tiny model. The disk cache is one
    safetensors file (tensors and a JSON description, nothing that runs code when read); a file that cannot be
    read as the cache of these clips is rebuilt.
    """

    def __init__(self, samples: list[dict], video_keys: list[str], video_datasets: list[str]):
        self.samples = samples
        self.video_keys = video_keys
        self.video_datasets = video_datasets

    @classmethod
    def build(cls, dataset: IndexedClips, cache_file: Path | None = None, progress: bool = True, name: str = "clips") -> "CachedClips":
        fingerprint = dataset.fingerprint()
        if cache_file is not None and cache_file.is_file():
            samples = _read_cache(cache_file, fingerprint, len(dataset))
            if samples is not None:
                return cls(samples, dataset.video_keys, dataset.video_datasets)
        samples = [dataset[i] for i in tqdm(range(len(dataset)), desc=f"caching {name}", disable=not progress)]
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_file.with_name(f"{cache_file.name}.partial-{os.getpid()}")
            _write_cache(partial, samples, fingerprint)
            os.replace(partial, cache_file)
        return cls(samples, dataset.video_keys, dataset.video_datasets)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def _write_cache(path: Path, samples: list[dict], fingerprint: str) -> None:
    """Samples as safetensors: tensor `"<index>/<key>"` for each value; the metadata say which values were numpy
    arrays or ints, so they come back as they were."""
    from safetensors.torch import save_file

    tensors, kinds = {}, {}
    for index, sample in enumerate(samples):
        for key, value in sample.items():
            if isinstance(value, torch.Tensor):
                kinds[key], tensor = "torch", value
            elif isinstance(value, np.ndarray):
                kinds[key], tensor = "numpy", torch.from_numpy(value)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                kinds[key], tensor = "int", torch.tensor(int(value), dtype=torch.int64)
            else:
                raise TypeError(f"cannot cache the sample value {key!r} of type {type(value).__name__}")
            tensors[f"{index}/{key}"] = tensor.detach().cpu().contiguous().clone()
    metadata = {"fingerprint": fingerprint, "samples": str(len(samples)), "kinds": json.dumps(kinds, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)


def _read_cache(path: Path, fingerprint: str, count: int) -> list[dict] | None:
    """The cached samples, or None (with a warning) when the file is not the cache of these clips."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as cache:
            metadata = cache.metadata() or {}
            kinds = json.loads(metadata.get("kinds", "{}"))
            if metadata.get("fingerprint") != fingerprint or metadata.get("samples") != str(count):
                raise ValueError("it describes other clips")
            if not isinstance(kinds, dict) or set(cache.keys()) != {f"{i}/{key}" for i in range(count) for key in kinds}:
                raise ValueError("its tensors are not those of the clips")
            samples = [{key: _restored(cache.get_tensor(f"{i}/{key}"), kind) for key, kind in kinds.items()}
                       for i in range(count)]
    except (OSError, ValueError, SafetensorError) as error:
        warnings.warn(f"{path} is not a readable cache of these clips ({error}): building it again", UserWarning,
                      stacklevel=3)
        return None
    return samples


def _restored(tensor: torch.Tensor, kind: str):
    if kind == "numpy":
        return tensor.numpy()
    if kind == "int":
        return int(tensor)
    if kind == "torch":
        return tensor
    raise ValueError(f"unknown kind of cached value {kind!r}")


def collate_clips(samples: list[dict]) -> dict:
    """Stack the model's inputs; ground-truth maps (sizes differ between videos) stay lists of arrays."""
    batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in MODEL_INPUTS if key in samples[0]}
    batch["video_index"] = torch.tensor([s["video_index"] for s in samples], dtype=torch.long)
    for key in GROUND_TRUTH:
        if key in samples[0]:
            batch[key] = [s[key] for s in samples]
    return batch


def build_clip_dataset(
    records: list[VideoRecord],
    settings: DataSettings,
    processor,
    clip_length: int,
    stride: int,
    keep_ground_truth: bool,
    name: str,
    progress: bool = True,
):
    """Clips of `records` through `processor`, cached as `settings.cache` says."""
    clips = SaliencyClipDataset(records, clip_policy(settings, clip_length, stride), processor=processor,
                                keep_ground_truth=keep_ground_truth)
    dataset = IndexedClips(clips, keep_ground_truth)
    if settings.cache == "none":
        return dataset
    cache_file = None
    if settings.cache == "disk":
        cache_file = Path(settings.cache_dir) / f"{name}-{dataset.fingerprint()}.safetensors"
    return CachedClips.build(dataset, cache_file, progress=progress, name=name)


__all__ = [
    "CachedClips",
    "IndexedClips",
    "build_clip_dataset",
    "clip_policy",
    "collate_clips",
    "hold_out",
    "load_source",
    "load_sources",
    "prepare_synthetic",
]
