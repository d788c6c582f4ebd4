#!/usr/bin/env bash
# Several nodes: run this on every node with the same MASTER_ADDR and its own NODE_RANK (0 on the master):
#   NODES=2 DEVICES_PER_NODE=8 NODE_RANK=0 MASTER_ADDR=10.0.0.1 \
#     bash run_scripts/msrun_train_multinode.sh configs/opensora-v1-2/train/stage1.yaml \
#       --csv_path data.csv --video_folder videos --text_embed_folder t5_cache
# Every node needs the data paths (shared storage) and the same config; the output folder should be on
# shared storage too (rank 0 writes the model/EMA, each rank its optimizer shard with zero_stage: 1).
set -euo pipefail
CONFIG=${1:?usage: msrun_train_multinode.sh CONFIG [extra train.py flags]}
shift
NODES=${NODES:?set NODES}
DEVICES_PER_NODE=${DEVICES_PER_NODE:-8}
NODE_RANK=${NODE_RANK:?set NODE_RANK (0 on the master node)}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR (the master node address)}
MASTER_PORT=${MASTER_PORT:-8200}
LOG_DIR=${LOG_DIR:-outputs/msrun_logs_node$NODE_RANK}
cd "$(dirname "$0")/.."
msrun --worker_num=$((NODES * DEVICES_PER_NODE)) --local_worker_num="$DEVICES_PER_NODE" \
      --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" \
      --log_dir="$LOG_DIR" --join=True \
      scripts/train.py --config "$CONFIG" --use_parallel True "$@"
