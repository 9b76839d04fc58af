"""Publish a saved DTFSal model to the Hugging Face Hub with a generated model card.

A model folder (written by `save_pretrained` of the model and the processor, with the remote-code files
beside them) goes up in one commit: the safetensors weights, `config.json`, the processor
configuration, the Python files named by `auto_map` and everything they import, and a `README.md`
rendered from the `MODEL_CARD.md` template. The card's YAML metadata carries `model-index` results only
from evaluation summaries given to it; without them the card says that no evaluation was run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .feature_extraction_dtfsal import DTFSalFeatureExtractor
from .metrics import METRIC_HUB_IDS, METRIC_NAMES, METRIC_TITLES, metric_name
from .remote_code import check_remote_loadable, sibling_import_closure

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LICENSE",
    "DEFAULT_PIPELINE_TAG",
    "EvaluationSummary",
    "build_model_card",
    "collect_model_files",
    "load_evaluation_summaries",
    "push_to_hub",
    "secret_like_files",
]

# The Hub lists no task that takes a video with its sound and returns saliency maps, and every listed task
# (image-segmentation, video-classification, ...) comes with a widget and inference API that would send this
# model inputs it cannot take. "other" is the Hub's task for such models: no widget, no inference API.
# Without a tag the Hub may infer one from `library_name` and the AutoModel class (feature-extraction).
DEFAULT_PIPELINE_TAG = "other"
# The model-index's task type: the card's own tag, not a Hub task.
TASK_TYPE = "video-saliency-prediction"
DEFAULT_LICENSE = "apache-2.0"
TAGS = ("custom_code", "video-saliency-prediction", "saliency", "audio-visual", "dtfsal")
TASK_NAME = "Video saliency prediction"

# Metric name (`metrics.METRIC_NAMES`) -> (Hub metric id, display name). Order is the card's table order.
METRICS = {name: (METRIC_HUB_IDS[name], METRIC_TITLES[name]) for name in METRIC_NAMES}
# Files of a saved model that belong on the Hub; anything else in the folder stays local.
_UPLOADED_SUFFIXES = (".safetensors", ".json", ".py")
_PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_TEMPLATE_NAME = "MODEL_CARD.md"


@dataclass
class EvaluationSummary:
    """Metrics of one model on one dataset split, as written by `dtfsal_hf.evaluation`."""

    dataset: str
    metrics: dict[str, float]
    split: str | None = None
    protocol: str | None = None
    num_videos: int | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def dataset_id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.dataset.lower()).strip("-")


def _metric_values(metrics: object, dataset: str, source: str) -> tuple[dict[str, float], list[str]]:
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"{source}: the summary for {dataset} has no 'metrics' object (got {metrics!r})")
    values, missing = {}, []
    for name, value in metrics.items():
        canonical = metric_name(str(name))
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise ValueError(f"{source}: metric {name} of {dataset} must be a number or null, got {value!r}")
        if value is None or not math.isfinite(value):
            missing.append(canonical)  # no score (e.g. no fixations): reported as missing, never filled in
            continue
        values[canonical] = float(value)
    if not values:
        raise ValueError(f"{source}: the summary for {dataset} has no metric value (all of {sorted(metrics)} are missing)")
    return values, missing


def _check_num_videos(num_videos: object, dataset: str, source: str) -> int | None:
    if num_videos is not None and (isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1):
        raise ValueError(f"{source}: 'num_videos' of {dataset} must be a positive integer, got {num_videos!r}")
    return num_videos


def _parse_summary(entry: object, source: str) -> list[EvaluationSummary]:
    """One summary per dataset: `{"dataset", "metrics", ...}`, or `dtfsal_hf.evaluation`'s `per_dataset` form."""
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: an evaluation summary must be a JSON object, got {type(entry).__name__}")
    protocol, split = entry.get("protocol"), entry.get("split")
    if isinstance(entry.get("per_dataset"), dict) and "dataset" not in entry:
        # The mean over several datasets has no single dataset to report it under; each dataset's own is used.
        entries = [{**values, "dataset": name} for name, values in entry["per_dataset"].items()]
        if not entries:
            raise ValueError(f"{source}: 'per_dataset' is empty")
    else:
        entries = [entry]
    summaries = []
    for item in entries:
        dataset = item.get("dataset") if isinstance(item, dict) else None
        if not isinstance(dataset, str) or not dataset.strip():
            raise ValueError(f"{source}: the summary has no 'dataset' name (got {dataset!r})")
        values, missing = _metric_values(item.get("metrics"), dataset, source)
        num_videos = _check_num_videos(item.get("num_videos"), dataset, source)
        summaries.append(
            EvaluationSummary(dataset.strip(), values, split and str(split), protocol and str(protocol), num_videos, missing)
        )
    return summaries


def load_evaluation_summaries(paths: Iterable[str | Path]) -> list[EvaluationSummary]:
    """Read evaluation JSON files: each holds one summary object or a list of them.

    A summary is either the `summary.json` written by `dtfsal_hf.evaluation.evaluate` (its `per_dataset`
    entries are used) or `{"dataset": ..., "metrics": {"CC": ..., ...}}` with optional `split`,
    `protocol` and `num_videos`. A null or NaN metric is recorded as missing, never filled in; a
    non-numeric one is an error.
    """
    summaries = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"Evaluation file not found: {path}")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        entries = content if isinstance(content, list) else [content]
        if not entries:
            raise ValueError(f"{path} holds an empty list: no evaluation summary")
        for i, entry in enumerate(entries):
            summaries.extend(_parse_summary(entry, f"{path}[{i}]"))
    return summaries


# The model folder


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(content).__name__}")
    return content


def _weight_files(model_dir: Path) -> list[Path]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if not shards or missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {model_dir}: {missing or 'none listed'}")
        return [model_dir / name for name in shards]
    raise FileNotFoundError(
        f"No safetensors weights in {model_dir}: expected model.safetensors or model.safetensors.index.json "
        "(save the model with `model.save_pretrained(folder)`)"
    )


def _auto_map_references(content: object) -> list[str]:
    """Every `auto_map` value in a JSON configuration, top level or inside a processor's sections."""
    if not isinstance(content, dict):
        return []
    references = []
    for key, value in content.items():
        if key == "auto_map" and isinstance(value, dict):
            for reference in value.values():
                references.extend(r for r in (reference if isinstance(reference, list) else [reference]) if r)
        else:
            references.extend(_auto_map_references(value))
    return references


def _auto_map_modules(model_dir: Path) -> set[str]:
    """Module names that `auto_map` entries of the folder's JSON configurations point to."""
    modules = set()
    for path in model_dir.glob("*.json"):
        for reference in _auto_map_references(_read_json(path)):
            if isinstance(reference, str) and "--" not in reference:  # "repo--module.Class" lives elsewhere
                modules.add(reference.rsplit(".", 1)[0])
    return modules


def _remote_code_files(model_dir: Path) -> list[Path]:
    """The `auto_map` modules and, transitively, every module they import as `from .x import y`."""
    modules = sorted(_auto_map_modules(model_dir))
    if not modules:
        raise ValueError(
            f"{model_dir / 'config.json'} has no `auto_map`, so `trust_remote_code` could not load the model "
            "without this package: save it again with `save_pretrained` after `import dtfsal_hf`, or add the "
            "remote code with `dtfsal_hf.remote_code.add_remote_code` (docs/hub.md)"
        )
    found, missing = sibling_import_closure(model_dir / f"{module}.py" for module in modules)
    if missing:
        raise FileNotFoundError(
            f"Remote-code files missing from {model_dir}: {sorted(path.name for path in missing)}; copy them with "
            "`dtfsal_hf.remote_code.add_remote_code` (docs/hub.md)"
        )
    return found


def collect_model_files(model_dir: str | Path) -> list[Path]:
    """Check that `model_dir` holds a complete saved model and return the files to publish.

    Needed: `config.json` with `auto_map`, safetensors weights (single file or shards with their index),
    a processor configuration, every remote-code module, and the `auto_map` entries that let `AutoModel` and
    `AutoProcessor` load the folder with `trust_remote_code=True` without this package
    (`remote_code.check_remote_loadable`). Other JSON and Python files at the top level
    go up too; `README.md` is generated, and other files (pickles, logs, folders) stay local.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {model_dir}: is it a folder written by `save_pretrained`?")
    if not any((model_dir / name).is_file() for name in _PROCESSOR_CONFIGS):
        raise FileNotFoundError(
            f"No processor configuration in {model_dir}: expected one of {list(_PROCESSOR_CONFIGS)} "
            "(save it with `processor.save_pretrained(folder)`)"
        )
    needed = {*_weight_files(model_dir), *_remote_code_files(model_dir)}
    check_remote_loadable(model_dir)
    extra = {p for p in model_dir.iterdir() if p.is_file() and p.suffix in _UPLOADED_SUFFIXES}
    extra = {p for p in extra if p.suffix != ".safetensors"}  # weights only as listed above
    skipped = sorted(p.name for p in model_dir.iterdir() if p not in needed | extra and p.name != "README.md")
    if skipped:
        logger.info("Not published (not part of a saved model): %s", ", ".join(skipped))
    return sorted(needed | extra)


# File names that usually hold credentials, and credentials as they appear inside text files.
_SECRET_NAMES = re.compile(r"token(?!izer)|secret|passw|credential|api[_-]?key|private[_-]?key|^\.env|\.env$|netrc|id_rsa|id_ed25519",
                           re.IGNORECASE)
_SECRET_TEXT = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\b(?:sk|ghp|gho|xox[bp])[-_][A-Za-z0-9_-]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|[\"']?(?:api[_-]?key|access[_-]?token|auth[_-]?token|password|secret)[\"']?\s*[:=]\s*[\"'][^\"']{8,}",
    re.IGNORECASE,
)


def secret_like_files(files: Sequence[Path]) -> list[str]:
    """`"<file>: <why>"` for each file whose name looks like a credential's (`*token*`, `.env`, `*secret*`...) or
    whose text holds something that looks like one (a Hugging Face token `hf_...`, a private key, `"api_key": "..."`)."""
    found = []
    for path in files:
        if _SECRET_NAMES.search(path.name):
            found.append(f"{path.name}: its name looks like a credential's")
            continue
        if path.suffix in (".json", ".py", ".md", ".txt", ".yaml", ".yml") and path.stat().st_size < 10_000_000:
            match = _SECRET_TEXT.search(path.read_text(encoding="utf-8", errors="replace"))
            if match:
                found.append(f"{path.name}: it holds what looks like a credential ({match.group(0)[:12]}...)")
    return found


def _parameter_count(weight_files: Sequence[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for path in weight_files:
        with safe_open(str(path), framework="np") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


# The model card


def _default_template() -> Path:
    for candidate in (Path(__file__).parent / "assets" / _TEMPLATE_NAME, Path(__file__).parents[1] / _TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No {_TEMPLATE_NAME} template found: pass its path with `template=`")


def _render(template: str, values: dict[str, str]) -> str:
    unknown = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if unknown:
        raise ValueError(f"The model card template uses unknown placeholders {unknown}; known: {sorted(values)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _metric_display(name: str) -> str:
    return METRICS[name][1] if name in METRICS else name


def _ordered_metrics(summaries: Sequence[EvaluationSummary], with_missing: bool = True) -> list[str]:
    present = {name for s in summaries for name in (*s.metrics, *(s.missing if with_missing else ()))}
    return [n for n in METRICS if n in present] + sorted(present - set(METRICS))


def _results_table(summaries: Sequence[EvaluationSummary]) -> str:
    if not summaries:
        return (
            "No evaluation results were published with this checkpoint: the metadata has no `model-index` "
            "results. Publish again with the evaluation's JSON summary to add them."
        )
    names = _ordered_metrics(summaries)
    header = ["Dataset", "Split", "Videos", *map(_metric_display, names)]
    rows = [
        [s.dataset, s.split or "–", str(s.num_videos or "–"), *(f"{s.metrics[n]:.4f}" if n in s.metrics else "–" for n in names)]
        for s in summaries
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    protocols = sorted({s.protocol for s in summaries if s.protocol})
    if protocols:
        lines += ["", "Protocol: " + "; ".join(protocols) + "."]
    return "\n".join(lines)


def _eval_results(summaries: Sequence[EvaluationSummary]) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=summary.dataset_id,
            dataset_name=summary.dataset,
            dataset_split=summary.split,
            metric_type=METRICS[name][0] if name in METRICS else _canonical_id(name),
            metric_name=_metric_display(name),
            metric_value=round(value, 6),
        )
        for summary in summaries
        for name, value in summary.metrics.items()
    ]


def _canonical_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _card_values(config: dict, parameters: int, repo_id: str, summaries: Sequence[EvaluationSummary]) -> dict:
    use_audio = bool(config.get("use_audio", True))
    height, width = config.get("image_size", [224, 384])
    return {
        "repo_id": repo_id,
        "model_name": "DTFSal" if use_audio else "DTFSal(V)",
        "variant": "audio-visual (video and audio)" if use_audio else "visual only (video, no audio branch)",
        "parameters": f"{parameters / 1e6:.2f}M",
        "num_frames": str(config.get("num_frames", 32)),
        "height": str(height),
        "width": str(width),
        "num_audio_examples": str(config.get("num_audio_examples", 9)),
        "audio_seconds": f"{_audio_window_seconds(int(config.get('num_audio_examples', 9))):.3f}",
        "feature_dim": str(config.get("feature_dim", 192)),
        "audio_inputs": "used" if use_audio else "not used (the model ignores `input_features`)",
        "results": _results_table(summaries),
    }


def _audio_window_seconds(num_audio_examples: int) -> float:
    """Seconds of sound the features of one clip cover."""
    extractor = DTFSalFeatureExtractor(num_audio_examples=num_audio_examples)
    return extractor.num_samples / extractor.sampling_rate


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    evaluations: Sequence[EvaluationSummary] = (),
    datasets: Sequence[str] = (),
    license: str | None = None,
    pipeline_tag: str | None = None,
    template: str | Path | None = None,
) -> str:
    """The README.md of a model repository: YAML metadata, then the rendered `MODEL_CARD.md` template.

    `datasets` are the datasets the checkpoint was trained on. `model-index` holds exactly the metrics
    of `evaluations`; with none, the card has no results and says so. `license` and `pipeline_tag`
    default to `DEFAULT_LICENSE` and `DEFAULT_PIPELINE_TAG`.
    """
    license, pipeline_tag = license or DEFAULT_LICENSE, pipeline_tag or DEFAULT_PIPELINE_TAG
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    parameters = _parameter_count(_weight_files(model_dir))
    values = _card_values(config, parameters, repo_id, evaluations)
    body = _render(Path(template or _default_template()).read_text(encoding="utf-8"), values)
    # The protocol's metrics without an evaluation; otherwise those that have a value.
    metric_names = _ordered_metrics(evaluations, with_missing=False) if evaluations else list(METRICS)[:6]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=list(TAGS),
        datasets=list(datasets) or None,
        metrics=[METRICS[n][0] if n in METRICS else _canonical_id(n) for n in metric_names],
        license=license,
        model_name=values["model_name"] if evaluations else None,
        eval_results=_eval_results(evaluations) or None,
    )
    return f"---\n{card_data.to_yaml()}\n---\n\n{body.lstrip()}"


# Publishing


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid repository id {repo_id!r}: {error}") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"Repository id must be 'namespace/name' (a user or organisation, then a name), got {repo_id!r}")


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    evaluation_files: Sequence[str | Path] = (),
    datasets: Sequence[str] = (),
    license: str | None = None,
    pipeline_tag: str | None = None,
    template: str | Path | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Create `repo_id` if needed and publish `model_dir` with a generated README in one commit.

    The endpoint defaults to `HF_ENDPOINT` (or huggingface.co) and the token to the saved login. Returns the
    commit, whose `oid` pins the published revision.
    """
    _check_repo_id(repo_id)
    files = collect_model_files(model_dir)
    secrets = secret_like_files(files)
    if secrets:
        warnings.warn(
            f"{len(secrets)} file(s) to be published to {repo_id} may hold credentials: " + "; ".join(secrets)
            + ". Remove them from the folder (or the credentials from them) if they should not be public",
            UserWarning, stacklevel=2,
        )
    evaluations = load_evaluation_summaries(evaluation_files)
    card = build_model_card(
        model_dir, repo_id, evaluations=evaluations, datasets=datasets, license=license,
        pipeline_tag=pipeline_tag, template=template,
    )
    operations = [CommitOperationAdd(path.name, str(path)) for path in files]
    operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    # create_commit rather than upload_folder: the latter may split a folder into several commits.
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {len(files)} model files and model card",
        revision=revision,
    )
