#!/usr/bin/env bash
# Runs spmix_jax on every worker of a TPU VM (one process per worker, --distributed), with the
# workdir on GCS and one log file per worker. The run is detached: closing the terminal does not
# stop it.
#
# Usage:
#   WORKDIR=gs://BUCKET/runs/b16 launch/tpu_train.sh [--config.FIELD=VALUE ...]
#   WORKDIR=gs://BUCKET/runs/b16 MODE=eval launch/tpu_train.sh --config.eval.split=test
#   WORKDIR=gs://BUCKET/runs/b16 MODE=predict launch/tpu_train.sh --config.eval.split=test
#   ACTION=logs launch/tpu_train.sh       # follow worker 0's log of the current run (WORKER=k)
#   ACTION=status launch/tpu_train.sh     # which workers still run it
#   ACTION=stop launch/tpu_train.sh       # stop the current run on every worker
#
# Environment (default in brackets):
#   TPU_NAME, ZONE, PROJECT  as for launch/tpu_create.sh [spmix-tpu, us-central2-b, gcloud's]
#   REPO_DIR       [spmix_jax] repository on each worker, with .venv (launch/tpu_setup.sh)
#   WORKDIR        (required for train/eval/predict/visualize) gs://... for checkpoints,
#                  TensorBoard metrics, eval JSON and figures; every worker must reach it
#   CONFIG         [configs/isic2018.py] optionally with arguments, e.g.
#                  configs/isic2018.py:variant=B/16,saliency=gradient
#   MODE           [train] train | eval | predict | visualize
#   DATA_DIR       [tfds] adds --config.data.data_dir=<home>/<DATA_DIR>; empty: not added
#   RUN_NAME       [last part of WORKDIR] logs: <REPO_DIR>/logs/<RUN_NAME>-<MODE>-w<worker>.log,
#                  copied to <WORKDIR>/logs/ when the process ends
#   FOLLOW         [0 for train, else 1] 1: follow worker 0's log until the run ends
#   COMPILE_CACHE  [.cache/jax_compilation] persistent XLA compilation cache on each worker
#   DRY_RUN        [0] 1: print the commands and worker scripts
#
# Train mode evaluates the best checkpoint on data.eval_split at the end; evaluate on the test
# split (or any other) afterwards with MODE=eval as above. TensorBoard: tensorboard --logdir WORKDIR
set -euo pipefail

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0

TPU_NAME=${TPU_NAME:-spmix-tpu}
ZONE=${ZONE:-us-central2-b}
REPO_DIR=${REPO_DIR:-spmix_jax}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-configs/isic2018.py}
MODE=${MODE:-train}
DATA_DIR=${DATA_DIR-tfds}
ACTION=${ACTION:-run}
WORKER=${WORKER:-0}
COMPILE_CACHE=${COMPILE_CACHE:-.cache/jax_compilation}
DRY_RUN=${DRY_RUN:-0}
if [[ "$MODE" == train ]]; then FOLLOW=${FOLLOW:-0}; else FOLLOW=${FOLLOW:-1}; fi

case "$MODE" in train | eval | predict | visualize) ;; *)
  echo "error: MODE must be train, eval, predict or visualize, got '$MODE'" >&2
  exit 2
  ;;
esac
case "$ACTION" in run | logs | status | stop) ;; *)
  echo "error: ACTION must be run, logs, status or stop, got '$ACTION'" >&2
  exit 2
  ;;
esac
if [[ "$ACTION" == run && -z "$WORKDIR" ]]; then
  echo "error: set WORKDIR=gs://BUCKET/PATH (shared by all workers)" >&2
  exit 2
fi
if [[ "$ACTION" == run && "$WORKDIR" != gs://* ]]; then
  echo "warning: WORKDIR=$WORKDIR is not on GCS; a multi-host slice needs a shared workdir" >&2
fi
if [[ "$ACTION" != run && $# -gt 0 ]]; then
  echo "error: ACTION=$ACTION takes no arguments" >&2
  exit 2
fi
RUN_NAME=${RUN_NAME:-$(basename "${WORKDIR:-run}")}
if [[ -z "${PROJECT:-}" ]] && command -v gcloud >/dev/null; then
  PROJECT=$(gcloud config get-value project 2>/dev/null || true)
fi
if [[ -z "${PROJECT:-}" ]]; then
  echo "error: set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 2
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" --project="$PROJECT")

# Every worker script starts here: absolute paths, the repository, its logs folder, this worker's
# number (from the VM metadata) and the files that describe the current run. A run is its own
# process group; `stop` sends SIGINT, then SIGKILL after 30 s (SIGTERM is not used: with
# jax.distributed initialised it is taken as a preemption notice and the process keeps running).
preamble="set -euo pipefail
REPO_DIR=$(printf %q "$REPO_DIR")
case \$REPO_DIR in /*) ;; *) REPO_DIR=\$HOME/\$REPO_DIR ;; esac
cd \"\$REPO_DIR\"
mkdir -p logs
worker=\$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \\
  || hostname)
pidfile=logs/current.pid
running() { [ -f \"\$pidfile\" ] && kill -0 -- \"-\$(cat \"\$pidfile\")\" 2>/dev/null; }
"

# on_workers WORKER SCRIPT: runs SCRIPT (after the preamble) with bash on WORKER (all | 0 | ...).
on_workers() {
  local worker=$1 script="$preamble$2"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "--- on worker(s) $worker of $TPU_NAME:"
    echo "$script"
    echo "---"
    return
  fi
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker="$worker" \
    --command="bash -c $(printf %q "$script")"
}

follow() {
  on_workers "$1" 'if [ ! -e logs/current.log ]; then echo "no run started on worker $worker"; exit 1; fi
echo "== worker $worker: $(readlink logs/current.log)"
if running; then
  tail -n +1 -f --pid="$(cat "$pidfile")" logs/current.log
else
  tail -n 100 logs/current.log
fi'
}

case "$ACTION" in
  logs)
    follow "$WORKER"
    exit 0
    ;;
  status)
    on_workers all 'if running; then
  echo "worker $worker: running (pid $(cat "$pidfile")), $(readlink logs/current.log)"
else
  echo "worker $worker: idle; last log $(readlink logs/current.log 2>/dev/null || echo none)"
fi'
    exit 0
    ;;
  stop)
    on_workers all 'if ! running; then echo "worker $worker: nothing running"; exit 0; fi
pgid=$(cat "$pidfile")
kill -INT -- "-$pgid" 2>/dev/null || true
for _ in $(seq 30); do running || break; sleep 1; done
if running; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
for _ in $(seq 10); do running || break; sleep 1; done
echo "worker $worker: stopped process group $pgid"'
    exit 0
    ;;
esac

# --- run ----------------------------------------------------------------------------------------
args=(--config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" --distributed)
if [[ -n "$DATA_DIR" ]]; then
  case "$DATA_DIR" in
    /*) args+=(--config.data.data_dir="$DATA_DIR") ;;
    *) args+=("--config.data.data_dir=@HOME@/$DATA_DIR") ;;
  esac
fi
args+=("$@")
quoted_args=$(printf '%q ' "${args[@]}")

echo "=== $MODE on all workers of $TPU_NAME: $CONFIG -> $WORKDIR"
on_workers all "ARGS=$(printf %q "$quoted_args")
RUN_NAME=$(printf %q "$RUN_NAME")
MODE=$(printf %q "$MODE")
WORKDIR=$(printf %q "$WORKDIR")
COMPILE_CACHE=$(printf %q "$COMPILE_CACHE")
"'if running; then
  echo "error: worker $worker still runs pid $(cat "$pidfile") ($(readlink logs/current.log));" \
    "ACTION=stop first" >&2
  exit 1
fi
case $COMPILE_CACHE in /*) ;; *) COMPILE_CACHE=$HOME/$COMPILE_CACHE ;; esac
log=logs/$RUN_NAME-$MODE-w$worker.log
runner=logs/$RUN_NAME-$MODE.sh
# The runner traps SIGINT so that it outlives the python process, records its end and copies
# the log.
cat >"$runner" <<EOF
#!/usr/bin/env bash
cd "$REPO_DIR"
export TF_CPP_MIN_LOG_LEVEL=\${TF_CPP_MIN_LOG_LEVEL:-2}
export JAX_COMPILATION_CACHE_DIR="$COMPILE_CACHE"
trap "echo == interrupted" INT
echo "== \$(date -u +%FT%TZ) worker $worker: .venv/bin/python -m spmix_jax.main ${ARGS//@HOME@/$HOME}"
.venv/bin/python -m spmix_jax.main ${ARGS//@HOME@/$HOME}
rc=\$?
echo "== \$(date -u +%FT%TZ) worker $worker: exit status \$rc"
case "$WORKDIR" in
  gs://*) gcloud storage cp "$log" "$WORKDIR/logs/" >/dev/null 2>&1 || true ;;
  *) mkdir -p "$WORKDIR/logs" && cp "$log" "$WORKDIR/logs/" || true ;;
esac
exit \$rc
EOF
ln -sfn "$(basename "$log")" logs/current.log
# Job control on: the run gets its own process group, and SIGINT is not ignored in it.
set -m
nohup bash "$runner" >"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
echo "worker $worker: started pid $! -> $REPO_DIR/$log"'

cat <<EOF

Follow worker 0:   TPU_NAME=$TPU_NAME ZONE=$ZONE ACTION=logs launch/tpu_train.sh
Stop everywhere:   TPU_NAME=$TPU_NAME ZONE=$ZONE ACTION=stop launch/tpu_train.sh
TensorBoard:       tensorboard --logdir $WORKDIR
Evaluate on test:  WORKDIR=$WORKDIR CONFIG=$CONFIG MODE=eval launch/tpu_train.sh --config.eval.split=test
EOF
if [[ "$FOLLOW" == 1 ]]; then
  follow 0
fi
