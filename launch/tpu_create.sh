#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host, or a multi-host slice such as v4-32) for spmix_jax.
#
# Usage:
#   launch/tpu_create.sh                  # TPU VM now (fails if the zone has no capacity)
#   QUEUED=1 launch/tpu_create.sh         # queued resource: waits in line for capacity
#   SPOT=1 QUEUED=1 launch/tpu_create.sh  # spot capacity (cheaper, can be preempted)
#   DRY_RUN=1 launch/tpu_create.sh        # print the gcloud commands, run nothing
#
# Environment (default in brackets):
#   TPU_NAME          [spmix-tpu]
#   ZONE              [us-central2-b] must offer ACCELERATOR_TYPE (see the TPU regions page)
#   ACCELERATOR_TYPE  [v4-32] e.g. v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-16, v6e-16
#   RUNTIME_VERSION   [from ACCELERATOR_TYPE] v2/v3/v4: tpu-ubuntu2204-base,
#                     v5litepod: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e
#   PROJECT           [gcloud config get-value project]
#   QUEUED            [0] 1: `gcloud compute tpus queued-resources create` instead
#   QR_NAME           [$TPU_NAME-qr] name of the queued resource
#   SPOT              [0] 1: spot capacity (--spot)
#   EXTRA_CREATE_FLAGS  extra flags for the create command, e.g. "--service-account=SA_EMAIL
#                     --scopes=https://www.googleapis.com/auth/cloud-platform"
#   DRY_RUN           [0] 1: print commands only
#
# The VM's service account must be able to read and write the gs:// bucket used as WORKDIR.
# Next: launch/tpu_setup.sh (same environment), then launch/tpu_train.sh.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0
[[ $# -gt 0 ]] && usage 2

TPU_NAME=${TPU_NAME:-spmix-tpu}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
QUEUED=${QUEUED:-0}
QR_NAME=${QR_NAME:-$TPU_NAME-qr}
SPOT=${SPOT:-0}
DRY_RUN=${DRY_RUN:-0}
EXTRA_CREATE_FLAGS=${EXTRA_CREATE_FLAGS:-}

if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "$ACCELERATOR_TYPE" in
    v2-* | v3-* | v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *)
      echo "error: no default runtime for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION" >&2
      exit 2
      ;;
  esac
fi
if [[ -z "${PROJECT:-}" ]] && command -v gcloud >/dev/null; then
  PROJECT=$(gcloud config get-value project 2>/dev/null || true)
fi
if [[ -z "${PROJECT:-}" ]]; then
  echo "error: set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 2
fi

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

extra=()
[[ -n "$EXTRA_CREATE_FLAGS" ]] && read -r -a extra <<<"$EXTRA_CREATE_FLAGS"
spot=()
[[ "$SPOT" == 1 ]] && spot=(--spot)

echo "TPU $TPU_NAME: $ACCELERATOR_TYPE, runtime $RUNTIME_VERSION, zone $ZONE, project $PROJECT"
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources create "$QR_NAME" \
    --node-id="$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    ${spot[@]+"${spot[@]}"} ${extra[@]+"${extra[@]}"}
  cat <<EOF

Queued resource $QR_NAME requested. Wait until its state is ACTIVE:
  gcloud compute tpus queued-resources describe $QR_NAME --zone=$ZONE --project=$PROJECT \\
    --format='value(state.state)'
Delete it (and its TPU) when done:
  gcloud compute tpus queued-resources delete $QR_NAME --zone=$ZONE --project=$PROJECT --force
EOF
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" \
    --zone="$ZONE" --project="$PROJECT" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${spot[@]+"${spot[@]}"} ${extra[@]+"${extra[@]}"}
  cat <<EOF

Delete the TPU when done:
  gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE --project=$PROJECT
EOF
fi
cat <<EOF

Next steps (same environment: TPU_NAME=$TPU_NAME ZONE=$ZONE PROJECT=$PROJECT):
  1. launch/tpu_setup.sh      copy the repository to every worker, create the venv, install
                              jax[tpu] and the project (optionally fetch or build the dataset)
  2. WORKDIR=gs://BUCKET/runs/NAME launch/tpu_train.sh
                              train on all workers; logs in <repo>/logs on each worker
  3. MODE=eval WORKDIR=... launch/tpu_train.sh --config.eval.split=test
EOF
