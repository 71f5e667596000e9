#!/usr/bin/env bash
# One accelerator check in under 10 minutes: the input pipeline with all host cores (JPEG and raw
# storage, from full-size 450 x 600 JPEGs), the SPMix step side by side with plain JAX / PyTorch
# ViT steps (ViT-B/16, 224 px, bf16, batch 128), the demo config end to end and a short
# `configs/ham10000.py:full` run (S/16) when a HAM10000 folder is at hand. The phase breakdown
# (`step_breakdown`, several more minutes of compiles on a GPU) runs when ONLY names it.
# JSON results and logs go to OUT_DIR.
#
#   benchmarks/accelerator_check.sh [OUT_DIR]        # default: accelerator_check_out
#   DRY_RUN=1 benchmarks/accelerator_check.sh        # print the plan (JSON) and run nothing
#   SMOKE=1 benchmarks/accelerator_check.sh /tmp/x   # everything at tiny sizes on the CPU
#   benchmarks/accelerator_check.sh --cpu /tmp/x      # the same as SMOKE=1
#   ONLY=compare_step,step_breakdown benchmarks/accelerator_check.sh   # just these steps
#   ONLY=compare_step STEP_LIMIT=540 benchmarks/accelerator_check.sh   # one step, a longer limit
#
# Environment: PYTHON (default: python3), TORCH_PYTHON (a Python with torch for the PyTorch
# baseline; default: PYTHON), DATA_DIR (a HAM10000-style folder, images/ + labels.csv [+
# metadata.csv]: the source of the upscaled JPEGs and of the short run; default:
# $SPMIX_HAM10000_DIR, else synthetic 600x450 JPEGs are written to OUT_DIR and the short run is
# left out), BATCH (128).
# On a GPU the CUDA build of the installed jax version is installed when jax does not already see
# the GPU (pip install "jax[cuda12]==<version>"); on a TPU VM "jax[tpu]==<version>".
set -euo pipefail

cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
if [[ "${1:-}" == "--cpu" ]]; then SMOKE=1; shift; fi
OUT=${1:-${OUT_DIR:-accelerator_check_out}}
PY=${PYTHON:-python3}
TORCH_PY=${TORCH_PYTHON:-$PY}
DRY=${DRY_RUN:-0}
CORES=$(nproc)

if [[ "$SMOKE" == 1 ]]; then
  KIND=cpu
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  KIND=gpu
elif [[ -n "${TPU_NAME:-}${TPU_ACCELERATOR_TYPE:-}${TPU_WORKER_ID:-}" ]] || ls /dev/accel0 >/dev/null 2>&1 || ls /dev/vfio/0 >/dev/null 2>&1; then
  KIND=tpu
else
  KIND=cpu
fi

if [[ "$SMOKE" == 1 ]]; then
  BATCH=${BATCH:-4}
  COMPARE_ARGS=(--dry_run)
  BREAKDOWN_ARGS=(--dry_run)
  PIPE_ARGS=(--image_size 32 --batch 8 --batches 2 --workers "0,1" --parts_pairs 16)
  DEMO_CONFIG="configs/demo.py:steps=20"
  DEMO_OVERRIDES=(--config.train.eval_every=20 --config.train.checkpoint_every=20 --config.train.log_every=10)
  SHORT_CONFIG="configs/ham10000.py:steps=4"
  SHORT_OVERRIDES=(--config.train.log_every=2)
  SYNTH_JPEGS=64
  LIMITS=(300 600 300 300 300)  # CPU compilation is slow; the 10-minute budget is for accelerators
else
  BATCH=${BATCH:-128}
  # The default recipe's step (saliency once per stored frame, EMA key encoder).
  COMPARE_ARGS=(--variant B/16 --image_size 224 --batch "$BATCH" --dtype bfloat16 --steps 5
    --rounds 3 --cases "spmix:fine_grained@frame:ema,plain_jax,plain_torch")
  BREAKDOWN_ARGS=(--variant B/16 --image_size 224 --batch "$BATCH" --dtype bfloat16 --steps 5 --rounds 2)
  PIPE_ARGS=(--image_size 224 --batch 128 --batches 8 --workers "0,$CORES" --parts_pairs 128
    --storages jpeg,raw)
  DEMO_CONFIG="configs/demo.py"
  # With the demo's single-process loading a GPU step waits for data 3/4 of the time.
  DEMO_OVERRIDES=(--config.input.worker_count=8)
  SHORT_CONFIG="configs/ham10000.py:full,steps=150"
  SHORT_OVERRIDES=()
  SYNTH_JPEGS=256
  # Seen on an H200: the S/16 SPMix step's first compile takes about 50 s, B/16's longer.
  LIMITS=(80 230 110 140 300)
fi

DATA=${DATA_DIR:-${SPMIX_HAM10000_DIR:-}}
if [[ -n "$DATA" && -f "$DATA/labels.csv" ]]; then
  if [[ "$SMOKE" == 1 ]]; then
    PIPE_DATA=(--data_dir "$DATA")
  else  # HAM10000's full 450 x 600 size, upscaled from the folder's real images
    PIPE_DATA=(--make_jpegs "$SYNTH_JPEGS" --upscale_from "$DATA" --data_dir "$OUT/jpegs")
  fi
  SHORT_RUN="$PY -m spmix_jax.main --config=$SHORT_CONFIG ${SHORT_OVERRIDES[*]} --config.data.source_dir=$DATA --config.data.data_dir=$OUT/data --workdir=$OUT/ham10000_workdir"
else
  PIPE_DATA=(--make_jpegs "$SYNTH_JPEGS" --data_dir "$OUT/synthetic_jpegs")
  SHORT_RUN="echo 'no HAM10000 folder (DATA_DIR / SPMIX_HAM10000_DIR): short run left out'"
fi

VERSION_CMD="import jax; print(jax.__version__)"
case "$KIND" in
  gpu) INSTALL=("$PY" -m pip install -q "jax[cuda12]==\$($PY -c '$VERSION_CMD')") ;;
  tpu) INSTALL=("$PY" -m pip install -q "jax[tpu]==\$($PY -c '$VERSION_CMD')") ;;
  *) INSTALL=() ;;
esac

# name, time limit (s), command
STEPS=(
  "input_pipeline|${LIMITS[0]}|$PY benchmarks/input_pipeline.py ${PIPE_DATA[*]} ${PIPE_ARGS[*]} --out $OUT/input_pipeline.json"
  "compare_step|${LIMITS[1]}|$PY benchmarks/compare_step.py ${COMPARE_ARGS[*]} --torch_python $TORCH_PY --input_pipeline_json $OUT/input_pipeline.json --out $OUT/compare_step.json"
  "demo|${LIMITS[2]}|$PY -m spmix_jax.main --config=$DEMO_CONFIG ${DEMO_OVERRIDES[*]} --workdir=$OUT/demo_workdir"
  "ham10000_short|${LIMITS[3]}|$SHORT_RUN"
  "step_breakdown|${LIMITS[4]}|$PY benchmarks/step_breakdown.py ${BREAKDOWN_ARGS[*]} --out $OUT/step_breakdown.json"
)

NAMES=()
for s in "${STEPS[@]}"; do NAMES+=("${s%%|*}"); done
if [[ -n "${ONLY:-}" ]]; then
  WANTED=",$ONLY,"
elif [[ "$SMOKE" == 1 ]]; then
  WANTED=",$(IFS=,; echo "${NAMES[*]}"),"
else  # step_breakdown's per-phase compiles would not fit: only when ONLY names it
  WANTED=",$(IFS=,; echo "${NAMES[*]/step_breakdown/}"),"
fi
SELECTED=()
for s in "${STEPS[@]}"; do
  [[ "$WANTED" == *",${s%%|*},"* ]] && SELECTED+=("$s")
done
if [[ ${#SELECTED[@]} -eq 0 ]]; then
  echo "ONLY=$ONLY names none of: ${NAMES[*]}" >&2
  exit 2
fi
STEPS=("${SELECTED[@]}")
# STEP_LIMIT (seconds) replaces the time limit of every selected step: with ONLY naming one
# step, that step can have a whole device command to itself.
if [[ -n "${STEP_LIMIT:-}" ]]; then
  if ! [[ "$STEP_LIMIT" =~ ^[1-9][0-9]*$ ]]; then
    echo "STEP_LIMIT=$STEP_LIMIT: expected a whole number of seconds" >&2
    exit 2
  fi
  for i in "${!STEPS[@]}"; do
    IFS='|' read -r name _ cmd <<<"${STEPS[$i]}"
    STEPS[$i]="$name|$STEP_LIMIT|$cmd"
  done
fi

if [[ "$DRY" == 1 ]]; then
  {
    printf '{"kind": "%s", "smoke": %s, "out_dir": "%s", "cores": %s, "install": "%s", "steps": [' \
      "$KIND" "$([[ $SMOKE == 1 ]] && echo true || echo false)" "$OUT" "$CORES" "${INSTALL[*]:-}"
    sep=""
    for s in "${STEPS[@]}"; do
      IFS='|' read -r name limit cmd <<<"$s"
      cmd=${cmd//\"/\\\"}
      printf '%s{"name": "%s", "timeout_s": %s, "command": "%s"}' "$sep" "$name" "$limit" "$cmd"
      sep=", "
    done
    printf ']}\n'
  }
  exit 0
fi

mkdir -p "$OUT"
START=$(date +%s)
echo "accelerator check: $KIND, $CORES host cores, output in $OUT" >&2
if [[ ${#INSTALL[@]} -gt 0 ]]; then
  if "$PY" -c "import jax, sys; sys.exit(jax.default_backend() == '$KIND')"; then
    echo "+ ${INSTALL[*]}" >&2
    eval "${INSTALL[*]}" || echo "WARNING: installing the $KIND build of jax failed; results will say which platform ran" >&2
  fi
fi
"$PY" -c "import jax; print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())" >&2
# Runs left from an earlier check would resume instead of training.
rm -rf "$OUT/demo_workdir" "$OUT/ham10000_workdir"
STATUS=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  echo "+ [$name, at most ${limit}s] $cmd" >&2
  t0=$(date +%s)
  if timeout "$limit" bash -c "$cmd" >"$OUT/$name.log" 2>&1; then rc=0; else rc=$?; STATUS=1; fi
  echo "  $name: exit $rc after $(( $(date +%s) - t0 ))s (log: $OUT/$name.log)" >&2
done
echo "accelerator check done in $(( $(date +%s) - START ))s; JSON files:" >&2
ls "$OUT"/*.json >&2 || true
exit $STATUS
