#!/usr/bin/env bash
# The GPU check, in one script for a lent CUDA machine (H100/H200), about 6 minutes at most:
#   1. environment: python3, torch (CUDA build?), the GPU, and the packages dtfsal_hf imports;
#   2. CUDA tests on the tiny model (tests/test_gpu.py): GPU maps equal CPU maps, bf16 stays close,
#      a training step on CUDA lowers the loss;
#   3. `dtfsal benchmark --device cuda` of the full audio-visual model at 32 x 224 x 384: eager fp32
#      (batch 1, with torchvision's MViTv2-S alone as the floor), sdpa fp32/bf16/fp16 at batch 1, 8, 32;
#   4. the same run with torch.compile (bf16) at the batch size that gave the most maps/s in 3.
# Everything goes under $OUT (default ./gpu_check_out): summary.txt first of all, then env.json,
# nvidia-smi.txt, gpu_tests.txt, benchmark_eager.{md,json,log}, benchmark_compiled.{md,json,log}.
# Usage (from anywhere): OUT=/some/folder bash scripts/gpu_check.sh   [PYTHON=python3.12 to choose]
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

log "repository $(git rev-parse --short HEAD 2>/dev/null || echo unknown), python: $(command -v "$PY" || echo missing)"
(nvidia-smi || echo "nvidia-smi not found") > "$OUT/nvidia-smi.txt" 2>&1
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
"$PY" - > "$OUT/env.json" 2>&1 <<'EOF'
import importlib, json, platform
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
       "cuda_available": torch.cuda.is_available()}
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
if timeout 75 "$PY" tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1; then
    log "CUDA tests: all passed ($(grep -c '^PASS' "$OUT/gpu_tests.txt") tests)"
else
    log "CUDA tests: FAILED or timed out (exit $?); see gpu_tests.txt: $(grep '^FAIL' "$OUT/gpu_tests.txt" | head -3 | tr '\n' ' ')"
fi

# 3. Benchmark without compilation: the floor, the reference, sdpa at three batch sizes
timeout 130 "$PY" -m dtfsal_hf.cli benchmark --device cuda --paths eager-fp32 sdpa-fp32 sdpa-bf16 sdpa-fp16 \
    --batch-sizes 1 8 32 --repeats 5 --json "$OUT/benchmark_eager.json" \
    > "$OUT/benchmark_eager.md" 2> "$OUT/benchmark_eager.log"
status=$?
log "benchmark (eager and sdpa, batches 1 8 32): exit $status$( [ $status = 124 ] && echo ' (timed out)')"
[ -s "$OUT/benchmark_eager.md" ] && sed -n '/| target/,$p' "$OUT/benchmark_eager.md" | tee -a "$OUT/summary.txt"

# 4. torch.compile at the batch size with the most bf16 maps/s
BEST=$("$PY" - "$OUT/benchmark_eager.json" <<'EOF' 2>/dev/null || echo 8
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["results"] if r["network"] != "mvit_v2_s" and r["path"] == "sdpa-bf16"]
print(max(rows, key=lambda r: r["maps_per_second"])["batch_size"])
EOF
)
log "compiling at batch $BEST"
timeout 190 "$PY" -m dtfsal_hf.cli benchmark --device cuda --paths sdpa-bf16 compiled-sdpa-bf16 \
    --batch-sizes "$BEST" --repeats 5 --json "$OUT/benchmark_compiled.json" \
    > "$OUT/benchmark_compiled.md" 2> "$OUT/benchmark_compiled.log"
status=$?
log "benchmark (torch.compile, batch $BEST): exit $status$( [ $status = 124 ] && echo ' (timed out: compilation too slow here)')"
[ -s "$OUT/benchmark_compiled.md" ] && sed -n '/| target/,$p' "$OUT/benchmark_compiled.md" | tee -a "$OUT/summary.txt"
log "done"
