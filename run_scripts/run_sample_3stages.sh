#!/usr/bin/env bash
# Three-stage sampling: each stage holds only its own model in memory.
#   (1) T5 text embeddings   scripts/infer_t5.py        -> $OUT/text_embed/{index:04d}.npz
#   (2) latent sampling      scripts/inference.py       (no T5, no VAE loaded) -> $OUT/latents/*.npz
#   (3) VAE decoding         scripts/infer_vae_decode.py -> $OUT/*.mp4 (same names as the one-process script)
# Works for 1.0 / 1.1 (SD VAE) and 1.2 (3D VAE); for the same seed the videos equal the one-process run's.
# Text-to-video only: references and loops need the VAE inside the sampling loop.
#
#   run_scripts/run_sample_3stages.sh CONFIG.yaml PROMPTS.txt OUT_DIR [extra inference.py flags...]
#   e.g. run_scripts/run_sample_3stages.sh configs/opensora-v1-2/inference/sample_t2v.yaml prompts.txt samples/3stage \
#            --ckpt_path models/OpenSora-STDiT-v3
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: $0 CONFIG.yaml PROMPTS.txt OUT_DIR [inference flags]}
PROMPTS=${2:?prompt file}
OUT=${3:?output folder}
shift 3
export GLOG_v=3
mkdir -p "$OUT"

# the T5 and VAE settings of the config (weights directory, max length, random-init source)
eval "$(python - "$CONFIG" "$@" <<'PY'
import json, shlex, sys
sys.path.insert(0, ".")
from opensora.inference.options import inference_schema
from opensora.inference.components import text_encoder_cfg, vae_cfg
cfg = inference_schema().parse(["--config", sys.argv[1], *sys.argv[2:]])
t5 = text_encoder_cfg(cfg.text_encoder, cfg.random_weights_dir)  # creates random tiny weights if asked
vae = vae_cfg(cfg.vae, cfg.random_weights_dir)
print(f"T5_DIR={shlex.quote(str(t5['from_pretrained']))}")
print(f"T5_LEN={int(t5.get('model_max_length', 120))}")
print(f"VAE_WEIGHTS={shlex.quote(str(vae['from_pretrained']))}")
print(f"VAE_CFG={shlex.quote(json.dumps(vae))}")  # the config's own VAE section, weights resolved
PY
)"

echo "== stage 1: text embeddings ($T5_DIR)"
python scripts/inference.py --config "$CONFIG" --prompt-path "$PROMPTS" --write_prompts "$OUT/prompts_scored.txt" "$@"
python scripts/infer_t5.py --t5_model_dir "$T5_DIR" --model_max_length "$T5_LEN" \
    --prompt_path "$OUT/prompts_scored.txt" --output_dir "$OUT/text_embed"

echo "== stage 2: latents"
python scripts/inference.py --config "$CONFIG" --prompt-path "$PROMPTS" --save-dir "$OUT" \
    --text_embed_folder "$OUT/text_embed" --no_vae_decode true "$@"

echo "== stage 3: decode ($VAE_WEIGHTS)"
python scripts/infer_vae_decode.py --latent_path "$OUT/latents" --output_dir "$OUT" --vae "$VAE_CFG"
echo "videos in $OUT"
