#!/usr/bin/env bash
# The main-job demo: the tiny random-weight Open-Sora 1.2 pipeline (T5 -> STDiT3 + rectified flow ->
# 1.2 VAE), then the tiny Open-Sora 2.0 one (T5 + CLIP -> MMDiT + the 2.0 sampler -> Hunyuan VAE), end to end
# on the CPU. Writes a real H.264 mp4 for each under samples/ and prints where they are. Extra arguments go
# to the 1.2 run.
# Random weights are created on the first run (models/random-init/), so the video is noise-like.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v=3
start=$(date +%s)
python scripts/inference.py --config configs/tiny/inference/sample_t2v.yaml \
    --prompt "a cat walks along the river." --save-dir samples/demo --overwrite true --verbose 1 "$@"
video=samples/demo/sample_0000.mp4
test -s "$video" || { echo "demo failed: $video was not written" >&2; exit 1; }
echo "Demo video: $(pwd)/$video  ($(( $(date +%s) - start )) s)"
start=$(date +%s)
python scripts/inference.py --config configs/tiny/inference/sample_v2.yaml \
    --prompt "a cat walks along the river." --save-dir samples/demo_v2 --overwrite true --verbose 1
video=samples/demo_v2/video_64px/prompt_0000.mp4
test -s "$video" || { echo "demo failed: $video was not written" >&2; exit 1; }
echo "Open-Sora 2.0 demo video: $(pwd)/$video  ($(( $(date +%s) - start )) s)"
