"""Time the full model and torchvision's MViTv2-S alone with freed memory kept for reuse (the CPU runtimes'
default, `Runtime.keep_freed_memory`) and returned to the operating system (glibc's own behaviour), each setting
in fresh processes, alternated round by round so a change of machine load hits both alike.

    python scripts/freed_memory_check.py --paths eager-fp32 blocked-bf16 --rounds 2 --calls 2

Per (network, path, setting): median wall seconds per call, CPU seconds in user space and in the kernel, and
minor page faults, over every timed call of every round (each process makes one warm-up call first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from dtfsal_hf.inference import PRESETS

_CHILD = r"""
import dataclasses, json, resource, sys, time, torch
from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.benchmark import PATHS, prepare_path, torchvision_mvit_v2_s
network, path, keep, calls, threads = sys.argv[1], sys.argv[2], sys.argv[3] == "keep", int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
config = DTFSalConfig.tiny() if sys.argv[6] == "tiny" else DTFSalConfig()
torch.manual_seed(1)
inputs = DTFSalModel.build_dummy_inputs(config)
torch.manual_seed(0)
if network == "mvit_v2_s":
    module = torchvision_mvit_v2_s(config.num_frames, config.image_size).eval()
    inputs = {"videos": inputs["pixel_values_videos"].transpose(1, 2).contiguous()}
else:
    module = DTFSalModel(config).eval()
run = prepare_path(module, dataclasses.replace(PATHS[path], keep_freed_memory=keep))
run(inputs)
for _ in range(calls):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run(inputs)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
                      "system_s": after.ru_stime - before.ru_stime, "page_faults": after.ru_minflt - before.ru_minflt}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=["DTFSal", "mvit_v2_s"], choices=["DTFSal", "mvit_v2_s"])
    parser.add_argument("--paths", nargs="+", default=["eager-fp32", "blocked-bf16"])
    parser.add_argument("--rounds", type=int, default=2, help="processes per (network, path, setting)")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per process, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration instead of the paper's")
    args = parser.parse_args(argv)
    unknown = [path for path in args.paths if path not in PRESETS]
    if unknown or args.rounds < 1 or args.calls < 1:
        parser.error(f"unknown paths {unknown}; choose from {', '.join(PRESETS)}" if unknown
                     else "--rounds and --calls must be at least 1")
    calls: dict[tuple, list[dict]] = {}
    for round_ in range(args.rounds):
        for network in args.networks:
            for path in args.paths:
                for setting in ("keep", "return"):
                    argv = [network, path, setting, str(args.calls), str(args.threads), "tiny" if args.tiny else "paper"]
                    done = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{network} {path} {setting}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
                    calls.setdefault((network, path, setting), []).extend(rows)
                    print(f"round {round_ + 1}: {network} {path} {setting}: "
                          + ", ".join(f"{r['wall_s']:.2f} s" for r in rows), file=sys.stderr, flush=True)
    print("| network | path | freed memory | s / call | CPU s user | CPU s kernel | page faults / call |")
    print("|---|---|---|---|---|---|---|")
    for (network, path, setting), rows in calls.items():
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(f"| {network} | {path} | {'kept' if setting == 'keep' else 'returned'} | {median['wall_s']:.2f} | "
              f"{median['user_s']:.2f} | {median['system_s']:.2f} | {median['page_faults']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
