#!/usr/bin/env bash
# Prepares every worker of a TPU VM: the repository, a venv with jax[tpu] and the project, and
# optionally the ISIC 2018 dataset on each worker's local disk.
#
# Usage:
#   launch/tpu_setup.sh                              # copy this checkout to all workers, install
#   REPO_URL=https://github.com/ORG/spmix_jax.git launch/tpu_setup.sh     # clone instead of copy
#   DATA_GCS=gs://BUCKET/tfds launch/tpu_setup.sh    # also copy a built dataset to every worker
#   ISIC_MANUAL_GCS=gs://BUCKET/isic2018_downloads DATA_GCS=gs://BUCKET/tfds launch/tpu_setup.sh
#                                # build it first on worker 0 (launch/prepare_isic2018.sh), upload
#                                # it to DATA_GCS, then copy it to every worker
#   STEPS=data launch/tpu_setup.sh                   # only some steps (see STEPS)
#   DRY_RUN=1 launch/tpu_setup.sh                    # print the commands and worker scripts
#
# Environment (default in brackets):
#   TPU_NAME, ZONE, PROJECT  as for launch/tpu_create.sh [spmix-tpu, us-central2-b, gcloud's]
#   REPO_DIR         [spmix_jax] repository on each worker (relative to the home directory)
#   REPO_URL         clone this at REPO_REF [main] instead of copying this checkout (the copy
#                    takes tracked and untracked-but-not-ignored files, as `git ls-files` lists)
#   PYTHON_VERSION   [3.11] Python of <REPO_DIR>/.venv; the TPU images ship 3.10, so uv
#                    (installed with pip --user if missing) downloads this version
#   JAX_VERSION      [newest] e.g. 0.10.2 installs jax[tpu]==0.10.2
#   STEPS            [code,venv,check,data] comma-separated; data runs only with DATA_GCS set
#   DATA_DIR         [tfds] dataset root on each worker's disk (relative to home); train with
#                    --config.data.data_dir=<home>/<DATA_DIR> (launch/tpu_train.sh adds it)
#   DATA_GCS         gs:// folder holding the built dataset root (the isic2018/ folder inside)
#   ISIC_MANUAL_GCS  gs:// folder with the ISIC 2018 Task 3 downloads (see prepare_isic2018.sh)
#   DATA_CONFIGS     [short256 released] builder configs built from ISIC_MANUAL_GCS
#   DRY_RUN          [0] 1: print commands only
set -euo pipefail

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0
[[ $# -gt 0 ]] && usage 2

TPU_NAME=${TPU_NAME:-spmix-tpu}
ZONE=${ZONE:-us-central2-b}
REPO_DIR=${REPO_DIR:-spmix_jax}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-main}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
JAX_VERSION=${JAX_VERSION:-}
STEPS=${STEPS:-code,venv,check,data}
DATA_DIR=${DATA_DIR:-tfds}
DATA_GCS=${DATA_GCS:-}
ISIC_MANUAL_GCS=${ISIC_MANUAL_GCS:-}
DATA_CONFIGS=${DATA_CONFIGS:-short256 released}
DRY_RUN=${DRY_RUN:-0}

if [[ -z "${PROJECT:-}" ]] && command -v gcloud >/dev/null; then
  PROJECT=$(gcloud config get-value project 2>/dev/null || true)
fi
if [[ -z "${PROJECT:-}" ]]; then
  echo "error: set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 2
fi
if [[ -n "$ISIC_MANUAL_GCS" && -z "$DATA_GCS" ]]; then
  echo "error: ISIC_MANUAL_GCS needs DATA_GCS (where worker 0 uploads the built dataset)" >&2
  exit 2
fi
for path in "$DATA_GCS" "$ISIC_MANUAL_GCS"; do
  if [[ -n "$path" && "$path" != gs://* ]]; then
    echo "error: $path is not a gs:// path" >&2
    exit 2
  fi
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" --project="$PROJECT")

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# Variables every worker script starts with; relative paths are taken from the home directory.
preamble="set -euo pipefail
REPO_DIR=$(printf %q "$REPO_DIR")
DATA_DIR=$(printf %q "$DATA_DIR")
case \$REPO_DIR in /*) ;; *) REPO_DIR=\$HOME/\$REPO_DIR ;; esac
case \$DATA_DIR in /*) ;; *) DATA_DIR=\$HOME/\$DATA_DIR ;; esac
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

# --- code ---------------------------------------------------------------------------------------
if has_step code; then
  echo "=== code -> $TPU_NAME:$REPO_DIR"
  if [[ -n "$REPO_URL" ]]; then
    on_workers all "REPO_URL=$(printf %q "$REPO_URL")
REPO_REF=$(printf %q "$REPO_REF")
"'if [ -d "$REPO_DIR/.git" ]; then
  git -C "$REPO_DIR" fetch --quiet origin "$REPO_REF"
  git -C "$REPO_DIR" checkout --quiet FETCH_HEAD
else
  git clone --quiet "$REPO_URL" "$REPO_DIR"
  git -C "$REPO_DIR" checkout --quiet "$REPO_REF"
fi
echo "$(hostname): $(git -C "$REPO_DIR" rev-parse --short HEAD)"'
  else
    tarball=$(mktemp "${TMPDIR:-/tmp}/spmix_src.XXXXXX")
    trap 'rm -f "$tarball"' EXIT
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -czf "$tarball")
    else
      tar -C "$repo" --exclude=.venv --exclude=workdir --exclude=.git -czf "$tarball" .
    fi
    echo "source archive: $(du -h "$tarball" | cut -f1)"
    run "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME:spmix_src.tgz" "${where[@]}" --worker=all
    on_workers all 'mkdir -p "$REPO_DIR"
tar -xzf "$HOME/spmix_src.tgz" -C "$REPO_DIR"
rm -f "$HOME/spmix_src.tgz"
echo "$(hostname): $REPO_DIR ready"'
  fi
fi

# --- venv ---------------------------------------------------------------------------------------
if has_step venv; then
  echo "=== venv: Python $PYTHON_VERSION, jax[tpu]${JAX_VERSION:+==$JAX_VERSION}, project"
  on_workers all "PYTHON_VERSION=$(printf %q "$PYTHON_VERSION")
JAX_SPEC=$(printf %q "jax[tpu]${JAX_VERSION:+==$JAX_VERSION}")
"'export PATH="$HOME/.local/bin:$PATH"
cd "$REPO_DIR"
if ! command -v uv >/dev/null; then
  python3 -m pip install --user --quiet --upgrade uv ||
    curl -LsSf https://astral.sh/uv/install.sh | sh
fi
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet --python "$PYTHON_VERSION" .venv
fi
uv pip install --quiet --python .venv/bin/python -e . "$JAX_SPEC"
echo "$(hostname): $(.venv/bin/python -c "import jax; print(\"jax\", jax.__version__)")"'
fi

# --- check: every worker sees the whole slice ---------------------------------------------------
if has_step check; then
  echo "=== check: jax.distributed on all workers"
  on_workers all 'cd "$REPO_DIR"
timeout 600 .venv/bin/python -c "
import jax
jax.distributed.initialize()
print(f\"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of \"
      f\"{jax.device_count()} devices, {jax.devices()[0].device_kind}\")
"'
fi

# --- data ---------------------------------------------------------------------------------------
if has_step data && [[ -n "$DATA_GCS" ]]; then
  if [[ -n "$ISIC_MANUAL_GCS" ]]; then
    echo "=== data: build on worker 0 from $ISIC_MANUAL_GCS, upload to $DATA_GCS"
    on_workers 0 "ISIC_MANUAL_GCS=$(printf %q "$ISIC_MANUAL_GCS")
DATA_GCS=$(printf %q "$DATA_GCS")
DATA_CONFIGS=$(printf %q "$DATA_CONFIGS")
"'manual=$HOME/isic2018_manual
mkdir -p "$manual" "$DATA_DIR"
gcloud storage rsync --recursive "$ISIC_MANUAL_GCS" "$manual"
cd "$REPO_DIR"
PYTHON="$REPO_DIR/.venv/bin/python" launch/prepare_isic2018.sh "$manual" "$DATA_DIR" $DATA_CONFIGS
gcloud storage rsync --recursive "$DATA_DIR" "$DATA_GCS"'
  fi
  echo "=== data: $DATA_GCS -> every worker's $DATA_DIR"
  on_workers all "DATA_GCS=$(printf %q "$DATA_GCS")
"'mkdir -p "$DATA_DIR"
gcloud storage rsync --recursive "$DATA_GCS" "$DATA_DIR"
echo "$(hostname): $(du -sh "$DATA_DIR" | cut -f1) in $DATA_DIR"'
fi

cat <<EOF

Setup done. Train (all workers, --distributed, workdir on GCS):
  TPU_NAME=$TPU_NAME ZONE=$ZONE PROJECT=$PROJECT REPO_DIR=$REPO_DIR DATA_DIR=$DATA_DIR \\
  WORKDIR=gs://BUCKET/runs/NAME CONFIG=configs/isic2018.py launch/tpu_train.sh
EOF
