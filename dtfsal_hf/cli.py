"""The `dtfsal` command: parses arguments and calls the library's functions.

Each subcommand lives in a `_add_<name>` function that registers its parser and a handler that
imports what it needs lazily, so `dtfsal --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print parameters and multiply-accumulates of a configuration")
    parser.add_argument("--model", default=None, help="a model folder or Hub id; default: the paper's configuration")
    parser.add_argument("--visual-only", action="store_true", help="DTFSal(V): no audio branch")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts (they run the model once)")
    parser.set_defaults(handler=_run_info)


def _run_info(args) -> int:
    from .complexity import describe_model

    print(describe_model(args.model, visual_only=args.visual_only, tiny=args.tiny, with_flops=not args.no_flops))
    return 0


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser("push", help="publish a saved model to the Hugging Face Hub in one commit")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained, with remote code")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target repository, 'namespace/name'")
    parser.add_argument("--evaluation", action="append", default=[], metavar="JSON",
                        help="evaluation summary for the card's results (repeatable); without it the card has none")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME",
                        help="a dataset the checkpoint was trained on, for the card metadata (repeatable)")
    parser.add_argument("--license", default=None, help="license id of the weights (default: apache-2.0)")
    parser.add_argument("--pipeline-tag", default=None, help="Hub task of the card (default: image-segmentation)")
    parser.add_argument("--template", default=None, help="model card template (default: MODEL_CARD.md)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.set_defaults(handler=_run_push)


def _run_push(args) -> int:
    from .hub import push_to_hub

    commit = push_to_hub(
        args.model_dir, args.repo_id, evaluation_files=args.evaluation, datasets=args.dataset,
        license=args.license, pipeline_tag=args.pipeline_tag, template=args.template,
        private=args.private or None, revision=args.revision, commit_message=args.message,
    )
    print(commit.commit_url)
    return 0


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a model or saved predictions on a dataset (DHF1K or STAViS protocol)"
    )
    parser.add_argument("--dataset", required=True,
                        help="dhf1k, ucf_sports, hollywood2, or a STAViS-layout database (AVAD, DIEM, Coutrot_db1, ...)")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of sAUC's other maps and of AUC jitter")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per model call")
    parser.add_argument("--device", default=None, help="device for the model (default: cuda if available)")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> int:
    from .evaluation import format_table, run_evaluation

    summary = run_evaluation(
        args.dataset, args.root, args.output, split=args.split, fold=args.fold, fold_lists=args.fold_lists,
        predictions=args.predictions, model=args.model, protocol=args.protocol,
        metrics=[name.strip() for name in args.metrics.split(",") if name.strip()], max_videos=args.max_videos,
        resume=not args.no_resume, seed=args.seed, batch_size=args.batch_size, device=args.device,
    )
    print(format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtfsal", description="DTFSal audio-visual video saliency prediction")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_push, _add_evaluate):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
