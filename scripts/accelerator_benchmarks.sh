#!/usr/bin/env bash
# The speed figures of docs/benchmarks.md's accelerator section, on the GPU JAX sees (on a
# TPU PyTorch would run on the host: run benchmark.py there without --compare_torch):
#   scripts/accelerator_benchmarks.sh OUT_DIR [PYTHON]
# Writes OUT_DIR/<name>.json per run (benchmark.py --json; six files) and OUT_DIR/runs.log
# (versions, the GPU, each run's stderr), and prints a summary table last. PYTHON (default
# python3) needs JAX for the accelerator, Flax, optax, orbax, ml_collections and, for the
# PyTorch columns, torch with CUDA; not TensorFlow.
# Each run has a time limit (seconds; env LIMIT_<NAME> changes it), so one slow compile
# cannot take the whole budget of a borrowed machine; a run that hits it is reported as
# such. ONLY="NAME ..." runs those alone (the names as the "== NAME:" lines print them).
set -u
out=${1:?usage: scripts/accelerator_benchmarks.sh OUT_DIR [PYTHON]}
python=${2:-python3}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit
cd "$(dirname "$0")/.." || exit
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Each step is compiled twice (cost analysis, then the timed calls): a persistent
# compilation cache makes the second a lookup.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# JAX and PyTorch share the GPU in one process: JAX takes 60% of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.6}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv | tee -a "$out/runs.log"
fi
"$python" - <<'EOF' 2>&1 | tee -a "$out/runs.log"
import importlib, jax
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'torch'):
  try:
    print(name, getattr(importlib.import_module(name), '__version__', '?'))
  except ImportError as e:
    print(name, 'missing:', e)
print('devices', jax.devices())
EOF

run() {  # run NAME LIMIT_S benchmark.py ARGS...
  local name=$1 limit=$2
  shift 2
  [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return 0
  local var="LIMIT_${name^^}"
  echo "== $name: benchmark.py $* (limit ${!var:-$limit} s)" | tee -a "$out/runs.log"
  local start=$SECONDS
  timeout "${!var:-$limit}" "$python" scripts/benchmark.py "$@" --json \
    >"$out/$name.json" 2>"$out/stderr"
  local rc=$?
  cat "$out/stderr" >>"$out/runs.log" && rm "$out/stderr"
  echo "   exit status $rc after $((SECONDS - start)) s$( ((rc == 124)) && echo ': hit the limit')"
  ((rc == 0 || rc == 124)) || tail -5 "$out/runs.log"
}

all_sizes=(--sizes=small --sizes=base --sizes=large)
# The train step against the PyTorch reference (float32, TF32 matmuls as JAX's default).
run train_bf16_b256 120 train --dtype=bfloat16 --batch=256 --repeats=20 "${all_sizes[@]}" \
  --compare_torch
run train_f32_b256 100 train --dtype=float32 --batch=256 --repeats=20 "${all_sizes[@]}" \
  --compare_torch
# configs/accelerator.py's batch for the small model; base at 1024, a shorter run.
run train_bf16_b4096 50 train --dtype=bfloat16 --batch=4096 --repeats=10 --sizes=small
run train_bf16_b1024 50 train --dtype=bfloat16 --batch=1024 --repeats=10 --sizes=base
# Inference: batch-1 latency and batch-256 throughput against PyTorch.
run model_f32 60 model --batch=256 --repeats=20 --sizes=small --compare_torch
# XLA's cost analysis of the accelerator's own compilation (the CPU's is the estimate).
run roofline_b256 110 roofline --batch=256

"$python" - "$out" <<'EOF'
import glob, json, os, sys
keys = ('size', 'attention', 'dtype', 'step_ms', 'windows_per_s', 'mfu_pct', 'xla_scratch_mib',
        'torch_windows_per_s', 'speedup_vs_torch', 'latency_b1_ms', 'torch_latency_b1_ms',
        'throughput_b256_windows_per_s', 'torch_throughput_b256',
        'throughput_speedup_vs_torch', 'gflop_per_window', 'mb_per_window', 'flop_per_byte')
for path in sorted(glob.glob(os.path.join(sys.argv[1], '*.json'))):
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError):
    print(os.path.basename(path), 'no result')
    continue
  print(f"{os.path.basename(path)}: {result['device_kind']}, batch {result['batch']}, "
        f"jax {result['jax']}, torch {result.get('torch', '-')}")
  for row in result['results']:
    print('  ' + ', '.join(f'{k}={row[k]:.4g}' if isinstance(row[k], float) else f'{k}={row[k]}'
                           for k in keys if k in row))
EOF
