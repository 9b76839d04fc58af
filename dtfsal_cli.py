"""The `dtfsal` command: parses arguments and calls the library's functions.

A module of its own, beside the `dtfsal_hf` package rather than in it: importing anything of `dtfsal_hf` runs
the package's `__init__`, which registers the model with transformers' Auto classes and pipelines and so loads
torch and transformers (seconds). Here nothing of the library is imported until a command runs: each command
has an `_add_<name>` function adding its arguments (called only when that command is parsed, `CommandParser`)
and a `_run_<name>` handler importing what it needs, so `dtfsal --help` answers at once.
`dtfsal_hf.cli` is this module under the package's name (`python -m dtfsal_hf.cli`).

Expected errors (`ValueError`, `OSError` and its `FileNotFoundError`..., `ImportError`, YAML errors: bad
values, missing files or folders, refused checkpoints, configuration and publishing checks) are reported by
`main` as one line, `dtfsal <command>: error: <message>`, on stderr, with exit status 1 and no traceback;
`--debug` shows the traceback instead. Library code only needs to raise one of those with a clear message.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a model folder or Hub id; default: the paper's configuration")
    parser.add_argument("--visual-only", action="store_true", help="DTFSal(V): no audio branch")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    parser.add_argument("--no-flops", action="store_true", help="skip the compute counts (one forward pass on the meta device)")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="the model of a training configuration (e.g. examples/configs/ablations/*.yaml), counted "
                             "on the meta device: parameters and conv + linear multiply-accumulates")


def _run_info(args) -> int:
    if args.config:
        import dataclasses
        import os

        from dtfsal_hf.complexity import describe_config
        from dtfsal_hf.training.config import TrainingConfig
        from dtfsal_hf.training.trainer import model_config

        settings = TrainingConfig.from_yaml(args.config).model
        if settings.init_from and not os.path.isdir(settings.init_from):
            # A stage-1 run not made yet: the sizes are the configuration's own (its init_from has the same).
            print(f"(model.init_from {settings.init_from} is not there yet: counting the configuration's own sizes)")
            settings = dataclasses.replace(settings, init_from=None)
        print(describe_config(model_config(settings), title=args.config))
        return 0
    from dtfsal_hf.complexity import describe_model

    print(describe_model(args.model, visual_only=args.visual_only, tiny=args.tiny, with_flops=not args.no_flops))
    return 0


def _add_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained, with remote code")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target repository, 'namespace/name'")
    parser.add_argument("--evaluation", action="append", default=[], metavar="JSON",
                        help="evaluation summary for the card's results (repeatable); without it the card has none")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME",
                        help="a dataset the checkpoint was trained on, for the card metadata (repeatable)")
    parser.add_argument("--license", default=None, help="license id of the weights (default: apache-2.0)")
    parser.add_argument("--pipeline-tag", default=None,
                        help="Hub task of the card (default: other, the Hub's task without a widget; see docs/hub.md)")
    parser.add_argument("--template", default=None, help="model card template (default: MODEL_CARD.md)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")


def _run_push(args) -> int:
    from dtfsal_hf.hub import push_to_hub

    commit = push_to_hub(
        args.model_dir, args.repo_id, evaluation_files=args.evaluation, datasets=args.dataset,
        license=args.license, pipeline_tag=args.pipeline_tag, template=args.template,
        private=args.private or None, revision=args.revision, commit_message=args.message,
    )
    print(commit.commit_url)
    return 0


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    from dtfsal_hf.data.readers import dataset_help

    parser.add_argument("--dataset", required=True, help=dataset_help())
    parser.add_argument("--root", required=True, help="the dataset's folder")
    parser.add_argument("--split", default=None, help="split to score (default: val for DHF1K, test otherwise)")
    parser.add_argument("--fold", default="all", help="STAViS fold: 1, 2, 3 or all (default: all)")
    parser.add_argument("--fold-lists", default=None, help="folder of STAViS fold lists (default: ROOT/fold_lists)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="folder of saved maps: <video>.npz (key 'maps') or <video>/*.png")
    source.add_argument("--model", help="a saved model folder or Hub id; '{fold}' in it is replaced by the fold")
    parser.add_argument("--output", required=True, help="folder for per_video.csv and summary.json")
    parser.add_argument("--protocol", default="auto", choices=("auto", "dhf1k", "stavis"))
    parser.add_argument("--metrics", default="cc,nss,auc_judd,sim,kld,sauc", help="comma-separated metric names")
    parser.add_argument("--max-videos", type=int, default=None, help="score only the first N videos")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of skipping videos already scored")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of sAUC's other maps, of AUC jitter and of the shuffled-sound pairs")
    parser.add_argument("--audio", default="own", choices=("own", "shuffled", "silent", "controls"),
                        help="the sound the model hears: each video's own (default), another test video's "
                        "(shuffled: pictures and gaze unchanged), or silence; controls: all three side by side "
                        "(into OUTPUT/own, OUTPUT/shuffled, OUTPUT/silent); a hearing test, with --model only. "
                        "On a synthetic set the visual-only oracle is scored and printed too")
    parser.add_argument("--sauc-other", default="auto", choices=("auto", "videos", "same-video"),
                        help="sAUC's other map: fixations of other videos' frames (videos, the DHF1K protocol's), "
                        "or of the same video's other frames less the frame's own (same-video, the STAViS "
                        "protocol's); auto (default): the protocol's")
    parser.add_argument("--blur-grid", default=None, metavar="HxW",
                        help="STAViS protocol: blur every prediction (Gaussian, 2 px) on this grid, then resize it to "
                        "the ground truth; default: the model's output grid (saved maps: the grid their done.json "
                        "records, else 224x384, the paper model's)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per model call")
    parser.add_argument("--device", default=None, help="device for the model (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_evaluate(args) -> int:
    from dtfsal_hf.evaluation import format_audio_controls, format_table, run_audio_controls, run_evaluation

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    if args.audio == "controls":
        if args.model is None:
            raise ValueError("--audio controls re-runs a model with other sounds; saved predictions were made with the "
                             "sound they were made with: give --model instead of --predictions")
        summaries = run_audio_controls(
            args.dataset, args.root, args.output, args.model, split=args.split, fold=args.fold,
            fold_lists=args.fold_lists, protocol=args.protocol, metrics=metrics, max_videos=args.max_videos,
            resume=not args.no_resume, seed=args.seed, batch_size=args.batch_size, device=args.device,
            sauc_other=args.sauc_other, progress=not args.no_progress, blur_grid=args.blur_grid,
        )
        print(format_audio_controls(summaries))
        return 0
    summary = run_evaluation(
        args.dataset, args.root, args.output, split=args.split, fold=args.fold, fold_lists=args.fold_lists,
        predictions=args.predictions, model=args.model, protocol=args.protocol,
        metrics=metrics, max_videos=args.max_videos,
        resume=not args.no_resume, seed=args.seed, batch_size=args.batch_size, device=args.device,
        audio=args.audio, sauc_other=args.sauc_other, progress=not args.no_progress, blur_grid=args.blur_grid,
    )
    print(format_table(summary))
    return 0


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file with model, data, training and output sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. training.learning_rate=1e-3 (repeatable; values in YAML syntax)")
    parser.add_argument("--output-dir", default=None, help="output.dir: checkpoints, best model, logs")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="continue from the run's latest checkpoint, or from CHECKPOINT")
    for flag, key, kind in _TRAIN_FLAGS:
        parser.add_argument(flag, dest=key.replace(".", "__"), type=kind, default=None, metavar=key.split(".")[-1].upper(),
                            help=f"sets {key}")


_TRAIN_FLAGS = (
    ("--epochs", "training.epochs", int),
    ("--learning-rate", "training.learning_rate", float),
    ("--batch-size", "training.batch_size", int),
    ("--gradient-accumulation-steps", "training.gradient_accumulation_steps", int),
    ("--mixed-precision", "training.mixed_precision", str),
    ("--seed", "training.seed", int),
)


def _run_train(args) -> int:
    from dtfsal_hf.training import TrainingConfig, train

    overrides = list(args.overrides)
    overrides += [f"{key}={getattr(args, key.replace('.', '__'))}" for _, key, _ in _TRAIN_FLAGS
                  if getattr(args, key.replace(".", "__")) is not None]
    if args.output_dir is not None:
        overrides.append(f"output.dir={args.output_dir}")
    summary = train(TrainingConfig.from_yaml(args.config, overrides), resume=args.resume)
    print(f"{summary['status']}: {summary['global_step']} steps, best epoch {summary['best_epoch']} -> {summary['best_model']}")
    return 130 if summary["status"] == "interrupted" else 0


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO_OR_DIR",
                        help="video files, folders of videos, or folders of frame images (one video each, its sound "
                        "the .wav it holds, if any)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of folders of frame images (default: 30; video files use their own times)")
    parser.add_argument("--model", default="demo",
                        help="a trained model folder or Hub id; 'demo' (default): the bundled checkpoint; "
                        "'random' / 'random-tiny': the full-size / tiny model, untrained (maps are meaningless)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder that receives one folder per video")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: the process's GPU if any, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights and activations (default: float32)")
    parser.add_argument("--attention", default="auto",
                        help="MViT attention kernel, the same maps each way: auto (default: blocked matrix products "
                        "on a CPU, sdpa elsewhere), sdpa, blocked, eager (torchvision's explicit form)")
    parser.add_argument("--runtime", default=None, metavar="NAME",
                        help="a named runtime of `dtfsal benchmark` (e.g. blocked-bf16: autocast; see docs/benchmarks.md); "
                        "replaces --dtype and --attention")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per model call (default: 4)")
    parser.add_argument("--stride", type=int, default=1,
                        help="predict every N-th frame, interpolate the others in time: about N times faster (default: 1)")
    parser.add_argument("--alignment", default="last", choices=("last", "center", "causal", "centre"),
                        help="the frame a clip predicts: its last (default, as the paper) or its centre "
                             "(causal and centre: older names of the two, deprecated)")
    parser.add_argument("--blur-sigma", type=float, default=0.0, help="Gaussian blur of the maps, pixels (default: 0)")
    parser.add_argument("--no-normalize", action="store_true",
                        help="keep the model's values instead of dividing each map by its maximum")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each video")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity in the overlay at map value 1")
    parser.add_argument("--colormap", default="jet", help="matplotlib colour map of the overlay (default: jet)")
    parser.add_argument("--no-pngs", action="store_true", help="do not write maps/*.png")
    parser.add_argument("--no-npz", action="store_true", help="do not write maps.npz")
    parser.add_argument("--no-overlay", action="store_true", help="do not write overlay.mp4")
    parser.add_argument("--overwrite", action="store_true", help="redo videos that are already finished")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of this process (default: torch's choice, one per core); with "
                        "several processes on one machine, give each cores / processes")


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _run_predict(args) -> int:
    from dtfsal_hf.inference import predict_job

    _set_threads(args.threads)
    results = predict_job(
        args.videos, args.model, args.output, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        stride=args.stride, alignment=args.alignment, normalize=None if args.no_normalize else "max",
        attention=args.attention, runtime=args.runtime, fps=args.fps, blur_sigma=args.blur_sigma, max_frames=args.max_frames,
        overlay_alpha=args.alpha, colormap=args.colormap, write_pngs=not args.no_pngs, write_npz=not args.no_npz,
        write_overlay=not args.no_overlay, overwrite=args.overwrite, progress=False if args.no_progress else None,
    )
    return 1 if any(result.status == "failed" for result in results) else 0



def _add_benchmark(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a model folder or Hub id; default: the paper's model, random weights")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    parser.add_argument("--visual-only", action="store_true", help="DTFSal(V): no audio branch")
    parser.add_argument("--paths", nargs="+", default=None, metavar="PATH",
                        help="inference paths (default: per device; eager-fp32 is always timed), from: "
                             "eager-fp32 sdpa-fp32 blocked-fp32 eager-bf16 sdpa-bf16 sdpa-bf16-cl "
                             "blocked-bf16 blocked-bf16-cl compiled-sdpa-bf16 sdpa-fp16 compiled-sdpa-fp16")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1], metavar="N", help="clips per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row, after one warm-up call")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-backbone", action="store_true", help="skip torchvision's MViTv2-S alone")
    parser.add_argument("--video", default=None, help="a real video: its first clip is the input, and the whole-video "
                        "predictor is timed on it")
    parser.add_argument("--video-frames", type=int, default=64, help="frames of --video for the whole-video figures")
    parser.add_argument("--strides", nargs="+", type=int, default=[1, 4], help="frame strides of the whole-video run")
    parser.add_argument("--video-path", default=None, help="path of the whole-video run (default: the fastest within "
                        "0.02 of the eager fp32 maps)")
    parser.add_argument("--video-batch-size", type=int, default=1, metavar="N",
                        help="clips per model call of the whole-video run (default: 1)")
    parser.add_argument("--memory-video", default=None, help="a video looped to --memory-lengths for the peak-RSS check")
    parser.add_argument("--memory-lengths", nargs="+", type=float, default=[60, 600], metavar="SECONDS")
    parser.add_argument("--memory-model", default="random-tiny", help="model of the peak-RSS check (any predictor id)")
    parser.add_argument("--memory-stride", type=int, default=16, help="frame stride of the peak-RSS check")
    parser.add_argument("--matmul-size", type=int, default=2048, metavar="N",
                        help="size of the square fp32 / bf16 matrix product whose rate each path's FLOP rate is given "
                        "as a fraction of (default: 2048; 0: no probe)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")


def _run_benchmark(args) -> int:
    import json
    import shlex

    from dtfsal_hf.benchmark import benchmark, format_report

    _set_threads(args.threads)
    result = benchmark(
        args.model, tiny=args.tiny, visual_only=args.visual_only, paths=args.paths, batch_sizes=args.batch_sizes,
        repeats=args.repeats, device=args.device, include_backbone=not args.no_backbone, video=args.video,
        video_frames=args.video_frames, strides=args.strides, video_path=args.video_path,
        video_batch_size=args.video_batch_size,
        memory_video=args.memory_video, memory_lengths=args.memory_lengths, memory_model=args.memory_model,
        memory_stride=args.memory_stride, matmul_size=args.matmul_size or None,
        command="dtfsal " + shlex.join(sys.argv[1:]), log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result.to_dict(), handle, indent=2)
    return 0


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model folder, Hub id, 'demo', 'random' or 'random-tiny'")
    parser.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=19, help="ONNX opset (at least 19, for DeformConv)")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch at batch sizes 1 and 3")


def _run_export(args) -> int:
    from dtfsal_hf.export import check_onnx, export_onnx
    from dtfsal_hf.inference import load_model_and_processor

    model, _, _ = load_model_and_processor(args.model)
    print(export_onnx(model.eval(), args.output, opset=args.opset))
    if args.check:
        for batch_size, difference in check_onnx(args.output, model).items():
            print(f"batch {batch_size}: max |onnx - pytorch| = {difference:.3g}")
    return 0


# Each command: its name, its line in `dtfsal --help` (and what else its parser is made with), the function adding
# its arguments, its handler.
COMMANDS = (
    ("info", dict(help="print parameters and multiply-accumulates of a configuration"), _add_info, _run_info),
    ("push", dict(help="publish a saved model to the Hugging Face Hub in one commit"), _add_push, _run_push),
    ("evaluate", dict(help="score a model or saved predictions on a dataset (DHF1K or STAViS protocol)"),
     _add_evaluate, _run_evaluate),
    ("train", dict(help="train DTFSal with Accelerate from a YAML configuration (examples/configs/) and flags"),
     _add_train, _run_train),
    ("predict", dict(
        help="saliency maps (PNGs, one .npz) and an overlay video with sound, for each video",
        description="Writes OUTPUT/<video name>/maps/000001.png..., maps.npz, overlay.mp4 and done.json (last). "
        "Finished videos are skipped on a rerun; a failing video is reported and the others go on. Under "
        "`accelerate launch` or `torchrun` the videos are shared out between the processes.",
    ), _add_predict, _run_predict),
    ("benchmark", dict(help="time the inference paths against torchvision's MViTv2-S alone, in one run"),
     _add_benchmark, _run_benchmark),
    ("export", dict(help="export a model to ONNX (dynamic batch) and check it with onnxruntime"),
     _add_export, _run_export),
)


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose arguments are added when it is first used (parsed, or its help or usage
    shown), by the `add_arguments` it was made with: `dtfsal --help` and the parsing of one command build
    only that command's arguments, whose help may read the library (`dtfsal evaluate`'s dataset names)."""

    def __init__(self, *args, add_arguments=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def complete(self) -> CommandParser:
        """Adds the command's arguments now (once) and returns the parser."""
        add_arguments, self._add_arguments = self._add_arguments, None
        if add_arguments is not None:
            add_arguments(self)
            # `--debug` is accepted after the command too; SUPPRESS keeps a value given before it.
            self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show the traceback of an error")
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.complete()
        return super().format_help()

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()


def build_parser() -> argparse.ArgumentParser:
    """The `dtfsal` parser; each command's arguments are added when that command is parsed (`CommandParser`)."""
    parser = argparse.ArgumentParser(prog="dtfsal", description="DTFSal audio-visual video saliency prediction")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, settings, add_arguments, handler in COMMANDS:
        subparsers.add_parser(name, add_arguments=add_arguments, **settings).set_defaults(handler=handler)
    return parser


def command_parser(name: str) -> CommandParser:
    """The parser of the command `name`, its arguments added."""
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name].complete()


def is_expected_error(error: BaseException) -> bool:
    """Errors that a user's input or environment causes, reported in one line: bad values (`ValueError`),
    missing or unreadable files, refused downloads (`OSError`), missing optional packages (`ImportError`),
    a training run that diverged (`FloatingPointError`: non-finite gradients), YAML syntax."""
    if isinstance(error, (ValueError, OSError, ImportError, FloatingPointError)):
        return True
    yaml = sys.modules.get("yaml")  # only loaded, and only able to fail, when a YAML file was read
    return yaml is not None and isinstance(error, yaml.YAMLError)


def error_line(command: str, error: BaseException) -> str:
    """`dtfsal <command>: error: <message>`, the message's first line (a multi-line one points to --debug)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    more = " (more with --debug)" if len(lines) > 1 else ""
    return f"dtfsal {command}: error: {message}{more}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:
        if args.debug or not is_expected_error(error):
            raise
        print(error_line(args.command, error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"dtfsal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
