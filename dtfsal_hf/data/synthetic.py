"""A synthetic audio-visual saliency dataset in the STAViS layout, solvable only with the sound.

Each video shows a few discs that look alike apart from their colour, moving smoothly over a static
textured background. Every colour has its own pure tone (a fixed colour → pitch table shared by all
videos). At any time exactly one disc sounds; which one is drawn at random for each segment
(`segment_s`: 1.5–3 s by default, `FAST_SEGMENTS_S` = 0.3–1 s, shorter than the model's audio window;
never the same disc twice in a row), independently of colour, position and motion. The observers'
fixations sit on the sounding disc. A visual-only model sees nothing that tells the sounding disc apart,
so it can at best spread its prediction over all discs — `visual_only_oracle` is that map, a Gaussian
on every disc, and its score is the ceiling of any model that does not hear; an audio-visual model can
hear the pitch and pick the disc of that colour.

What makes hearing necessary is that the one visual attribute bound to the tone (the colour) is the only
thing that differs between the discs, and it says nothing about which disc sounds. With
`distractors="alike"` the discs of a video are moreover shades of one colour family at one luminance
(`ALIKE_FAMILIES`): no disc stands out by brightness or hue contrast, so even a prior for conspicuous
discs is useless, and the model has to tell close shades apart to match them to their tones.

Written as the STAViS audio-visual layout (SPEC §13), so the ordinary reader loads it:
`video_frames/<DB>/<video>/img_%05d.jpg`, `video_audio/<DB>/<video>/<video>.wav` (16 kHz mono),
`annotations/<DB>/<video>/maps/eyeMap_%05d.jpg`, `annotations/<DB>/<video>/fixMap_%05d.mat` (key
`eyeMap`), `fold_lists/<DB>_list_{train,test}_{1,2,3}_fps.txt`; plus `sources.json` per video (the
sounding disc per frame, the discs' colours, tones and centres) for analysis.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .gaze import continuous_map, fixation_map

PALETTE = (
    ((230, 40, 40), 300.0),
    ((40, 200, 60), 520.0),
    ((50, 90, 240), 900.0),
    ((235, 210, 40), 1560.0),
    ((200, 60, 220), 2700.0),
    ((40, 210, 220), 4680.0),
)
"""Disc colours (RGB) and their tones (Hz): a fixed colour → pitch table, about √3 apart in pitch."""

ALIKE_FAMILIES = (
    (((170, 32, 24), 300.0), ((145, 50, 0), 900.0), ((146, 28, 108), 2700.0)),
    (((24, 103, 42), 520.0), ((0, 98, 128), 1560.0), ((44, 60, 210), 4680.0)),
)
"""Look-alike distractors: two families (warm, cool) of three dark shades of equal luminance (72 of 255, below
every background grey, so each disc is as easy to find as the others), each shade with its own tone; with
`distractors="alike"` all discs of a video come from one family."""

SLOW_SEGMENTS_S = (1.5, 3.0)
"""Sounding segments longer than the model's 1.535 s audio window (the default)."""

FAST_SEGMENTS_S = (0.3, 1.0)
"""Sounding segments shorter than the audio window: the sound of 1.5 s ago names another disc."""

DISTRACTORS = ("distinct", "alike")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and randomness of the synthetic dataset (defaults: small, for CPU training)."""

    num_videos: int = 24
    num_objects: int = 3
    palette_size: int = 3
    height: int = 96
    width: int = 160
    fps: float = 25.0
    duration_s: float = 6.0
    segment_s: tuple[float, float] = SLOW_SEGMENTS_S
    distractors: str = "distinct"
    radius: float = 10.0
    speed_px_s: tuple[float, float] = (15.0, 45.0)
    num_observers: int = 8
    map_fwhm: float = 16.0
    sampling_rate: int = 16000
    tone_amplitude: float = 0.5
    noise_amplitude: float = 0.01
    database: str = "SyntheticAV"
    num_folds: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.num_objects <= self.palette_size <= len(PALETTE):
            raise ValueError(
                f"need 2 <= num_objects <= palette_size <= {len(PALETTE)}, got num_objects={self.num_objects}, "
                f"palette_size={self.palette_size}"
            )
        if self.segment_s[0] <= 0 or self.segment_s[1] < self.segment_s[0]:
            raise ValueError(f"segment_s must be (shortest, longest) with 0 < shortest <= longest, got {self.segment_s}")
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"distractors must be one of {list(DISTRACTORS)}, got {self.distractors!r}")
        if self.distractors == "alike" and self.num_objects > len(ALIKE_FAMILIES[0]):
            raise ValueError(f"distractors='alike' draws every disc from one family of {len(ALIKE_FAMILIES[0])} shades, "
                             f"got num_objects={self.num_objects}")
        if self.num_videos < self.num_folds:
            raise ValueError(f"num_videos must be at least num_folds ({self.num_folds}), got {self.num_videos}")

    @property
    def num_frames(self) -> int:
        return int(round(self.duration_s * self.fps))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static, low-contrast grey texture: smooth noise upsampled from a coarse grid, float32 (H, W, 3)."""
    coarse = rng.uniform(95, 150, size=(height // 16 + 2, width // 16 + 2)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    return np.repeat(smooth[:, :, None], 3, axis=2)


def _trajectories(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Disc centres per frame, `(frames, objects, 2)` as (row, column), bouncing off the borders."""
    margin = config.radius + 1
    low, high = np.array([margin, margin]), np.array([config.height - margin, config.width - margin])
    position = rng.uniform(low, high, size=(config.num_objects, 2))
    angle = rng.uniform(0, 2 * math.pi, size=config.num_objects)
    speed = rng.uniform(*config.speed_px_s, size=config.num_objects) / config.fps
    centres = np.zeros((config.num_frames, config.num_objects, 2))
    for frame in range(config.num_frames):
        centres[frame] = position
        angle += rng.normal(0, 0.15, size=config.num_objects)
        velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
        position = position + velocity
        for axis in range(2):
            outside = (position[:, axis] < low[axis]) | (position[:, axis] > high[axis])
            position[:, axis] = np.clip(position[:, axis], low[axis], high[axis])
            # Reflect the heading on the axis that hit a border.
            angle[outside] = (math.pi - angle[outside]) if axis == 1 else -angle[outside]
    return centres


def _schedule(config: SyntheticConfig, rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """`(start_s, end_s, object)` segments covering the video; consecutive segments change object."""
    segments, start, previous = [], 0.0, -1
    while start < config.duration_s:
        end = min(start + rng.uniform(*config.segment_s), config.duration_s)
        choices = [k for k in range(config.num_objects) if k != previous]
        previous = int(rng.choice(choices))
        segments.append((start, end, previous))
        start = end
    return segments


def _sounding_per_frame(config: SyntheticConfig, segments) -> np.ndarray:
    """The object sounding at each frame's centre time, `(frames,)` int."""
    times = (np.arange(config.num_frames) + 0.5) / config.fps
    ends = np.array([end for _, end, _ in segments])
    segment = np.minimum(np.searchsorted(ends, times, side="right"), len(segments) - 1)
    return np.array([segments[i][2] for i in segment], dtype=np.int64)


def _audio(config: SyntheticConfig, segments, frequencies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pure tones of the sounding objects with 10 ms fades, plus faint white noise, float32 mono."""
    rate = config.sampling_rate
    samples = int(round(config.duration_s * rate))
    time = np.arange(samples) / rate
    signal = np.zeros(samples, dtype=np.float64)
    fade = max(int(0.01 * rate), 1)
    for start, end, source in segments:
        first, last = int(round(start * rate)), min(int(round(end * rate)), samples)
        envelope = np.ones(last - first)
        ramp = np.linspace(0, 1, min(fade, (last - first) // 2) + 2)[1:-1]
        envelope[: ramp.size], envelope[envelope.size - ramp.size :] = ramp, ramp[::-1]
        signal[first:last] = envelope * np.sin(2 * math.pi * frequencies[source] * time[first:last])
    noise = rng.normal(0, config.noise_amplitude, size=samples)
    return (config.tone_amplitude * signal + noise).astype(np.float32)


def _render(background: np.ndarray, centres: np.ndarray, colours: np.ndarray, radius: float, order) -> np.ndarray:
    """Anti-aliased discs over the background, uint8 (H, W, 3)."""
    height, width = background.shape[:2]
    rows, columns = np.mgrid[0:height, 0:width]
    image = background.copy()
    for k in order:
        distance = np.hypot(rows + 0.5 - centres[k, 0], columns + 0.5 - centres[k, 1])
        alpha = np.clip(radius + 0.5 - distance, 0, 1)[:, :, None]
        image = image * (1 - alpha) + colours[k][None, None, :] * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _fixations(config: SyntheticConfig, centre: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One fixation per observer near the sounding disc's centre, `(observers, 2)` int pixels."""
    jitter = rng.normal(0, 0.15 * config.radius, size=offsets.shape)
    points = np.floor(centre[None, :] + offsets + jitter).astype(np.int64)
    points[:, 0] = np.clip(points[:, 0], 0, config.height - 1)
    points[:, 1] = np.clip(points[:, 1], 0, config.width - 1)
    return points


def colour_table(distractors: str = "distinct") -> tuple:
    """The colour → tone table of a setting: `PALETTE`, or the families of `ALIKE_FAMILIES` one after the other."""
    return PALETTE if distractors == "distinct" else tuple(entry for family in ALIKE_FAMILIES for entry in family)


def _draw_colours(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Indices into `colour_table(config.distractors)` of the video's discs."""
    if config.distractors == "distinct":
        return rng.choice(config.palette_size, size=config.num_objects, replace=False)
    family = int(rng.integers(len(ALIKE_FAMILIES)))
    shades = rng.choice(len(ALIKE_FAMILIES[family]), size=config.num_objects, replace=False)
    return family * len(ALIKE_FAMILIES[0]) + shades


def _write_video(root: Path, config: SyntheticConfig, name: str, index: int) -> dict:
    from scipy.io import savemat, wavfile

    rng = np.random.default_rng([config.seed, index])
    palette = _draw_colours(config, rng)
    table = colour_table(config.distractors)
    colours = np.array([table[p][0] for p in palette], dtype=np.float32)
    frequencies = np.array([table[p][1] for p in palette])
    background = _background(rng, config.height, config.width)
    centres = _trajectories(config, rng)
    segments = _schedule(config, rng)
    sounding = _sounding_per_frame(config, segments)
    offsets = rng.normal(0, 0.3 * config.radius, size=(config.num_observers, 2))
    depth_order = rng.permutation(config.num_objects)

    frames_dir = root / "video_frames" / config.database / name
    annotation_dir = root / "annotations" / config.database / name
    audio_dir = root / "video_audio" / config.database / name
    for folder in (frames_dir, annotation_dir / "maps", audio_dir):
        folder.mkdir(parents=True, exist_ok=True)
    size = (config.height, config.width)
    for frame in range(config.num_frames):
        number = frame + 1
        Image.fromarray(_render(background, centres[frame], colours, config.radius, depth_order)).save(
            frames_dir / f"img_{number:05d}.jpg", quality=95
        )
        points = _fixations(config, centres[frame, sounding[frame]], offsets, rng)
        saliency = continuous_map(points, size, config.map_fwhm)
        Image.fromarray(np.round(saliency * 255).astype(np.uint8)).save(annotation_dir / "maps" / f"eyeMap_{number:05d}.jpg", quality=95)
        savemat(annotation_dir / f"fixMap_{number:05d}.mat", {"eyeMap": fixation_map(points, size).astype(np.uint8)})
    waveform = _audio(config, segments, frequencies, rng)
    wavfile.write(audio_dir / f"{name}.wav", config.sampling_rate, np.round(np.clip(waveform, -1, 1) * 32767).astype(np.int16))
    sources = {
        "palette_indices": palette.tolist(), "colours": colours.astype(int).tolist(), "frequencies_hz": frequencies.tolist(),
        "segments": [[s, e, k] for s, e, k in segments], "sounding_object": sounding.tolist(),
        "centres": np.round(centres, 2).tolist(),
    }
    (annotation_dir / "sources.json").write_text(json.dumps(sources))
    return sources


def _write_fold_lists(root: Path, config: SyntheticConfig, names: list[str]) -> None:
    folder = root / "fold_lists"
    folder.mkdir(parents=True, exist_ok=True)
    line = lambda name: f"{name} {config.num_frames} {config.fps:.6f}\n"  # noqa: E731
    for fold in range(1, config.num_folds + 1):
        test = [name for i, name in enumerate(names) if i % config.num_folds == fold - 1]
        train = [name for name in names if name not in test]
        (folder / f"{config.database}_list_test_{fold}_fps.txt").write_text("".join(map(line, test)))
        (folder / f"{config.database}_list_train_{fold}_fps.txt").write_text("".join(map(line, train)))


def generate_synthetic_dataset(root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True) -> Path:
    """Write the synthetic dataset under `root` in the STAViS layout and return `root`.

    Videos are `synth_0000`, `synth_0001`, …; video `i` depends only on `(config.seed, i)` and the
    sizes, so adding videos keeps the earlier ones. Fold `k`'s test videos are those with
    `i % num_folds == k − 1`; its training videos are the rest. `config.json` records the settings.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"synth_{i:04d}" for i in range(config.num_videos)]
    for index, name in enumerate(tqdm(names, desc="synthetic videos", disable=not progress)):
        _write_video(root, config, name, index)
    _write_fold_lists(root, config, names)
    table = colour_table(config.distractors)
    settings = asdict(config) | {"palette": [[list(colour), frequency] for colour, frequency in table]}
    (root / "config.json").write_text(json.dumps(settings, indent=2))
    return root


def read_sources(record) -> dict:
    """The `sources.json` of a synthetic video (`VideoRecord` of a set written by `generate_synthetic_dataset`):
    its discs' colours, tones and centres per frame, and the sounding disc per frame."""
    path = Path(record.map_paths[0]).parents[1] / "sources.json"
    if not path.is_file():
        raise ValueError(f"{record.key} is not a synthetic video: no {path}")
    return json.loads(path.read_text())


def is_synthetic(record) -> bool:
    """Whether `record` is a video of a set written by `generate_synthetic_dataset` (it has a `sources.json`)."""
    return bool(record.map_paths) and (Path(record.map_paths[0]).parents[1] / "sources.json").is_file()


def _settings_of(record) -> dict:
    path = Path(record.map_paths[0]).parents[4] / "config.json"
    if not path.is_file():
        raise ValueError(f"{record.key}: no synthetic config.json at {path}")
    return json.loads(path.read_text())


def visual_only_oracle(record) -> np.ndarray:
    """The best a model that does not hear can do: for every frame, the map of the observers looking at every
    disc alike (a Gaussian of the ground truth's width on each disc's centre), `(frames, height, width)`
    float32 at the ground truth's size. Its score is the ceiling of sound-blind prediction: beating it takes
    telling the sounding disc apart, which only the sound can do. A `predict_video` for
    `dtfsal_hf.evaluation.evaluate`."""
    centres = np.asarray(read_sources(record)["centres"])
    settings = _settings_of(record)
    size = (int(settings["height"]), int(settings["width"]))
    points = np.clip(np.floor(centres).astype(np.int64), 0, np.array(size) - 1)
    return np.stack([continuous_map(points[frame], size, float(settings["map_fwhm"])) for frame in range(record.num_frames)])


__all__ = [
    "ALIKE_FAMILIES",
    "DISTRACTORS",
    "FAST_SEGMENTS_S",
    "PALETTE",
    "SLOW_SEGMENTS_S",
    "SyntheticConfig",
    "colour_table",
    "generate_synthetic_dataset",
    "is_synthetic",
    "read_sources",
    "visual_only_oracle",
]
