#!/usr/bin/env bash
# One process (CPU, one GPU or one Ascend device):
#   bash run_scripts/run_train.sh configs/opensora/train/stdit_256x256x16.yaml \
#        --csv_path video_caption.csv --video_folder videos --text_embed_folder t5_cache
set -euo pipefail
CONFIG=${1:?usage: run_train.sh CONFIG [extra train.py flags]}
shift
cd "$(dirname "$0")/.."
python scripts/train.py --config "$CONFIG" "$@"
