#!/usr/bin/env bash
# Builds the ISIC 2018 Task 3 datasets (TFDS ArrayRecord) from the official downloads.
#
# Usage:
#   launch/prepare_isic2018.sh MANUAL_DIR DATA_DIR [CONFIG ...] [-- EXTRA_BUILD_FLAGS ...]
#
#   MANUAL_DIR  folder with the files from https://challenge.isic-archive.com/data/#2018, zipped
#               or extracted: ISIC2018_Task3_{Training,Validation,Test}_Input(.zip),
#               ISIC2018_Task3_{Training,Validation,Test}_GroundTruth(.zip or folder with the
#               .csv; Test ground truth optional), ISIC2018_Task3_Training_LesionGroupings.csv
#               (optional).
#   DATA_DIR    output root; each config lands in DATA_DIR/isic2018/<config>/1.0.0/.
#   CONFIG      short256 (images with short side 256, JPEG q95), original (downloaded bytes),
#               released (train+validation pooled, 46 per class held out as validation, images
#               as short256), or short<N> / released_original / released_short<N>.
#               Default: short256 released.
#   EXTRA_BUILD_FLAGS are passed to every build, e.g. -- --skip_bad --overwrite.
#
# Python: $PYTHON if set, else the active virtualenv ($VIRTUAL_ENV), else <repo>/.venv.
# Every image is decoded once while building; a bad file stops the build with its name and CSV
# line unless --skip_bad is given (then it is counted in the report). Training then uses
#   --config.data.name=isic2018 --config.data.data_dir=DATA_DIR --config.data.builder_config=CONFIG
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0
[[ $# -lt 2 ]] && usage 2

manual_dir=$1
data_dir=$2
shift 2
configs=()
extra=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then
    shift
    extra=("$@")
    break
  fi
  configs+=("$1")
  shift
done
[[ ${#configs[@]} -eq 0 ]] && configs=(short256 released)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then
  python=$PYTHON
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
  python=$VIRTUAL_ENV/bin/python
else
  python=$repo/.venv/bin/python
fi
if [[ ! -x "$python" ]]; then
  echo "error: no python at $python; set PYTHON=/path/to/venv/bin/python" >&2
  exit 1
fi
if [[ ! -d "$manual_dir" ]]; then
  echo "error: manual dir $manual_dir does not exist" >&2
  exit 1
fi

cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
for config in "${configs[@]}"; do
  echo "=== isic2018/$config ==="
  "$python" -m input_pipeline.build --builder=isic2018 --manual_dir="$manual_dir" \
    --data_dir="$data_dir" --config="$config" ${extra[@]+"${extra[@]}"}
done
