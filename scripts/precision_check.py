"""How far the fast inference paths move the maps of a trained DTFSal, at full size.

An untrained DTFSal is a poor judge of reduced precision: its He-initialised decoder gives logits of tens,
the sigmoid saturates, and a rounding error of 0.4% in the backbone flips pixels between 0 and 1. Kinetics,
AudioSet and saliency weights cannot be downloaded everywhere, so this script fits the model itself, briefly,
to a task with a known answer, then compares the maps of each inference path with the eager fp32 model's.

The task: 32-frame clips of three discs drifting over a noisy background, the fixation map a Gaussian on the
brightest disc of the last frame; the audio input is noise (the check is about numerics, not hearing).
Training runs bf16 autocast with AdamW for `--seconds`. The comparison uses held-out clips, on `--device` for
`--paths` and on the CPU for `--cpu-paths` (one clip each), before and after training.

    python scripts/precision_check.py --device cuda --seconds 150 --json precision.json
    python scripts/precision_check.py --tiny --seconds 20          # the tiny model on a CPU, a minute

Prints a Markdown table; `--json` writes every figure and the loss curve.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtfsal_hf import DTFSalConfig, DTFSalModel  # noqa: E402
from dtfsal_hf.benchmark import PATHS, machine_description, prepare_path  # noqa: E402
from dtfsal_hf.modeling_dtfsal import correlation_coefficient  # noqa: E402


def make_batch(config: DTFSalConfig, batch_size: int, generator: torch.Generator, device) -> dict:
    """Clips of three drifting discs in normalised pixel space and the Gaussian fixation map of the brightest
    disc in the last frame; audio features are noise."""
    frames, (height, width) = config.num_frames, config.image_size
    discs = 3
    uniform = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    start = uniform(batch_size, discs, 2) * 0.8 + 0.1
    velocity = (uniform(batch_size, discs, 2) - 0.5) * 0.6 / frames
    brightness = uniform(batch_size, discs) * 2.0 + 0.5
    colour = uniform(batch_size, discs, 3) * 0.5 + 0.5
    radius = 0.06 * min(height, width)
    time_index = torch.arange(frames, dtype=torch.float32)
    # Centres in pixels: (B, discs, T, 2) as (y, x)
    centres = (start[:, :, None] + velocity[:, :, None] * time_index[None, None, :, None]).clamp(0.05, 0.95)
    centres = centres * torch.tensor([height, width], dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    # (B, discs, T, H, W) soft disc masks
    distance = ((ys - centres[..., 0, None, None]) ** 2 + (xs - centres[..., 1, None, None]) ** 2).sqrt()
    masks = torch.sigmoid(radius - distance)
    video = torch.randn(batch_size, frames, 3, height, width, generator=generator) * 0.3
    video += torch.einsum("bdthw,bd,bdc->btchw", masks, brightness, colour)
    brightest = brightness.argmax(dim=1)
    centre = centres[torch.arange(batch_size), brightest, -1]  # (B, 2)
    sigma = 0.05 * min(height, width)
    labels = torch.exp(-((ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2) / (2 * sigma**2))
    batch = {"pixel_values_videos": video, "labels": labels}
    if config.use_audio:
        batch["input_features"] = torch.randn(batch_size, config.num_audio_examples, 1, *config.audio_input_size,
                                              generator=generator)
    return {name: value.to(device) for name, value in batch.items()}


def train(model: DTFSalModel, seconds: float, batch_size: int, device: torch.device, seed: int) -> list[dict]:
    """AdamW under bf16 autocast until `seconds` have passed; returns the loss every step."""
    generator = torch.Generator().manual_seed(seed)
    model.set_mvit_attention("sdpa").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    curve, start, step = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = make_batch(model.config, batch_size, generator, device)
        optimizer.zero_grad(set_to_none=True)
        try:
            with torch.autocast(device.type, torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            print(f"out of memory: batch size {batch_size} from here on", flush=True)
            loss = None
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        curve.append({"step": step, "seconds": round(time.perf_counter() - start, 2), "loss": loss.item(),
                      "batch_size": batch_size})
        if step == 1 or step % 20 == 0:
            print(f"step {step}: loss {loss.item():.4f} ({curve[-1]['seconds']} s)", flush=True)
    return curve


def compare(model: DTFSalModel, paths: list[str], batch: dict, device: torch.device) -> list[dict]:
    """Maps of each path against the eager fp32 model's on `device` (TF32 off), one call each."""
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = model.float().eval()
        reference = prepare_path(model, PATHS["eager-fp32"], device)(inputs)
        rows = []
        for name in paths:
            maps = prepare_path(model, PATHS[name], device)(inputs)
            difference = (maps - reference).abs()
            rows.append({"device": device.type, "path": name, "clips": int(maps.shape[0]),
                         "max_abs_diff": difference.max().item(), "mean_abs_diff": difference.mean().item(),
                         "cc": correlation_coefficient(maps.double(), reference.double()).min().item(),
                         "reference_range": [reference.min().item(), reference.max().item()]})
        return rows
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny configuration (a quick run on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=150.0, help="training time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-clips", type=int, default=4, help="held-out clips compared on --device")
    parser.add_argument("--paths", nargs="+", default=None, help="paths compared on --device "
                        "(default: sdpa-fp32 sdpa-bf16 blocked-bf16, and sdpa-fp16 on CUDA)")
    parser.add_argument("--cpu-paths", nargs="*", default=["sdpa-fp32", "blocked-fp32", "blocked-bf16"],
                        help="paths compared on the CPU, one clip (none: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--save", default=None, help="save the fitted model here (save_pretrained)")
    args = parser.parse_args(argv)

    if args.seconds <= 0 or args.batch_size < 1 or args.eval_clips < 1:
        parser.error(f"--seconds must be > 0 and --batch-size, --eval-clips >= 1, got {args.seconds}, "
                     f"{args.batch_size}, {args.eval_clips}")
    unknown = sorted(name for name in {*(args.paths or []), *(args.cpu_paths or [])} if name not in PATHS)
    if unknown:
        parser.error(f"unknown paths {unknown}; known: {' '.join(PATHS)}")
    device = torch.device(args.device)
    paths = args.paths or (["sdpa-fp32", "sdpa-bf16", "blocked-bf16"] + (["sdpa-fp16"] if device.type == "cuda" else []))
    torch.manual_seed(args.seed)
    config = DTFSalConfig.tiny() if args.tiny else DTFSalConfig()
    model = DTFSalModel(config)
    held_out = make_batch(config, args.eval_clips, torch.Generator().manual_seed(args.seed + 1000), device)
    cpu_clip = {name: value[:1].cpu() for name, value in held_out.items()}

    report = {"machine": machine_description(device), "config": "tiny" if args.tiny else "full (the paper's)",
              "seconds": args.seconds, "batch_size": args.batch_size, "comparisons": []}
    for stage in ("untrained", "trained"):
        if stage == "trained":
            report["loss_curve"] = train(model, args.seconds, args.batch_size, device, args.seed)
        rows = compare(model, paths, held_out, device)
        if args.cpu_paths and device.type != "cpu":
            rows += compare(model, args.cpu_paths, cpu_clip, torch.device("cpu"))
        for row in rows:
            row["model"] = stage
        report["comparisons"] += rows

    if args.save:
        model.set_mvit_attention("eager").float().cpu().save_pretrained(args.save)
    curve = report.get("loss_curve", [])
    machine = report["machine"]
    print(f"\n{report['config']} DTFSal; {machine.get('gpu', machine.get('cpu'))}, torch {machine.get('torch')}")
    if curve:
        print(f"training: {len(curve)} steps of {curve[-1]['batch_size']} clips in {curve[-1]['seconds']} s, "
              f"loss {curve[0]['loss']:.3f} -> {sum(r['loss'] for r in curve[-10:]) / min(10, len(curve)):.3f} "
              "(mean of the last 10 steps)")
    print("\n| model | device | path | clips | max abs d map | mean abs d map | min CC vs eager fp32 | eager map range |")
    print("|---|---|---|---|---|---|---|---|")
    for row in report["comparisons"]:
        low, high = row["reference_range"]
        print(f"| {row['model']} | {row['device']} | {row['path']} | {row['clips']} | {row['max_abs_diff']:.2g} | "
              f"{row['mean_abs_diff']:.2g} | {row['cc']:.5f} | {low:.3f} - {high:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    finite = all(math.isfinite(row["max_abs_diff"]) for row in report["comparisons"])
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
