"""The `dtfsal` command's manners: an expected error is one line naming the problem, exit status 1, no
traceback; `--debug` shows the traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dtfsal_hf import cli
from dtfsal_hf.inference import DEMO_CHECKPOINT


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("training: {epochs: [1, 2\n")
    video = tmp / "clip.mp4"
    video.write_bytes(b"")
    return {
        "model neither folder nor Hub id": (
            ["predict", str(video), "--output", str(tmp / "out"), "--model", "runs/stage2/best"],
            r"no model folder at runs/stage2/best",
        ),
        "bad value": (["predict", str(video), "--output", str(tmp / "out"), "--model", "random-tiny", "--stride", "0"],
                      r"stride must be a positive integer, got 0"),
        "bad threads": (["predict", str(video), "--output", str(tmp / "out"), "--threads", "0"],
                        r"--threads must be a positive integer, got 0"),
        "missing config": (["train", "--config", str(tmp / "absent.yaml")], r"no training configuration at .*absent\.yaml"),
        "broken YAML": (["train", "--config", str(bad_yaml)], r"while parsing a flow sequence"),
        "config error": (["train", "--set", "training.epochs=ten"], r"training\.epochs must be int"),
        "push check": (["push", str(DEMO_CHECKPOINT), "org/name"], r"has no `auto_map`"),
        "missing folder to push": (["push", str(tmp / "nowhere"), "org/name"], r"Model folder not found"),
        "info of no model": (["info", "--model", "./nowhere"], r"no model folder at \./nowhere"),
        "export of no model": (["export", "./nowhere", str(tmp / "m.onnx")], r"no model folder at \./nowhere"),
    }


CASES = ["model neither folder nor Hub id", "bad value", "bad threads", "missing config", "broken YAML", "config error",
         "push check", "missing folder to push", "info of no model", "export of no model"]


@pytest.mark.parametrize("case", CASES)
def test_expected_errors_are_one_line(case, tmp_path, capsys):
    argv, message = _cases(tmp_path)[case]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"dtfsal {argv[0]}: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_the_command_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    command = [sys.executable, "-m", "dtfsal_hf.cli", "info", "--model", "./nowhere"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == (
        "dtfsal info: error: no model folder at ./nowhere (nor is it a Hub id 'namespace/name'; other ids: demo, "
        "random, random-tiny)"
    )
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    # Before the command too: the error is raised as it is.
    with pytest.raises(FileNotFoundError, match="no model folder at ./nowhere"):
        cli.main(["--debug", "info", "--model", "./nowhere"])


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug, not an input problem")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), broken))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info", "--tiny"])


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        for subparser in action.choices.values():
            subparser.set_defaults(handler=handler)
    return parser


def test_threads_are_set_for_predict(monkeypatch, tmp_path):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert cli.main(["predict", str(tmp_path / "absent.mp4"), "--output", str(tmp_path / "out"),
                     "--model", "random-tiny", "--no-progress", "--threads", "1"]) == 1  # the video fails, reported
    assert calls == [1]


# Runs the command's help in a fresh interpreter and prints which heavy modules that loaded.
_HELP_IMPORTS = """
import sys
import dtfsal_cli
for argv in (["--help"], ["info", "--help"], ["predict", "--help"], ["benchmark", "--help"]):
    try:
        dtfsal_cli.main(argv)
    except SystemExit:
        pass
print(sorted(name for name in ("torch", "transformers", "torchvision", "numpy", "dtfsal_hf") if name in sys.modules))
"""


def test_the_help_imports_neither_torch_nor_the_library():
    run = subprocess.run([sys.executable, "-c", _HELP_IMPORTS], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "{info,push,evaluate,train,predict,benchmark,export}" in run.stdout and "--no-flops" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_the_console_command_is_the_light_module_and_dtfsal_hf_cli_is_it():
    from importlib.metadata import entry_points

    import dtfsal_cli

    (command,) = entry_points(group="console_scripts", name="dtfsal")
    assert command.value == "dtfsal_cli:main"
    assert cli is dtfsal_cli and cli.main is dtfsal_cli.main


def test_a_commands_arguments_are_added_when_it_is_parsed():
    parser = cli.build_parser()
    info = parser._subparsers._group_actions[0].choices["info"]
    assert not any("--tiny" in action.option_strings for action in info._actions)
    args = parser.parse_args(["info", "--tiny", "--debug"])
    assert args.tiny and args.debug and args.handler is cli._run_info
    assert any("--tiny" in action.option_strings for action in info._actions)
    # Every command's arguments, once completed, parse its own flags.
    assert cli.command_parser("evaluate").parse_args(["--dataset", "DHF1K", "--root", "r", "--predictions", "p",
                                                      "--output", "o"]).handler is cli._run_evaluate
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["info", "--no-such-flag"])


def test_importing_the_package_registers_the_auto_classes_and_the_pipeline():
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto import FEATURE_EXTRACTOR_MAPPING, PROCESSOR_MAPPING, VIDEO_PROCESSOR_MAPPING
    from transformers.pipelines import PIPELINE_REGISTRY

    import dtfsal_hf

    assert type(AutoConfig.for_model("dtfsal")) is dtfsal_hf.DTFSalConfig
    config = dtfsal_hf.DTFSalConfig.tiny()
    assert type(AutoModel.from_config(config)) is dtfsal_hf.DTFSalModel
    assert PROCESSOR_MAPPING[type(config)] is dtfsal_hf.DTFSalProcessor
    assert FEATURE_EXTRACTOR_MAPPING[type(config)] is dtfsal_hf.DTFSalFeatureExtractor
    assert dtfsal_hf.DTFSalVideoProcessor in VIDEO_PROCESSOR_MAPPING[type(config)].values()
    assert "video-saliency" in PIPELINE_REGISTRY.get_supported_tasks()
