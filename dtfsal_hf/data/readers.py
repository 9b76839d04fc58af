"""Readers for the video saliency datasets' folder layouts (SPEC §13), one `VideoRecord` per video.

- DHF1K: `video/001.AVI` … and `annotation/0001/{maps,fixation}/0001.png`; frames are decoded from
  the video, or read from extracted frames in `annotation/0001/images/` or `frames/0001/` when
  present. Splits: videos 1–600 train, 601–700 val, 701–1000 test (annotations withheld).
- UCF-Sports: `{training,testing}/<Action>-NNN/{images,maps,fixation}/<Action>_NNN_%03d.png`.
- Hollywood-2: `{training,testing}/<clip>/{images,maps,fixation}/*.png` (same file name per frame).
- STAViS audio-visual layout (AVAD, Coutrot_db1, Coutrot_db2, DIEM, ETMD_av, SumMe, or any database
  written the same way): `video_frames/<DB>/<video>/img_%05d.jpg`,
  `video_audio/<DB>/<video>/<video>.wav`, `annotations/<DB>/<video>/maps/eyeMap_%05d.jpg` and
  `annotations/<DB>/<video>/fixMap_%05d.mat`; the videos of a split come from the fold lists
  `<DB>_list_{train,test}_{fold}_fps.txt` (DIEM: `DIEM_list_{train,test}_fps.txt`), lines `name nframes fps`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import (
    SAMPLING_RATE,
    load_audio,
    read_fixation_map,
    read_frame,
    read_saliency_map,
    read_video_frames,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
STAVIS_DATABASES = ("AVAD", "Coutrot_db1", "Coutrot_db2", "DIEM", "ETMD_av", "SumMe")
"""The six audio-visual databases of the STAViS protocol."""

DHF1K_SPLITS = {"train": range(1, 601), "val": range(601, 701), "test": range(701, 1001)}


def _file_identity(path) -> tuple[int, int]:
    status = Path(path).stat()
    return status.st_size, status.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _decoded_frame_times(path: str, size: int, mtime_ns: int) -> np.ndarray:
    """`media.frame_times` of a file, kept for the last few files (keyed by size and time, so a changed file is read
    again); read-only, so no caller can change the kept copy."""
    from ..media import frame_times

    times = frame_times(path)
    times.setflags(write=False)
    return times


@dataclass
class VideoRecord:
    """Where one video's frames, audio and ground truth live, and how to read them.

    `frame_paths` (extracted frames) or `video_path` (decoded with PyAV) give the frames;
    `map_paths[i]` and `fixation_paths[i]` are the ground truth of frame `i` (0-based).
    """

    dataset: str
    name: str
    split: str
    num_frames: int
    fps: float
    map_paths: list[str]
    fixation_paths: list[str]
    frame_paths: list[str] = field(default_factory=list)
    video_path: str | None = None
    audio_path: str | None = None
    fold: int | None = None

    @property
    def has_audio(self) -> bool:
        return self.audio_path is not None

    @property
    def key(self) -> str:
        """Unique within an evaluation: dataset, fold and video name."""
        fold = "" if self.fold is None else f"/fold{self.fold}"
        return f"{self.dataset}{fold}/{self.name}"

    def frames(self, indices) -> np.ndarray:
        """Frames at the 0-based `indices`, uint8 `(len(indices), height, width, 3)`."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise ValueError(f"{self.key}: frame indices must lie in [0, {self.num_frames}), got {bad[:5]}")
        if self.frame_paths:
            cache = {i: read_frame(self.frame_paths[i]) for i in set(indices)}
            return np.stack([cache[i] for i in indices])
        if self.video_path is None:
            raise ValueError(f"{self.key}: neither extracted frames nor a video file is known")
        return read_video_frames(self.video_path, indices)

    def frame_times(self) -> np.ndarray:
        """Each frame's `(start, end)` in seconds, `(num_frames, 2)` float64, on the clock of `audio()`.

        Decoded from the video file (`media.frame_times`: the very times the predictor's decoded `Frame`s carry, so a
        variable frame rate or a late first frame is kept) when the frames come from it; extracted frames have no
        timestamps and are `1 / fps` apart (`media.untimed_frame_times`), as a frame folder given to the predictor.
        A clip's audio window ends at its last frame's end (`data.clip_index`'s `audio_end_s`).
        """
        from ..media import untimed_frame_times

        if self.frame_paths or self.video_path is None:
            return untimed_frame_times(self.num_frames, self.fps)
        times = _decoded_frame_times(self.video_path, *_file_identity(self.video_path))
        if len(times) < self.num_frames:
            raise ValueError(f"{self.key}: the record has {self.num_frames} frames, {self.video_path} decodes to {len(times)}")
        return times[: self.num_frames]

    def saliency_map(self, index: int) -> np.ndarray:
        """Continuous ground truth of frame `index`, float32 in [0, 1], `(height, width)`."""
        return read_saliency_map(self.map_paths[index])

    def fixation_map(self, index: int) -> np.ndarray:
        """Binary fixations of frame `index`, bool `(height, width)`."""
        return read_fixation_map(self.fixation_paths[index])

    def audio(self, sampling_rate: int = SAMPLING_RATE):
        """The video's sound as a mono `media.AudioTrack` at `sampling_rate`; `None` for a silent dataset."""
        return None if self.audio_path is None else load_audio(self.audio_path, sampling_rate)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VideoRecord:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"expected the {what} folder {path}, which does not exist")
    return path


def _frame_number(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    if not numbers:
        raise ValueError(f"expected a frame number in the file name {path.name}")
    return int(numbers[-1])


def read_dhf1k(root: str | Path, split: str = "val", fps: float = 30.0) -> list[VideoRecord]:
    """DHF1K videos of a split with annotations present (`train`, `val`; `test` has none public)."""
    _check_split(split, tuple(DHF1K_SPLITS))
    root = Path(root)
    annotation = _require_dir(root / "annotation", "DHF1K annotation")
    records = []
    for number in DHF1K_SPLITS[split]:
        folder = annotation / f"{number:04d}"
        maps, fixations = _images(folder / "maps"), _images(folder / "fixation")
        if not maps:
            continue
        if len(maps) != len(fixations):
            raise ValueError(f"{folder}: {len(maps)} maps but {len(fixations)} fixation maps")
        frames = _images(folder / "images") or _images(root / "frames" / f"{number:04d}")
        video = next((p for p in sorted((root / "video").glob(f"{number:03d}.*"))), None) if (root / "video").is_dir() else None
        if not frames and video is None:
            raise ValueError(f"{folder}: no extracted frames and no video file {root / 'video' / f'{number:03d}.AVI'}")
        if frames and len(frames) != len(maps):
            raise ValueError(f"{folder}: {len(frames)} frames but {len(maps)} maps")
        records.append(
            VideoRecord(
                dataset="DHF1K", name=f"{number:04d}", split=split, num_frames=len(maps), fps=fps,
                map_paths=[str(p) for p in maps], fixation_paths=[str(p) for p in fixations],
                frame_paths=[str(p) for p in frames], video_path=None if video is None else str(video),
                audio_path=None if video is None else str(video),
            )
        )
    return records


def _read_images_maps_fixation(root: Path, dataset: str, split: str, fps: float) -> list[VideoRecord]:
    """UCF-Sports and Hollywood-2: `{training,testing}/<video>/{images,maps,fixation}/`."""
    _check_split(split, ("train", "test"))
    base = _require_dir(Path(root) / ("training" if split == "train" else "testing"), f"{dataset} {split}")
    records = []
    for folder in sorted(path for path in base.iterdir() if path.is_dir()):
        frames, maps, fixations = _images(folder / "images"), _images(folder / "maps"), _images(folder / "fixation")
        if not frames:
            continue
        if not (len(frames) == len(maps) == len(fixations)):
            raise ValueError(
                f"{folder}: expected as many frames, maps and fixation maps, got {len(frames)}, {len(maps)}, {len(fixations)}"
            )
        records.append(
            VideoRecord(
                dataset=dataset, name=folder.name, split=split, num_frames=len(frames), fps=fps,
                map_paths=[str(p) for p in maps], fixation_paths=[str(p) for p in fixations],
                frame_paths=[str(p) for p in frames],
            )
        )
    return records


def read_ucf_sports(root: str | Path, split: str = "test", fps: float = 10.0) -> list[VideoRecord]:
    """UCF-Sports clips of `train` (`training/`, 103) or `test` (`testing/`, 47)."""
    return _read_images_maps_fixation(Path(root), "UCF-Sports", split, fps)


def read_hollywood2(root: str | Path, split: str = "test", fps: float = 25.0) -> list[VideoRecord]:
    """Hollywood-2 clips of `train` (`training/`) or `test` (`testing/`)."""
    return _read_images_maps_fixation(Path(root), "Hollywood-2", split, fps)


def fold_list_path(fold_lists: str | Path, database: str, split: str, fold: int | None) -> Path:
    """`<DB>_list_<split>_<fold>_fps.txt`, or `<DB>_list_<split>_fps.txt` for single-split databases."""
    fold_lists = Path(fold_lists)
    candidates = ([fold_lists / f"{database}_list_{split}_{fold}_fps.txt"] if fold is not None else []) + [
        fold_lists / f"{database}_list_{split}_fps.txt"
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"no fold list for {database} {split} fold {fold}: looked for {[str(p) for p in candidates]}")


def read_fold_list(path: str | Path) -> list[tuple[str, int, float]]:
    """Lines `name nframes fps` -> `[(name, nframes, fps), ...]`."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 'name nframes fps', got {line!r}")
        entries.append((parts[0], int(parts[1]), float(parts[2])))
    return entries


def read_stavis(
    root: str | Path,
    database: str,
    split: str = "test",
    fold: int | None = 1,
    fold_lists: str | Path | None = None,
) -> list[VideoRecord]:
    """Videos of one STAViS-layout database for a split and fold (1–3; DIEM has one split).

    `fold_lists` defaults to `<root>/fold_lists`. Frame counts come from the files on disk (the
    lists' counts can differ by a frame or two from the extracted frames); a video listed but absent
    raises `ValueError`.
    """
    _check_split(split, ("train", "test"))
    root = Path(root)
    fold_lists = Path(fold_lists) if fold_lists is not None else root / "fold_lists"
    list_path = fold_list_path(fold_lists, database, split, fold)
    single_split = list_path.name == f"{database}_list_{split}_fps.txt"
    records = []
    for name, _, fps in read_fold_list(list_path):
        frames = _images(_require_dir(root / "video_frames" / database / name, f"{database} frames"))
        annotation = _require_dir(root / "annotations" / database / name, f"{database} annotation")
        maps = _images(annotation / "maps")
        fixations = sorted(annotation.glob("fixMap_*.mat"), key=_frame_number)
        count = min(len(frames), len(maps), len(fixations))
        if count == 0:
            raise ValueError(f"{annotation}: expected frames, eyeMap_*.jpg and fixMap_*.mat, found {len(frames)}, {len(maps)}, {len(fixations)}")
        audio = root / "video_audio" / database / name / f"{name}.wav"
        records.append(
            VideoRecord(
                dataset=database, name=name, split=split, num_frames=count, fps=fps,
                map_paths=[str(p) for p in maps[:count]], fixation_paths=[str(p) for p in fixations[:count]],
                frame_paths=[str(p) for p in frames[:count]], audio_path=str(audio) if audio.is_file() else None,
                fold=None if single_split else fold,
            )
        )
    return records


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset the readers know: its name, the other spellings accepted, the evaluation protocol that scores it
    (`"dhf1k"` or `"stavis"`, docs/evaluation.md), its default split, and how to read it."""

    name: str
    aliases: tuple[str, ...]
    protocol: str
    default_split: str
    description: str
    layout: str  # "dhf1k", "images" (UCF-Sports / Hollywood-2) or "stavis"


DATASETS = (
    DatasetInfo("DHF1K", ("dhf1k",), "dhf1k", "val", "DHF1K (train 1-600, val 601-700)", "dhf1k"),
    DatasetInfo("UCF-Sports", ("ucf", "ucf_sports"), "dhf1k", "test", "UCF-Sports (training/, testing/)", "images"),
    DatasetInfo("Hollywood-2", ("hollywood2", "hollywood_2"), "dhf1k", "test", "Hollywood-2 (training/, testing/)", "images"),
    *(DatasetInfo(name, (), "stavis", "test", f"{name} (STAViS layout, folds 1-3)", "stavis") for name in STAVIS_DATABASES),
)
"""The dataset registry: `dtfsal evaluate --dataset`, `load_records`, `protocol_for` and the training YAML all read
it. Any other name is a database in the STAViS layout (e.g. `SyntheticAV`, the synthetic set)."""


def _key(name: str) -> str:
    return "".join(c for c in str(name).lower() if c.isalnum())


def dataset_info(dataset: str) -> DatasetInfo:
    """The registry's entry for `dataset` (any accepted spelling, case and `-`/`_` ignored); a name it does not
    hold is a STAViS-layout database of that name, scored with the STAViS protocol."""
    for info in DATASETS:
        if _key(dataset) in {_key(info.name), *map(_key, info.aliases)}:
            return info
    return DatasetInfo(str(dataset), (), "stavis", "test", f"{dataset} (STAViS layout)", "stavis")


def dataset_help() -> str:
    """The datasets the readers know, for command-line help."""
    return ", ".join(info.name for info in DATASETS) + ", or any database in the STAViS layout (e.g. SyntheticAV)"


def load_records(
    dataset: str,
    root: str | Path,
    split: str | None = "test",
    fold: int | str | None = None,
    fold_lists: str | Path | None = None,
) -> list[VideoRecord]:
    """Any dataset of the registry (`DATASETS`) by name, or a STAViS-layout database; `split` None is the dataset's
    default (`DatasetInfo.default_split`).

    For STAViS databases, `fold` is 1, 2, 3 or `"all"` (the test videos of every fold, each tagged
    with its fold, as the STAViS protocol averages over them); DIEM's single split ignores it.
    """
    info = dataset_info(dataset)
    split = info.default_split if split is None else split
    if info.layout == "dhf1k":
        return read_dhf1k(root, split)
    if info.layout == "images":
        return read_ucf_sports(root, split) if info.name == "UCF-Sports" else read_hollywood2(root, split)
    database = info.name
    if fold == "all":
        records = []
        for number in (1, 2, 3):
            fold_records = read_stavis(root, database, split, number, fold_lists)
            records.extend(fold_records)
            if fold_records and fold_records[0].fold is None:
                break
        return records
    return read_stavis(root, database, split, 1 if fold is None else int(fold), fold_lists)


__all__ = [
    "DATASETS",
    "DHF1K_SPLITS",
    "DatasetInfo",
    "STAVIS_DATABASES",
    "VideoRecord",
    "dataset_help",
    "dataset_info",
    "fold_list_path",
    "load_records",
    "read_dhf1k",
    "read_fold_list",
    "read_hollywood2",
    "read_stavis",
    "read_ucf_sports",
]
