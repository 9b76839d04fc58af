"""Publishing to a Hub and loading back, against the in-memory Hub of `tests/hub_server.py`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.media import probe_video
from dtfsal_hf.hub import build_model_card, collect_model_files, load_evaluation_summaries, push_to_hub, secret_like_files
from dtfsal_hf.processing_dtfsal import DTFSalProcessor

from dtfsal_hf.inference import DEMO_CHECKPOINT, SaliencyPredictor
from hub_server import HubServer
from isolation import BLOCK_PACKAGE as _BLOCK_PACKAGE
from isolation import maps_with_package, maps_without_package, real_clip_inputs, run_without_package

REPO_ROOT = Path(__file__).resolve().parents[1]
DHF1K_VIDEO = REPO_ROOT.parent / "shared/data/dhf1k_002/002.AVI"
needs_dhf1k = pytest.mark.skipif(not DHF1K_VIDEO.is_file(), reason=f"the DHF1K clip is not at {DHF1K_VIDEO}")
REPO_ID = "dtfsal-test/dtfsal-tiny"
# Values of a made-up evaluation run: they only travel from the JSON file to the test Hub's card.
EVALUATION = [
    {
        "dataset": "DHF1K",
        "split": "val",
        "protocol": "per frame at ground-truth resolution, mean per video, mean over videos",
        "metrics": {"CC": 0.1234, "NSS": 0.5678, "AUC_J": 0.6543, "SIM": 0.0987, "KLD": 2.4681, "sAUC": None},
        "num_videos": 3,
    },
    {"dataset": "AVAD", "split": "test", "metrics": {"CC": 0.2222, "NSS": 1.1111, "AUC-J": 0.7777, "SIM": 0.1515}},
]


def _commit_bytes(api: HfApi, repo_id: str, files: dict[str, bytes], message: str = "add files"):
    return api.create_commit(
        repo_id, [CommitOperationAdd(path, data) for path, data in files.items()], commit_message=message
    )


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The usual transformers sequence, nothing more: model.save_pretrained, then processor.save_pretrained."""
    folder = tmp_path_factory.mktemp("saved") / "dtfsal-tiny"
    config = DTFSalConfig.tiny()
    DTFSalModel(config).save_pretrained(folder)
    DTFSalProcessor.from_model_config(config).save_pretrained(folder)
    (folder / "training_log.txt").write_text("kept local\n")
    return folder


@pytest.fixture(scope="module")
def demo_resaved(tmp_path_factory):
    """The bundled demo checkpoint loaded with the package and saved again the usual way."""
    folder = tmp_path_factory.mktemp("demo") / "dtfsal-demo"
    DTFSalModel.from_pretrained(DEMO_CHECKPOINT).save_pretrained(folder)
    DTFSalProcessor.from_pretrained(DEMO_CHECKPOINT).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def evaluation_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluation") / "summary.json"
    path.write_text(json.dumps(EVALUATION))
    return path


@pytest.fixture(scope="module")
def published(hub, model_dir, evaluation_file):
    return push_to_hub(
        model_dir,
        REPO_ID,
        evaluation_files=[evaluation_file],
        datasets=["DHF1K"],
        endpoint=hub.endpoint,
        token=False,
    )


def _run_python(code: str, env: dict[str, str], cwd: Path, isolated: bool = False) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last, which is returned."""
    command = [sys.executable, *(["-I"] if isolated else []), "-c", code]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _hub_env(hf_home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


# Loads the published model, checks its weights against the saved ones and runs it once.
_LOAD_AND_RUN = """
    import json
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained({repo_id!r}{trust})
    processor = AutoProcessor.from_pretrained({repo_id!r}{trust})
    saved = load_file({weights!r})
    state = model.state_dict()
    same = sorted(saved) == sorted(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    config = model.config
    clip = torch.randint(0, 256, (config.num_frames, 40, 60, 3), dtype=torch.uint8).numpy()
    waveform = torch.zeros(24560).numpy()
    inputs = processor(videos=clip, audio=waveform, sampling_rate=16000)
    with torch.no_grad():
        saliency = model.eval()(**inputs).saliency_map
    try:
        import dtfsal_hf
        package_importable = True
    except ModuleNotFoundError:
        package_importable = False
    print(json.dumps({{
        "model_module": type(model).__module__, "model_class": type(model).__name__,
        "processor_class": type(processor).__name__, "weights_equal": same,
        "saliency_shape": list(saliency.shape), "package_importable": package_importable,
    }}))
"""
def _load_script(prelude: str, model_dir: Path, trust_remote_code: bool) -> str:
    trust = ", trust_remote_code=True" if trust_remote_code else ""
    body = _LOAD_AND_RUN.format(repo_id=REPO_ID, trust=trust, weights=str(model_dir / "model.safetensors"))
    return textwrap.dedent(prelude) + textwrap.dedent(body)


# The test Hub itself, with plain files


def test_server_round_trips_files_through_commit_and_download(api, hub, tmp_path):
    api.create_repo("plain/files")
    payload = {"a.json": b'{"a": 1}', "nested/deep/b.bin": os.urandom(5000), "empty.txt": b""}
    commit = _commit_bytes(api, "plain/files", payload)
    folder = Path(snapshot_download("plain/files", endpoint=hub.endpoint, cache_dir=tmp_path))
    assert folder.name == commit.oid
    for path, data in payload.items():
        assert (folder / path).read_bytes() == data
    assert (folder / ".gitattributes").is_file()  # the Hub's initial commit
    assert not hub.unhandled


def test_server_lists_trees_commits_and_file_ids(api):
    api.create_repo("plain/tree")
    _commit_bytes(api, "plain/tree", {"top.txt": b"top", "dir/sub/x.txt": b"x"})
    flat = {entry.path for entry in api.list_repo_tree("plain/tree")}
    deep = {entry.path: entry for entry in api.list_repo_tree("plain/tree", recursive=True)}
    assert flat == {".gitattributes", "top.txt", "dir"}
    assert set(deep) == {".gitattributes", "top.txt", "dir", "dir/sub", "dir/sub/x.txt"}
    assert deep["top.txt"].size == 3 and deep["dir/sub/x.txt"].size == 1
    assert [c.title for c in api.list_repo_commits("plain/tree")] == ["add files", "initial commit"]
    assert api.file_exists("plain/tree", "dir/sub/x.txt") and not api.file_exists("plain/tree", "missing.txt")


def test_server_file_ids_are_git_blob_ids(api):
    api.create_repo("plain/ids")
    _commit_bytes(api, "plain/ids", {"hello.txt": b"Hello, World!"})
    (entry,) = api.get_paths_info("plain/ids", ["hello.txt"])
    assert entry.blob_id == "b45ef6fec89518d314f546fd6c3025367b721684"  # `git hash-object` of the content


def test_server_skips_unchanged_files_on_recommit(api):
    api.create_repo("plain/unchanged")
    first = _commit_bytes(api, "plain/unchanged", {"same.txt": b"same"})
    again = _commit_bytes(api, "plain/unchanged", {"same.txt": b"same"}, message="no-op")
    assert again.oid == first.oid
    assert len(api.list_repo_commits("plain/unchanged")) == 2


def test_server_answers_hub_errors(api, hub, tmp_path):
    api.create_repo("plain/errors")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("plain/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("plain/errors", revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("plain/errors", "absent.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="model-index"):
        _commit_bytes(api, "plain/errors", {"README.md": b"---\nmodel-index: 3\n---\n# card\n"})


def test_server_refuses_lfs_commit_entries(api, hub):
    api.create_repo("plain/lfs")
    header = {"key": "header", "value": {"summary": "lfs", "description": ""}}
    lfs = {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 1}}
    body = "\n".join(json.dumps(line) for line in (header, lfs))
    answer = httpx.post(f"{hub.endpoint}/api/models/plain/lfs/commit/main", content=body)
    assert answer.status_code == 400 and "LFS" in answer.json()["error"]


def test_server_serves_byte_ranges(api, hub):
    api.create_repo("plain/range")
    _commit_bytes(api, "plain/range", {"data.bin": bytes(range(100))})
    answer = httpx.get(f"{hub.endpoint}/plain/range/resolve/main/data.bin", headers={"Range": "bytes=10-19"})
    assert answer.status_code == 206 and answer.content == bytes(range(10, 20))
    assert answer.headers["Content-Range"] == "bytes 10-19/100"


# Publishing


def test_push_is_one_commit_with_the_model_files(api, published, model_dir):
    commits = api.list_repo_commits(REPO_ID)
    assert [c.commit_id for c in commits][0] == published.oid
    assert len(commits) == 2  # the repository's initial commit, then the whole model at once
    files = set(api.list_repo_files(REPO_ID))
    expected = {p.name for p in collect_model_files(model_dir)} | {"README.md", ".gitattributes"}
    assert files == expected
    assert {"config.json", "model.safetensors", "processor_config.json", "modeling_dtfsal.py", "layers.py"} <= files
    assert "training_log.txt" not in files


def test_published_files_are_byte_identical(api, hub, published, model_dir, tmp_path):
    folder = Path(snapshot_download(REPO_ID, endpoint=hub.endpoint, cache_dir=tmp_path))
    for path in collect_model_files(model_dir):
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name


def test_model_card_metadata_carries_the_evaluation(api, published, model_dir):
    info = api.model_info(REPO_ID)
    card = info.card_data
    assert info.library_name == "transformers" and info.pipeline_tag == card.pipeline_tag
    assert "custom_code" in card.tags and card.datasets == ["DHF1K"] and card.license == "apache-2.0"
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.eval_results}
    expected = {
        (summary["dataset"], name.replace("_", "-")): value
        for summary in EVALUATION
        for name, value in summary["metrics"].items()
        if value is not None
    }
    assert results == expected  # every number comes from the evaluation file, and none is added
    assert ("DHF1K", "sAUC") not in results
    assert {r.dataset_split for r in card.eval_results} == {"val", "test"}
    assert card.metrics == ["cc", "nss", "auc_judd", "sim", "kld"]  # sAUC has no value anywhere


def test_model_card_body_states_the_checkpoint(api, hub, published, model_dir, tmp_path):
    readme = Path(hf_hub_download(REPO_ID, "README.md", endpoint=hub.endpoint, cache_dir=tmp_path)).read_text()
    parameters = sum(p.numel() for p in DTFSalModel(DTFSalConfig.tiny()).parameters())
    assert f"{parameters / 1e6:.2f}M parameters" in readme
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in readme
    assert "| DHF1K | val | 3 | 0.1234 | 0.5678 | 0.6543 | 0.0987 | 2.4681 | – |" in readme
    assert not re.search(r"\{\{\s*\w+\s*\}\}", readme)  # every template placeholder is filled
    for section in ("## Intended use", "## Limits", "## Training recipe", "## Evaluation protocol", "## Citation"):
        assert section in readme


def test_card_without_evaluation_has_no_results(model_dir):
    card = build_model_card(model_dir, REPO_ID)
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert "model-index" not in metadata
    assert metadata["library_name"] == "transformers" and "custom_code" in metadata["tags"]
    # "other": the Hub's task without a widget, rather than one whose widget would send this model images or text.
    assert metadata["pipeline_tag"] == "other"
    assert "No evaluation results were published with this checkpoint" in card


# Evaluation summaries


def test_evaluation_summaries_accept_one_object_or_a_list(tmp_path):
    single, several = tmp_path / "one.json", tmp_path / "many.json"
    single.write_text(json.dumps(EVALUATION[1]))
    several.write_text(json.dumps(EVALUATION))
    (one,) = load_evaluation_summaries([single])
    assert one.dataset == "AVAD" and one.metrics == {"cc": 0.2222, "nss": 1.1111, "auc_judd": 0.7777, "sim": 0.1515}
    dhf1k, _ = load_evaluation_summaries([several])
    assert dhf1k.missing == ["sauc"] and "sauc" not in dhf1k.metrics and dhf1k.num_videos == 3


def test_evaluation_summaries_read_the_evaluation_module_output(tmp_path):
    # The shape of `summary.json` from `dtfsal_hf.evaluation.evaluate`: per-dataset means, metric ids in lower case.
    summary = {
        "num_videos": 5,
        "metrics": {"cc": 0.3, "nss": 1.5, "auc_judd": 0.8, "sim": 0.25, "kld": 1.9, "sauc": 0.6},
        "per_dataset": {
            "AVAD": {"num_videos": 2, "metrics": {"cc": 0.31, "nss": 1.6, "auc_judd": 0.81, "sim": 0.26, "kld": 1.8, "sauc": math.nan}},
            "DIEM": {"num_videos": 3, "metrics": {"cc": 0.29, "nss": 1.4, "auc_judd": 0.79, "sim": 0.24, "kld": 2.0, "sauc": 0.6}},
        },
        "protocol": "stavis",
        "seed": 0,
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))  # json writes NaN as the bare token NaN, as evaluate() does
    avad, diem = load_evaluation_summaries([path])
    assert (avad.dataset, avad.num_videos, avad.protocol) == ("AVAD", 2, "stavis")
    assert avad.metrics == {"cc": 0.31, "nss": 1.6, "auc_judd": 0.81, "sim": 0.26, "kld": 1.8} and avad.missing == ["sauc"]
    assert diem.metrics["sauc"] == 0.6 and diem.num_videos == 3


@pytest.mark.parametrize(
    "summary, message",
    [
        ({"metrics": {"CC": 0.5}}, "no 'dataset'"),
        ({"dataset": "DHF1K"}, "no 'metrics'"),
        ({"dataset": "DHF1K", "metrics": {"CC": None}}, "no metric value"),
        ({"dataset": "DHF1K", "metrics": {"CC": "0.5"}}, "number or null"),
        ({"dataset": "DHF1K", "metrics": {"CC": math.nan}}, "no metric value"),
        ({"per_dataset": {}, "metrics": {"cc": 0.5}}, "'per_dataset' is empty"),
        ({"dataset": "DHF1K", "metrics": {"CC": 0.5}, "num_videos": 0}, "positive integer"),
    ],
)
def test_evaluation_summaries_refuse_incomplete_entries(tmp_path, summary, message):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=message):
        load_evaluation_summaries([path])


# Clear errors before anything is sent


def _copy_without(model_dir: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / name).unlink()
    return copy


@pytest.mark.parametrize(
    "missing, error, message",
    [
        ("config.json", FileNotFoundError, "No config.json"),
        ("model.safetensors", FileNotFoundError, "No safetensors weights"),
        ("processor_config.json", FileNotFoundError, "No processor configuration"),
        ("layers.py", FileNotFoundError, r"layers\.py"),
    ],
)
def test_push_refuses_incomplete_model_folders(hub, model_dir, tmp_path, missing, error, message):
    folder = _copy_without(model_dir, tmp_path, missing)
    served = len(hub.requests)
    with pytest.raises(error, match=message):
        push_to_hub(folder, "dtfsal-test/incomplete", endpoint=hub.endpoint, token=False)
    assert len(hub.requests) == served


def test_push_refuses_a_model_without_auto_map(hub, model_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    processor = json.loads((folder / "processor_config.json").read_text())
    processor.pop("auto_map")
    for section in ("feature_extractor", "video_processor"):
        processor[section].pop("auto_map")
    (folder / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match="no `auto_map`"):
        push_to_hub(folder, "dtfsal-test/no-auto-map", endpoint=hub.endpoint, token=False)


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "bad name/model", "org/--double"])
def test_push_refuses_bad_repository_ids(hub, model_dir, repo_id):
    served = len(hub.requests)
    with pytest.raises(ValueError, match="Repository id|Invalid repository id"):
        push_to_hub(model_dir, repo_id, endpoint=hub.endpoint, token=False)
    assert len(hub.requests) == served


def _edit_json(folder: Path, name: str, edit) -> None:
    content = json.loads((folder / name).read_text())
    edit(content)
    (folder / name).write_text(json.dumps(content))


# Each edit leaves a folder that AutoModel / AutoProcessor could not load without the package.
UNLOADABLE = {
    "no AutoProcessor entry": (
        "processor_config.json", lambda c: c["auto_map"].pop("AutoProcessor"),
        r"processor_config\.json has no `auto_map` entry for AutoProcessor",
    ),
    "no AutoVideoProcessor entry": (
        "processor_config.json", lambda c: c["video_processor"].pop("auto_map"),
        r"processor_config\.json \(its `video_processor` section\) has no `auto_map` entry for AutoVideoProcessor",
    ),
    "no AutoFeatureExtractor entry": (
        "processor_config.json", lambda c: c["feature_extractor"]["auto_map"].pop("AutoFeatureExtractor"),
        r"\(its `feature_extractor` section\) has no `auto_map` entry for AutoFeatureExtractor",
    ),
    "no AutoModel entry": (
        "config.json", lambda c: c["auto_map"].pop("AutoModel"), r"config\.json has no `auto_map` entry for AutoModel",
    ),
    "a class the file does not define": (
        "processor_config.json", lambda c: c["auto_map"].update(AutoProcessor="processing_dtfsal.DTFSalProcesor"),
        r"maps AutoProcessor to processing_dtfsal\.DTFSalProcesor, but processing_dtfsal\.py defines no DTFSalProcesor",
    ),
}


@pytest.mark.parametrize("case", list(UNLOADABLE))
def test_push_refuses_a_folder_that_would_not_load_without_the_package(hub, model_dir, tmp_path, case):
    name, edit, message = UNLOADABLE[case]
    folder = tmp_path / "copy"
    shutil.copytree(model_dir, folder)
    _edit_json(folder, name, edit)
    served = len(hub.requests)
    with pytest.raises(ValueError, match=message):
        push_to_hub(folder, "dtfsal-test/unloadable", endpoint=hub.endpoint, token=False)
    assert len(hub.requests) == served


def test_refused_processor_folders_really_do_not_load_without_the_package(model_dir, tmp_path):
    """The control of the check above: transformers itself cannot build the processor from those folders (and
    builds it from the original)."""
    folders = {}
    for case in ("no AutoProcessor entry", "no AutoVideoProcessor entry", "no AutoFeatureExtractor entry",
                 "a class the file does not define"):
        name, edit, _ = UNLOADABLE[case]
        folders[case] = tmp_path / f"case{len(folders)}"
        shutil.copytree(model_dir, folders[case])
        _edit_json(folders[case], name, edit)
    folders["unchanged"] = model_dir
    code = f"""
        import json
        from transformers import AutoProcessor
        outcome = {{}}
        for case, folder in {({case: str(folder) for case, folder in folders.items()})!r}.items():
            try:
                outcome[case] = type(AutoProcessor.from_pretrained(folder, trust_remote_code=True)).__name__
            except Exception as error:
                outcome[case] = "failed: " + type(error).__name__
        print(json.dumps(outcome))
    """
    env = {**_hub_env(tmp_path / "hf", "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}
    outcome = json.loads(run_without_package(code, cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert outcome.pop("unchanged") == "DTFSalProcessor"
    # Each fails, or (without the AutoProcessor entry) silently gives a video processor instead of the processor.
    assert all(result != "DTFSalProcessor" for result in outcome.values()), outcome
    assert outcome["no AutoVideoProcessor entry"].startswith("failed"), outcome


def test_push_refuses_the_bundled_demo_checkpoint_and_says_how_to_fix_it(hub):
    # It is saved without code files (it loads through the installed package); saved again, it is complete.
    with pytest.raises(ValueError, match=r"has no `auto_map`.*save it again with `save_pretrained` after `import dtfsal_hf`"):
        push_to_hub(DEMO_CHECKPOINT, "dtfsal-test/demo-as-bundled", endpoint=hub.endpoint, token=False)


def test_demo_checkpoint_saved_again_is_complete(demo_resaved):
    files = {path.name for path in collect_model_files(demo_resaved)}
    assert {"processing_dtfsal.py", "video_processing_dtfsal.py", "feature_extraction_dtfsal.py", "layers.py"} <= files


# The whole repository from the usual save sequence

REMOTE_CODE = ("configuration_dtfsal.py", "modeling_dtfsal.py", "layers.py", "encoders.py", "processing_dtfsal.py",
               "video_processing_dtfsal.py", "feature_extraction_dtfsal.py")


def test_save_pretrained_writes_the_code_and_every_auto_map_entry(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    processor = json.loads((model_dir / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_dtfsal.DTFSalConfig", "AutoModel": "modeling_dtfsal.DTFSalModel"}
    assert processor["auto_map"] == {"AutoProcessor": "processing_dtfsal.DTFSalProcessor"}
    assert processor["video_processor"]["auto_map"]["AutoVideoProcessor"] == "video_processing_dtfsal.DTFSalVideoProcessor"
    assert processor["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == (
        "feature_extraction_dtfsal.DTFSalFeatureExtractor"
    )
    for name in REMOTE_CODE:
        assert (model_dir / name).read_bytes() == (REPO_ROOT / "dtfsal_hf" / name).read_bytes(), name


@needs_dhf1k
def test_saved_folders_give_the_package_maps_without_the_package(model_dir, demo_resaved, tmp_path):
    """A random tiny model and the demo checkpoint, each saved the usual way: in a process where dtfsal_hf
    cannot be imported, AutoProcessor + AutoModel + post-processing give the package's inputs and maps on real
    frames and sound (clips of frames 0, 20 and 45 of DHF1K video 002)."""
    inputs = real_clip_inputs(DHF1K_VIDEO, 8, [0, 20, 45])
    remote, classes = maps_without_package([model_dir, demo_resaved], inputs, tmp_path)
    for folder, outputs, names in zip((model_dir, demo_resaved), remote, classes):
        assert names == ["transformers_modules:DTFSalModel", "transformers_modules:DTFSalProcessor",
                         "transformers_modules:DTFSalVideoProcessor", "transformers_modules:DTFSalFeatureExtractor"]
        local = maps_with_package(folder, inputs)
        for key, value in local.items():
            torch.testing.assert_close(outputs[key], value, rtol=0, atol=1e-6, msg=key)
    assert remote[0]["maps"].shape == (3, 360, 640)
    # Not a trivial agreement: the two models' maps differ, and post-processing scaled the demo's small values.
    assert (remote[0]["maps"] - remote[1]["maps"]).abs().max() > 0.1
    assert remote[1]["raw"].amax() < 0.5  # measured: 0.34 at most over the three clips
    torch.testing.assert_close(remote[1]["maps"].amax(dim=(1, 2)), torch.ones(3))


def _how_to_use(card: str) -> str:
    match = re.search(r"## How to use\n\n```python\n(.*?)```", card, re.S)
    assert match, "the card has no How to use snippet"
    return match.group(1)


@needs_dhf1k
def test_the_cards_snippet_reproduces_dtfsal_predict(hub, demo_resaved, tmp_path):
    """The card's "How to use" code, as published, run where dtfsal_hf cannot be imported, against the test Hub:
    its map of frame 10 of DHF1K video 002 is the one `dtfsal predict` computes."""
    repo_id, target = "dtfsal-test/demo-resaved", 10
    push_to_hub(demo_resaved, repo_id, endpoint=hub.endpoint, token=False)
    card = Path(hf_hub_download(repo_id, "README.md", endpoint=hub.endpoint, cache_dir=tmp_path / "card")).read_text()
    inputs = real_clip_inputs(DHF1K_VIDEO, 8, [target])
    np.save(tmp_path / "clip.npy", inputs["clips"][0])
    np.save(tmp_path / "waveform.npy", inputs["waveforms"][0])
    prelude = (
        f"import numpy as np\nimport torch\ntorch.set_num_threads({torch.get_num_threads()})\n"
        f"clip = np.load({str(tmp_path / 'clip.npy')!r})\nwaveform = np.load({str(tmp_path / 'waveform.npy')!r})\n"
        f"fps = {probe_video(DHF1K_VIDEO).fps!r}\n"
    )
    code = prelude + _how_to_use(card) + f"np.save({str(tmp_path / 'saliency.npy')!r}, saliency.numpy())\n"
    run_without_package(code, cwd=tmp_path, env=_hub_env(tmp_path / "hf", hub.endpoint))
    from_card = np.load(tmp_path / "saliency.npy")
    # One clip a call, as the snippet: float sums depend on the batch's size and the CPU's kernels (oneDNN; about 3e-7
    # on AVX-512, up to 1.3e-6 on a 2-core AVX2 CPU); the map of the frame before differs by 0.28.
    predictor = SaliencyPredictor.from_pretrained("demo", batch_size=1)
    with pytest.warns(UserWarning, match="trained only on synthetic videos"):
        predicted = predictor.predict_video(DHF1K_VIDEO, max_frames=target + 1, progress=False)
    assert from_card.shape == predicted.maps[target].shape == (360, 640)
    np.testing.assert_allclose(from_card, predicted.maps[target], rtol=0, atol=1e-5)
    raw = predictor.predict_clips(inputs["clips"], inputs["waveforms"])
    assert from_card.max() == 1.0 and raw.max() < 0.2  # the raw output would plot nearly black


# Loading back with transformers


def test_load_from_hub_with_the_package_installed(hub, published, model_dir, tmp_path):
    code = _load_script("import dtfsal_hf\n", model_dir, trust_remote_code=False)
    env = _hub_env(tmp_path / "hf", hub.endpoint, PYTHONPATH=str(REPO_ROOT))
    result = _run_python(code, env, cwd=tmp_path)
    config = DTFSalConfig.tiny()
    assert result["model_module"] == "dtfsal_hf.modeling_dtfsal" and result["model_class"] == "DTFSalModel"
    assert result["processor_class"] == "DTFSalProcessor" and result["weights_equal"]
    assert result["saliency_shape"] == [1, *config.image_size]
    assert not hub.unhandled


def test_load_from_hub_without_the_package(hub, published, model_dir, tmp_path):
    code = _load_script(_BLOCK_PACKAGE, model_dir, trust_remote_code=True)
    result = _run_python(code, _hub_env(tmp_path / "hf", hub.endpoint), cwd=tmp_path, isolated=True)
    assert not result["package_importable"]
    assert result["model_module"].startswith("transformers_modules.") and result["model_class"] == "DTFSalModel"
    assert result["processor_class"] == "DTFSalProcessor" and result["weights_equal"]
    assert result["saliency_shape"] == [1, *DTFSalConfig.tiny().image_size]
    assert not hub.unhandled


def test_load_offline_from_a_populated_cache(hub, published, model_dir, tmp_path):
    hf_home = tmp_path / "hf"
    snapshot_download(REPO_ID, endpoint=hub.endpoint, cache_dir=hf_home / "hub")
    served = len(hub.requests)
    code = _load_script(_BLOCK_PACKAGE, model_dir, trust_remote_code=True)
    # An endpoint nobody listens on: any request would fail, so the load must come from the cache alone.
    env = _hub_env(hf_home, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    result = _run_python(code, env, cwd=tmp_path, isolated=True)
    assert result["weights_equal"] and result["model_class"] == "DTFSalModel"
    assert result["processor_class"] == "DTFSalProcessor"
    assert len(hub.requests) == served


# The command line


def test_cli_push_publishes_with_the_same_function(hub, model_dir, evaluation_file, monkeypatch, capsys):
    from huggingface_hub import constants

    from dtfsal_hf.cli import main

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT sets at import time
    monkeypatch.setenv("HF_TOKEN", "test-token")  # never send a saved login to the test server
    repo_id = "dtfsal-test/from-cli"
    argv = ["push", str(model_dir), repo_id, "--evaluation", str(evaluation_file), "--dataset", "DHF1K"]
    assert main(argv + ["--license", "mit", "--message", "First release"]) == 0
    api = HfApi(endpoint=hub.endpoint, token=False)
    commit = api.list_repo_commits(repo_id)[0]
    assert capsys.readouterr().out.strip().endswith(f"/{repo_id}/commit/{commit.commit_id}")
    assert commit.title == "First release"
    assert api.model_info(repo_id).card_data.license == "mit"


def test_push_warns_about_files_that_look_like_credentials(hub, model_dir, tmp_path):
    """Top-level JSON and Python files are published: a saved token would go up silently."""
    folder = tmp_path / "copy"
    shutil.copytree(model_dir, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the saved model itself raises no warning
        assert secret_like_files(collect_model_files(folder)) == []
    (folder / "hf_token.json").write_text('{"note": "saved by a script"}')
    (folder / "run_settings.json").write_text(json.dumps({"lr": 1e-4, "hub": "hf_" + "a1B2c3D4e5" * 4}))
    (folder / ".env").write_text("HF_TOKEN=hf_abc\n")  # not published (not .json/.py), so not named
    with pytest.warns(UserWarning, match=r"2 file\(s\) to be published to dtfsal-test/secrets may hold credentials: "
                      r"hf_token\.json: its name looks like a credential's; run_settings\.json: it holds what looks like "
                      r"a credential \(hf_a1B2c3D4e\.\.\.\)"):
        push_to_hub(folder, "dtfsal-test/secrets", endpoint=hub.endpoint, token=False)
