#!/usr/bin/env bash
# Data parallel (+ ZeRO-1 with zero_stage: 1 in the config) on one node with msrun:
#   NUM_DEVICES=8 bash run_scripts/msrun_train.sh configs/opensora/train/stdit_512x512x64_ms.yaml \
#        --csv_path video_caption.csv --video_folder videos --text_embed_folder t5_cache
# Each rank reads its own shard of the data; gradients are averaged across ranks. On a CPU (mccl)
# this runs too, e.g. NUM_DEVICES=2 with configs/tiny/train_stdit3.yaml. msrun starts `python` from
# PATH: activate the environment (or put .venv/bin first in PATH) before running this.
set -euo pipefail
CONFIG=${1:?usage: msrun_train.sh CONFIG [extra train.py flags]}
shift
NUM_DEVICES=${NUM_DEVICES:-8}
MASTER_PORT=${MASTER_PORT:-8200}
LOG_DIR=${LOG_DIR:-outputs/msrun_logs}
cd "$(dirname "$0")/.."
msrun --worker_num="$NUM_DEVICES" --local_worker_num="$NUM_DEVICES" --master_port="$MASTER_PORT" \
      --log_dir="$LOG_DIR" --join=True \
      scripts/train.py --config "$CONFIG" --use_parallel True "$@"
