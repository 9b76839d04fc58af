"""Dataset readers on small trees written in each dataset's exact layout."""

import numpy as np
import pytest

from data_trees import frame_image, ground_truth, shared_data_or_skip, write_dhf1k, write_images_maps_fixation, write_stavis
from dtfsal_hf.data import load_records, read_dhf1k, read_fold_list, read_hollywood2, read_stavis, read_ucf_sports


def test_dhf1k_splits_frames_from_video_or_images(tmp_path):
    root = write_dhf1k(tmp_path)
    train = read_dhf1k(root, "train")
    assert [r.name for r in train] == ["0001", "0002"]
    assert [r.name for r in read_dhf1k(root, "val")] == ["0601"]
    decoded, extracted = train
    assert decoded.video_path.endswith("001.AVI") and decoded.frame_paths == [] and decoded.has_audio
    assert extracted.frame_paths and extracted.video_path is None and not extracted.has_audio
    assert decoded.frames([0, 5, 0]).shape == (3, 24, 32, 3)
    np.testing.assert_array_equal(extracted.frames([3])[0], frame_image(3))
    # MPEG-4 is lossy: the decoded flat frames stay within a few levels of the originals.
    assert abs(int(decoded.frames([3])[0].mean()) - int(frame_image(3).mean())) <= 3
    saliency, fixation = ground_truth(4)
    np.testing.assert_allclose(decoded.saliency_map(4), saliency / 255.0, atol=1e-6)
    np.testing.assert_array_equal(decoded.fixation_map(4), fixation > 0)
    track = decoded.audio()
    assert track.sampling_rate == 16000 and track.waveform.shape[0] == pytest.approx(16000 * 6 / 30, abs=200)


def test_dhf1k_errors_name_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        read_dhf1k(tmp_path, "dev")
    with pytest.raises(ValueError, match="annotation"):
        read_dhf1k(tmp_path, "train")
    with pytest.raises(ValueError, match=r"frame indices must lie in \[0, 6\)"):
        read_dhf1k(write_dhf1k(tmp_path, videos=(2,)), "train")[0].frames([6])


def test_ucf_sports_and_hollywood2(tmp_path):
    ucf = write_images_maps_fixation(tmp_path / "ucf", {"training": ["Diving-Side-001"], "testing": ["Golf-Swing-Back-002", "Run-Side-001"]})
    test = read_ucf_sports(ucf, "test")
    assert [r.name for r in test] == ["Golf-Swing-Back-002", "Run-Side-001"] and test[0].num_frames == 5
    assert test[0].map_paths[2].endswith("Golf_Swing_Back_002_003.png")
    assert load_records("ucf_sports", ucf, "train")[0].dataset == "UCF-Sports"
    holly = write_images_maps_fixation(tmp_path / "holly", {"testing": ["actioncliptest00001"]}, pattern="{clip}_{frame:05d}.png")
    record = read_hollywood2(holly, "test")[0]
    assert record.dataset == "Hollywood-2" and record.fixation_map(0).sum() == 1 and not record.has_audio


def test_stavis_folds_and_single_split(tmp_path):
    videos = ["V1_Speech1", "V2_Dance", "V3_Violin", "V4_Talk"]
    root = write_stavis(tmp_path, "AVAD", videos)
    fold1 = read_stavis(root, "AVAD", "test", 1)
    assert [r.name for r in fold1] == ["V1_Speech1", "V4_Talk"] and fold1[0].fold == 1
    record = fold1[0]
    assert record.num_frames == 6 and record.fps == 25.0 and record.has_audio
    assert record.frames([0, 1]).shape == (2, 24, 32, 3)
    _, fixation = ground_truth(2)
    np.testing.assert_array_equal(record.fixation_map(2), fixation > 0)
    assert abs(record.saliency_map(2) - ground_truth(2)[0] / 255).max() < 0.05
    assert record.audio().waveform.shape == (16000 * 6 // 25,)
    everything = load_records("avad", root, "test", fold="all")
    assert [(r.fold, r.name) for r in everything] == [(1, "V1_Speech1"), (1, "V4_Talk"), (2, "V2_Dance"), (3, "V3_Violin")]
    assert [r.name for r in read_stavis(root, "AVAD", "train", 2)] == ["V1_Speech1", "V3_Violin", "V4_Talk"]
    diem = write_stavis(tmp_path / "diem", "DIEM", ["clip_a", "clip_b"], single_split=True)
    records = load_records("DIEM", diem, "test", fold="all")
    assert [(r.fold, r.name) for r in records] == [(None, "clip_a")]


def test_stavis_errors(tmp_path):
    root = write_stavis(tmp_path, "ETMD_av", ["a", "b", "c"])
    with pytest.raises(ValueError, match="no fold list for ETMD_av test fold 4"):
        read_stavis(root, "ETMD_av", "test", 4)
    (root / "fold_lists" / "ETMD_av_list_test_1_fps.txt").write_text("missing_video 10 25.0\n")
    with pytest.raises(ValueError, match="missing_video"):
        read_stavis(root, "ETMD_av", "test", 1)
    (root / "fold_lists" / "bad.txt").write_text("only_a_name\n")
    with pytest.raises(ValueError, match="expected 'name nframes fps'"):
        read_fold_list(root / "fold_lists" / "bad.txt")


def test_shared_fold_lists_parse():
    lists = shared_data_or_skip("stavis_fold_lists")
    counts = {db: sum(len(read_fold_list(lists / f"{db}_list_test_{k}_fps.txt")) for k in (1, 2, 3)) for db in ("AVAD", "Coutrot_db1", "Coutrot_db2", "ETMD_av", "SumMe")}
    assert all(count > 0 for count in counts.values())
    assert len(read_fold_list(lists / "DIEM_list_test_fps.txt")) > 0


def test_one_dataset_registry_names_readers_protocols_and_default_splits():
    from dtfsal_hf.cli import build_parser, command_parser
    from dtfsal_hf.data.readers import DATASETS, dataset_help, dataset_info
    from dtfsal_hf.evaluation import protocol_for

    assert [info.name for info in DATASETS][:3] == ["DHF1K", "UCF-Sports", "Hollywood-2"]
    for spelling in ("dhf1k", "DHF1K"):
        assert dataset_info(spelling).name == "DHF1K" and dataset_info(spelling).default_split == "val"
    for spelling in ("ucf", "UCF_Sports", "ucf-sports"):
        assert dataset_info(spelling).name == "UCF-Sports" and protocol_for(spelling) == "dhf1k"
    assert dataset_info("coutrot_db1").name == "Coutrot_db1" and protocol_for("AVAD") == "stavis"
    assert dataset_info("SyntheticAV").layout == "stavis" and dataset_info("SyntheticAV").default_split == "test"
    # The command line's help is the registry's.
    help_text = " ".join(build_parser().format_help().split())
    evaluate = next(a for a in command_parser("evaluate")._actions if "--dataset" in a.option_strings)
    assert evaluate.help == dataset_help() and all(info.name in dataset_help() for info in DATASETS)
    assert "evaluate" in help_text
