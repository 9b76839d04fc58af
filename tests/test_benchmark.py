"""`dtfsal benchmark` on the tiny model: every path measured in one run, reports, whole-video figures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.benchmark import (
    DEFAULT_PATHS,
    PATHS,
    default_paths,
    format_report,
    make_long_video,
    matmul_rate,
    measure_video_memory,
    measure_video_throughput,
    own_layers_least_share,
    prepare_path,
    run_benchmark,
    targets,
    torchvision_mvit_v2_s,
)
from dtfsal_hf.cli import main
from dtfsal_hf.inference import PRESETS, Runtime, SaliencyPredictor, cpu_native_flags
from dtfsal_hf.media import iter_frames, probe_video, write_overlay_video

REAL_VIDEO = "/work/shared/data/dhf1k_002/002.AVI"


def tiny_model() -> DTFSalModel:
    torch.manual_seed(0)
    return DTFSalModel(DTFSalConfig.tiny()).eval()


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    """A 1 s, 96x64 video with sound (30 fps)."""
    import numpy as np

    path = tmp_path_factory.mktemp("video") / "small.mp4"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(30)]
    maps = [rng.random((64, 96), dtype=np.float32) for _ in range(30)]
    from dtfsal_hf.media import AudioTrack

    audio = AudioTrack((0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    write_overlay_video(frames, maps, audio, path, fps=30)
    return path


@pytest.fixture(scope="module")
def tiny_result():
    return run_benchmark(model=tiny_model(), paths=["sdpa-fp32", "blocked-bf16"], repeats=2, matmul_size=256)


def test_every_network_and_path_is_measured(tiny_result):
    rows = {(r.network, r.path) for r in tiny_result.results}
    assert rows == {(n, p) for n in ("DTFSal", "mvit_v2_s") for p in ("eager-fp32", "sdpa-fp32", "blocked-bf16")}
    for r in tiny_result.results:
        assert len(r.latencies_s) == 2 and r.latency_s > 0 and r.maps_per_second > 0
        assert r.flops_per_clip > 0 and r.peak_memory_bytes >= 0
    assert tiny_result.floor.network == "mvit_v2_s" and tiny_result.floor.path == "eager-fp32"


def test_maps_are_compared_with_eager_fp32(tiny_result):
    by_path = {r.path: r for r in tiny_result.results if r.network == "DTFSal"}
    assert by_path["eager-fp32"].max_abs_diff == 0.0
    assert by_path["sdpa-fp32"].max_abs_diff < 1e-5
    assert by_path["blocked-bf16"].max_abs_diff < 0.1 and by_path["blocked-bf16"].map_cc > 0.99


def test_report_lists_rows_and_targets(tiny_result):
    report = format_report(tiny_result)
    assert report.count("| DTFSal |") == 3 and report.count("| mvit_v2_s |") == 3
    assert "x floor" in report and "cores" in report
    rows = targets(tiny_result)
    names = [row[0] for row in rows]
    assert any("backbone alone" in name for name in names) and any(">= 5x" in name for name in names)
    # The ratio of medians, and each repetition's ratio of its two adjacent calls
    eager, floor = tiny_result.find("DTFSal", "eager-fp32", 1), tiny_result.floor
    measured = next(row[1] for row in rows if "backbone alone" in row[0])
    paired = ", ".join(f"{e / f:.2f}" for e, f in zip(eager.latencies_s, floor.latencies_s))
    assert measured.startswith(f"{eager.latency_s / floor.latency_s:.2f}x")
    assert len(eager.latencies_s) < 2 or measured.endswith(f"(per repetition: {paired})")
    # The speed-up row names the fastest path whatever its maps, and the fastest within the bound where they differ
    fastest = max((r for r in tiny_result.results if r.network == "DTFSal"), key=lambda r: r.maps_per_second)
    speed = next(row for row in rows if ">= 5x" in row[0])
    assert speed[1].startswith(f"{fastest.maps_per_second / eager.maps_per_second:.2f}x ({fastest.path}, batch 1)")
    assert (fastest.max_abs_diff <= 0.02) == ("within 0.02" not in speed[1])
    # ... and what 5x asks of the machine: eager's seconds over the FLOPs at the fastest measured matrix rate
    ceiling = eager.seconds_per_clip * max(tiny_result.matmul["flops_per_second"].values()) / eager.flops_per_clip
    assert f"this run's ceiling {ceiling:.2f}x" in speed[1]
    assert speed[2] is (fastest.maps_per_second / eager.maps_per_second >= 5.0 and fastest.max_abs_diff <= 0.02)
    json.dumps(tiny_result.to_dict())


def test_the_backbone_row_gives_the_least_the_own_layers_add(tiny_result):
    """The "<= 1.15x the backbone" row says what the own layers add at least in this run: DTFSal's FLOPs less the
    backbone's at the measured fp32 matrix rate, over the backbone's time; nothing where the model's encoder is
    smaller than the backbone (the tiny model's)."""
    row = next(r for r in targets(tiny_result) if "backbone alone" in r[0])
    assert "alone add" not in row[1]
    assert own_layers_least_share(tiny_result, tiny_result.find("DTFSal", "eager-fp32", 1)) is None
    # The paper's proportions: own layers 0.33x the backbone's FLOPs
    floor = tiny_result.floor
    eager = dataclasses.replace(tiny_result.find("DTFSal", "eager-fp32", 1), flops_per_clip=int(floor.flops_per_clip * 1.33))
    result = dataclasses.replace(tiny_result, results=[eager] + [r for r in tiny_result.results if r.network == "mvit_v2_s"])
    expected = 0.33 * floor.flops_per_clip / tiny_result.matmul["flops_per_second"]["float32"] / floor.seconds_per_clip
    assert own_layers_least_share(result, eager) == pytest.approx(expected, rel=1e-6)
    row = next(r for r in targets(result) if "backbone alone" in r[0])
    assert f"fp32 matrix-multiply rate alone add {expected:.2f}x the backbone's time" in row[1]
    assert own_layers_least_share(dataclasses.replace(result, matmul=None), eager) is None


def test_each_path_is_a_fraction_of_the_machines_matrix_multiply_rate(tiny_result):
    """The probe's fp32 and bf16 rates, measured in the run at its thread count, and each path's FLOP rate as a
    fraction of the rate in its dtype (or fp32's, where faster: a CPU without native bf16)."""
    matmul = tiny_result.matmul
    assert matmul["size"] == 256 and matmul["threads"] == torch.get_num_threads()
    assert matmul["sizes"] == {"float32": 256, "bfloat16": 256}
    rates = matmul["flops_per_second"]
    assert set(rates) == {"float32", "bfloat16"} and all(rate > 0 for rate in rates.values())
    for r in tiny_result.results:
        rate = max(rates["float32"], rates["bfloat16" if r.path.endswith("bf16") else "float32"])
        assert r.matmul_fraction == pytest.approx(r.flops_per_clip / r.seconds_per_clip / rate)
        # A sanity bound (a unit slip would be off by 1e3): at 256^3 the probe runs far below the machine's rate
        # (13.6 against 124.5 GFLOP/s at 2048^3 on a 2-core AVX2 CPU), and the tiny model's layers beat it 1.54x there.
        assert 0 < r.matmul_fraction <= 5
    report = format_report(tiny_result)
    assert "Matrix-multiply rates on the CPU (256^3, best of 3," in report and "fp32 " in report and "bf16 " in report
    assert "native bf16: " in report and "of matmul rate" in report
    assert tiny_result.machine["cpu_bf16_flags"] == cpu_native_flags(torch.bfloat16)


def test_the_matrix_multiply_probe_times_what_it_says():
    """A product twice the size costs 8 times the FLOPs: its rate stays within a factor of the smaller's."""
    (small, n_small), (large, n_large) = matmul_rate(torch.float32, 128), matmul_rate(torch.float32, 256)
    assert (n_small, n_large) == (128, 256) and small > 0 and large > 0 and 0.1 < large / small < 20
    # A product too slow for the time allowed is measured at a smaller size.
    rate, n = matmul_rate(torch.float32, 4096, repeats=1, max_seconds=1e-9)
    assert n == 256 and rate > 0
    with pytest.raises(ValueError, match="positive size"):
        matmul_rate(torch.float32, 0)


def test_a_product_kernel_far_slower_than_the_other_is_not_timed_at_larger_sizes(monkeypatch):
    """Without native bf16 `torch.mm` runs at a tenth of oneDNN's product: it is dropped after the first size."""
    import time

    from dtfsal_hf import benchmark

    sizes = {"fast": [], "slow": []}

    def fast(a, b, out):
        sizes["fast"].append(a.shape[0])
        return torch.mm(a, b, out=out)

    def slow(a, b, out):
        sizes["slow"].append(a.shape[0])
        time.sleep(0.05)
        return torch.mm(a, b, out=out)

    monkeypatch.setattr(benchmark, "_MATMUL_KERNELS", {"fast": fast, "slow": slow})
    rate, n = matmul_rate(torch.float32, 1024, repeats=2)
    assert n == 1024 and rate > 0
    assert sizes["slow"] == [256] * 3  # warm-up and two timed calls, at the first size only
    assert sizes["fast"] == [256] * 3 + [512] * 3 + [1024] * 3


def _cpu_flags(tmp_path):
    with_amx, without = tmp_path / "amx", tmp_path / "avx2"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    return str(with_amx), str(without), str(tmp_path / "absent")


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_amx, without, absent = _cpu_flags(tmp_path)
    assert cpu_native_flags(torch.bfloat16, with_amx) == ["avx512_bf16", "amx_bf16"]
    assert cpu_native_flags("bf16", without) == []
    assert cpu_native_flags(torch.float16, with_amx) == []
    assert cpu_native_flags(torch.bfloat16, absent) is None


def test_bf16_without_native_arithmetic_is_named_slow_and_left_out_of_the_default_paths(tmp_path):
    with_amx, without, absent = _cpu_flags(tmp_path)
    reason = PRESETS["blocked-bf16"].slow_reason("cpu", without)
    assert reason.startswith("this CPU has no native bf16 matrix arithmetic (AVX512_BF16 or AMX_BF16)")
    assert "blocked-bf16 runs slower here than float32" in reason
    assert PRESETS["sdpa-fp16"].slow_reason("cpu", with_amx).startswith("this CPU has no native fp16")
    # Native flags, float32, a GPU, or flags that cannot be read: nothing to say.
    assert PRESETS["blocked-bf16"].slow_reason("cpu", with_amx) is None
    assert PRESETS["sdpa-fp32"].slow_reason("cpu", without) is None
    assert PRESETS["sdpa-bf16"].slow_reason("cuda", without) is None
    assert PRESETS["sdpa-bf16"].slow_reason("cpu", absent) is None
    lines = []
    assert default_paths("cpu", lines.append, without) == ["eager-fp32", "sdpa-fp32", "blocked-fp32"]
    assert lines == ["this CPU has no native bf16 matrix arithmetic (AVX512_BF16 or AMX_BF16): left out sdpa-bf16, "
                     "blocked-bf16 (name them with --paths to time them)"]
    lines = []
    assert default_paths("cpu", lines.append, with_amx) == list(DEFAULT_PATHS["cpu"]) and lines == []
    assert default_paths("cpu", lines.append, absent) == list(DEFAULT_PATHS["cpu"]) and lines == []
    assert default_paths("cuda", lines.append, without) == list(DEFAULT_PATHS["cuda"]) and lines == []


def test_the_predictor_warns_when_its_dtype_is_slow_on_this_cpu(monkeypatch):
    import warnings

    from dtfsal_hf.inference import runtime

    monkeypatch.setattr(runtime, "cpu_native_flags", lambda dtype, cpuinfo="/proc/cpuinfo": [])
    with pytest.warns(UserWarning, match=r"^This CPU has no native bf16 matrix arithmetic \(AVX512_BF16 or AMX_BF16\): bf16 runs slower here than float32$"):
        SaliencyPredictor.from_pretrained("demo", dtype="bfloat16")
    monkeypatch.setattr(runtime, "cpu_native_flags", lambda dtype, cpuinfo="/proc/cpuinfo": ["avx512_bf16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SaliencyPredictor.from_pretrained("demo", dtype="bfloat16")
        SaliencyPredictor.from_pretrained("demo")


def test_floor_is_torchvisions_mvit_v2_s():
    from torchvision.models.video import mvit_v2_s

    floor, reference = torchvision_mvit_v2_s(16, (224, 224)), mvit_v2_s()
    assert {k: v.shape for k, v in floor.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_channels_last_path_gives_the_same_maps():
    model = tiny_model()
    inputs = DTFSalModel.build_dummy_inputs(model.config, 1)
    expected = prepare_path(model, PATHS["sdpa-fp32"])(inputs)
    actual = prepare_path(model, Runtime("cl", attention="sdpa", channels_last=True))(inputs)
    assert (actual - expected).abs().max() < 1e-5


def test_float32_ends_run_in_float32_under_autocast():
    import copy

    from dtfsal_hf.inference.runtime import FLOAT32_ENDS, keep_float32

    model = DTFSalModel.from_pretrained("dtfsal_hf/assets/demo-checkpoint").eval()
    kept = keep_float32(copy.deepcopy(model))
    assert list(kept.state_dict()) == list(model.state_dict())
    assert isinstance(kept.fuse_maps, torch.nn.Conv3d) and type(kept.fuse_maps) is not torch.nn.Conv3d
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.dtype

        return hook

    for name in ("visual_encoder.conv_proj", "decoder_heads.0", "fuse_maps", "fusion_blocks.0"):
        kept.get_submodule(name).register_forward_hook(record(name))
    inputs = DTFSalModel.build_dummy_inputs(model.config, 1)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        kept(**inputs)
    assert seen == {"visual_encoder.conv_proj": torch.float32, "decoder_heads.0": torch.float32,
                    "fuse_maps": torch.float32, "fusion_blocks.0": torch.bfloat16}
    assert set(FLOAT32_ENDS) == {"visual_encoder.conv_proj", "decoder_heads", "fuse_maps"}
    # On trained weights both bf16 paths stay close to the fp32 maps.
    reference = prepare_path(model, PATHS["eager-fp32"])(inputs)
    errors = {name: (prepare_path(model, PATHS[name])(inputs) - reference).abs().max().item()
              for name in ("blocked-bf16", "blocked-mixed")}
    assert max(errors.values()) < 0.01 and min(errors.values()) > 0, errors


def test_the_backbone_alone_runs_under_a_float32_ends_path():
    """torchvision's MViT has the patch embedding of the float32 ends (not DTFSal's decoder): a `-mixed` path
    times it with that layer in fp32."""
    config = DTFSalConfig.tiny()
    torch.manual_seed(0)
    backbone = torchvision_mvit_v2_s(config.num_frames, config.image_size).eval()
    seen = []
    run = prepare_path(backbone, PATHS["blocked-mixed"])
    inputs = {"videos": torch.randn(1, 3, config.num_frames, *config.image_size)}
    assert run(inputs).shape == (1, 400)
    runner = PATHS["blocked-mixed"].prepare(backbone)
    runner.conv_proj.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with PATHS["blocked-mixed"].context("cpu"):
        runner(inputs["videos"])
    assert seen == [torch.float32]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown paths"):
        run_benchmark(model=tiny_model(), paths=["turbo"])
    with pytest.raises(ValueError, match="runs on cuda"):
        run_benchmark(model=tiny_model(), paths=["sdpa-fp16"], device="cpu")
    with pytest.raises(ValueError, match="repeats"):
        run_benchmark(model=tiny_model(), repeats=0)


def test_video_throughput_and_stride_effect(small_video):
    report = measure_video_throughput(small_video, tiny_model(), "sdpa-fp32", max_frames=12, strides=(1, 4))
    assert report["frames"] == 12 and report["has_audio"]
    one, four = report["strides"]["1"], report["strides"]["4"]
    assert one["frames_per_second"] > 0 and one["model_calls"] == 12 and four["model_calls"] == 4
    # Frames 0, 4, 8 and 11 are predicted at stride 4 too; the others are interpolated
    assert 0 < four["max_abs_diff_vs_stride_1"] <= 1 and four["mean_cc_vs_stride_1"] > 0


def test_long_video_repeats_the_source(small_video, tmp_path):
    looped = make_long_video(small_video, 2.5, tmp_path / "looped.mkv")
    assert sum(1 for _ in iter_frames(looped)) == 90
    assert probe_video(looped).has_audio


def test_whole_video_memory_runs_what_predict_writes_in_fresh_processes(small_video):
    """Each length in its own process, `maps.npz` and the overlay written (the frame count is read back from the
    run's done.json), and the report's growth is the ratio of the two peaks."""
    report = measure_video_memory(small_video, lengths_s=(1, 3), model_id="random-tiny", stride=4, batch_size=2)
    assert [run["frames"] for run in report["runs"].values()] == [30, 90]
    peaks = [run["peak_rss_bytes"] for run in report["runs"].values()]
    assert all(peak > 50 * 2**20 for peak in peaks)
    assert report["growth"] == pytest.approx(peaks[1] / peaks[0] - 1)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--tiny", "--paths", "sdpa-fp32", "--repeats", "1", "--no-backbone", "--matmul-size", "128",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| DTFSal | sdpa-fp32" in printed and "| DTFSal | eager-fp32" in printed
    data = json.loads(out.read_text())
    assert {r["path"] for r in data["results"]} == {"eager-fp32", "sdpa-fp32"}
    assert data["command"].startswith("dtfsal ")
    assert data["matmul"]["size"] == 128 and set(data["matmul"]["flops_per_second"]) == {"float32", "bfloat16"}
    assert all(0 < r["matmul_fraction"] <= 1.5 for r in data["results"])


@pytest.fixture
def predictors(monkeypatch) -> list:
    """Every `SaliencyPredictor` made during the test, in order."""
    from dtfsal_hf.inference import SaliencyPredictor

    made = []
    original = SaliencyPredictor.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(SaliencyPredictor, "__init__", recording)
    return made


def test_the_whole_video_benchmark_times_the_predictor_under_the_runtime(small_video, predictors):
    from dtfsal_hf.inference import PRESETS

    measure_video_throughput(small_video, tiny_model(), "blocked-bf16", max_frames=10, strides=(1,))
    assert [predictor.runtime for predictor in predictors] == [PRESETS["blocked-bf16"]]


def test_the_whole_video_run_takes_its_own_batch_size(small_video, tmp_path, predictors, capsys):
    """`--video-batch-size` reaches the predictor (the GPU check times whole videos at the per-clip rows' batch)
    and the report; a batch below 1 is refused in one line."""
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--tiny", "--paths", "sdpa-fp32", "--repeats", "1", "--no-backbone", "--matmul-size", "0",
                 "--video", str(small_video), "--video-frames", "7", "--strides", "1", "--video-path", "sdpa-fp32",
                 "--video-batch-size", "3", "--json", str(out)]) == 0
    assert [predictor.batch_size for predictor in predictors] == [3]
    video = json.loads(out.read_text())["video"]
    assert video["batch_size"] == 3 and video["frames"] == 7 and video["strides"]["1"]["model_calls"] == 7
    assert "path sdpa-fp32, batch 3" in capsys.readouterr().out
    assert main(["benchmark", "--tiny", "--video", str(small_video), "--video-batch-size", "0"]) == 1
    assert "whole-video batch size must be at least 1, got 0" in capsys.readouterr().err


def test_a_clip_through_the_predictor_is_the_benchmarks_path():
    from dtfsal_hf.inference import PRESETS, SaliencyPredictor

    model = tiny_model()
    clip = torch.randint(0, 255, (8, 64, 96, 3), dtype=torch.uint8).numpy()
    predictor = SaliencyPredictor(tiny_model(), runtime=PRESETS["blocked-bf16"])
    inputs = predictor.processor(videos=[clip], silent_audio=True, return_tensors="pt")
    expected = prepare_path(model, PRESETS["blocked-bf16"])(dict(inputs))
    assert torch.equal(predictor.predict_clips([clip]), expected)
    assert predictor.settings()["precision"] == "autocast" and predictor.model.config.mvit_attention == "blocked"
    with pytest.raises(ValueError, match="needs precision='autocast'"):
        Runtime(float32_ends=True)


_FAULTS_SCRIPT = r"""
import resource, sys, torch
from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.inference import Runtime

def faults_of_third_block():
    # a 256 MiB block touched and freed, three times: how many pages the third faults in
    counts = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(64 * 2**20)
        del block
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[-1]

Runtime(keep_freed_memory=sys.argv[1] == "keep").prepare(DTFSalModel(DTFSalConfig.tiny()), "cpu")
print(faults_of_third_block())
"""


@pytest.mark.skipif(not __import__("dtfsal_hf.inference.runtime", fromlist=["_glibc"])._glibc(), reason="glibc only")
def test_a_cpu_runtime_keeps_freed_memory_for_the_next_call(tmp_path):
    """After a CPU runtime prepares a model, a large block freed is reused (once the heap has settled, from the
    third block on) without faulting its pages in again;
    with `keep_freed_memory=False` (glibc's thresholds) the block is unmapped and every page faults anew. Run in
    fresh processes: the setting is the process's."""
    import subprocess
    import sys

    script = tmp_path / "faults.py"
    script.write_text(_FAULTS_SCRIPT)
    pages = 256 * 2**20 // 4096
    faults = {mode: int(subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True,
                                       timeout=300).stdout.split()[-1]) for mode in ("keep", "return")}
    assert faults["return"] > 0.9 * pages, faults
    assert faults["keep"] < 0.05 * pages, faults


def test_each_row_reports_what_its_calls_cost_the_machine(tiny_result):
    """CPU seconds in user space and in the kernel, page faults and the hypervisor's stolen share, per call."""
    from dtfsal_hf.benchmark import _steal_ticks

    for r in tiny_result.results:
        u = r.usage
        assert u is not None and u.user_s >= 0 and u.system_s >= 0 and u.page_faults >= 0
        assert u.user_s + u.system_s > 0
        if _steal_ticks() is not None:
            assert 0 <= u.steal_fraction <= 1
    report = format_report(tiny_result)
    assert "CPU s user / kernel | page faults | stolen |" in report
    assert "Freed memory is kept for reuse" in report
    # the first calls ran on memory handed back; an untimed round over every row lets the kept heap settle
    glibc = __import__("dtfsal_hf.inference.runtime", fromlist=["_glibc"])._glibc() is not None
    assert tiny_result.settings["warm_up_calls"] == 2
    assert "after 2 warm-up calls" in report or not glibc
    assert json.loads(json.dumps(tiny_result.to_dict()))["results"][0]["usage"]["page_faults"] >= 0
