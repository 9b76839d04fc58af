#!/usr/bin/env bash
# The GPU check, in one script for a lent CUDA machine (H100/H200), about 9 minutes at most. Steps run in
# order of importance while time is left (BUDGET seconds in all, default 540):
#   1. environment: python3, torch (CUDA build?), the GPU, the packages dtfsal_hf imports;
#   2. CUDA tests on the tiny model (tests/test_gpu.py): GPU maps equal CPU maps for every attention kernel,
#      bf16 stays close, a training step on CUDA lowers the loss;
#   3. the MViT attention kernels alone at the first and third stage's shapes, batch 32, bf16: the additive-mask
#      SDPA, the folded SDPA (`fold_rel_pos`, flash attention) and the blocked matrix products;
#   4. `dtfsal benchmark --device cuda` of the full audio-visual model at 32 x 224 x 384 on VIDEO's first clip:
#      eager fp32 (batch 1, with torchvision's MViTv2-S alone as the floor), sdpa bf16 (channels-first and
#      channels-last) and fp16 at batch 8 and 32, then the whole-video predictor on VIDEO_FRAMES frames of
#      VIDEO at stride 1 and 4, sdpa bf16, 32 clips a call (frames/s with decoding overlapped, next to the
#      per-clip maps/s). VIDEO: default DHF1K 002 (../shared/data/dhf1k_002/002.AVI) where it is, else the
#      bundled clip;
#   5. the CUDA kernels that take the time of an sdpa-bf16 call at batch 8 (torch.profiler);
#   6. torch.compile (bf16) at batch 32 (the first call compiles: about 150 s on an H100);
#   7. scripts/precision_check.py with whatever time is left: the full model fitted for PRECISION_SECONDS
#      (default 75) to a task with a known answer, then the maps of each path against eager fp32, on the GPU
#      and on the host's CPU.
# Everything goes under $OUT (default ./gpu_check_out): summary.txt first of all, then env.json,
# gpu_tests.txt, attention_kernels.md, benchmark.{md,json,log}, profile.txt, compiled.{md,json,log},
# precision.{md,json}.
# Usage (from anywhere): OUT=/some/folder bash scripts/gpu_check.sh   [PYTHON=python3.12 BUDGET=540 VIDEO=clip.mp4]
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-540}"
PRECISION_SECONDS="${PRECISION_SECONDS:-75}"
VIDEO_FRAMES="${VIDEO_FRAMES:-256}"
if [ -z "${VIDEO:-}" ]; then
    VIDEO=dtfsal_hf/assets/synthetic_example.mp4
    for candidate in ../shared/data/dhf1k_002/002.AVI shared/data/dhf1k_002/002.AVI; do
        if [ -f "$candidate" ]; then VIDEO="$candidate"; break; fi
    done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# step NAME SECONDS_WANTED: true when at least that much time is left
step() { if [ "$(left)" -ge "$2" ]; then log "$1 (at most $2 s)"; return 0; fi; log "SKIPPED $1: $(left) s left"; return 1; }
: > "$OUT/summary.txt"

log "repository $(git rev-parse --short HEAD 2>/dev/null || echo unknown), python: $(command -v "$PY" || echo missing)"
log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"

# 1. Environment
if ! command -v "$PY" > /dev/null; then
    log "STOP: no $PY on this machine"; exit 1
fi
if ! "$PY" -c "import torch" 2> "$OUT/torch_import_error.txt"; then
    log "STOP: '$PY -c \"import torch\"' fails: torch is not installed here ($(tail -1 "$OUT/torch_import_error.txt"))."
    log "Install a CUDA build of torch with torchvision, then transformers>=5.24, av, scipy, safetensors, huggingface_hub."
    exit 1
fi
rm -f "$OUT/torch_import_error.txt"
"$PY" - > "$OUT/env.json" 2>&1 <<'EOF'
import importlib, json, os, platform
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "host_cpus": os.cpu_count()}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported()}
for name in ("torchvision", "transformers", "numpy", "av", "scipy", "safetensors", "huggingface_hub", "pytest"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as error:
        env[name] = f"MISSING ({type(error).__name__}: {error})"
try:
    import dtfsal_hf.benchmark  # noqa: F401
    env["dtfsal_hf"] = "imports"
except Exception as error:
    env["dtfsal_hf"] = f"FAILS ({type(error).__name__}: {error})"
print(json.dumps(env, indent=2))
EOF
log "environment: $(tr -d '\n' < "$OUT/env.json" | tr -s ' ')"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "STOP: torch $("$PY" -c 'import torch; print(torch.__version__)') is here but sees no CUDA GPU (a CPU-only build, or no driver)."
    exit 1
fi
if ! grep -q '"dtfsal_hf": "imports"' "$OUT/env.json"; then
    log "STOP: dtfsal_hf does not import here (see env.json for the missing package)."
    exit 1
fi

# 2. CUDA tests (tiny model)
if step "CUDA tests" 60; then
    if timeout 90 "$PY" tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1; then
        log "CUDA tests: all passed ($(grep -c '^PASS' "$OUT/gpu_tests.txt") tests)"
    else
        log "CUDA tests: FAILED or timed out (exit $?); see gpu_tests.txt: $(grep '^FAIL' "$OUT/gpu_tests.txt" | head -3 | tr '\n' ' ')"
    fi
fi

# 3. The attention kernels alone
if step "attention kernels" 40; then
    timeout 60 "$PY" scripts/attention_kernels.py --device cuda --batch-size 32 --stages 1 2 3 4 \
        > "$OUT/attention_kernels.md" 2>&1
    log "attention kernels: exit $?"; cat "$OUT/attention_kernels.md" | tee -a "$OUT/summary.txt"
fi

# 4. Benchmark without compilation, per clip and on the whole video
if step "benchmark (eager fp32 reference, sdpa at batch 8 and 32; whole video $VIDEO, $VIDEO_FRAMES frames)" 180; then
    timeout 200 "$PY" -m dtfsal_hf.cli benchmark --device cuda --paths sdpa-bf16 sdpa-bf16-cl sdpa-fp16 \
        --batch-sizes 8 32 --repeats 5 --video "$VIDEO" --video-frames "$VIDEO_FRAMES" --strides 1 4 \
        --video-path sdpa-bf16 --video-batch-size 32 \
        --json "$OUT/benchmark.json" > "$OUT/benchmark.md" 2> "$OUT/benchmark.log"
    log "benchmark: exit $?"
    [ -s "$OUT/benchmark.md" ] && sed -n '/^| network/,/^$/p;/^Whole video/,/^$/p;/^| stride/,/^$/p' "$OUT/benchmark.md" \
        | tee -a "$OUT/summary.txt"
fi

# 5. Where an sdpa-bf16 call spends its time
if step "profile" 40; then
    timeout 60 "$PY" - > "$OUT/profile.txt" 2>&1 <<'EOF'
import torch
from dtfsal_hf import DTFSalConfig, DTFSalModel
from dtfsal_hf.benchmark import PATHS, prepare_path
from dtfsal_hf import DTFSalModel
torch.manual_seed(0)
model = DTFSalModel(DTFSalConfig())
run = prepare_path(model, PATHS["sdpa-bf16"], "cuda")
inputs = {k: v.cuda() for k, v in DTFSalModel.build_dummy_inputs(model.config, batch_size=8).items()}
for _ in range(2):
    run(inputs)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
    run(inputs); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
EOF
    log "profile: exit $?"; grep -m 12 -E "^\s+\S" "$OUT/profile.txt" | head -14 >> "$OUT/summary.txt"
fi

# 6. torch.compile (the 200 maps/s target's path)
if step "torch.compile (bf16, batch 32)" 90; then
    REMAINING=$(( $(left) - 10 )); [ "$REMAINING" -gt 240 ] && REMAINING=240
    timeout "$REMAINING" "$PY" -m dtfsal_hf.cli benchmark --device cuda --paths sdpa-bf16 compiled-sdpa-bf16 \
        --batch-sizes 32 --repeats 5 --no-backbone --json "$OUT/compiled.json" > "$OUT/compiled.md" 2> "$OUT/compiled.log"
    status=$?
    log "torch.compile: exit $status$( [ $status = 124 ] && echo ' (timed out: compilation too slow for the time left)')"
    [ -s "$OUT/compiled.md" ] && sed -n '/^| network/,/^$/p' "$OUT/compiled.md" | tee -a "$OUT/summary.txt"
fi

# 7. Precision of each path on a fitted full-size model, with what is left
if step "precision check (fitting ${PRECISION_SECONDS} s)" $(( PRECISION_SECONDS + 70 )); then
    timeout $(( PRECISION_SECONDS + 120 )) "$PY" scripts/precision_check.py --device cuda --seconds "$PRECISION_SECONDS" --batch-size 4 \
        --json "$OUT/precision.json" > "$OUT/precision.md" 2>&1
    log "precision check: exit $?"
    sed -n '/^training:/,$p' "$OUT/precision.md" | tee -a "$OUT/summary.txt"
fi

log "done"
