"""Evaluation: protocols, saved predictions, resuming, the CLI, a model run, and real DHF1K gaze."""

import csv
import dataclasses
import json
import re
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_trees import shared_data_or_skip, write_stavis
from dtfsal_hf.cli import main
from dtfsal_hf.data import (
    SyntheticConfig,
    VideoRecord,
    continuous_map,
    fixation_map,
    gaze_fixations,
    generate_synthetic_dataset,
    load_records,
    write_dhf1k_annotation,
)
from dtfsal_hf.evaluation import (
    DEFAULT_BLUR_GRID,
    PredictionFolder,
    SameVideoOtherMaps,
    ShufflePool,
    center_bias_map,
    center_bias_predictor,
    check_grid,
    evaluate,
    format_table,
    frame_seed,
    model_predictor,
    prepare_prediction,
    protocol_for,
    run_evaluation,
    score_frame,
    summarise,
    uniform_predictor,
)


@pytest.fixture()
def avad(tmp_path):
    return write_stavis(tmp_path / "stavis", "AVAD", ["V1", "V2", "V3", "V4"], num_frames=5)


def ground_truth_predictor(record):
    return np.stack([record.saliency_map(i) for i in range(record.num_frames)])


def test_protocol_choice_and_preparation():
    assert protocol_for("DHF1K") == "dhf1k" and protocol_for("UCF-Sports") == "dhf1k" and protocol_for("Hollywood-2") == "dhf1k"
    assert protocol_for("AVAD") == "stavis" and protocol_for("SyntheticAV") == "stavis"
    impulse = np.zeros((1, 21, 21), np.float32)
    impulse[0, 10, 10] = 1
    blurred = prepare_prediction(impulse, (21, 21), "stavis")[0]
    # σ = 2 px: the blurred impulse is a normalised Gaussian of that width.
    assert float(blurred.sum()) == pytest.approx(1.0) and float(blurred[10, 12] / blurred[10, 10]) == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert torch.equal(prepare_prediction(impulse, (21, 21), "dhf1k")[0], torch.from_numpy(impulse[0]).double())
    assert prepare_prediction(np.ones((2, 8, 8)), (16, 12), "dhf1k").shape == (2, 16, 12)
    with pytest.raises(ValueError, match="protocol must be one of"):
        prepare_prediction(impulse, (21, 21), "mit")


def test_ground_truth_scores_best_and_uniform_scores_chance(avad, tmp_path):
    records = load_records("AVAD", avad, "test", fold="all")
    best = evaluate(records, ground_truth_predictor, tmp_path / "best", progress=False, protocol="dhf1k")
    chance = evaluate(records, uniform_predictor, tmp_path / "chance", progress=False)
    assert best["metrics"]["cc"] == pytest.approx(1.0) and best["metrics"]["kld"] == pytest.approx(0.0, abs=1e-6)
    assert best["metrics"]["auc_judd"] > 0.95 and best["metrics"]["sauc"] > 0.6
    assert chance["metrics"]["cc"] == 0 and chance["metrics"]["nss"] == 0 and chance["metrics"]["auc_judd"] == 0.5
    assert chance["protocol"] == "stavis" and chance["folds"] == [1, 2, 3] and chance["num_videos"] == 4
    rows = list(csv.DictReader((tmp_path / "chance" / "per_video.csv").open()))
    assert [row["key"] for row in rows] == ["AVAD/fold1/V1", "AVAD/fold1/V4", "AVAD/fold2/V2", "AVAD/fold3/V3"]
    summary = json.loads((tmp_path / "chance" / "summary.json").read_text())
    assert summary["per_dataset"]["AVAD"]["num_videos"] == 4
    table = format_table(best)
    assert "| AVAD | 4 | 1.000 |" in table and "AVAD CC/NSS/AUC-J/SIM: 1.000/" in table


def test_resume_skips_scored_videos(avad, tmp_path):
    records = load_records("AVAD", avad, "test", fold="all")
    metrics = ("cc", "nss", "kld")  # without sAUC a video's scores do not depend on the other videos
    evaluate(records[:2], uniform_predictor, tmp_path / "run", metrics=metrics, progress=False)
    seen = []

    def counting(record):
        seen.append(record.key)
        return uniform_predictor(record)

    summary = evaluate(records, counting, tmp_path / "run", metrics=metrics, progress=False)
    assert seen == [records[2].key, records[3].key] and summary["num_videos"] == 4
    assert len(list(csv.DictReader((tmp_path / "run" / "per_video.csv").open()))) == 4
    with pytest.raises(ValueError, match="columns"):
        evaluate(records, uniform_predictor, tmp_path / "run", metrics=("cc",), progress=False)


def test_resume_with_sauc_needs_the_same_videos(avad, tmp_path):
    """sAUC's other maps are drawn from every video of the evaluation: rows scored with another set differ."""
    records = load_records("AVAD", avad, "test", fold="all")
    evaluate(records[:2], uniform_predictor, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"holds the scores of another evaluation \(shuffle_pool: .*'videos': 2.*'videos': 4"):
        evaluate(records, uniform_predictor, tmp_path / "run", progress=False)
    assert evaluate(records, uniform_predictor, tmp_path / "run", progress=False, resume=False)["num_videos"] == 4


def _prediction_folders(avad, tmp_path):
    good, flat = tmp_path / "good", tmp_path / "flat"
    for folder, predict in ((good, ground_truth_predictor), (flat, uniform_predictor)):
        folder.mkdir()
        for record in load_records("AVAD", avad, "test", fold="all"):
            np.savez(folder / f"{record.name}.npz", maps=predict(record))
    return good, flat


@pytest.mark.parametrize("change, message", [
    (["--predictions", "{flat}"], r"source: \{'predictions': '.*good'\}, now \{'predictions': '.*flat'\}"),
    (["--predictions", "{good}", "--protocol", "dhf1k"], r"protocol: 'stavis', now 'dhf1k'"),
    (["--predictions", "{good}", "--seed", "3"], r"seed: 0, now 3"),
    (["--predictions", "{good}", "--blur-grid", "24x32"], r"blur: \{'sigma': 2.0, 'grid': 'auto'\}, now \{'sigma': 2.0, 'grid': \[24, 32\]\}"),
])
def test_resume_refuses_the_scores_of_another_evaluation(avad, tmp_path, capsys, change, message):
    """A resumed run with other predictions, protocol or seed used to reuse the old rows under the new settings."""
    good, flat = _prediction_folders(avad, tmp_path)
    base = ["evaluate", "--dataset", "avad", "--root", str(avad), "--output", str(tmp_path / "eval"), "--metrics", "cc,sim"]
    assert main(base + ["--predictions", str(good)]) == 0
    changed = [part.format(good=good, flat=flat) for part in change]
    capsys.readouterr()
    assert main(base + changed) == 1
    assert re.search(message, capsys.readouterr().err)
    assert main(base + changed + ["--no-resume"]) == 0
    state = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert state["datasets"] == ["AVAD"] and state["split"] == "test" and state["folds"] == [1, 2, 3]
    assert (state["source"]["predictions"], state["protocol"], state["seed"]) == (
        str(flat if "{flat}" in change else good), "dhf1k" if "dhf1k" in change else "stavis", 3 if "3" in change else 0)
    if "{flat}" in change:  # the new rows, not the old ones: a flat map has CC 0
        assert json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]["cc"] == 0
    capsys.readouterr()


def test_resume_refuses_a_model_after_predictions(avad, tmp_path):
    good, _ = _prediction_folders(avad, tmp_path)
    run_evaluation("avad", avad, tmp_path / "eval", predictions=good, metrics=("cc",), progress=False)
    with pytest.raises(ValueError, match=r"source: \{'predictions': .*\}, now \{'model': 'random-tiny'\}"):
        run_evaluation("avad", avad, tmp_path / "eval", model="random-tiny", metrics=("cc",), progress=False)


def test_a_torn_last_line_is_dropped_and_scored_again(avad, tmp_path):
    """A disk that filled up mid-row left a partial line the next row was glued to (CC 9.17, a bogus dataset)."""
    records = load_records("AVAD", avad, "test", fold="all")
    clean = evaluate(records, ground_truth_predictor, tmp_path / "clean", progress=False)
    evaluate(records, ground_truth_predictor, tmp_path / "torn", progress=False)
    csv_path = tmp_path / "torn" / "per_video.csv"
    text = csv_path.read_text()
    csv_path.write_text(text[: len(text) - 25])  # the last row cut in its metrics
    messages, seen = [], []

    def counting(record):
        seen.append(record.key)
        return ground_truth_predictor(record)

    summary = evaluate(records, counting, tmp_path / "torn", progress=False, log=messages.append)
    assert seen == [records[3].key]
    assert any("dropped its incomplete last line ('AVAD/fold3/V3')" in message for message in messages)
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["key"] for row in rows] == [record.key for record in records]
    assert summary["per_dataset"].keys() == {"AVAD"} and summary["num_videos"] == 4
    for name, value in clean["metrics"].items():
        assert summary["metrics"][name] == pytest.approx(value)


@pytest.mark.parametrize("edit, message", [
    (lambda row: {**row, "cc": "9.17"}, r"row 2 \('AVAD/fold1/V1'\): its cc 9.17 lies outside \[-1.0, 1.0\]"),
    (lambda row: {**row, "scored_frames": "x"}, r"row 2 .*frame counts '5', 'x' are not integers"),
    (lambda row: {**row, "dataset": "DIEM"}, r"the row of AVAD/fold1/V1 describes \('DIEM', 'V1', 5\)"),
])
def test_rows_that_were_not_written_here_are_refused(avad, tmp_path, edit, message):
    records = load_records("AVAD", avad, "test", fold="all")
    evaluate(records, uniform_predictor, tmp_path / "run", progress=False, metrics=("cc", "nss"))
    csv_path = tmp_path / "run" / "per_video.csv"
    rows = list(csv.DictReader(csv_path.open()))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([edit(rows[0])] + rows[1:])
    with pytest.raises(ValueError, match=message):
        evaluate(records, uniform_predictor, tmp_path / "run", progress=False, metrics=("cc", "nss"))


def test_negative_or_nan_predictions_are_refused_naming_the_video(avad, tmp_path):
    """A negative map gave KLD NaN, which the averages dropped silently."""
    records = load_records("AVAD", avad, "test", fold=1)

    def centred(record):
        return ground_truth_predictor(record) - 0.5

    with pytest.raises(ValueError, match=r"AVAD/fold1/V1: the predicted map of frame 1 holds negative values \(down to -0.5"):
        evaluate(records, centred, tmp_path / "negative", progress=False)

    def with_nan(record):
        maps = ground_truth_predictor(record)
        maps[2, 3, 4] = np.nan
        return maps

    with pytest.raises(ValueError, match=r"AVAD/fold1/V1: the predicted map of frame 3 holds NaN or infinite values"):
        evaluate(records, with_nan, tmp_path / "nan", progress=False)


def test_videos_without_a_scored_frame_are_not_counted(tmp_path):
    root = write_stavis(tmp_path, "SumMe", ["a", "b", "c"], num_frames=3)
    from scipy.io import savemat

    for index in range(1, 4):
        savemat(root / "annotations" / "SumMe" / "a" / f"fixMap_{index:05d}.mat", {"eyeMap": np.zeros((24, 32), np.uint8)})
    records = load_records("SumMe", root, "test", fold=1)
    summary = evaluate(records, ground_truth_predictor, tmp_path / "out", protocol="dhf1k", progress=False,
                       metrics=("cc", "nss"))
    unscored = sum(record.name == "a" for record in records)
    assert summary["num_videos"] == len(records) - unscored and summary["num_unscored_videos"] == unscored
    assert summary["per_dataset"]["SumMe"]["num_videos"] == len(records) - unscored


def test_frames_without_fixations_are_skipped(tmp_path):
    root = write_stavis(tmp_path, "SumMe", ["a", "b", "c"], num_frames=4)
    from scipy.io import savemat

    savemat(root / "annotations" / "SumMe" / "a" / "fixMap_00002.mat", {"eyeMap": np.zeros((24, 32), np.uint8)})
    records = load_records("SumMe", root, "test", fold=1)
    summary = evaluate(records, ground_truth_predictor, tmp_path / "out", protocol="dhf1k", progress=False, metrics=("cc", "nss"))
    row = next(csv.DictReader((tmp_path / "out" / "per_video.csv").open()))
    assert row["num_frames"] == "4" and row["scored_frames"] == "3"
    assert summary["metrics"]["cc"] == pytest.approx(1.0)


def test_shuffle_pool_draws_from_other_videos(avad):
    records = load_records("AVAD", avad, "test", fold="all")
    pool = ShufflePool(records, frames_per_video=5)
    other = pool.other_map(records[0], 0, (24, 32), other_frames=3)
    assert other.dtype == bool and 1 <= other.sum() <= 3
    assert np.array_equal(other, pool.other_map(records[0], 0, (24, 32), other_frames=3))
    alone = ShufflePool(records[:1])
    assert alone.other_map(records[0], 0, (24, 32)) is None


def write_fixations(root, video, frames, size=(6, 8)):
    """Replace the fixMap_%05d.mat files of `video` by hand-built ones: `frames` lists each frame's fixated pixels."""
    from scipy.io import savemat

    for index, pixels in enumerate(frames):
        fixated = np.zeros(size, np.uint8)
        for row, column in pixels:
            fixated[row, column] = 1
        savemat(root / "annotations" / "AVAD" / video / f"fixMap_{index + 1:05d}.mat", {"eyeMap": fixated})


def pixels(mask):
    return sorted(map(tuple, np.argwhere(mask).tolist())) if mask is not None else None


@pytest.fixture()
def hand_fixations(tmp_path):
    """Two 3-frame AVAD videos with hand-placed fixations on a 6x8 grid; B's maps are 12x16."""
    root = write_stavis(tmp_path / "stavis", "AVAD", ["A", "B"], num_frames=3)
    write_fixations(root, "A", [[(1, 1), (2, 2)], [(2, 2), (3, 3)], [(4, 4)]])
    write_fixations(root, "B", [[(0, 0)], [(10, 14), (11, 15)], []], size=(12, 16))
    records = {r.name: r for r in load_records("AVAD", root, "test", fold="all")}
    return records["A"], records["B"]


def test_same_video_other_map_is_the_videos_other_fixations(hand_fixations):
    first, second = hand_fixations
    maps = SameVideoOtherMaps()
    # Frame 1: every pixel fixated in the video, less frame 1's own; (2, 2) goes although frame 0 has it too.
    assert pixels(maps.other_map(first, 1, (6, 8))) == [(1, 1), (4, 4)]
    assert pixels(maps.other_map(first, 0, (6, 8))) == [(3, 3), (4, 4)]
    assert pixels(maps.other_map(first, 2, (6, 8))) == [(1, 1), (2, 2), (3, 3)]
    assert pixels(maps.union(first)) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    # Another video: its own fixations only, at its own size; a frame with nothing else fixated has none.
    assert pixels(maps.other_map(second, 1, (12, 16))) == [(0, 0)]
    assert pixels(maps.other_map(second, 2, (12, 16))) == [(0, 0), (10, 14), (11, 15)]
    lonely = dataclasses.replace(second, num_frames=1)
    assert SameVideoOtherMaps().other_map(lonely, 0, (12, 16)) is None
    with pytest.raises(ValueError, match="expected"):
        maps.other_map(first, 0, (12, 16))


def test_other_videos_map_holds_only_other_videos_fixations(hand_fixations):
    first, second = hand_fixations
    # Every frame in the pool and every pool frame drawn: the union of B's frames, rescaled from 12x16 to 6x8.
    pool = ShufflePool([first, second], frames_per_video=3)
    assert pixels(pool.other_map(first, 0, (6, 8), other_frames=10)) == [(0, 0), (5, 7)]
    # Upscaled, A's pixel r lands on the pixel holding its centre, (r + 0.5) * 2: row 2r + 1.
    assert pixels(pool.other_map(second, 1, (12, 16), other_frames=10)) == [(3, 3), (5, 5), (7, 7), (9, 9)]
    # One frame drawn: exactly one of A's frames, scaled up, and the same one whatever the order of the draws.
    one = pixels(pool.other_map(second, 0, (6, 8), other_frames=1))
    assert one in ([(1, 1), (2, 2)], [(2, 2), (3, 3)], [(4, 4)])
    assert one == pixels(ShufflePool([second, first], frames_per_video=3).other_map(second, 0, (6, 8), other_frames=1))


def test_each_protocol_uses_its_own_sauc_other_map(avad, tmp_path, monkeypatch):
    from dtfsal_hf import evaluation

    records = load_records("AVAD", avad, "test", fold="all")
    seen = []
    original = evaluation.saliency_metrics.compute_metrics

    def spy(*args, other_map=None, **kwargs):
        seen.append(None if other_map is None else other_map.cpu().numpy())
        return original(*args, other_map=other_map, **kwargs)

    monkeypatch.setattr(evaluation.saliency_metrics, "compute_metrics", spy)
    stavis = evaluate(records, ground_truth_predictor, tmp_path / "stavis", progress=False, metrics=("sauc",))
    assert stavis["sauc_other"] == "same-video"
    # The first frame scored is V1's frame 0: the other map is V1's frames 1-4, as SameVideoOtherMaps builds it.
    assert np.array_equal(seen[0], SameVideoOtherMaps().other_map(records[0], 0, (24, 32)))
    dhf1k = evaluate(records, ground_truth_predictor, tmp_path / "dhf1k", protocol="dhf1k", progress=False, metrics=("sauc",))
    assert dhf1k["sauc_other"] == "videos"
    chosen = evaluate(records, ground_truth_predictor, tmp_path / "chosen", sauc_other="videos", progress=False, metrics=("sauc",))
    assert chosen["protocol"] == "stavis" and chosen["sauc_other"] == "videos"
    assert chosen["metrics"]["sauc"] != stavis["metrics"]["sauc"]
    # No draw in the same-video map: scores do not depend on the order or on resuming.
    reversed_order = evaluate(records[::-1], ground_truth_predictor, tmp_path / "reversed", progress=False, metrics=("sauc",))
    assert reversed_order["metrics"]["sauc"] == pytest.approx(stavis["metrics"]["sauc"], abs=1e-12)
    # A single video has an other map of its own under STAViS's definition, none under Borji's.
    alone = evaluate(records[:1], ground_truth_predictor, tmp_path / "alone", progress=False, metrics=("sauc",))
    assert 0.5 < alone["metrics"]["sauc"] <= 1
    assert math.isnan(evaluate(records[:1], ground_truth_predictor, tmp_path / "alone-b", sauc_other="videos", progress=False, metrics=("sauc",))["metrics"]["sauc"])
    with pytest.raises(ValueError, match=r"another evaluation \(shuffle_pool: \{'other_map': 'same-video'"):
        evaluate(records, ground_truth_predictor, tmp_path / "stavis", sauc_other="videos", progress=False, metrics=("sauc",))
    with pytest.raises(ValueError, match="sauc_other must be"):
        evaluate(records, ground_truth_predictor, tmp_path / "x", sauc_other="frames", progress=False)


def test_prediction_folder_npz_png_and_errors(avad, tmp_path):
    records = load_records("AVAD", avad, "test", fold=1)
    folder = tmp_path / "predictions"
    folder.mkdir()
    maps = ground_truth_predictor(records[0])
    np.savez(folder / f"{records[0].name}.npz", maps=maps[:, ::2, ::2])
    from PIL import Image

    (folder / "fold_1" / records[1].name).mkdir(parents=True)
    for i, saliency in enumerate(ground_truth_predictor(records[1])):
        Image.fromarray(np.round(saliency * 255).astype(np.uint8)).save(folder / "fold_1" / records[1].name / f"{i:04d}.png")
    predictions = PredictionFolder(folder)
    assert predictions(records[0]).shape == (5, 12, 16) and predictions(records[1]).shape == (5, 24, 32)
    # The layout `dtfsal predict` writes: <video>/maps.npz with uint8 maps.
    (folder / "other" / records[1].name).mkdir(parents=True)
    np.savez(folder / "other" / records[1].name / "maps.npz", maps=np.full((5, 6, 8), 255, np.uint8), times=np.arange(5.0))
    assert PredictionFolder(folder / "other")(records[1]).max() == 1.0
    summary = evaluate(records, predictions, tmp_path / "out", progress=False)
    # The half-size map, blurred and upsampled under the STAViS protocol, stays close to the truth.
    assert summary["metrics"]["cc"] > 0.9
    np.savez(folder / f"{records[0].name}.npz", maps=maps[:3])
    with pytest.raises(ValueError, match=r"expected 5 maps"):
        predictions(records[0])
    with pytest.raises(ValueError, match="no prediction for AVAD/fold2/V2"):
        predictions(load_records("AVAD", avad, "test", fold=2)[0])


def test_cli_evaluate_on_saved_predictions(avad, tmp_path, capsys):
    folder = tmp_path / "predictions"
    folder.mkdir()
    for record in load_records("AVAD", avad, "test", fold="all"):
        np.savez(folder / f"{record.name}.npz", maps=ground_truth_predictor(record))
    code = main(["evaluate", "--dataset", "avad", "--root", str(avad), "--predictions", str(folder), "--output", str(tmp_path / "eval"), "--metrics", "cc,nss,sim"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| dataset | videos | CC | NSS | SIM |" in printed and "| AVAD | 4 |" in printed
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["num_videos"] == 4
    with pytest.raises(ValueError, match="exactly one of"):
        run_evaluation("avad", avad, tmp_path / "x")


def test_model_run_through_the_evaluation(avad, tmp_path):
    from dtfsal_hf.configuration_dtfsal import DTFSalConfig
    from dtfsal_hf.modeling_dtfsal import DTFSalModel

    torch.manual_seed(0)
    model = DTFSalModel(DTFSalConfig.tiny(use_audio=True))
    record = load_records("AVAD", avad, "test", fold=2)[0]
    maps = model_predictor(model, batch_size=2)(record)
    # One map per frame at the model's resolution (the tiny configuration's 64×96), in [0, 1].
    assert maps.shape == (5, 64, 96) and 0 <= maps.min() and maps.max() <= 1
    model.save_pretrained(tmp_path / "model")
    summary = run_evaluation("AVAD", avad, tmp_path / "eval", fold=1, model=str(tmp_path / "model"), max_videos=1, progress=False, metrics=("cc", "nss"))
    assert summary["num_videos"] == 1 and -1 <= summary["metrics"]["cc"] <= 1


DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "dtfsal_hf/assets/demo-checkpoint"


def test_saved_maps_score_as_the_model_that_made_them(tmp_path, capsys):
    """`dtfsal evaluate --model` blurred a model's maps (σ = 2 px) on its output grid, `--predictions` the same
    model's maps saved by `dtfsal predict` on the video's grid: one model, two scores. Saved maps are now brought
    back to the model's grid and blurred there. The demo checkpoint (64×96 maps, trained, so its maps have the
    contrast a real model's have) on a synthetic video of 96×160 with its sound."""
    root = generate_synthetic_dataset(tmp_path / "synthetic", SyntheticConfig(
        num_videos=3, duration_s=0.4, segment_s=(0.3, 1.0), seed=0), progress=False)
    video = tmp_path / "videos" / "synth_0000"  # fold 1's test video: its frames with its sound, for `dtfsal predict`
    shutil.copytree(root / "video_frames" / "SyntheticAV" / "synth_0000", video)
    shutil.copy(root / "video_audio" / "SyntheticAV" / "synth_0000" / "synth_0000.wav", video)
    predictions = tmp_path / "predictions"
    assert main(["predict", str(video), "--model", str(DEMO_CHECKPOINT), "--output", str(predictions), "--fps", "25",
                 "--no-overlay", "--no-pngs", "--no-progress"]) == 0
    with np.load(predictions / "synth_0000" / "maps.npz") as saved:
        assert saved["maps"].dtype == np.uint8 and saved["maps"].shape == (10, 96, 160)
    command = ["evaluate", "--dataset", "SyntheticAV", "--root", str(root), "--fold", "1", "--no-progress"]

    def scores(name, *source):
        assert main(command + ["--output", str(tmp_path / name), *source]) == 0
        return json.loads((tmp_path / name / "summary.json").read_text())

    model = scores("model", "--model", str(DEMO_CHECKPOINT))
    on_grid = scores("grid", "--predictions", str(predictions), "--blur-grid", "64x96")
    assert model["blur"]["grids"] == on_grid["blur"]["grids"] == {"64x96": 1}
    # What is left between the two: the saved maps' 8 bits (a 255th of the peak; values under half a grey level
    # become 0, which KLD's logarithm weighs most: KLD 0.026 lower here, 18%) and their round trip through the
    # video's grid (bilinear up, then down: NSS 0.018 lower, 0.25%); CC, AUC-J, SIM and sAUC move by under 0.002.
    tolerance = {"cc": 2e-3, "nss": 0.03, "auc_judd": 1e-3, "sim": 5e-3, "kld": 0.04, "sauc": 5e-3}
    for name, allowed in tolerance.items():
        assert abs(on_grid["metrics"][name] - model["metrics"][name]) <= allowed, (name, on_grid["metrics"], model["metrics"])
    # The control: blurred on the video's grid, as saved maps were, they score measurably otherwise (NSS 0.16 and
    # SIM 0.017 higher here; KLD 0.041 lower: the 8 bits dominate it either way).
    on_video = scores("video", "--predictions", str(predictions), "--blur-grid", "96x160")
    for name in ("nss", "sim"):
        assert abs(on_video["metrics"][name] - model["metrics"][name]) > 3 * tolerance[name], (name, on_video, model)
    # `dtfsal predict` records the grid with the maps (`map_size` in done.json): used without --blur-grid.
    marker = predictions / "synth_0000" / "done.json"
    written = json.loads(marker.read_text())
    assert written["map_size"] == [64, 96]
    assert scores("recorded", "--predictions", str(predictions))["metrics"] == on_grid["metrics"]
    # Nothing recorded (maps written by another program), nothing given: the paper model's grid, said once.
    marker.write_text(json.dumps({key: value for key, value in written.items() if key != "map_size"}))
    capsys.readouterr()
    assert scores("default", "--predictions", str(predictions))["blur"] == {
        "sigma": 2.0, "grid": "auto", "grids": {"224x384": 1}}
    assert "its saved maps record no grid (map_size in done.json): blurring them on 224x384" in capsys.readouterr().out


def test_blur_grid_is_checked_and_a_recorded_one_is_data(avad, tmp_path, capsys):
    from dtfsal_hf import DTFSalConfig

    assert DEFAULT_BLUR_GRID == tuple(DTFSalConfig().image_size)
    assert check_grid("224x384") == check_grid([224, 384]) == check_grid((np.int64(224), 384)) == (224, 384)
    for bad in ("224", "0x384", "-1x2", "1.5x2", "axb", [224, 384, 3], [True, 2], "99999x2", None, {"h": 1}):
        with pytest.raises(ValueError, match="must be a height and a width in pixels"):
            check_grid(bad)
    records = load_records("AVAD", avad, "test", fold=1)
    folder = tmp_path / "predictions"
    (folder / records[0].name).mkdir(parents=True)
    np.savez(folder / records[0].name / "maps.npz", maps=np.full((5, 6, 8), 255, np.uint8))
    predictions = PredictionFolder(folder)
    assert predictions.blur_grid(records[0]) is None  # no done.json
    marker = folder / records[0].name / "done.json"
    marker.write_text("not json")
    assert predictions.blur_grid(records[0]) is None
    marker.write_text(json.dumps({"map_size": [64, 96]}))
    assert predictions.blur_grid(records[0]) == (64, 96)
    marker.write_text(json.dumps({"map_size": "__import__('os').system('true')"}))
    with pytest.raises(ValueError, match=r"done.json: map_size must be a height and a width"):
        predictions.blur_grid(records[0])
    code = main(["evaluate", "--dataset", "avad", "--root", str(avad), "--predictions", str(folder), "--output",
                 str(tmp_path / "eval"), "--blur-grid", "0x96"])
    error = capsys.readouterr().err
    assert code == 1 and "error: blur_grid must be a height and a width in pixels" in error and "Traceback" not in error


def test_the_blur_grid_is_where_the_blur_happens():
    """An impulse on a 16×16 map: blurred on its own grid, σ is 2 of its pixels; brought to a 32×32 grid first, 2 of
    those, half as wide on the map. The DHF1K protocol does not blur, so it has no grid."""
    impulse = np.zeros((1, 16, 16))
    impulse[0, 7:9, 7:9] = 1

    def spread(grid):
        blurred = prepare_prediction(impulse, (64, 64), "stavis", grid=grid)[0].numpy()
        rows = np.arange(64) + 0.5
        weights = blurred.sum(axis=1) / blurred.sum()
        return float(np.sqrt((weights * (rows - (weights * rows).sum()) ** 2).sum()))

    assert spread(None) > 1.5 * spread((32, 32))
    assert torch.equal(prepare_prediction(impulse, (64, 64), "dhf1k", grid=(32, 32)),
                       prepare_prediction(impulse, (64, 64), "dhf1k"))


def test_score_frame_and_summarise_are_the_evaluations(avad, tmp_path):
    """`evaluate` is `score_frame` on every frame and `summarise` over them: per frame, per video, over videos."""
    records = load_records("AVAD", avad, "test", fold="all")
    metrics = ("cc", "nss", "auc_judd", "sim", "kld")
    summary = evaluate(records, center_bias_predictor(0.2), tmp_path / "eval", metrics=metrics, progress=False)
    frames = []
    for record in records:
        prediction = center_bias_predictor(0.2)(record)
        for frame in range(record.num_frames):
            scores = score_frame(prediction[frame], record.saliency_map(frame), record.fixation_map(frame), "stavis",
                                 metrics, seed=frame_seed(0, record.key, frame))
            frames.append({"key": record.key, "dataset": record.dataset, **scores})
    by_hand = summarise(frames, metrics)
    assert by_hand["num_videos"] == summary["num_videos"] == 4
    for name in metrics:
        assert by_hand["metrics"][name] == pytest.approx(summary["metrics"][name], rel=1e-12), name
    # Per-video rows (as per_video.csv holds them, text) give the same means; a video without a scored frame
    # counts in no mean.
    rows = list(csv.DictReader((tmp_path / "eval" / "per_video.csv").open()))
    unscored = {**rows[0], "key": "AVAD/fold9/X", "scored_frames": "0", **{name: "nan" for name in metrics}}
    again = summarise(rows + [unscored], metrics)
    assert again["metrics"] == summary["metrics"] and again["num_unscored_videos"] == 1
    assert again["per_dataset"]["AVAD"]["num_videos"] == 4


def test_center_bias_map():
    bias = center_bias_map(9, 16)
    # Odd height: a pixel row sits on the centre; even width: the nearest columns are half a pixel off.
    assert bias.shape == (9, 16) and bias.max() == pytest.approx(np.exp(-0.5 * (0.5 / 4) ** 2))
    assert bias[4, 7] == bias.max() and bias[0, 0] < 0.05


@pytest.fixture()
def one_thread():
    """Full-resolution metrics are many small tensor operations: one thread avoids contention on busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Video 002 of DHF1K, one frame per second (every 30th of its 783 frames: 27 frames), ground truth
# regenerated from the gaze; the whole video's values are in docs/evaluation.md.
REAL_CENTER_BIAS = {"cc": 0.3598, "nss": 2.2357, "auc_judd": 0.9686, "sim": 0.1421, "kld": 2.4242, "auc_borji": 0.9623}
REAL_UNIFORM = {"cc": 0.0, "nss": 0.0, "auc_judd": 0.5, "sim": 0.0657, "kld": 3.3605, "auc_borji": 0.5}


def test_real_dhf1k_002_baselines(tmp_path, one_thread):
    gaze = shared_data_or_skip("dhf1k_002", "gaze")
    per_frame = gaze_fixations(sorted(gaze.glob("P*_Trail002.txt")), (640, 360), num_frames=783)[::30]
    folder = write_dhf1k_annotation(
        tmp_path / "annotation" / "0002",
        np.stack([fixation_map(points, (360, 640)) for points in per_frame]),
        np.stack([continuous_map(points, (360, 640)) for points in per_frame]),
    )
    record = VideoRecord(
        dataset="DHF1K", name="0002", split="train", num_frames=len(per_frame), fps=1.0,
        map_paths=sorted(str(p) for p in (folder / "maps").iterdir()),
        fixation_paths=sorted(str(p) for p in (folder / "fixation").iterdir()),
    )
    names = ("cc", "nss", "auc_judd", "sim", "kld", "auc_borji")
    centre = evaluate([record], center_bias_predictor(), tmp_path / "centre", metrics=names, progress=False)
    uniform = evaluate([record], uniform_predictor, tmp_path / "uniform", metrics=names, progress=False)
    for name in names:
        assert centre["metrics"][name] == pytest.approx(REAL_CENTER_BIAS[name], abs=1e-3), name
        assert uniform["metrics"][name] == pytest.approx(REAL_UNIFORM[name], abs=1e-3), name
    # sAUC with STAViS's other map (the video's own other frames): centre bias, which AUC-J rewards, is
    # near chance, because the video's own fixations are centred too; the ground-truth maps stay well above.
    same_video = dict(metrics=("sauc",), sauc_other="same-video", progress=False)
    assert evaluate([record], center_bias_predictor(), tmp_path / "centre-s", **same_video)["metrics"]["sauc"] == pytest.approx(0.5117, abs=1e-3)
    assert evaluate([record], ground_truth_predictor, tmp_path / "truth-s", **same_video)["metrics"]["sauc"] == pytest.approx(0.7785, abs=1e-3)
