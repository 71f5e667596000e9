#!/usr/bin/env bash
# Trains spmix_jax on one machine with all of its visible GPUs (one process, data parallel over
# every GPU JAX sees), then evaluates the best checkpoint on a held-out split.
#
# Usage:
#   launch/gpu_local.sh [--config.FIELD=VALUE ...]       # flags go to every mode
#   CONFIG=configs/isic2018.py:variant=B/16 WORKDIR=workdir/b16 launch/gpu_local.sh \
#       --config.data.data_dir=/data/tfds
#   CUDA_VISIBLE_DEVICES=0,1 launch/gpu_local.sh         # only these GPUs
#   SETUP=1 launch/gpu_local.sh                          # first create <repo>/.venv and install
#   MODES=eval EVAL_SPLIT=validation launch/gpu_local.sh # evaluate an existing WORKDIR only
#   DRY_RUN=1 launch/gpu_local.sh                        # print what would run, run nothing
#
# Environment (default in brackets):
#   CONFIG          [configs/demo.py] optionally with arguments (configs/x.py:a=1,b=2)
#   WORKDIR         [workdir/<config file name>] checkpoints, metrics, eval JSON, figures
#   MODES           [train eval] run in order; any of train eval predict visualize
#   EVAL_SPLIT      [test] split for eval/predict (--config.eval.split); empty: data.eval_split
#   PYTHON          [$VIRTUAL_ENV/bin/python, else <repo>/.venv/bin/python]
#   SETUP           [0] 1: create <repo>/.venv (python3 >= 3.11) with jax[$JAX_CUDA_EXTRA] and
#                   the project before running
#   JAX_CUDA_EXTRA  [cuda13 if the NVIDIA driver is >= 580, else cuda12]
#   XLA_PYTHON_CLIENT_MEM_FRACTION  [0.90] share of each GPU's memory JAX reserves up front
#   XLA_FLAGS       gets --xla_gpu_enable_latency_hiding_scheduler=true appended (overlaps the
#                   gradient all-reduce with compute when there are several GPUs)
#   JAX_COMPILATION_CACHE_DIR  [~/.cache/jax_compilation] reuses compiled steps across runs
#   ALLOW_CPU       [0] 1: run even when JAX finds no GPU (for trying the script on a CPU)
#   DRY_RUN         [0] 1: print the setup and training commands instead of running them (no
#                   GPU, venv or driver needed)
set -euo pipefail

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=${CONFIG:-configs/demo.py}
config_file=${CONFIG%%:*}
WORKDIR=${WORKDIR:-workdir/$(basename "$config_file" .py)}
MODES=${MODES:-train eval}
EVAL_SPLIT=${EVAL_SPLIT-test}
SETUP=${SETUP:-0}
ALLOW_CPU=${ALLOW_CPU:-0}
DRY_RUN=${DRY_RUN:-0}
# run CMD...: runs it, or with DRY_RUN=1 prints it (shell-quoted) instead.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(printf '%q ' "$@")"
  else
    "$@"
  fi
}

for mode in $MODES; do
  case "$mode" in train | eval | predict | visualize) ;; *)
    echo "error: MODES may hold train, eval, predict, visualize; got '$mode'" >&2
    exit 2
    ;;
  esac
done
cd "$repo"
if [[ ! -f "$config_file" ]]; then
  echo "error: config file $config_file not found (relative to $repo)" >&2
  exit 2
fi

if [[ "$SETUP" == 1 ]]; then
  if [[ -z "${JAX_CUDA_EXTRA:-}" && "$DRY_RUN" == 1 ]] && ! command -v nvidia-smi >/dev/null; then
    JAX_CUDA_EXTRA=cuda13
    echo "(dry run without nvidia-smi: assuming a driver >= 580 -> jax[$JAX_CUDA_EXTRA])"
  fi
  if [[ -z "${JAX_CUDA_EXTRA:-}" ]]; then
    if ! command -v nvidia-smi >/dev/null; then
      echo "error: nvidia-smi not found; install the NVIDIA driver or set JAX_CUDA_EXTRA" >&2
      exit 1
    fi
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
    if ((${driver%%.*} >= 580)); then JAX_CUDA_EXTRA=cuda13; else JAX_CUDA_EXTRA=cuda12; fi
    echo "NVIDIA driver $driver -> jax[$JAX_CUDA_EXTRA]"
  fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: python3 is $(python3 -V 2>&1); the project needs >= 3.11" \
      "(e.g. uv venv --python 3.11 .venv, then run again without SETUP)" >&2
    exit 1
  fi
  [[ -x .venv/bin/python ]] || run python3 -m venv .venv
  run .venv/bin/python -m pip install --quiet --upgrade pip
  run .venv/bin/python -m pip install --quiet -e . "jax[$JAX_CUDA_EXTRA]"
  PYTHON=$repo/.venv/bin/python
fi

if [[ -n "${PYTHON:-}" ]]; then
  python=$PYTHON
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
  python=$VIRTUAL_ENV/bin/python
else
  python=$repo/.venv/bin/python
fi
if [[ ! -x "$python" && "$DRY_RUN" != 1 ]]; then
  echo "error: no python at $python; set PYTHON=/path/to/venv/bin/python or SETUP=1" >&2
  exit 1
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
if [[ "${XLA_FLAGS:-}" != *xla_gpu_enable_latency_hiding_scheduler* ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
fi
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/jax_compilation}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# Which devices JAX sees (CUDA_VISIBLE_DEVICES narrows them); refuse a silent CPU run.
if [[ "$DRY_RUN" == 1 ]]; then
  devices="gpu ? dry-run"
else
  devices=$("$python" -c 'import jax; d = jax.devices(); print(d[0].platform, len(d), d[0].device_kind)')
fi
read -r platform count kind <<<"$devices"
echo "JAX sees $count $platform device(s) ($kind); CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<all>}"
if [[ "$platform" != gpu && "$platform" != cuda && "$ALLOW_CPU" != 1 ]]; then
  echo "error: JAX found no GPU. Install jax[cuda13] (driver >= 580) or jax[cuda12] into" \
    "$python's venv (or SETUP=1); ALLOW_CPU=1 runs anyway" >&2
  exit 1
fi

run mkdir -p "$WORKDIR/logs"
for mode in $MODES; do
  mode_args=()
  if [[ "$mode" == eval || "$mode" == predict ]] && [[ -n "$EVAL_SPLIT" ]]; then
    mode_args=(--config.eval.split="$EVAL_SPLIT")
  fi
  log=$WORKDIR/logs/$mode-$(date +%Y%m%d-%H%M%S).log
  echo "=== $mode: $CONFIG -> $WORKDIR (log $log)"
  if [[ "$DRY_RUN" == 1 ]]; then
    run "$python" -m spmix_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$mode" \
      ${mode_args[@]+"${mode_args[@]}"} "$@"
    continue
  fi
  "$python" -m spmix_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$mode" \
    ${mode_args[@]+"${mode_args[@]}"} "$@" 2>&1 | tee "$log"
done
